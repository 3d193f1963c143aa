"""Export: parity with eager, dynamic batch, graph structure, metadata, precisions, bad inputs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from helpers import TINY, official_checkpoint, perturbed_model, project_checkpoint, random_pixels, run_cli
from promptcam.core.errors import ExportError
from promptcam.core.manifest import METADATA_KEY, read_manifest
from promptcam.export.passes import ExportOptions, export_model
from promptcam.export.validate import eager_outputs
from promptcam.models.checkpoint import load_model
from promptcam.models.registry import list_backbones, make_config

QUIET = {"log": lambda _: None}


def _session(model_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("layout", sorted(TINY))
def test_export_matches_eager_at_dynamic_batches(layout: str, tiny_checkpoints, tmp_path) -> None:
    out = tmp_path / "exported"
    export_model(ExportOptions(ckpt=tiny_checkpoints[layout], out=out), **QUIET)
    session, model = _session(out), load_model(tiny_checkpoints[layout])
    size = model.config.img_size
    for batch in (1, 3, 8):
        pixels = random_pixels(batch, size, seed=batch)
        logits, attention = session.run(["logits", "attention"], {"pixels": pixels})
        want_logits, want_attention = eager_outputs(model, pixels)
        assert logits.shape == (batch, model.num_classes)
        assert attention.shape == (batch, model.num_classes, model.config.num_heads, model.config.num_patches)
        assert np.abs(logits - want_logits).max() < 1e-4
        assert np.abs(attention - want_attention).max() < 1e-5
        # the predicted class's slices, as promptcam-run fetches them
        top_class, top_attention = session.run(["top_class", "top_attention"], {"pixels": pixels})
        np.testing.assert_array_equal(top_class, logits.argmax(-1))
        np.testing.assert_array_equal(top_attention, attention[np.arange(batch), top_class])


@pytest.mark.parametrize("arch", list_backbones())
def test_every_registered_backbone_exports(arch: str, tmp_path) -> None:
    """Each registry entry's layout (dim, heads, patch, LayerScale) at depth 2 exports and matches."""
    spec_size = make_config(arch, 2).patch_size * 4
    model = perturbed_model(arch, 3, depth=2, img_size=spec_size)
    ckpt = project_checkpoint(model, tmp_path / "model.pt")
    ctx = export_model(ExportOptions(ckpt=ckpt, out=tmp_path / "out"), **QUIET)
    assert ctx.validation["logits_max_abs_diff"] < 1e-4
    assert ctx.validation["top1_agreement"] == 1.0


def test_graph_structure_skips_prompt_work(tiny_checkpoints, tmp_path) -> None:
    """Blocks 0..L-2 never compute prompt queries/rows; only the last block has prompt rows."""
    out = tmp_path / "exported"
    export_model(ExportOptions(ckpt=tiny_checkpoints["dino"], out=out), **QUIET)
    graph = onnx.load(str(out / "model.onnx")).graph
    depth = load_model(tiny_checkpoints["dino"]).config.depth
    ops = Counter(n.op_type for n in graph.node)
    # two LayerNorms per block + the final one: prompt LayerNorms were folded into constants
    assert ops["LayerNormalization"] == 2 * depth + 1
    assert ops["Softmax"] == depth
    per_block = Counter(n.name.split("/")[0] for n in graph.node if n.op_type == "MatMul")
    for index in range(depth - 1):
        assert per_block[f"block{index}"] == 6  # qkv, q.k, probs.v, proj, fc1, fc2
    assert per_block[f"block{depth - 1}"] == 7  # kv, prompt q.k, probs.v, proj, fc1, fc2, head
    assert not any("prompt_rows" in n.name for n in graph.node if not n.name.startswith(f"block{depth - 1}/"))
    assert [o.name for o in graph.output] == ["logits", "attention", "head_context", "value_mean", "top_class",
                                             "top_attention", "top_head_context"]
    pixels = graph.input[0]
    assert pixels.name == "pixels" and pixels.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert pixels.type.tensor_type.shape.dim[0].dim_param == "batch"


def test_manifest_and_metadata_round_trip(tiny_export) -> None:
    manifest = read_manifest(tiny_export)
    on_disk = json.loads((tiny_export / "manifest.json").read_text())
    model = onnx.load(str(tiny_export / "model.onnx"))
    embedded = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert embedded == on_disk
    cfg = manifest.config
    assert cfg.class_names == [f"class_{i:03d}" for i in range(5)] and cfg.mean == (0.5, 0.5, 0.5)
    assert manifest.inputs["pixels"]["shape"] == ["batch", cfg.img_size, cfg.img_size, 3]
    assert manifest.outputs["attention"]["shape"] == ["batch", 5, cfg.num_heads, cfg.num_patches]
    assert len(manifest.source["sha256"]) == 64
    assert manifest.exporter["opset"] == 17 and manifest.exporter["onnx"] == onnx.__version__
    assert manifest.validation["logits_max_abs_diff"] < 1e-4
    assert {c["batch"] for c in manifest.validation["checks"]} == {1, 4}


