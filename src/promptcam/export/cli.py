"""``promptcam-export``: checkpoint -> model directory (ONNX + manifest [+ TensorRT engine])."""

from __future__ import annotations

from pathlib import Path

import click

from promptcam.core.cli import deprecated_alias, run_cli, verbose_option


@click.command()
@click.option("--ckpt", type=click.Path(path_type=Path), required=True,
              help="model.pt (project format) or an official Prompt-CAM checkpoint.")
@click.option("--classes", type=click.Path(path_type=Path), help="Class names for an official checkpoint.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output model directory (default: <ckpt stem>_export next to the checkpoint).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--batch-size", default="dynamic", show_default=True, help="'dynamic' or a fixed batch size.")
@deprecated_alias("--batch", "--batch-size")
@click.option("--validate/--no-validate", default=True, show_default=True,
              help="Compare against eager PyTorch (fails on fp32 mismatch).")
@click.option("--calib", type=click.Path(path_type=Path), default=None,
              help="Images for static int8 calibration and validation.")
@click.option("--int8-mode", type=click.Choice(["dynamic", "static"]), default=None,
              help="int8 quantisation (default: static with --calib, else dynamic; --calib images still validate).")
@click.option("--gate-top1", type=float, default=0.99, show_default=True,
              help="int8: minimum top-1 agreement with float32 on the validation images.")
@click.option("--gate-attention-mean", type=float, default=0.99, show_default=True,
              help="int8: minimum mean correlation of the attention maps with float32.")
@click.option("--gate-attention-min", type=float, default=0.9, show_default=True,
              help="int8: minimum correlation of the worst single (image, class, head) attention map.")
@click.option("--int8-search/--no-int8-search", default=True, show_default=True,
              help="int8: keep the most sensitive blocks in float32 until the gates pass (int8_report.md).")
@click.option("--int8-images", type=int, default=32, show_default=True,
              help="int8 without --calib: synthetic images the search and the gates run on (--calib is better: "
                   "real images of the deployment).")
@click.option("--int8-budget", type=float, default=240.0, show_default=True,
              help="int8: seconds after which the search starts no new trial.")
@click.option("--force", is_flag=True,
              help="int8: write the model even if it misses the gates (recorded in the manifest, warned at load).")
@click.option("--target", type=click.Choice(["onnx", "trt"]), default="onnx", show_default=True,
              help="What to build: ONNX only, or also a TensorRT engine (trt: needs a GPU and the 'trt' extra).")
@deprecated_alias("--engine", "--target")
@click.option("--attention", type=click.Choice(["auto", "fused", "onnx"]), default="auto", show_default=True,
              help="fused: ONNX Runtime's MultiHeadAttention op (fast on CUDA, ORT only); onnx: standard ops "
                   "(TensorRT, int8, other runtimes); auto: fused for fp16 without --target trt, else onnx.")
@click.option("--trt-batch", default="1,8,32", show_default=True, help="TensorRT profile MIN,OPT,MAX batch.")
@click.option("--triton-repo", type=click.Path(path_type=Path), default=None,
              help="Also write a Triton Inference Server model repository here.")
@click.option("--triton-kind", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="Triton instance group kind for the ONNX model.")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None, help="TensorRT timing cache file.")
@verbose_option
def main(ckpt: Path, classes: Path | None, out: Path | None, precision: str, opset: int, batch_size: str,
         validate: bool, calib: Path | None, int8_mode: str | None, gate_top1: float, gate_attention_mean: float,
         gate_attention_min: float, int8_search: bool, int8_images: int, int8_budget: float, force: bool, target: str,
         attention: str, trt_batch: str, triton_repo: Path | None, triton_kind: str, timing_cache: Path | None,
         verbose: bool) -> None:
    """Export a Prompt-CAM checkpoint to ONNX (logits + attention) for promptcam-run."""

    def body() -> None:
        from promptcam.core.errors import ExportError

        from .gates import Int8Gates
        from .passes import ExportOptions, export_model
        from .tensorrt import BatchProfile

        if batch_size != "dynamic" and not batch_size.isdigit():
            raise ExportError(f"--batch-size must be 'dynamic' or a positive integer, got {batch_size!r}")
        options = ExportOptions(
            ckpt=ckpt, out=out or ckpt.parent / f"{ckpt.stem}_export", classes=classes, precision=precision,
            opset=opset, batch=None if batch_size == "dynamic" else int(batch_size), validate=validate, calib=calib,
            int8_mode=int8_mode, int8_gates=Int8Gates(gate_top1, gate_attention_mean, gate_attention_min),
            int8_search=int8_search, int8_synthetic_images=int8_images, int8_budget_s=int8_budget, force=force,
            engine="trt" if target == "trt" else None, trt_batch=BatchProfile.parse(trt_batch),
            attention=None if attention == "auto" else attention,
            timing_cache=timing_cache, triton_repo=triton_repo, triton_kind=f"KIND_{triton_kind.upper()}",
        )
        export_model(options, log=click.echo)
        click.echo(f"exported to {options.out}")

    run_cli(body, verbose=verbose)
