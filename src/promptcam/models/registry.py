"""Backbone presets: a small table, one row per registered backbone (timm-style, no magic)."""

from __future__ import annotations

from dataclasses import dataclass

from promptcam.core.config import OFFICIAL_MEAN, OFFICIAL_STD, ModelConfig
from promptcam.core.errors import ConfigError

# OpenAI CLIP's preprocessing, kept by OpenCLIP and BioCLIP (bicubic resize).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class BackboneSpec:
    """Architecture of one backbone, its preprocessing and where its pretrained weights come from."""

    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    layerscale: bool
    timm_name: str | None  # timm pretrained name; None for backbones without timm weights
    pre_norm: bool = False  # CLIP's ln_pre (and a bias-free patch embedding)
    act: str = "gelu"
    norm_eps: float = 1e-6
    mean: tuple[float, float, float] = OFFICIAL_MEAN
    std: tuple[float, float, float] = OFFICIAL_STD
    interpolation: str = "bilinear"


def _clip_vit(img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int, act: str) -> BackboneSpec:
    """An OpenCLIP ``VisionTransformer``: ln_pre, LayerNorm eps 1e-5, CLIP mean/std, bicubic resize.
    Weights come from an open_clip checkpoint file (``weights=``), see ``models.openclip``."""
    return BackboneSpec(img_size, patch_size, embed_dim, depth, num_heads, False, None, pre_norm=True, act=act,
                        norm_eps=1e-5, mean=CLIP_MEAN, std=CLIP_STD, interpolation="bicubic")


BACKBONES: dict[str, BackboneSpec] = {
    # DINO ViT-B/16: timm vit_base_patch16_224.dino layout, 196 patches.
    "dino_vitb16": BackboneSpec(224, 16, 768, 12, 12, False, "vit_base_patch16_224.dino"),
    # DINOv2 ViT-B/14 at 224 px as in Prompt-CAM: pos_embed 257 tokens, LayerScale ls1/ls2.
    "dinov2_vitb14": BackboneSpec(224, 14, 768, 12, 12, True, "vit_base_patch14_dinov2.lvd142m"),
    "dino_vits16": BackboneSpec(224, 16, 384, 12, 6, False, "vit_small_patch16_224.dino"),
    "dinov2_vits14": BackboneSpec(224, 14, 384, 12, 6, True, "vit_small_patch14_dinov2.lvd142m"),
    # Small sizes for tests and the offline synthetic world (no pretrained weights exist).
    # BioCLIP (CLIP ViT-B/16 on TreeOfLife-10M). It was fine-tuned from OpenAI CLIP, whose weights
    # open_clip always runs with QuickGELU; an open_clip_config.json next to the weights overrides.
    "bioclip_vitb16": _clip_vit(224, 16, 768, 12, 12, act="quick_gelu"),
    "vit_tiny_patch16": BackboneSpec(224, 16, 192, 12, 3, False, "vit_tiny_patch16_224.augreg_in21k"),
    "vit_micro_patch8": BackboneSpec(64, 8, 128, 4, 4, False, None),
    # The demo's stand-in for DINO: 8 heads give each class's prompt 8 chances to find its trait.
    "vit_micro_patch8_h8": BackboneSpec(64, 8, 128, 4, 8, False, None),
    "vit_micro_patch14_ls": BackboneSpec(56, 14, 64, 2, 2, True, None),
}


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def get_backbone(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; registered: {', '.join(list_backbones())}") from None


def make_config(
    arch: str,
    num_classes: int,
    class_names: list[str] | None = None,
    **overrides: object,
) -> ModelConfig:
    """A ``ModelConfig`` from a registered backbone; ``None`` overrides are ignored (CLI defaults).

    Args:
        arch: Registered backbone name.
        num_classes: Number of classes / prompts per layer.
        class_names: Optional class names (default ``class_000`` ...).
        **overrides: Any ``ModelConfig`` field, e.g. ``img_size=112`` or ``depth=2`` for tests.

    Returns:
        The config.
    """
    spec = get_backbone(arch)
    fields = dict(
        arch=arch, img_size=spec.img_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim,
        depth=spec.depth, num_heads=spec.num_heads, layerscale=spec.layerscale,
        num_classes=num_classes, class_names=list(class_names or []),
        pre_norm=spec.pre_norm, act=spec.act, norm_eps=spec.norm_eps, mean=spec.mean, std=spec.std,
        interpolation=spec.interpolation,
    )
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**fields)  # type: ignore[arg-type]
