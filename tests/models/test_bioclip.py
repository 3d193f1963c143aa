"""The BioCLIP backbone (``bioclip_vitb16``) against open_clip's own VisionTransformer, and its loading errors.

open_clip is the independent reference: it builds the CLIP ViT-B/16 with random weights
(``pretrained=None``), which are written to a real ``open_clip_pytorch_model.bin`` and loaded
through ``create_model(weights=...)``, the path ``promptcam-train --weights`` takes.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

# before open_clip imports huggingface_hub: these tests never download anything
os.environ["HF_HUB_OFFLINE"] = "1"
open_clip = pytest.importorskip("open_clip", reason="open-clip-torch (the dev extra) is the independent reference")

from test_reference import naive_forward  # noqa: E402

from helpers import perturbed_model, run_cli  # noqa: E402
from promptcam.core.errors import CheckpointError  # noqa: E402
from promptcam.models import create_model  # noqa: E402
from promptcam.models.promptcam import PromptCAM  # noqa: E402

# a small CLIP vision tower for the fast cases: width 64, 2 blocks, 2 heads, 64 px / patch 16
SMALL = dict(embed_dim=64, depth=2, num_heads=2, img_size=64)


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """open_clip initialises LayerNorms to (1, 0): move every 1-D parameter so a mixed-up key would show."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)


def _small_tower(act_layer: type[torch.nn.Module], seed: int = 0, width: int = 64):
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(seed)
    tower = VisionTransformer(image_size=64, patch_size=16, width=width, layers=2, heads=2, mlp_ratio=4.0,
                              output_dim=16, act_layer=act_layer).eval()
    _perturb(tower, seed)
    return tower


def _tokens(model: PromptCAM, images: torch.Tensor, *, explicit: bool) -> torch.Tensor:
    """The backbone alone (no prompts): embed + ln_pre, every block, ln_post -> [B, 1 + N, D]."""
    x = model.embed(images)
    for block in model.blocks:
        x, _ = model.run_block(block, x, need_probs=explicit)
    return model.norm(x)


def _assert_tokens_match(model: PromptCAM, tower: torch.nn.Module, images: torch.Tensor) -> None:
    """open_clip's own forward with ``output_tokens``: the patch tokens after ln_post, and the class token
    after ln_post projected by ``proj`` (the only use of ``proj`` here: to check the class token too)."""
    tower.output_tokens = True
    with torch.no_grad():
        pooled, patch_tokens = tower(images)
        for explicit in (False, True):  # the fused-attention path and the one that returns probabilities
            ours = _tokens(model, images, explicit=explicit)
            torch.testing.assert_close(ours[:, 1:], patch_tokens, atol=1e-5, rtol=0)
            torch.testing.assert_close(ours[:, 0] @ tower.proj, pooled, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("name", "act"), [("ViT-B-16", "gelu"), ("ViT-B-16-quickgelu", "quick_gelu")])
def test_vitb16_tokens_equal_open_clip(name: str, act: str, tmp_path) -> None:
    """Full CLIP ViT-B/16 (text tower included in the file), activation read from open_clip_config.json."""
    torch.manual_seed(0)
    clip = open_clip.create_model(name, pretrained=None).eval()
    _perturb(clip.visual, seed=1)
    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip.state_dict(), weights)
    assert any(not k.startswith("visual.") for k in clip.state_dict()), "the file should carry the text tower"
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": act == "quick_gelu"}}))

    model = create_model("bioclip_vitb16", 3, weights=weights).eval()
    assert model.config.act == act and model.config.pre_norm and model.config.norm_eps == 1e-5
    assert model.config.interpolation == "bicubic" and model.config.num_patches == 196
    _assert_tokens_match(model, clip.visual, torch.randn(1, 3, 224, 224))


