"""The exporter as an ordered list of named passes (Polygraphy style).

load-checkpoint -> fold-prompt-constants -> build-graph -> [quantize-int8] -> validate
-> write-model-dir -> [build-trt-engine]

Each pass is small, logs its name, seconds and output size, and can be run on its own in tests.
"""

from __future__ import annotations

import importlib.metadata
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from promptcam.core.errors import ExportError, ImageError, ValidationError
from promptcam.core.manifest import METADATA_KEY, Manifest
from promptcam.models.checkpoint import file_sha256, load_model, read_class_names
from promptcam.models.promptcam import PromptCAM
from promptcam.runtime.images import iter_image_files, read_image, resize_for_model

from .constants import FoldedWeights, fold_prompt_constants
from .graph import build_promptcam_graph, build_trait_head_graph
from .tensorrt import BatchProfile, build_engine
from .validate import AGREEMENT_WARNING, FP32_LOGIT_TOLERANCE, OutputCheck, summarize, validate_session

PRECISIONS = ("fp32", "fp16", "int8")
ATTENTION_KINDS = ("fused", "onnx")
MODEL_FILE, TRAIT_HEAD_FILE, ENGINE_FILE = "model.onnx", "trait_head.onnx", "model.plan"
MIN_OPSET = 17  # LayerNormalization


@dataclass
class ExportOptions:
    """What ``promptcam-export`` was asked for."""

    ckpt: Path
    out: Path
    classes: Path | None = None
    precision: str = "fp32"
    opset: int = 17
    batch: int | None = None  # None: dynamic batch
    validate: bool = True
    validation_batch: int = 4
    calib: Path | None = None
    calib_limit: int = 64
    int8_mode: str | None = None  # "dynamic" | "static"; default: static when --calib is given
    engine: str | None = None  # None or "trt"
    trt_batch: BatchProfile = field(default_factory=BatchProfile)
    timing_cache: Path | None = None
    triton_repo: Path | None = None
    triton_kind: str = "KIND_GPU"
    # "fused": ORT's MultiHeadAttention in blocks 0..L-2 (ONNX Runtime only; on CUDA it never writes the
    # attention scores to memory); "onnx": standard ops only (TensorRT, int8 quantisation, other runtimes).
    # Default: fused for fp16 without --engine trt (the ORT-on-GPU precision), else onnx.
    attention: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ExportError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.opset < MIN_OPSET:
            raise ExportError(f"opset must be >= {MIN_OPSET} (LayerNormalization), got {self.opset}")
        if self.batch is not None and self.batch < 1:
            raise ExportError(f"batch must be >= 1, got {self.batch}")
        if self.engine not in (None, "trt"):
            raise ExportError(f"engine must be 'trt' or omitted, got {self.engine!r}")
        if self.int8_mode is None:
            self.int8_mode = "static" if self.calib is not None else "dynamic"
        if self.int8_mode not in ("dynamic", "static"):
            raise ExportError(f"int8 mode must be 'dynamic' or 'static', got {self.int8_mode!r}")
        if self.int8_mode == "static" and self.calib is None:
            raise ExportError("static int8 quantisation needs --calib DIR")
        if self.attention is None:
            self.attention = "fused" if self.precision == "fp16" and self.engine is None else "onnx"
        if self.attention not in ATTENTION_KINDS:
            raise ExportError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.attention == "fused" and self.engine == "trt":
            raise ExportError("TensorRT cannot parse ONNX Runtime's fused attention op; "
                              "use --attention onnx with --engine trt")
        if self.attention == "fused" and self.precision == "int8":
            raise ExportError("int8 quantisation needs standard ONNX ops; use --attention onnx with --precision int8")
        if self.engine == "trt" and self.precision == "int8" and self.int8_mode != "static":
            raise ExportError("a TensorRT int8 engine needs --calib DIR (static QDQ quantisation)")


@dataclass
class PassRecord:
    name: str
    seconds: float
    output: str


