"""Benchmark backends: each is built once, then called on uint8 pixel batches."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from promptcam.models.errors import PromptCamError
from promptcam.models.preprocess import normalize_pixels
from promptcam.models.promptcam import PromptCAM

RunFn = Callable[[np.ndarray], np.ndarray]  # pixels -> logits (or features for plain-vit)

BACKENDS = ("eager-official", "ort-cpu-fp32", "ort-cpu-int8", "ort-cuda-fp32", "ort-cuda-fp16", "trt-fp16",
            "plain-vit")


@dataclass
class BenchBackend:
    name: str
    run: RunFn
    description: str
    comparable: bool = True  # outputs are Prompt-CAM logits (plain-vit's are not)


class Skipped(Exception):
    """A backend that cannot run on this machine; the message is the reason."""


def eager_official(model: PromptCAM) -> BenchBackend:
    """The published forward: all C prompts through all layers, attention maps from the last block."""

    @torch.inference_mode()
    def run(pixels: np.ndarray) -> np.ndarray:
        logits, _ = model(normalize_pixels(pixels, model.config), return_attention=True)
        return logits.numpy()

    return BenchBackend("eager-official", run, f"PyTorch {torch.__version__} eager, {torch.get_num_threads()} threads")


def _export_dir(model_path: Path, work: Path, precision: str) -> Path:
    from promptcam.export.passes import ExportOptions, export_model

    out = work / f"export-{precision}"
    if not (out / "manifest.json").is_file():
        export_model(ExportOptions(ckpt=model_path, out=out, precision=precision, validate=False), log=lambda _: None)
    return out


def predictor_backend(name: str, ckpt: Path, work: Path, threads: int) -> BenchBackend:
    """An ORT/TensorRT backend through the runtime's own Predictor (what users run)."""
    from promptcam.runtime.predictor import Predictor

    engine, precision = name.rsplit("-", 1)
    engine = {"ort-cpu": "ort-cpu", "ort-cuda": "ort-cuda", "trt": "trt"}[engine]
    if engine == "trt":
        raise Skipped("needs a TensorRT engine built on a GPU machine (benchmarks/gpu.sh)")
    model_dir = _export_dir(ckpt, work, precision)
    try:
        predictor = Predictor(model_dir, engine, batch_size=1024, threads=threads)
    except PromptCamError as exc:
        raise Skipped(str(exc).splitlines()[0]) from None

    def run(pixels: np.ndarray) -> np.ndarray:
        return predictor.backend.infer(pixels, ("logits", "attention"))["logits"]

    return BenchBackend(name, run, predictor.engine_description)


def plain_vit(model: PromptCAM, threads: int) -> BenchBackend:
    """The same backbone without prompts (timm ViT, torch.onnx export) through ORT: the floor."""
    import onnxruntime as ort
    from timm.models.vision_transformer import VisionTransformer

    cfg = model.config
    vit = VisionTransformer(img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
                            num_heads=cfg.num_heads, num_classes=0, init_values=1e-5 if cfg.layerscale else None).eval()
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(), torch.no_grad():
        torch.onnx.export(vit, torch.randn(1, 3, cfg.img_size, cfg.img_size), buffer, input_names=["x"],
                          output_names=["features"], dynamic_axes={"x": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def run(pixels: np.ndarray) -> np.ndarray:
        # the same uint8 -> float work the Prompt-CAM graph does inside, done here
        return session.run(None, {"x": normalize_pixels(pixels, cfg).numpy()})[0]

    return BenchBackend("plain-vit", run, f"timm ViT without prompts, onnxruntime {ort.__version__} CPU",
                        comparable=False)
