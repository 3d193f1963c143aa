"""The exporter as an ordered list of named passes (Polygraphy style).

load-checkpoint -> fold-prompt-constants -> build-graph -> [quantize-int8] -> validate
-> write-model-dir -> [build-trt-engine -> validate-trt-engine -> write-trt-engine] -> [write-triton-repo]

Each pass is small, logs its name, seconds and output size, and can be run on its own: build an
``ExportContext`` and call the passes in order (``run_passes``); a pass whose input is missing
says which pass produces it. Validation runs the graph through the runtime's own backend on the
engine the export is for (ORT CUDA for an fp16 export where a GPU is, the built TensorRT plan).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from promptcam.core.atomic import atomic_write_with, file_sha256
from promptcam.core.errors import BackendUnavailableError, ValidationError
from promptcam.core.iospec import BATCH_DIM, model_io, shape_mismatches, trait_head_io
from promptcam.core.manifest import Manifest
from promptcam.models.checkpoint import load_model, read_class_names
from promptcam.runtime.backends.base import Backend
from promptcam.runtime.backends.onnxruntime import OrtBackend
from promptcam.runtime.cuda import has_nvidia_driver

from .constants import fold_prompt_constants
from .context import (
    ENGINE_FILE,
    MODEL_FILE,
    PRECISIONS,
    TRAIT_HEAD_FILE,
    ExportContext,
    ExportOptions,
    ExportPass,
    PassRecord,
)
from .graph import build_promptcam_graph, build_trait_head_graph
from .inputs import (
    exporter_versions,
    fix_batch,
    load_calibration,
    set_metadata,
    synthetic_pixels,
    synthetic_pool,
)
from .tensorrt import build_engine
from .validate import AGREEMENT_WARNING, FP32_TOLERANCE, OutputCheck, fit_batches, summarize, validate_backend

# re-exported: the export API is ExportOptions + export_model, and tests drive passes one by one
__all__ = ["PRECISIONS", "ExportContext", "ExportOptions", "ExportPass", "PassRecord", "default_passes", "export_model",
           "run_passes", "synthetic_pixels", "synthetic_pool", "validation_engine"]


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
        from .quantize import quantize_pass

        return quantize_pass(ctx, validation_batches(ctx)) + f": {_size(ctx.graph)}"


class CheckInt8Gates(ExportPass):
    """Top-1 and attention agreement of the int8 graph with float32: below the gates nothing is
    written (``ValidationError``), unless ``force``, which the manifest records."""

    name = "int8-gates"

    def run(self, ctx: ExportContext) -> str:
        from .quantize import gates_pass

        return gates_pass(ctx)


class WriteInt8Report(ExportPass):
    name = "write-int8-report"

    def run(self, ctx: ExportContext) -> str:
        from .quantize import write_report_pass

        return write_report_pass(ctx)


class Validate(ExportPass):
    """The exported graph through the runtime's ORT backend, on the engine the export is for, vs eager.

    Args:
        engine: Force a runtime engine (``ort-cpu``, ``ort-cuda``); None: ``validation_engine`` picks.
    """

    name = "validate"

    def __init__(self, engine: str | None = None) -> None:
        self.engine = engine

    def run(self, ctx: ExportContext) -> str:
        opts = ctx.options
        graph = ctx.require("graph").SerializeToString()
        engine, why = (self.engine, "asked for") if self.engine else validation_engine(opts)
        try:
            backend = OrtBackend(graph, engine, fp16=opts.precision == "fp16")
        except BackendUnavailableError as exc:
            if self.engine or engine == "ort-cpu":
                raise
            ctx.log(f"WARNING: cannot validate on {engine} ({exc}); validating on ort-cpu instead")
            engine, why = "ort-cpu", f"{engine} could not start"
            backend = OrtBackend(graph, engine)
        with backend:
            ctx.validation = check_against_eager(ctx, backend, f"{engine} ({why})")
        ctx.validation |= {"engine": engine, "provider": backend.description}
        return (f"{engine}: logits max_abs={ctx.validation['logits_max_abs_diff']:.2e}, top1 agreement="
                f"{ctx.validation['top1_agreement']:.1%}, attention corr>="
                f"{ctx.validation['attention_min_correlation']:.4f}")


class WriteModelDir(ExportPass):
    name = "write-model-dir"

    def run(self, ctx: ExportContext) -> str:
        opts, model = ctx.options, ctx.require("model")
        graph, trait_head = ctx.require("graph"), ctx.require("trait_head")
        opts.out.mkdir(parents=True, exist_ok=True)
        cfg = model.config
        inputs, outputs = model_io(cfg, opts.batch or BATCH_DIM).to_manifest()
        head_inputs, head_outputs = trait_head_io(cfg).to_manifest()
        ctx.manifest = Manifest(
            config=cfg, precision=opts.precision,
            files={"model": MODEL_FILE, "trait_head": TRAIT_HEAD_FILE},
            inputs=inputs, outputs=outputs, trait_head_io={"inputs": head_inputs, "outputs": head_outputs},
            source={"checkpoint": str(opts.ckpt), "sha256": file_sha256(opts.ckpt)},
            exporter=exporter_versions(opts.opset) | {"int8_mode": ctx.int8_mode, "attention": opts.attention},
            validation=ctx.validation,
        )
        for proto, name in ((graph, MODEL_FILE), (trait_head, TRAIT_HEAD_FILE)):
            set_metadata(proto, ctx.manifest)
            atomic_write_with(opts.out / name, lambda tmp, proto=proto: onnx.save(proto, str(tmp)))
        ctx.manifest.write(opts.out)
        return f"{opts.out}/{MODEL_FILE} ({(opts.out / MODEL_FILE).stat().st_size / 2**20:.1f} MiB), manifest.json"


class BuildTensorRTEngine(ExportPass):
    """Builds the plan beside the model under a temporary name; ``write-trt-engine`` moves it into place."""

    name = "build-trt-engine"

    def run(self, ctx: ExportContext) -> str:
        opts, manifest = ctx.options, ctx.require("manifest")
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".plan", dir=opts.out)
        os.close(fd)
        plan = Path(tmp)
        try:
            info = build_engine(opts.out / MODEL_FILE, plan, img_size=manifest.config.img_size,
                                profile=opts.trt_batch, timing_cache=opts.timing_cache or opts.out / "timing.cache")
        except BaseException:
            plan.unlink(missing_ok=True)
            raise
        ctx.engine_plan, ctx.engine_info = plan, info | {"precision": opts.precision}
        return f"{plan.stat().st_size / 2**20:.1f} MiB plan: TensorRT {info['tensorrt_version']} on {info['gpu_name']}"


class ValidateTensorRTEngine(ExportPass):
    """The built plan through the runtime's ``TensorRTBackend`` vs eager, with the ``validate`` gates.

    A failing plan is deleted: the model directory keeps the validated ONNX model and no engine.
    """

    name = "validate-trt-engine"

    def run(self, ctx: ExportContext) -> str:
        from promptcam.runtime.backends.tensorrt import TensorRTBackend

        plan, info = ctx.require("engine_plan"), ctx.require("engine_info")
        try:
            with TensorRTBackend(plan, info) as backend:
                ctx.engine_validation = check_against_eager(
                    ctx, backend, "trt (the built plan)", "the engine was deleted; the validated ONNX model stays")
        except BaseException:
            plan.unlink(missing_ok=True)
            ctx.engine_plan = None
            raise
        ctx.engine_validation["engine"] = "trt"
        return (f"logits max_abs={ctx.engine_validation['logits_max_abs_diff']:.2e}, top1 agreement="
                f"{ctx.engine_validation['top1_agreement']:.1%}")


class WriteTensorRTEngine(ExportPass):
    name = "write-trt-engine"

    def run(self, ctx: ExportContext) -> str:
        opts, manifest = ctx.options, ctx.require("manifest")
        os.replace(ctx.require("engine_plan"), opts.out / ENGINE_FILE)
        ctx.engine_plan = None
        manifest.engine = ctx.require("engine_info") | {"validation": ctx.engine_validation}
        manifest.files["engine"] = ENGINE_FILE
        manifest.write(opts.out)
        return f"{opts.out}/{ENGINE_FILE}, manifest.json"


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
    if options.precision == "int8":
        passes.append(CheckInt8Gates())
    passes.append(WriteModelDir())
    if options.precision == "int8":
        passes.append(WriteInt8Report())
    if options.engine == "trt":
        passes.append(BuildTensorRTEngine())
        if options.validate:
            passes.append(ValidateTensorRTEngine())
        passes.append(WriteTensorRTEngine())
    if options.triton_repo is not None:
        passes.append(WriteTritonRepo())
    return passes


def export_model(options: ExportOptions, log: Callable[[str], None] = print) -> ExportContext:
    """Run every pass; returns the context (manifest, validation numbers, pass records)."""
    return run_passes(ExportContext(options=options, log=log), default_passes(options))


def run_passes(ctx: ExportContext, passes: list[ExportPass]) -> ExportContext:
    """Run ``passes`` in order on ``ctx`` (a test may run a few, or one, on a context it built)."""
    for export_pass in passes:
        export_pass(ctx)
    return ctx


# helpers -------------------------------------------------------------------------------------------

def cpu_session(model: bytes | str) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def failed_checks(checks: list[OutputCheck], precision: str) -> list[OutputCheck]:
    """The checks that fail their gate (``validate.tolerance_factor``): fp32 logits, attention and trait
    head beyond ``validate.FP32_FACTORS`` of their scale; top-class outputs that are not exact slices of
    the graph's own outputs, in any precision. Reduced precisions are otherwise reported and warned about."""
    return [c for c in checks if c.passed is False]


