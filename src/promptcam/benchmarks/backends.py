"""Benchmark backends: each is built once, then called on uint8 pixel batches."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from promptcam.core.errors import PromptCamError
from promptcam.models.preprocess import normalize_pixels
from promptcam.models.promptcam import ACTIVATION_LAYERS, PromptCAM

RunFn = Callable[[np.ndarray], np.ndarray]  # pixels -> logits (or features for plain-vit)
QualityFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # pixels -> (logits, attention), not timed

BACKENDS = ("eager-official", "eager", "eager-fp16", "eager-compile-fp16", "ort-cpu-fp32", "ort-cpu-int8",
            "ort-cuda-fp32", "ort-cuda-fp16", "ort-cuda-fp16-graph", "ort-cuda-fp16-device", "ort-cuda-fp16-unfused",
            "trt-fp16", "plain-vit", "plain-vit-cuda", "ort-cpu-fp32-device")
# rows measured with PyTorch (--eager-batch limits their batch sizes: fp32 eager at batch 256 takes long)
TORCH_BACKENDS = ("eager-official", "eager", "eager-fp16", "eager-compile-fp16")
# the runtime engine that end-to-end and trait-ranking figures use: the fastest one that was built
PRIMARY_ORDER = ("trt-fp16", "ort-cuda-fp16", "ort-cuda-fp32", "ort-cpu-fp32")


@dataclass
class BenchBackend:
    name: str
    run: RunFn
    description: str
    comparable: bool = True  # outputs are Prompt-CAM logits (plain-vit's are not)
    on_torch_cuda: bool = False  # GPU memory comes from torch's allocator, not device-wide growth
    model_dir: Path | None = None  # exported model directory and runtime engine (Predictor backends)
    engine: str | None = None
    quality: QualityFn | None = None  # logits and attention maps, compared with eager float32 in every row
    # (maps [B, C, heads, N] of every class, or [B, heads, N] of the predicted class)
    first_call_s: dict[int, float] | None = None  # torch.compile rows: first call per batch size (compilation)

    @property
    def on_gpu(self) -> bool:
        return self.on_torch_cuda or self.name.startswith(("ort-cuda", "trt", "plain-vit-cuda"))


class Skipped(Exception):
    """A backend that cannot run on this machine; the message is the reason."""


def _device() -> torch.device:
    # fp32 on the GPU when there is one (what users run today), else on the CPU
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _where(device: torch.device) -> str:
    return torch.cuda.get_device_name(0) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"


def official_forward(model: PromptCAM, images: torch.Tensor) -> torch.Tensor:
    """The reference implementation's forward: all C prompts through all layers, and, like its
    ``AttentionPETL``, explicit softmax attention (no fused kernel) in every block."""
    c = model.num_classes
    x = model.embed(images)
    for index, block in enumerate(model.blocks):
        x = torch.cat([model.vpt.prompt_embeddings[index].expand(x.shape[0], -1, -1), x], dim=1)
        x, _ = model.run_block(block, x, need_probs=True)
        if index < len(model.blocks) - 1:
            x = x[:, c:]
    return model.head(model.norm(x[:, :c])).squeeze(-1)


def _eager(name: str, model: PromptCAM, forward, description: str) -> BenchBackend:  # noqa: ANN001
    device = _device()
    model = model.to(device)

    @torch.inference_mode()
    def run(pixels: np.ndarray) -> np.ndarray:
        logits = forward(model, normalize_pixels(pixels, model.config).to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return logits.float().cpu().numpy()

    @torch.inference_mode()
    def quality(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, attention = model(normalize_pixels(pixels, model.config).to(device), return_attention=True)
        return logits.float().cpu().numpy(), attention.float().cpu().numpy()

    # the official forward returns no maps; its row's attention numbers are the project model's
    return BenchBackend(name, run, f"PyTorch {torch.__version__} eager fp32, {_where(device)}: {description}",
                        on_torch_cuda=device.type == "cuda", quality=quality)


def eager_official(model: PromptCAM) -> BenchBackend:
    """The baseline users have today: the published forward as the reference code runs it."""
    return _eager("eager-official", model, official_forward, "reference implementation")


def eager_project(model: PromptCAM) -> BenchBackend:
    """The project's PyTorch model: fused SDPA in blocks whose attention maps are not returned."""
    return _eager("eager", model, lambda m, x: m(x, return_attention=True)[0], "promptcam.models")