@dataclass
class ExportContext:
    """State handed from pass to pass."""

    options: ExportOptions
    log: Callable[[str], None] = print
    model: PromptCAM | None = None
    folded: FoldedWeights | None = None
    graph: onnx.ModelProto | None = None
    trait_head: onnx.ModelProto | None = None
    int8_mode: str | None = None
    calibration: list[np.ndarray] = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=dict)
    manifest: Manifest | None = None
    records: list[PassRecord] = field(default_factory=list)

    def require(self, attr: str) -> Any:
        value = getattr(self, attr)
        if value is None:
            raise ExportError(f"pass order: {attr!r} is not available yet")
        return value


class ExportPass(ABC):
    """A named step. ``__call__`` times and logs; ``run`` does the work and describes its output."""

    name: str = "pass"

    def __call__(self, ctx: ExportContext) -> None:
        start = time.perf_counter()
        output = self.run(ctx)
        record = PassRecord(self.name, time.perf_counter() - start, output)
        ctx.records.append(record)
        ctx.log(f"[{record.name:<22}] {record.seconds:7.2f}s  {record.output}")

    @abstractmethod
    def run(self, ctx: ExportContext) -> str: ...


def _size(model: onnx.ModelProto) -> str:
    return f"{model.ByteSize() / 2**20:.1f} MiB, {len(model.graph.node)} nodes"


class LoadCheckpoint(ExportPass):
    name = "load-checkpoint"

    def run(self, ctx: ExportContext) -> str:
        opts = ctx.options
        names = read_class_names(opts.classes) if opts.classes else None
        ctx.model = load_model(opts.ckpt, class_names=names)
        cfg = ctx.model.config
        if opts.calib is not None:
            ctx.calibration = load_calibration(opts.calib, ctx.model, opts.calib_limit)
        return (f"{cfg.arch}: {cfg.num_classes} classes, {cfg.depth} blocks x {cfg.num_heads} heads, "
                f"{cfg.img_size}px" + (f", {len(ctx.calibration)} calibration batches" if ctx.calibration else ""))


class FoldPromptConstants(ExportPass):
    name = "fold-prompt-constants"

    def run(self, ctx: ExportContext) -> str:
        ctx.folded = fold_prompt_constants(ctx.require("model"))
        cfg = ctx.folded.config
        return f"{cfg.depth} x {cfg.num_classes} prompt keys/values, {cfg.num_classes} last-block queries"


class BuildGraph(ExportPass):
    name = "build-graph"

    def run(self, ctx: ExportContext) -> str:
        opts, folded = ctx.options, ctx.require("folded")
        compute = np.dtype(np.float16 if opts.precision == "fp16" else np.float32)
        ctx.graph = build_promptcam_graph(folded, compute_dtype=compute, opset=opts.opset,
                                          fused_attention=opts.attention == "fused")
        ctx.trait_head = build_trait_head_graph(folded, opset=opts.opset)
        if opts.batch is not None:
            fix_batch(ctx.graph, opts.batch)
        onnx.checker.check_model(ctx.graph)
        onnx.checker.check_model(ctx.trait_head)
        return (f"{_size(ctx.graph)} ({'dynamic' if opts.batch is None else opts.batch} batch, {opts.attention} "
                "attention), checker ok")


class QuantizeInt8(ExportPass):
    name = "quantize-int8"

    def run(self, ctx: ExportContext) -> str:
        from .quantize import quantize_int8

        graph = ctx.require("graph")
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            onnx.save(graph, str(src))
            static = ctx.options.int8_mode == "static"
            ctx.int8_mode = quantize_int8(src, dst, depth=ctx.require("model").config.depth,
                                          calibration=ctx.calibration if static else None)
            ctx.graph = onnx.load(str(dst))
        return f"{ctx.int8_mode} int8, last block fp32: {_size(ctx.graph)}"


