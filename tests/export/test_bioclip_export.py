"""Export of a BioCLIP-layout model (ln_pre, no patch bias, QuickGELU or GELU, CLIP mean/std, bicubic).

The backbone weights come from a real open_clip vision tower (reduced to 2 blocks of width 64 so the
exports take seconds; the full ViT-B/16 backbone parity is in ``tests/models/test_bioclip.py``).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # open_clip never downloads here
open_clip = pytest.importorskip("open_clip", reason="open-clip-torch (the dev extra) builds the reference tower")

from helpers import random_pixels, run_cli  # noqa: E402
from promptcam.core.manifest import read_manifest  # noqa: E402
from promptcam.export.passes import ExportOptions, export_model  # noqa: E402
from promptcam.export.validate import eager_outputs  # noqa: E402
from promptcam.models import create_model  # noqa: E402
from promptcam.models.checkpoint import load_model, save_checkpoint  # noqa: E402

QUIET = {"log": lambda _: None}
SMALL = dict(embed_dim=64, depth=2, num_heads=2, img_size=64)


def _clip_checkpoint(root: Path, act: str) -> Path:
    """open_clip tower -> open_clip_pytorch_model.bin -> create_model(weights=...) -> project model.pt."""
    from open_clip.transformer import QuickGELU, VisionTransformer

    torch.manual_seed(0)
    tower = VisionTransformer(image_size=64, patch_size=16, width=64, layers=2, heads=2, mlp_ratio=4.0,
                              output_dim=16, act_layer=QuickGELU if act == "quick_gelu" else torch.nn.GELU)
    with torch.no_grad():
        for p in tower.parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.dim() == 1 else 0.02))
    root.mkdir(parents=True, exist_ok=True)
    weights = root / "open_clip_pytorch_model.bin"
    torch.save({f"visual.{k}": v for k, v in tower.state_dict().items()} | {"logit_scale": torch.tensor(4.6)},
               weights)
    model = create_model("bioclip_vitb16", 5, weights=weights, act=act, **SMALL).eval()
    with torch.no_grad():  # prompts and head as after training: not their init
        model.vpt.prompt_embeddings.normal_(0, 0.5)
        model.head.weight.normal_(0, 0.5)
    return save_checkpoint(model, root / "model.pt")


@pytest.fixture(scope="module")
def clip_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bioclip")
    return {act: _clip_checkpoint(root / act, act) for act in ("quick_gelu", "gelu")}


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_fp32_export_matches_eager(act: str, clip_checkpoints, tmp_path) -> None:
    out = tmp_path / "out"
    ctx = export_model(ExportOptions(ckpt=clip_checkpoints[act], out=out), **QUIET)
    model = load_model(clip_checkpoints[act])
    config = read_manifest(out).config
    assert config == model.config and config.pre_norm and config.act == act and config.interpolation == "bicubic"
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        pixels = random_pixels(batch, 64, seed=batch)
        logits, attention = session.run(["logits", "attention"], {"pixels": pixels})
        want_logits, want_attention = eager_outputs(model, pixels)
        assert np.abs(logits - want_logits).max() < 1e-4
        assert np.abs(attention - want_attention).max() < 1e-5
    assert ctx.validation["top1_agreement"] == 1.0


def test_graph_has_ln_pre_and_quick_gelu(clip_checkpoints, tmp_path) -> None:
    """One LayerNorm more than DINO (ln_pre), and QuickGELU written in the form ORT fuses."""
    out = tmp_path / "out"
    export_model(ExportOptions(ckpt=clip_checkpoints["quick_gelu"], out=out), **QUIET)
    ops = Counter(n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node)
    depth = SMALL["depth"]
    assert ops["LayerNormalization"] == 2 * depth + 2  # ln_1, ln_2 per block, ln_pre, ln_post
    assert ops["Erf"] == 0 and ops["Sigmoid"] == depth
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out / "model.onnx"), options, providers=["CPUExecutionProvider"])
    fused = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    assert fused["QuickGelu"] == depth and fused["Sigmoid"] == 0


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precisions_export_and_validate(precision: str, clip_checkpoints, tmp_path) -> None:
    """fp16 and int8 pass the exporter's own validation gates (it writes nothing when they fail)."""
    out = tmp_path / "out"
    ctx = export_model(ExportOptions(ckpt=clip_checkpoints["quick_gelu"], out=out, precision=precision), **QUIET)
    assert (out / "model.onnx").is_file() and read_manifest(out).precision == precision
    assert ctx.validation["top1_agreement"] >= 0.75
    assert ctx.validation["attention_min_correlation"] > 0.98


def test_runtime_predicts_with_bicubic_preprocessing(clip_checkpoints, tmp_path) -> None:
    """The torch-free Predictor reads the CLIP config from the manifest and matches eager on a resized image."""
    import cv2

    from promptcam.models.preprocess import normalize_pixels
    from promptcam.runtime.predictor import Predictor

    out = tmp_path / "out"
    export_model(ExportOptions(ckpt=clip_checkpoints["gelu"], out=out), **QUIET)
    image = random_pixels(1, 40, seed=7)[0]  # smaller than 64 px: enlarged bicubically
    with Predictor(out, engine="ort-cpu") as predictor:
        prediction = predictor.predict([image], top_k=5)[0]
        resized, _ = predictor.prepare(image)
    np.testing.assert_array_equal(resized, cv2.resize(image, (64, 64), interpolation=cv2.INTER_CUBIC))
    model = load_model(clip_checkpoints["gelu"])
    with torch.no_grad():
        logits, _ = model(normalize_pixels(resized, model.config))
    np.testing.assert_allclose(prediction.logits, logits[0].numpy(), atol=1e-4, rtol=0)
    assert prediction.top1.index == int(logits.argmax())


def test_convert_and_export_clis_work_unchanged(clip_checkpoints, tmp_path) -> None:
    """``promptcam-convert`` (re-saving a project model.pt) and ``promptcam-export`` on a model trained
    from open_clip weights: the CLIP fields travel into the manifest."""
    converted = tmp_path / "converted.pt"
    result = run_cli("promptcam-convert", clip_checkpoints["quick_gelu"], "-o", converted)
    assert result.returncode == 0, result.stderr
    result = run_cli("promptcam-export", "--ckpt", converted, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    config = read_manifest(tmp_path / "out").config
    assert config.arch == "bioclip_vitb16" and config.pre_norm and config.act == "quick_gelu"
    assert config.norm_eps == 1e-5 and config.interpolation == "bicubic"


@pytest.mark.slow
def test_full_vitb16_from_open_clip_exports(tmp_path) -> None:
    """The full-size backbone: open_clip ViT-B-16-quickgelu weights -> Prompt-CAM (200 classes) -> fp32 ONNX
    that the exporter validates against eager PyTorch."""
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)
    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip.state_dict(), weights)
    model = create_model("bioclip_vitb16", 200, weights=weights).eval()
    ckpt = save_checkpoint(model, tmp_path / "model.pt")
    ctx = export_model(ExportOptions(ckpt=ckpt, out=tmp_path / "out", validation_batch=2), **QUIET)
    assert ctx.validation["passed"] and ctx.validation["top1_agreement"] == 1.0
    assert ctx.validation["logits_max_abs_diff"] < 1e-3