def _export_dir(model_path: Path, work: Path, precision: str, *, engine: str | None = None,
                attention: str | None = None, max_batch: int = 32) -> Path:
    from promptcam.export.passes import ExportOptions, export_model
    from promptcam.export.tensorrt import BatchProfile

    out = work / (f"export-{precision}" + ("-trt" if engine else "") + (f"-{attention}" if attention else ""))
    if not (out / "manifest.json").is_file():
        # int8: the search picks the plan and the gates are checked on the search's numbers; forced, so a
        # model that misses them is still measured (its row says so) rather than silently left out
        export_model(ExportOptions(ckpt=model_path, out=out, precision=precision, validate=False, engine=engine,
                                   attention=attention, trt_batch=BatchProfile(1, min(8, max_batch), max_batch),
                                   force=precision == "int8"),
                     log=lambda _: None)
    return out


def int8_summary(model_dir: Path) -> str:
    """The int8 plan and gate verdict of an export, for the backend description."""
    import json

    report_path = model_dir / "int8_report.json"
    if not report_path.is_file():
        return ""
    report = json.loads(report_path.read_text())
    verdict = "meets the gates" if report["final"]["passed"] else "MISSES the gates: " + "; ".join(
        report["final"]["failed"])
    return f"; {report['plan']}, {verdict}"