class Validate(ExportPass):
    name = "validate"

    def run(self, ctx: ExportContext) -> str:
        opts, model = ctx.options, ctx.require("model")
        session = cpu_session(ctx.require("graph").SerializeToString())
        trait_head = cpu_session(ctx.require("trait_head").SerializeToString())
        checks = validate_session(session, trait_head, model, validation_batches(ctx))
        for check in checks:
            ctx.log("    " + check.line())
        ctx.validation = {**summarize(checks), "precision": opts.precision, "provider": "CPUExecutionProvider"}
        failures = failed_checks(checks, opts.precision)
        if failures:
            raise ValidationError(
                f"exported graph disagrees with eager PyTorch beyond tolerance ({FP32_LOGIT_TOLERANCE:g} on fp32 "
                "logits); nothing was written:\n  " + "\n  ".join(c.line() for c in failures))
        agreement = ctx.validation["top1_agreement"]
        if agreement is not None and agreement < AGREEMENT_WARNING:
            ctx.log(f"WARNING: {opts.precision} top-1 agreement with fp32 eager is {agreement:.1%} "
                    f"(< {AGREEMENT_WARNING:.0%}); check accuracy on your own validation images")
        return (f"logits max_abs={ctx.validation['logits_max_abs_diff']:.2e}, top1 agreement="
                f"{agreement:.1%}, attention corr>={ctx.validation['attention_min_correlation']:.4f}")


class WriteModelDir(ExportPass):
    name = "write-model-dir"

    def run(self, ctx: ExportContext) -> str:
        opts, model = ctx.options, ctx.require("model")
        graph, trait_head = ctx.require("graph"), ctx.require("trait_head")
        opts.out.mkdir(parents=True, exist_ok=True)
        batch: Any = opts.batch or "batch"
        cfg = model.config
        ctx.manifest = Manifest(
            config=cfg, precision=opts.precision,
            files={"model": MODEL_FILE, "trait_head": TRAIT_HEAD_FILE},
            inputs={"pixels": {"dtype": "uint8", "shape": [batch, cfg.img_size, cfg.img_size, 3],
                               "layout": "NHWC RGB"}},
            outputs={
                "logits": {"dtype": "float32", "shape": [batch, cfg.num_classes]},
                "attention": {"dtype": "float32", "shape": [batch, cfg.num_classes, cfg.num_heads, cfg.num_patches]},
                "head_context": {"dtype": "float32", "shape": [batch, cfg.num_classes, cfg.num_heads, cfg.head_dim]},
                "value_mean": {"dtype": "float32", "shape": [batch, cfg.num_heads, cfg.head_dim]},
                "top_class": {"dtype": "int64", "shape": [batch]},
                "top_attention": {"dtype": "float32", "shape": [batch, cfg.num_heads, cfg.num_patches]},
                "top_head_context": {"dtype": "float32", "shape": [batch, cfg.num_heads, cfg.head_dim]},
            },
            source={"checkpoint": str(opts.ckpt), "sha256": file_sha256(opts.ckpt)},
            exporter=exporter_versions(opts.opset) | {"int8_mode": ctx.int8_mode, "attention": opts.attention},
            validation=ctx.validation,
        )
        for proto, name in ((graph, MODEL_FILE), (trait_head, TRAIT_HEAD_FILE)):
            set_metadata(proto, ctx.manifest)
            tmp = opts.out / (name + ".tmp")
            onnx.save(proto, str(tmp))
            tmp.replace(opts.out / name)
        ctx.manifest.write(opts.out)
        return f"{opts.out}/{MODEL_FILE} ({(opts.out / MODEL_FILE).stat().st_size / 2**20:.1f} MiB), manifest.json"


class BuildTensorRTEngine(ExportPass):
    name = "build-trt-engine"

    def run(self, ctx: ExportContext) -> str:
        opts, manifest = ctx.options, ctx.require("manifest")
        info = build_engine(opts.out / MODEL_FILE, opts.out / ENGINE_FILE, img_size=manifest.config.img_size,
                            profile=opts.trt_batch, timing_cache=opts.timing_cache or opts.out / "timing.cache")
        manifest.engine = info | {"precision": opts.precision}
        manifest.files["engine"] = ENGINE_FILE
        manifest.write(opts.out)
        return f"{opts.out}/{ENGINE_FILE}: TensorRT {info['tensorrt_version']} on {info['gpu_name']}"


