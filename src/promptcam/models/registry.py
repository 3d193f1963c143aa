"""Backbone presets: a small table, one row per registered backbone (timm-style, no magic)."""

from __future__ import annotations

from dataclasses import dataclass

from promptcam.core.config import OFFICIAL_MEAN, OFFICIAL_STD, ModelConfig
from promptcam.core.errors import ConfigError


@dataclass(frozen=True)
class BackboneSpec:
    """Architecture of one backbone and where its pretrained weights come from."""

    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    layerscale: bool
    timm_name: str | None  # timm pretrained name; None for backbones the project trains itself


BACKBONES: dict[str, BackboneSpec] = {
    # DINO ViT-B/16: timm vit_base_patch16_224.dino layout, 196 patches.
    "dino_vitb16": BackboneSpec(224, 16, 768, 12, 12, False, "vit_base_patch16_224.dino"),
    # DINOv2 ViT-B/14 at 224 px as in Prompt-CAM: pos_embed 257 tokens, LayerScale ls1/ls2.
    "dinov2_vitb14": BackboneSpec(224, 14, 768, 12, 12, True, "vit_base_patch14_dinov2.lvd142m"),
    "dino_vits16": BackboneSpec(224, 16, 384, 12, 6, False, "vit_small_patch16_224.dino"),
    "dinov2_vits14": BackboneSpec(224, 14, 384, 12, 6, True, "vit_small_patch14_dinov2.lvd142m"),
    # Small sizes for tests and the offline synthetic world (no pretrained weights exist).
    "vit_tiny_patch16": BackboneSpec(224, 16, 192, 12, 3, False, "vit_tiny_patch16_224.augreg_in21k"),
    "vit_micro_patch8": BackboneSpec(64, 8, 128, 4, 4, False, None),
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
        mean=OFFICIAL_MEAN, std=OFFICIAL_STD,
    )
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**fields)  # type: ignore[arg-type]