def predictor_backend(name: str, ckpt: Path, work: Path, threads: int, max_batch: int) -> BenchBackend:
    """An ORT/TensorRT backend through the runtime's own Predictor (what users run)."""
    from promptcam.runtime.cuda import has_nvidia_driver, import_tensorrt
    from promptcam.runtime.predictor import Predictor

    # "-unfused": the fp16 export with standard-op attention (the graph TensorRT gets), side by side
    attention = "onnx" if name.endswith("-unfused") else None
    engine, precision = name.removesuffix("-unfused").rsplit("-", 1)
    if engine != "ort-cpu" and not has_nvidia_driver():
        raise Skipped("no NVIDIA GPU/driver on this machine")
    try:
        if engine == "trt":
            import_tensorrt()
            model_dir = _export_dir(ckpt, work, precision, engine="trt", max_batch=max_batch)
        else:
            model_dir = _export_dir(ckpt, work, precision, attention=attention)
        predictor = Predictor(model_dir, engine, batch_size=1024, threads=threads)
    except PromptCamError as exc:
        raise Skipped(str(exc).splitlines()[0]) from None

    # what promptcam-run fetches by default: logits and the predicted class's attention maps
    outputs = ("logits", "top_class", "top_attention")

    def run(pixels: np.ndarray) -> np.ndarray:
        return predictor.backend.infer(pixels, outputs)["logits"]

    def quality(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        got = predictor.backend.infer(pixels, ("logits", "attention"))
        return got["logits"], got["attention"]

    return BenchBackend(name, run, f"{predictor.engine_description}; outputs {', '.join(outputs)}"
                        + int8_summary(model_dir), model_dir=model_dir, engine=engine, quality=quality)


def plain_vit(model: PromptCAM, threads: int, *, cuda: bool = False) -> BenchBackend:
    """The same backbone without prompts (timm ViT, torch.onnx export) through ORT: the floor
    (``cuda``: on ORT's CUDA provider, the floor for the ort-cuda rows)."""
    import onnxruntime as ort
    from timm.models.vision_transformer import VisionTransformer

    from promptcam.runtime.backends.onnxruntime import cuda_provider, preload_cuda_libraries
    from promptcam.runtime.cuda import has_nvidia_driver

    name = "plain-vit-cuda" if cuda else "plain-vit"
    if cuda and ("CUDAExecutionProvider" not in ort.get_available_providers() or not has_nvidia_driver()):
        raise Skipped("no NVIDIA GPU/driver, or this onnxruntime build has no CUDAExecutionProvider")
    if cuda:
        preload_cuda_libraries()
    cfg = model.config
    # the same structure as the backbone: CLIP's ln_pre and bias-free patch embedding, QuickGELU, LayerNorm eps
    vit = VisionTransformer(img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
                            num_heads=cfg.num_heads, num_classes=0, init_values=1e-5 if cfg.layerscale else None,
                            pre_norm=cfg.pre_norm, act_layer=ACTIVATION_LAYERS[cfg.act],
                            norm_layer=partial(torch.nn.LayerNorm, eps=cfg.norm_eps)).eval()
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(), torch.no_grad():
        torch.onnx.export(vit, torch.randn(1, 3, cfg.img_size, cfg.img_size), buffer, input_names=["x"],
                          output_names=["features"], dynamic_axes={"x": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    providers: list = [cuda_provider(), "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    session = ort.InferenceSession(buffer.getvalue(), options, providers=providers)
    wanted = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
    if session.get_providers()[0] != wanted:
        raise Skipped(f"{wanted} failed to initialise (active: {', '.join(session.get_providers())})")

    def run(pixels: np.ndarray) -> np.ndarray:
        # the same uint8 -> float work the Prompt-CAM graph does inside, done here
        return session.run(None, {"x": normalize_pixels(pixels, cfg).numpy()})[0]

    where = "CUDA" if cuda else "CPU"
    return BenchBackend(name, run, f"timm ViT without prompts, onnxruntime {ort.__version__} {where}",
                        comparable=False)


def bound_backend(name: str, ckpt: Path, work: Path, threads: int) -> BenchBackend:
    """``ort-cuda-fp16-graph``: CUDA graphs with IO binding at fixed shapes; ``ort-cuda-fp16-device``:
    input and outputs bound to device buffers, only the logits copied to the host
    (``OrtBackend.infer_on_device``). Both on the fp16 export; ``ort-cpu`` engine names
    (``ort-cpu-fp32-device``) run the same binding code in host memory, for tests."""
    from promptcam.runtime.backends.onnxruntime import OrtBackend
    from promptcam.runtime.cuda import has_nvidia_driver

    engine, precision, mode = name.rsplit("-", 2)
    if engine != "ort-cpu" and not has_nvidia_driver():
        raise Skipped("no NVIDIA GPU/driver on this machine")
    outputs = ("logits", "top_class", "top_attention")
    try:
        model_dir = _export_dir(ckpt, work, precision)
        backend = OrtBackend(model_dir / "model.onnx", engine, threads=threads, cuda_graph=mode == "graph")
    except PromptCamError as exc:
        raise Skipped(str(exc).splitlines()[0]) from None

    if mode == "graph":
        def infer(pixels: np.ndarray) -> dict[str, np.ndarray]:
            return backend.infer(pixels, outputs)  # replays the graph captured for this batch size
        what = "CUDA graph per batch size (enable_cuda_graph, gpu_graph_id), fixed IO buffers; outputs to host"
    else:
        def infer(pixels: np.ndarray) -> dict[str, np.ndarray]:
            on_device = backend.infer_on_device(pixels, outputs)
            # the answer goes to the host (and waits for the run); the maps stay on the device
            return {"logits": on_device["logits"].numpy(), "top_attention_on_device": on_device["top_attention"]}
        what = ("IO bound to device buffers (host memory on ort-cpu); logits copied to host, top_class/"
                "top_attention left on the device")

    def run(pixels: np.ndarray) -> np.ndarray:
        return infer(pixels)["logits"]

    def quality(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # the timed path itself (the same captured graph or buffers), its maps fetched afterwards
        got = infer(pixels)
        maps = got["top_attention"] if mode == "graph" else got["top_attention_on_device"].numpy()
        return got["logits"], maps

    return BenchBackend(name, run, f"{backend.description}; {what}", model_dir=model_dir, engine=engine,
                        quality=quality)