def test_official_checkpoint_export_with_classes(tmp_path) -> None:
    model = perturbed_model(**TINY["dinov2"])
    official = official_checkpoint(model, tmp_path / "official.pth")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(f"{i + 1:03d}.Species_{i}" for i in range(model.num_classes)))
    result = run_cli("promptcam-export", "--ckpt", official, "--classes", classes, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(tmp_path / "out")
    assert manifest.config.class_names[0] == "Species 0" and manifest.config.layerscale


def test_fixed_batch(tiny_checkpoints, tmp_path) -> None:
    export_model(ExportOptions(ckpt=tiny_checkpoints["dino"], out=tmp_path / "out", batch=2), **QUIET)
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert read_manifest(tmp_path / "out").inputs["pixels"]["shape"][0] == 2


def test_fp16_keeps_layernorm_and_softmax_fp32(tiny_checkpoints, tmp_path) -> None:
    ctx = export_model(ExportOptions(ckpt=tiny_checkpoints["dino"], out=tmp_path / "out", precision="fp16"), **QUIET)
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    fp16_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert fp16_weights, "fp16 export has no fp16 weights"
    for init in model.graph.initializer:
        if "ln_" in init.name or "norm_" in init.name:
            assert init.data_type == onnx.TensorProto.FLOAT, init.name
    assert ctx.validation["top1_agreement"] == 1.0
    assert ctx.validation["logits_max_abs_diff"] < 1e-2
    # slices of the graph's own outputs: exact in any precision
    assert ctx.validation["top_attention_max_abs_diff"] == ctx.validation["top_head_context_max_abs_diff"] == 0
    assert read_manifest(tmp_path / "out").precision == "fp16"


@pytest.mark.parametrize("layout", sorted(TINY))
def test_fused_attention_matches_eager(layout: str, tiny_checkpoints, tmp_path) -> None:
    """ORT's MultiHeadAttention in blocks 0..L-2 computes the same model (fp32: to rounding)."""
    out = tmp_path / "fused"
    ctx = export_model(ExportOptions(ckpt=tiny_checkpoints[layout], out=out, attention="fused"), **QUIET)
    graph = onnx.load(str(out / "model.onnx"))
    depth = load_model(tiny_checkpoints[layout]).config.depth
    ops = Counter(n.op_type for n in graph.graph.node)
    assert ops["MultiHeadAttention"] == depth - 1
    assert ops["Softmax"] == 1  # only the last block's prompt rows: their probabilities are the explanation
    assert "com.microsoft" in {o.domain for o in graph.opset_import}
    assert ctx.validation["logits_max_abs_diff"] < 1e-4 and ctx.validation["attention_max_abs_diff"] < 1e-5
    assert read_manifest(out).exporter["attention"] == "fused"


def test_attention_defaults_and_conflicts(tiny_checkpoints, tmp_path) -> None:
    ckpt = tiny_checkpoints["dino"]
    assert ExportOptions(ckpt=ckpt, out=tmp_path, precision="fp16").attention == "fused"
    assert ExportOptions(ckpt=ckpt, out=tmp_path, precision="fp16", engine="trt").attention == "onnx"
    assert ExportOptions(ckpt=ckpt, out=tmp_path).attention == "onnx"
    with pytest.raises(ExportError, match="TensorRT cannot parse"):
        ExportOptions(ckpt=ckpt, out=tmp_path, precision="fp16", engine="trt", attention="fused")
    with pytest.raises(ExportError, match="int8 quantisation needs standard ONNX ops"):
        ExportOptions(ckpt=ckpt, out=tmp_path, precision="int8", attention="fused")


def test_onnx_runtime_fuses_gelu(tiny_export, tmp_path) -> None:
    """The MLP's GELU is written in the form ORT fuses (one kernel instead of five element-wise passes)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tiny_export / "model.onnx"), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    depth = read_manifest(tiny_export).config.depth
    assert ops["Gelu"] + ops["BiasGelu"] == depth and ops["Erf"] == 0


def test_int8_dynamic_keeps_prompt_rows_fp32(tiny_checkpoints, tmp_path) -> None:
    ctx = export_model(ExportOptions(ckpt=tiny_checkpoints["dino"], out=tmp_path / "out", precision="int8"), **QUIET)
    model = onnx.load(str(tmp_path / "out" / "model.onnx"))
    depth = load_model(tiny_checkpoints["dino"]).config.depth
    quantized = [n for n in model.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert quantized, "no quantised MatMul"
    last_block = [n.name for n in quantized if n.name.startswith(f"block{depth - 1}/")]
    assert last_block and all("/image_kv/" in name for name in last_block), "prompt rows must stay fp32"
    assert ctx.int8_mode == "dynamic"
    assert ctx.validation["attention_min_correlation"] > 0.99


def test_fp32_validation_failure_writes_nothing(tiny_checkpoints, tmp_path, monkeypatch) -> None:
    """A wrong graph is never written: corrupt one folded constant and the export must fail."""
    from promptcam.export import passes

    real = passes.fold_prompt_constants

    def broken(model):
        folded = real(model)
        folded.blocks[0].prompt_keys = folded.blocks[0].prompt_keys * 1.5
        return folded

    monkeypatch.setattr(passes, "fold_prompt_constants", broken)
    with pytest.raises(ExportError, match="disagrees with eager PyTorch"):
        export_model(ExportOptions(ckpt=tiny_checkpoints["dino"], out=tmp_path / "out"), **QUIET)
    assert not (tmp_path / "out" / "model.onnx").exists()


@pytest.mark.parametrize("case", ["missing", "wrong-format"])
def test_cli_bad_inputs(case: str, tmp_path) -> None:
    ckpt = tmp_path / "model.pt"
    if case == "wrong-format":
        ckpt.write_text("not a checkpoint")
    result = run_cli("promptcam-export", "--ckpt", ckpt, "--out", tmp_path / "out")
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and str(ckpt) in line
    assert "Traceback" not in result.stderr


def test_cli_rejects_bad_options(tiny_checkpoints, tmp_path) -> None:
    result = run_cli("promptcam-export", "--ckpt", tiny_checkpoints["dino"], "--opset", "13")
    assert result.returncode == 1 and "opset must be >= 17" in result.stderr
    result = run_cli("promptcam-export", "--ckpt", tiny_checkpoints["dino"], "--engine", "trt", "--precision", "int8")
    assert result.returncode == 1 and "needs --calib" in result.stderr
