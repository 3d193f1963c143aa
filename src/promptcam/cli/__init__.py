"""``promptcam``: one command with a verb per pipeline stage.

The ``promptcam-*`` scripts stay as aliases of the same commands. Verbs import their module only
when run, so the torch-free ones (``run``, ``watch``, ``export-results``) work on a field station
that has no torch.
"""

from __future__ import annotations

import click

from promptcam.core.cli import LazyGroup

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("promptcam.train.cli:train", "Train Prompt-CAM prompts on a frozen ViT (ImageFolder data)."),
    "eval": ("promptcam.train.cli:evaluate", "Accuracy, per-class accuracy and confusion of a checkpoint."),
    "convert": ("promptcam.models.cli:convert", "Convert an official Prompt-CAM checkpoint to model.pt."),
    "demo": ("promptcam.train.demo:main", "The whole pipeline offline on the synthetic trait world."),
    "export": ("promptcam.export.cli:main", "Export a checkpoint to validated ONNX (fp32/fp16/int8) or TensorRT."),
    "run": ("promptcam.cli.run:main", "Classify and explain images, a camera stream or a Ray batch."),
    "watch": ("promptcam.cli.watch:watch", "Field station: classify files dropped in an inbox."),
    "export-results": ("promptcam.cli.watch:export_results",
                       "Write a station database or run folder as MegaDetector JSON, CSV, JSONL, Parquet, Camtrap DP."),
    "validate-int8": ("promptcam.export.target:main",
                      "Re-run an int8 model's quality gates with this machine's kernels (a Pi, a Jetson)."),
    "bench": ("promptcam.benchmarks.cli:main", "Latency and agreement of every backend against eager PyTorch."),
    "review": ("promptcam.review.cli:main", "Review results with heatmaps in a local web page; correct labels."),
    "serve": ("promptcam.serving.cli:serve", "Serve a model with Triton Inference Server (HTTP, gRPC, batching)."),
}


@click.group(cls=LazyGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="promptcam")
def main() -> None:
    """Prompt-CAM from training to the field: every image gets its class and the heatmap of its traits."""
