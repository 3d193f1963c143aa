"""Each export pass on its own (as the pass docstring promises), pass-order errors, and which runtime
engine validation runs on."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from promptcam.core.errors import BackendUnavailableError, ExportError, ValidationError
from promptcam.core.iospec import model_io, trait_head_io
from promptcam.core.manifest import METADATA_KEY, read_manifest
from promptcam.export.constants import FoldedWeights
from promptcam.export.passes import (
    BuildGraph,
    BuildTensorRTEngine,
    ExportContext,
    ExportOptions,
    FoldPromptConstants,
    LoadCheckpoint,
    Validate,
    ValidateTensorRTEngine,
    WriteModelDir,
    WriteTensorRTEngine,
    default_passes,
    validation_engine,
)
from promptcam.models.promptcam import PromptCAM
from promptcam.runtime.cuda import has_nvidia_driver

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA = has_nvidia_driver() and "CUDAExecutionProvider" in ort.get_available_providers()


def _ctx(ckpt, out, **options) -> tuple[ExportContext, list[str]]:
    lines: list[str] = []
    return ExportContext(ExportOptions(ckpt=ckpt, out=out, **options), log=lines.append), lines


def test_each_pass_on_its_own(tiny_checkpoints, tmp_path) -> None:
    out = tmp_path / "out"
    ctx, lines = _ctx(tiny_checkpoints["dino"], out)

    LoadCheckpoint()(ctx)
    assert isinstance(ctx.model, PromptCAM) and ctx.folded is None and ctx.graph is None
    cfg = ctx.model.config

    FoldPromptConstants()(ctx)
    assert isinstance(ctx.folded, FoldedWeights)
    assert ctx.folded.last_prompt_tokens.shape == (cfg.num_classes, cfg.embed_dim)
    assert ctx.graph is None

    BuildGraph()(ctx)
    spec, head_spec = model_io(cfg), trait_head_io(cfg)
    assert tuple(o.name for o in ctx.graph.graph.output) == spec.output_names
    assert tuple(i.name for i in ctx.graph.graph.input) == spec.input_names
    assert tuple(o.name for o in ctx.trait_head.graph.output) == head_spec.output_names
    assert not ctx.validation and not out.exists()

    Validate()(ctx)
    assert ctx.validation["passed"] and ctx.validation["engine"] == "ort-cpu"
    assert "CPUExecutionProvider" in ctx.validation["provider"]
    assert {c["batch"] for c in ctx.validation["checks"]} == {1, 4}
    assert any(line.strip().startswith("PASSED | Output: 'logits'") for line in lines)
    assert not out.exists()  # validation writes nothing

    WriteModelDir()(ctx)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "trait_head.onnx"]
    manifest = read_manifest(out)
    assert (manifest.inputs, manifest.outputs) == spec.to_manifest()
    inputs, outputs = head_spec.to_manifest()
    assert manifest.trait_head_io == {"inputs": inputs, "outputs": outputs}
    assert manifest.validation == ctx.validation
    for name in ("model.onnx", "trait_head.onnx"):
        props = {p.key: p.value for p in onnx.load(str(out / name)).metadata_props}
        assert json.loads(props[METADATA_KEY]) == json.loads((out / "manifest.json").read_text())

    assert [r.name for r in ctx.records] == ["load-checkpoint", "fold-prompt-constants", "build-graph", "validate",
                                             "write-model-dir"]
    assert all(r.seconds >= 0 for r in ctx.records)


@pytest.mark.parametrize(("export_pass", "missing", "producer"), [
    (FoldPromptConstants(), "model", "load-checkpoint"),
    (BuildGraph(), "folded", "fold-prompt-constants"),
    (Validate(), "graph", "build-graph"),
    (WriteModelDir(), "model", "load-checkpoint"),
    (BuildTensorRTEngine(), "manifest", "write-model-dir"),
    (ValidateTensorRTEngine(), "engine_plan", "build-trt-engine"),
])
def test_pass_out_of_order_says_which_pass_first(export_pass, missing: str, producer: str, tiny_checkpoints,
                                                 tmp_path) -> None:
    ctx, _ = _ctx(tiny_checkpoints["dino"], tmp_path / "out")
    with pytest.raises(ExportError, match=f"pass order: '{missing}' is not available yet; run the '{producer}'"):
        export_pass(ctx)
    assert not (tmp_path / "out").exists()


def test_validation_engine_follows_precision_and_target(tiny_checkpoints, tmp_path) -> None:
    def engine(cuda: bool, **options) -> str:
        return validation_engine(ExportOptions(ckpt=tiny_checkpoints["dino"], out=tmp_path, **options), cuda=cuda)[0]

    assert engine(True, precision="fp16") == "ort-cuda"  # an fp16 export is for ORT on a GPU
    assert engine(False, precision="fp16") == "ort-cpu"
    assert engine(True, precision="fp32") == engine(True, precision="int8") == "ort-cpu"
    # a TensorRT export: the ONNX graph on the CPU, then the built plan through TensorRTBackend
    assert engine(True, precision="fp16", engine="trt") == "ort-cpu"
    names = [p.name for p in default_passes(ExportOptions(ckpt=tiny_checkpoints["dino"], out=tmp_path,
                                                          precision="fp16", engine="trt"))]
    assert names[-4:] == ["write-model-dir", "build-trt-engine", "validate-trt-engine", "write-trt-engine"]


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is here: ort-cuda starts")
def test_fp16_validation_without_gpu(tiny_checkpoints, tmp_path) -> None:
    """Asked for ort-cuda on a CPU machine: a clear error; by default the CPU provider is used and said so."""
    ctx, lines = _ctx(tiny_checkpoints["dino"], tmp_path / "out", precision="fp16")
    for export_pass in (LoadCheckpoint(), FoldPromptConstants(), BuildGraph()):
        export_pass(ctx)
    with pytest.raises(BackendUnavailableError, match="ort-cuda: "):
        Validate(engine="ort-cuda")(ctx)
    Validate()(ctx)
    assert ctx.validation["engine"] == "ort-cpu" and ctx.validation["precision"] == "fp16"
    assert ctx.validation["top_attention_max_abs_diff"] == 0 and ctx.validation["passed"]
    assert any("validating on ort-cpu (no CUDA GPU here" in line for line in lines)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the no-TensorRT path cannot be exercised")
def test_engine_validation_without_tensorrt_deletes_the_plan(tiny_checkpoints, tmp_path) -> None:
    """The validate-trt-engine pass runs the plan through the runtime's TensorRTBackend; where that
    cannot start, the unvalidated plan is deleted and the manifest lists no engine."""
    out = tmp_path / "out"
    ctx, _ = _ctx(tiny_checkpoints["dino"], out, precision="fp16", engine="trt")
    for export_pass in default_passes(ctx.options)[:5]:
        export_pass(ctx)
    plan = out / ".tmp-unvalidated.plan"
    plan.write_bytes(b"a plan built elsewhere")
    ctx.engine_plan, ctx.engine_info = plan, {"tensorrt_version": "10.0", "precision": "fp16"}
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        ValidateTensorRTEngine()(ctx)
    assert not plan.exists() and ctx.engine_plan is None
    with pytest.raises(ExportError, match="run the 'build-trt-engine' pass first"):
        WriteTensorRTEngine()(ctx)
    assert "engine" not in read_manifest(out).files and not (out / "model.plan").exists()


def test_write_engine_moves_the_validated_plan(tiny_checkpoints, tmp_path) -> None:
    """write-trt-engine: the validated plan takes its final name and the manifest records it with its numbers."""
    out = tmp_path / "out"
    ctx, _ = _ctx(tiny_checkpoints["dino"], out)
    for export_pass in (LoadCheckpoint(), FoldPromptConstants(), BuildGraph(), WriteModelDir()):
        export_pass(ctx)
    plan = out / ".tmp-validated.plan"
    plan.write_bytes(b"plan")
    ctx.engine_plan, ctx.engine_info = plan, {"tensorrt_version": "10.0", "precision": "fp32"}
    ctx.engine_validation = {"passed": True, "engine": "trt"}
    WriteTensorRTEngine()(ctx)
    manifest = read_manifest(out)
    assert manifest.files["engine"] == "model.plan" and (out / "model.plan").read_bytes() == b"plan"
    assert manifest.engine["validation"] == {"passed": True, "engine": "trt"} and not plan.exists()


def test_validation_batches_fit_the_engine_profile() -> None:
    from promptcam.export.validate import fit_batches

    batches = [np.zeros((1, 2, 2, 3), np.uint8), np.zeros((5, 2, 2, 3), np.uint8)]
    assert [len(b) for b in fit_batches(batches, 1, None)] == [1, 5]
    assert [len(b) for b in fit_batches(batches, 1, 2)] == [1, 2, 2, 1]
    assert [len(b) for b in fit_batches(batches, 2, 4)] == [4]


def test_validation_checks_the_graph_layout_first(tiny_checkpoints, tmp_path) -> None:
    """A graph whose outputs differ from the IO spec is refused before any comparison."""
    ctx, _ = _ctx(tiny_checkpoints["dino"], tmp_path / "out")
    for export_pass in (LoadCheckpoint(), FoldPromptConstants(), BuildGraph()):
        export_pass(ctx)
    dropped = next(o for o in ctx.graph.graph.output if o.name == "top_head_context")
    ctx.graph.graph.output.remove(dropped)
    with pytest.raises(ValidationError, match="differ from the IO spec: 'top_head_context' is missing"):
        Validate()(ctx)
    assert not (tmp_path / "out").exists()
