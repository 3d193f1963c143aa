"""int8 exports keep the answer and the explanation, or write nothing (issues 20 and 12 item 3).

Quality is measured on weights at the scale of trained checkpoints (logits of about ±40), never
only on random initialisation, where int8 looks perfect.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from helpers import official_checkpoint, run_cli
from promptcam.benchmarks.checkpoints import real_scale_model
from promptcam.core.errors import ExportError, ValidationError
from promptcam.core.manifest import read_manifest
from promptcam.export import passes
from promptcam.export.gates import FLAT_MAP_SPREAD, FLAT_MAP_TOLERANCE, Int8Gates, map_correlation
from promptcam.export.passes import ExportOptions, export_model, run_passes, synthetic_pixels
from promptcam.export.validate import compare, eager_outputs
from promptcam.models.checkpoint import load_model, save_checkpoint

QUIET = dict(log=lambda _: None)
GATED = ("top1_agreement", "attention_mean_correlation", "attention_min_correlation")


@pytest.fixture(scope="module")
def vitb_real_scale(tmp_path_factory) -> Path:
    """Official layout, ViT-B width (768, 12 heads, 16 px patches, 224 px), C = 200, every parameter
    group perturbed, logits of about ±40; 4 blocks instead of 12 to keep the test short."""
    model = real_scale_model("dino_vitb16", 200, depth=4)
    return official_checkpoint(model, tmp_path_factory.mktemp("vitb") / "vitb_depth4.pth")


@pytest.fixture(scope="module")
def micro_real_scale(tmp_path_factory) -> Path:
    """The micro backbone at real scale (logits ±40): for the refusal tests, which need no ViT-B."""
    return save_checkpoint(real_scale_model("vit_micro_patch8", 16), tmp_path_factory.mktemp("micro") / "model.pt")


class NaiveInt8(passes.ExportPass):
    """A deliberately broken quantisation: ONNX Runtime's dynamic quantizer on every MatMul, the
    last block's prompt rows, the head and the attention-probability products included."""

    name = "naive-int8"

    def run(self, ctx: passes.ExportContext) -> str:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as tmp:
            onnx.save(ctx.require("graph"), f"{tmp}/fp32.onnx")
            quantize_dynamic(f"{tmp}/fp32.onnx", f"{tmp}/int8.onnx", op_types_to_quantize=["MatMul"],
                             weight_type=QuantType.QInt8)
            ctx.graph = onnx.load(f"{tmp}/int8.onnx")
        ctx.int8_mode = "dynamic"
        return "every MatMul int8"


def _broken_export(ckpt: Path, out: Path, *, force: bool) -> passes.ExportContext:
    ctx = passes.ExportContext(options=ExportOptions(ckpt=ckpt, out=out, precision="int8", force=force), **QUIET)
    return run_passes(ctx, [passes.LoadCheckpoint(), passes.FoldPromptConstants(), passes.BuildGraph(), NaiveInt8(),
                            passes.Validate(), passes.CheckInt8Gates(), passes.WriteModelDir()])


def _held_out(model_dir: Path, ckpt: Path, pixels: np.ndarray) -> dict[str, float]:
    """The written model on images neither calibration nor validation saw, against eager float32."""
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, attention = session.run(["logits", "attention"], {"pixels": pixels})
    want_logits, want_attention = eager_outputs(load_model(ckpt), pixels)
    lg = compare("logits", len(pixels), logits, want_logits)
    at = compare("attention", len(pixels), attention, want_attention)
    return {"top1_agreement": lg.top1_agreement, "attention_mean_correlation": at.mean_correlation,
            "attention_min_correlation": at.min_correlation, "max_abs_logit": float(np.abs(want_logits).max())}