def validation_engine(options: ExportOptions, *, cuda: bool | None = None) -> tuple[str, str]:
    """The runtime engine an export's ONNX graph is validated on, and why.

    Args:
        options: The export's options (precision and target engine decide).
        cuda: Whether ORT's CUDA provider and an NVIDIA driver are here (None: look).

    Returns:
        ``(engine, reason)``: ``ort-cuda`` for an fp16 export for ONNX Runtime where a GPU is,
        else ``ort-cpu`` (a TensorRT export's plan is validated after it is built).
    """
    if options.precision == "fp16" and options.engine is None:
        if cuda is None:
            cuda = "CUDAExecutionProvider" in ort.get_available_providers() and has_nvidia_driver()
        if cuda:
            return "ort-cuda", "an fp16 export runs on ONNX Runtime CUDA"
        return "ort-cpu", "no CUDA GPU here: the fp16 graph is checked on the CPU provider"
    if options.engine == "trt":
        return "ort-cpu", "the graph TensorRT builds from; the plan is validated once built"
    return "ort-cpu", f"{options.precision} reference on the CPU provider"


def check_against_eager(ctx: ExportContext, backend: Backend, what: str,
                        consequence: str = "nothing was written") -> dict[str, Any]:
    """Validate ``backend`` against the eager model on the validation batches; raise if a gate fails.

    Logs one PASSED/FAILED line per output and batch; returns the numbers for the manifest.
    ``consequence`` ends the error message (what the failure left on disk).
    """
    opts, model = ctx.options, ctx.require("model")
    layout = shape_mismatches(model_io(model.config), backend.tensors())
    if layout:
        raise ValidationError(f"{what}: the graph's tensors differ from the IO spec: " + "; ".join(layout))
    batches = fit_batches(validation_batches(ctx), backend.min_batch, backend.max_batch)
    if not batches:
        raise ValidationError(f"{what}: no validation batch fits batch sizes {backend.min_batch}..{backend.max_batch}")
    trait_head = cpu_session(ctx.require("trait_head").SerializeToString())
    checks = validate_backend(backend, trait_head, model, batches, opts.precision)
    ctx.log(f"    validating on {what}")
    for check in checks:
        ctx.log("    " + check.line())
    failures = failed_checks(checks, opts.precision)
    if failures:
        raise ValidationError(
            f"exported graph on {what} disagrees with eager PyTorch beyond tolerance (fp32: max_abs <= "
            f"{FP32_TOLERANCE:g} x max(1, max|reference|) on logits; top-class outputs: exact slices); {consequence}:"
            "\n  " + "\n  ".join(c.line() for c in failures))
    summary = summarize(checks) | {"precision": opts.precision}
    agreement = summary["top1_agreement"]
    if agreement is not None and agreement < AGREEMENT_WARNING:
        ctx.log(f"WARNING: {opts.precision} top-1 agreement with fp32 eager is {agreement:.1%} "
                f"(< {AGREEMENT_WARNING:.0%}); check accuracy on your own validation images")
    return summary


def validation_batches(ctx: ExportContext) -> list[np.ndarray]:
    """The images validation (and the int8 search) run on: batch 1 plus real calibration images when
    given; else synthetic ones, five for fp32/fp16 (numerical equivalence), ``int8_synthetic_images``
    for int8 (agreement of answers, which five images cannot measure)."""
    opts, cfg = ctx.options, ctx.require("model").config
    if ctx.calibration:
        pool = np.concatenate(ctx.calibration)
    elif opts.precision == "int8":
        pool = synthetic_pool(opts.int8_synthetic_images, cfg.img_size)
    else:
        sizes = [opts.batch] if opts.batch else [1, opts.validation_batch]
        return [synthetic_pixels(n, cfg.img_size, seed=n) for n in sizes]
    if opts.batch:
        whole = [pool[i:i + opts.batch] for i in range(0, len(pool) - opts.batch + 1, opts.batch)]
        return whole or [pool[np.arange(opts.batch) % len(pool)]]
    # batch 1 (the dynamic axis at its smallest), then every image in batches of eight
    return [pool[:1], *(pool[i:i + 8] for i in range(0, len(pool), 8))]