class WriteTritonRepo(ExportPass):
    name = "write-triton-repo"

    def run(self, ctx: ExportContext) -> str:
        from .triton import TritonOptions, write_triton_repo

        opts = ctx.options
        repo = write_triton_repo(opts.out, ctx.require("manifest"), opts.triton_repo,
                                 TritonOptions(max_batch_size=opts.trt_batch.max, kind=opts.triton_kind))
        return f"{repo}: " + ", ".join(sorted(p.name for p in repo.iterdir() if p.is_dir()))


def default_passes(options: ExportOptions) -> list[ExportPass]:
    passes: list[ExportPass] = [LoadCheckpoint(), FoldPromptConstants(), BuildGraph()]
    if options.precision == "int8":
        passes.append(QuantizeInt8())
    if options.validate:
        passes.append(Validate())
    passes.append(WriteModelDir())
    if options.engine == "trt":
        passes.append(BuildTensorRTEngine())
    if options.triton_repo is not None:
        passes.append(WriteTritonRepo())
    return passes


def export_model(options: ExportOptions, log: Callable[[str], None] = print) -> ExportContext:
    """Run every pass; returns the context (manifest, validation numbers, pass records)."""
    ctx = ExportContext(options=options, log=log)
    for export_pass in default_passes(options):
        export_pass(ctx)
    return ctx


# helpers -------------------------------------------------------------------------------------------

def cpu_session(model: bytes | str) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def failed_checks(checks: list[OutputCheck], precision: str) -> list[OutputCheck]:
    """fp32 must match eager; reduced precisions are reported and warned about, not failed. The
    top-class outputs are slices of the graph's own outputs and must match them exactly in any precision."""
    inexact_slices = [c for c in checks if c.output.startswith("top_") and c.max_abs_diff > 0]
    if precision != "fp32":
        return inexact_slices
    return inexact_slices + [c for c in checks if c.output in ("logits", "trait_head")
                             and c.max_abs_diff > FP32_LOGIT_TOLERANCE]


def fix_batch(model: onnx.ModelProto, batch: int) -> None:
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = batch


def set_metadata(model: onnx.ModelProto, manifest: Manifest) -> None:
    for entry in list(model.metadata_props):
        if entry.key == METADATA_KEY:
            model.metadata_props.remove(entry)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, manifest.to_json()


def exporter_versions(opset: int) -> dict[str, Any]:
    import torch

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"promptcam": version("promptcam"), "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "torch": torch.__version__, "opset": opset}


def synthetic_pixels(batch: int, size: int, seed: int) -> np.ndarray:
    """Smooth random RGB images (low-frequency noise), deterministic per seed."""
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(batch, 8, 8, 3)).astype(np.uint8)
    return np.stack([cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC) for img in coarse])


def load_calibration(folder: Path, model: PromptCAM, limit: int, batch: int = 8) -> list[np.ndarray]:
    """Calibration images resized like the runtime does, in batches."""
    if not folder.is_dir():
        raise ExportError(f"{folder}: calibration folder not found")
    images = []
    for path in iter_image_files([folder]):
        try:
            images.append(resize_for_model(read_image(path), model.config))
        except ImageError as exc:  # an unreadable calibration image is skipped, not fatal
            print(f"skipping calibration image: {exc}")
        if len(images) >= limit:
            break
    if not images:
        raise ExportError(f"{folder}: no readable images for calibration")
    return [np.stack(images[i:i + batch]) for i in range(0, len(images), batch)]


def validation_batches(ctx: ExportContext) -> list[np.ndarray]:
    opts, cfg = ctx.options, ctx.require("model").config
    sizes = [opts.batch] if opts.batch else [1, opts.validation_batch]
    if ctx.calibration:
        # batch 1, then every calibration image: agreement is measured on real images, not five
        pool = np.concatenate(ctx.calibration)
        if opts.batch:
            whole = [pool[i:i + opts.batch] for i in range(0, len(pool) - opts.batch + 1, opts.batch)]
            return whole or [pool[np.arange(opts.batch) % len(pool)]]
        return [pool[:1], *ctx.calibration]
    return [synthetic_pixels(n, cfg.img_size, seed=n) for n in sizes]