def test_real_scale_vit_b_int8_meets_gates(vitb_real_scale, tmp_path) -> None:
    """Without --calib the search and the gates see 33 synthetic images (batch 1 and 32 of coarse to
    fine detail: five, as before, let a plan pass that flipped 1 in 8 answers on other images).
    Measured here: all 4 blocks in int8 with SmoothQuant meet the gates (top-1 1.0, worst map 0.959),
    and 16 held-out images agree too. On other CPUs the plan may differ; what must hold is that
    whatever is written meets the gates, on the validation images and on images it never saw."""
    out = tmp_path / "out"
    ctx = export_model(ExportOptions(ckpt=vitb_real_scale, out=out, precision="int8"), **QUIET)
    assert ctx.validation["images"] == 33
    gates = Int8Gates()
    assert not gates.failures(ctx.validation), ctx.validation
    assert ctx.validation["top1_agreement"] >= 0.99 and ctx.validation["attention_min_correlation"] >= 0.9
    manifest = read_manifest(out)
    record = manifest.validation["int8_gates"]
    assert record["passed"] and not record["forced"] and record["failed"] == []
    assert record["measured"]["attention_min_correlation"] == ctx.validation["attention_min_correlation"]
    report = json.loads((out / "int8_report.json").read_text())
    assert (out / "int8_report.md").read_text().startswith("# int8 report")
    assert report["int8_blocks"], "an int8 export with no int8 block"
    chosen = report["chosen"]
    assert chosen["passed"] and chosen["int8_blocks"] == report["int8_blocks"]
    if report["fp32_blocks"]:  # a smaller plan is chosen only when all-int8 was measured to fail
        assert not report["trials"][0]["passed"] and report["trials"][0]["label"] == "all int8"
        assert set(report["sensitivity"]) == {f"block{b}" for b in range(4)}
    graph = onnx.load(str(out / "model.onnx"))
    int8_nodes = [n.name for n in graph.graph.node if n.op_type == "DynamicQuantizeMatMul"]
    assert {int(n.split("/")[0].removeprefix("block")) for n in int8_nodes} == set(report["int8_blocks"])
    # the per-layer report: every candidate MatMul; int8 ones carry quantisation error, float32 ones before
    # the first int8 block carry none
    layers = report["layers"]
    assert len(layers) == 3 * 4 + 1  # qkv, proj, fc1, fc2 of blocks 0-2 and the last block's image k/v
    assert {e["matmul"] for e in layers if e["int8"]} == set(report["int8_matmuls"])
    first_int8 = min(report["int8_blocks"])
    assert all(e["rel_error"] > 1e-3 for e in layers if e["int8"])
    assert all(e["rel_error"] < 1e-4 for e in layers if e["block"] < first_int8)
    # images the export never saw: the answer still agrees and the maps stay close
    held_out = _held_out(out, vitb_real_scale, synthetic_pixels(16, 224, seed=123))
    print("real-scale ViT-B (4 blocks) int8:", report["plan"], {k: round(ctx.validation[k], 5) for k in GATED},
          "held-out:", {k: round(v, 5) for k, v in held_out.items()})
    assert held_out["max_abs_logit"] > 20  # the scale of trained checkpoints, where naive int8 broke
    assert held_out["attention_mean_correlation"] >= 0.99 and held_out["attention_min_correlation"] >= 0.9
    assert held_out["top1_agreement"] >= 15 / 16  # at most one near tie among 200 classes flips