def test_visual_tower_alone_from_a_training_checkpoint(tmp_path) -> None:
    """open_clip's visual tower alone, as a DDP training checkpoint ({"state_dict": {"module.…"}}), QuickGELU
    from the preset (no config beside it); and an explicit ``act`` beats open_clip_config.json."""
    from open_clip.transformer import QuickGELU

    tower = _small_tower(QuickGELU)
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tower.state_dict().items()}}, path)
    model = create_model("bioclip_vitb16", 2, weights=path, **SMALL).eval()
    assert model.config.act == "quick_gelu"
    _assert_tokens_match(model, tower, torch.randn(2, 3, 64, 64))

    gelu_tower = _small_tower(torch.nn.GELU, seed=2)
    torch.save(gelu_tower.state_dict(), path)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
    model = create_model("bioclip_vitb16", 2, weights=path, act="gelu", **SMALL).eval()
    assert model.config.act == "gelu"
    _assert_tokens_match(model, gelu_tower, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_prompt_cam_on_clip_matches_naive_reference(act: str) -> None:
    """Prompts after ln_pre, ln_post as the final norm: the model against the step-by-step reference."""
    model = perturbed_model("bioclip_vitb16", 4, seed=3, act=act, **SMALL)
    assert model.patch_embed.proj.bias is None and "norm_pre.weight" in model.state_dict()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, attention = model(images, return_attention=True)
    want_logits, want_attention = naive_forward(model.state_dict(), images, 2, eps=1e-5, act=act)
    torch.testing.assert_close(logits.double(), want_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(attention.double(), want_attention, atol=1e-5, rtol=0)
    # the activation is not cosmetic: the other one gives other logits
    other_act = "gelu" if act == "quick_gelu" else "quick_gelu"
    other, _ = naive_forward(model.state_dict(), images, 2, eps=1e-5, act=other_act)
    assert (other - want_logits).abs().max() > 1e-3


def _full_clip_dict(tower: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A full CLIP state dict: ``visual.*`` plus text-tower keys at the top level (which reuse the
    names ``transformer.resblocks.*``: they must never stand in for vision keys)."""
    state = {f"visual.{k}": v for k, v in tower.state_dict().items()}
    text = {k: v for k, v in tower.state_dict().items() if k.startswith("transformer.")}
    return {**state, **text, "token_embedding.weight": torch.zeros(10, 64), "logit_scale": torch.tensor(1.0)}


@pytest.mark.parametrize("case", ["mixed-missing-visual-key", "text-only", "wrong-size", "wrong-depth", "truncated",
                                  "empty", "not-clip-backbone", "bad-config-json"])
def test_bad_open_clip_files_are_clear_errors(case: str, tmp_path) -> None:
    tower = _small_tower(torch.nn.GELU)
    path = tmp_path / "open_clip_pytorch_model.bin"
    state = _full_clip_dict(tower)
    arch, expect = "bioclip_vitb16", ""
    if case == "mixed-missing-visual-key":
        del state["visual.transformer.resblocks.1.mlp.c_fc.weight"]
        expect = r"misses vision keys \['visual.transformer.resblocks.1.mlp.c_fc.weight'\]"
    elif case == "text-only":
        state = {k: v for k, v in state.items() if not k.startswith("visual.")}
        expect = "no open_clip vision tower"
    elif case == "wrong-size":
        state = _full_clip_dict(_small_tower(torch.nn.GELU, width=96))
        expect = r"key 'cls_token' \(visual.class_embedding in the file\) has shape \(1, 1, 96\), the model expects"
    elif case == "wrong-depth":
        del state["visual.transformer.resblocks.1.ln_1.weight"]
        state = {k.replace("resblocks.1.", "resblocks.2."): v for k, v in state.items()}
        expect = "vision tower has 3 blocks, the model has 2"
    elif case == "not-clip-backbone":
        arch, expect = "vit_micro_patch8", "does not fit backbone 'vit_micro_patch8'"
    torch.save(state, path)
    if case == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        expect = "truncated or not a checkpoint"
    elif case == "empty":
        path.write_bytes(b"")
        expect = "empty"
    elif case == "bad-config-json":
        (tmp_path / "open_clip_config.json").write_text("{not json")
        expect = "not a readable open_clip config"
    overrides = SMALL if arch == "bioclip_vitb16" else {}
    with pytest.raises(CheckpointError, match=expect) as info:
        create_model(arch, 2, weights=path, **overrides)
    assert str(path.parent) in str(info.value)


def test_train_cli_reports_a_truncated_open_clip_file(tmp_path) -> None:
    """``promptcam-train --backbone bioclip_vitb16 --weights BAD``: one error line naming the file."""
    import cv2
    import numpy as np

    for name in ("ant", "bee"):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "data" / "train" / name / "0.png"), np.zeros((8, 8, 3), np.uint8))
    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(_full_clip_dict(_small_tower(torch.nn.GELU)), weights)
    weights.write_bytes(weights.read_bytes()[:1000])
    result = run_cli("promptcam-train", "--data", tmp_path / "data", "--out", tmp_path / "run", "--val-split", "0.5",
                     "--backbone", "bioclip_vitb16", "--weights", weights, "--epochs", "1", "--workers", "0",
                     "--no-progress", timeout=300)
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and str(weights) in line and "truncated" in line
    assert "Traceback" not in result.stderr


def test_config_round_trips_through_the_project_checkpoint(tmp_path) -> None:
    from promptcam.models.checkpoint import load_model, save_checkpoint

    model = perturbed_model("bioclip_vitb16", 3, act="gelu", **SMALL)
    loaded = load_model(save_checkpoint(model, tmp_path / "model.pt"))
    assert loaded.config == model.config and loaded.config.pre_norm and loaded.config.act == "gelu"
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images)[0], model(images)[0], atol=0, rtol=0)


def test_old_configs_load_with_dino_defaults() -> None:
    """Checkpoints and manifests written before pre_norm/act existed read as DINO (no ln_pre, GELU)."""
    from promptcam.core.config import ModelConfig

    old = {k: v for k, v in perturbed_model("vit_micro_patch8", 2).config.to_dict().items()
           if k not in ("pre_norm", "act")}
    config = ModelConfig.from_dict(old)
    assert config.pre_norm is False and config.act == "gelu"


def test_config_rejects_unknown_activation() -> None:
    from promptcam.core.errors import ConfigError
    from promptcam.models.registry import make_config

    with pytest.raises(ConfigError, match="act must be one of"):
        make_config("bioclip_vitb16", 2, act="relu")
    with pytest.raises(ConfigError, match="interpolation must be one of"):
        make_config("bioclip_vitb16", 2, interpolation="lanczos")


def test_bioclip_preset() -> None:
    from promptcam.models.registry import CLIP_MEAN, CLIP_STD, make_config

    config = make_config("bioclip_vitb16", 10)
    shape = (config.img_size, config.patch_size, config.embed_dim, config.depth, config.num_heads)
    assert shape == (224, 16, 768, 12, 12)
    assert config.mean == CLIP_MEAN and config.std == CLIP_STD and config.interpolation == "bicubic"
    assert config.pre_norm and config.act == "quick_gelu" and config.norm_eps == 1e-5


def test_official_format_with_ln_pre_is_refused(tmp_path) -> None:
    """The official {"model_state_dict"} format cannot carry the activation or preprocessing of a CLIP
    backbone: refused by name rather than guessed."""
    from helpers import official_checkpoint
    from promptcam.models.checkpoint import load_model

    path = official_checkpoint(perturbed_model("bioclip_vitb16", 2, **SMALL), tmp_path / "official.pth")
    with pytest.raises(CheckpointError, match="CLIP-style backbone") as info:
        load_model(path)
    assert str(path) in str(info.value)