def test_trained_demo_static_int8_keeps_the_explanation(trained_world, tmp_path) -> None:
    """Issue 12 item 3: static int8 with --calib on the trained demo model.

    Measured (this machine, the demo recipe's model, seed 0): on the 49 validation/calibration
    images top-1 agreement 1.0 and attention correlation 0.99992 mean / 0.9979 worst map; on 256
    held-out images, every block in int8, 0.99969 mean and 0.971 worst single map over every class
    and head (the attention-probability MatMuls stay float32: int8 steps of 1/255 on probabilities
    of ~1/(C+T) had erased the maps, worst 0.48). 829 held-out maps are flat (a head whose row went
    to the [cls] and prompt tokens: ~1e-10 varying by ~1e-13); Pearson of those is float noise (one
    read 0.88), so they must match in absolute terms instead (2.4e-6 measured), as export
    validation judges them. On the maps with spread the issue's own target, a worst map >= 0.9, is
    what is asserted.
    """
    from promptcam.runtime.images import iter_image_files, read_image, resize_for_model

    calib = trained_world["world"] / "val"
    out = tmp_path / "int8"
    ctx = export_model(ExportOptions(ckpt=trained_world["ckpt"], out=out, precision="int8", calib=calib,
                                     calib_limit=48), **QUIET)
    assert ctx.int8_mode == "static"
    assert ctx.validation["images"] == 49  # batch 1 + all 48 calibration images
    assert not Int8Gates().failures(ctx.validation), ctx.validation
    assert read_manifest(out).validation["int8_gates"]["passed"]
    # held out: 256 validation images after the 48 used for calibration
    config = load_model(trained_world["ckpt"]).config
    files = list(iter_image_files([calib]))[48:304]
    assert len(files) >= 64
    pixels = np.stack([resize_for_model(read_image(p), config) for p in files])
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, attention = session.run(["logits", "attention"], {"pixels": pixels})
    want_logits, want_attention = eager_outputs(load_model(trained_world["ckpt"]), pixels)
    spread = want_attention.std(-1)
    # a map without spread (a head that gave its row to the [cls] and prompt tokens) has no Pearson
    # correlation to speak of: float noise, anything in [-1, 1]; it must match in absolute terms
    flat = spread < FLAT_MAP_SPREAD
    corr = map_correlation(attention, want_attention, flat)  # [B, C, heads]
    top = want_logits.argmax(-1)
    top_maps = corr[np.arange(len(files)), top]
    structured = corr[~flat]
    flat_diff = float(np.abs(attention - want_attention).max(-1)[flat].max()) if flat.any() else 0.0
    low = (corr < 0.9) & ~flat
    print(f"demo static int8 ({ctx.int8_report['plan']}):", {k: round(ctx.validation[k], 5) for k in GATED},
          f"held-out ({len(files)} images): top-1 {float((logits.argmax(-1) == top).mean()):.4f}, maps with spread "
          f"{structured.mean():.5f} mean / {structured.min():.5f} worst, predicted-class maps "
          f"{top_maps.min():.5f} worst, {int(low.sum())} maps < 0.9 (their spread <= "
          f"{spread[low].max() if low.any() else 0:.2e}, median map {np.median(spread):.2e}); "
          f"{int(flat.sum())} flat maps (spread < {FLAT_MAP_SPREAD:g}), max |diff| {flat_diff:.2e}")
    assert (logits.argmax(-1) == top).mean() >= 0.98
    assert structured.mean() >= 0.99
    assert top_maps.min() >= 0.95  # the explanation the runtime shows
    assert structured.min() >= 0.9  # every class's and head's map, on images the calibration never saw
    assert flat_diff <= FLAT_MAP_TOLERANCE  # flat in fp32, flat in int8
    dynamic = export_model(ExportOptions(ckpt=trained_world["ckpt"], out=tmp_path / "dyn", precision="int8",
                                         calib=calib, calib_limit=48, int8_mode="dynamic"), **QUIET)
    assert dynamic.int8_mode == "dynamic" and dynamic.validation["int8_gates"]["passed"]


def test_broken_quantisation_is_refused_and_writes_nothing(micro_real_scale, tmp_path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValidationError, match=r"misses its quality gates.*nothing was written") as info:
        _broken_export(micro_real_scale, out, force=False)
    assert "top-1 agreement" in str(info.value) and "< gate 0.99 (short by" in str(info.value)
    assert not out.exists()


def test_force_writes_records_and_warns_at_load(micro_real_scale, tmp_path, capfd) -> None:
    from promptcam.runtime.predictor import Predictor

    out = tmp_path / "out"
    ctx = _broken_export(micro_real_scale, out, force=True)
    record = read_manifest(out).validation["int8_gates"]
    assert record["forced"] and not record["passed"] and record["failed"]
    assert record["measured"]["top1_agreement"] == ctx.validation["top1_agreement"] < 0.99
    capfd.readouterr()
    Predictor(out, "ort-cpu").backend.close()
    err = capfd.readouterr().err
    assert "exported with --force" in err and "top-1 agreement" in err


def test_cli_gate_flags_and_force(micro_real_scale, tmp_path) -> None:
    out = tmp_path / "out"
    # no int8 graph correlates perfectly with float32: an impossible gate must refuse
    result = run_cli("promptcam-export", "--ckpt", micro_real_scale, "--out", out, "--precision", "int8",
                     "--gate-attention-min", "1.0", "--no-int8-search")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "attention correlation (worst map)" in result.stderr and "nothing was written" in result.stderr
    assert not out.exists()
    result = run_cli("promptcam-export", "--ckpt", micro_real_scale, "--out", out, "--precision", "int8",
                     "--gate-attention-min", "1.0", "--no-int8-search", "--force")
    assert result.returncode == 0, result.stderr[-2000:]
    record = read_manifest(out).validation["int8_gates"]
    assert record["forced"] and record["gates"]["attention_min"] == 1.0
    result = run_cli("promptcam-export", "--ckpt", micro_real_scale, "--precision", "int8", "--gate-top1", "1.5")
    assert result.returncode == 1 and "gate top1 must be in [0, 1]" in result.stderr


def test_gates_name_the_shortfall() -> None:
    gates = Int8Gates(top1=0.99, attention_mean=0.99, attention_min=0.9)
    numbers = {"top1_agreement": 0.95, "attention_mean_correlation": 0.995, "attention_min_correlation": 0.5}
    assert gates.failures(numbers) == ["top-1 agreement 0.9500 < gate 0.99 (short by 0.0400)",
                                       "attention correlation (worst map) 0.5000 < gate 0.9 (short by 0.4000)"]
    assert gates.failures({**numbers, "top1_agreement": 0.99, "attention_min_correlation": 0.9}) == []
    with pytest.raises(ExportError, match="attention_min"):
        Int8Gates(attention_min=-0.1)


def test_bench_rows_carry_int8_quality_on_real_scale_weights(tmp_path) -> None:
    """promptcam-bench: every comparable row has top-1 and attention agreement, on random-init weights
    and on a real-scale checkpoint of the same architecture."""
    result = run_cli("promptcam-bench", "--quick", "--batch", "2", "--iters", "1", "--warmup", "0", "--e2e-images", "0",
                     "--backends", "eager-official,ort-cpu-fp32,ort-cpu-int8", "--real-scale-backends",
                     "ort-cpu-fp32,ort-cpu-int8", "--real-size-frames", "0", "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    scaled = data["real_scale"]
    assert {r["backend"] for r in scaled["rows"]} == {"ort-cpu-fp32", "ort-cpu-int8"}
    for row in data["rows"] + scaled["rows"]:
        assert row["top1_agreement"] is not None and 0 <= row["attention_min_correlation"] <= 1, row
    int8 = next(r for r in scaled["rows"] if r["backend"] == "ort-cpu-int8")
    assert int8["speedup_vs_eager_official"] > 0
    assert "gates" in scaled["backends"]["ort-cpu-int8"]  # the plan and the gate verdict are in the report
    assert float(scaled["model"].split("max |logit| ")[1].rstrip(")")) > 20
    table = (tmp_path / "bench.md").read_text()
    assert "## Real-scale weights" in table and "| ort-cpu-int8 | 2 |" in table


def _micro_graph(ckpt: Path) -> tuple[onnx.ModelProto, int]:
    from promptcam.export.constants import fold_prompt_constants
    from promptcam.export.graph import build_promptcam_graph

    model = load_model(ckpt)
    return build_promptcam_graph(fold_prompt_constants(model)), model.config.depth


def test_smoothquant_folding_keeps_the_float32_function(micro_real_scale) -> None:
    from promptcam.export.int8 import calibrate, find_targets, smooth_model

    graph, depth = _micro_graph(micro_real_scale)
    targets = find_targets(graph, depth)
    pixels = synthetic_pixels(4, 64, seed=5)
    stats = calibrate(graph, targets, [pixels])
    smoothed = smooth_model(graph, targets, stats.channel_absmax, 0.5)
    changed = {i.name for i in graph.graph.initializer} & {t.weight for t in targets if t.role in ("qkv", "fc1")}
    before = {i.name: onnx.numpy_helper.to_array(i) for i in graph.graph.initializer if i.name in changed}
    after = {i.name: onnx.numpy_helper.to_array(i) for i in smoothed.graph.initializer if i.name in changed}
    assert all(not np.allclose(before[n], after[n]) for n in changed), "SmoothQuant moved nothing"

    def run(model: onnx.ModelProto) -> list[np.ndarray]:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(["logits", "attention"], {"pixels": pixels})

    (logits, attention), (want_logits, want_attention) = run(smoothed), run(graph)
    assert np.abs(logits - want_logits).max() <= 1e-4 * np.abs(want_logits).max()
    assert np.abs(attention - want_attention).max() <= 1e-4 * np.abs(want_attention).max()


def test_static_int8_for_tensorrt_has_symmetric_activations(micro_real_scale) -> None:
    """TensorRT reads QDQ int8 with zero point 0 only; ONNX Runtime runs the same graph."""
    from promptcam.export.quantize import search_int8

    graph, depth = _micro_graph(micro_real_scale)
    calib = [synthetic_pixels(8, 64, seed=s) for s in (21, 22)]
    result = search_int8(graph, depth=depth, mode="static", batches=calib, gates=Int8Gates(), calibration=calib,
                         signed_activations=True, search=False, **QUIET)
    zeros = {i.name: onnx.numpy_helper.to_array(i) for i in result.model.graph.initializer
             if i.name.endswith("_a_zero")}
    assert zeros and all(z.dtype == np.int8 and z == 0 for z in zeros.values())
    quantize_nodes = [n for n in result.model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize_nodes) == len(zeros)
    print("micro real-scale static int8 (symmetric):", asdict_short(result.chosen))
    assert result.chosen.attention_min_correlation > 0.9


def asdict_short(trial) -> dict[str, float]:  # noqa: ANN001
    return {k: round(getattr(trial, k), 5) for k in GATED}
