"""The one model config that travels checkpoint -> ONNX metadata / manifest -> runtime.

Torch-free on purpose: the runtime reads it from ``manifest.json`` without PyTorch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

# Official Prompt-CAM preprocessing: Resize((224, 224)) bilinear, mean = std = 0.5.
OFFICIAL_MEAN = (0.5, 0.5, 0.5)
OFFICIAL_STD = (0.5, 0.5, 0.5)
INTERPOLATIONS = ("bilinear", "area", "bicubic")
ACTIVATIONS = ("gelu", "quick_gelu")


def default_class_names(num_classes: int) -> list[str]:
    """``class_000``, ``class_001``, ... for checkpoints that come without names."""
    return [f"class_{i:03d}" for i in range(num_classes)]


@dataclass
class ModelConfig:
    """Everything needed to rebuild a Prompt-CAM model and to feed it images.

    Attributes:
        arch: Registry name of the backbone (``dino_vitb16``, ``dinov2_vitb14``, ``vit_tiny_patch16`` ...).
        img_size: Square input size in pixels the model was trained at.
        patch_size: Patch size of the patch embedding.
        embed_dim: Token width D.
        depth: Number of transformer blocks L.
        num_heads: Attention heads per block.
        num_classes: Number of classes C (= number of prompts per layer).
        class_names: One name per class, in logit order.
        layerscale: Whether blocks have LayerScale (DINOv2).
        mlp_ratio: MLP hidden width / D.
        norm_eps: LayerNorm epsilon.
        mean: Per-channel RGB mean applied after scaling pixels to [0, 1].
        std: Per-channel RGB std.
        interpolation: How images are resized to ``img_size`` (``bilinear``, ``area`` or ``bicubic``).
        pre_norm: A LayerNorm on the embedded tokens before the first block (CLIP's ``ln_pre``); the
            patch embedding then has no bias. Prompts enter after it.
        act: MLP activation, ``gelu`` (exact, erf) or ``quick_gelu`` (``x * sigmoid(1.702 x)``, OpenAI CLIP).
    """

    arch: str
    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    layerscale: bool = False
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    mean: tuple[float, float, float] = OFFICIAL_MEAN
    std: tuple[float, float, float] = OFFICIAL_STD
    interpolation: str = "bilinear"
    pre_norm: bool = False
    act: str = "gelu"

    def __post_init__(self) -> None:
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        if not self.class_names:
            self.class_names = default_class_names(self.num_classes)
        self.class_names = [str(n) for n in self.class_names]
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first inconsistent field."""
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(self.class_names) != self.num_classes:
            raise ConfigError(
                f"{len(self.class_names)} class names given for {self.num_classes} classes"
            )
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError("class names are not unique")
        if self.img_size % self.patch_size:
            raise ConfigError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean/std must be 3 values with std > 0, got {self.mean}/{self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"act must be one of {ACTIVATIONS}, got {self.act!r}")

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """N, the number of image patches."""
        return self.grid_size**2

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict, rejecting unknown or missing keys by name."""
        if not isinstance(data, dict):
            raise ConfigError(f"model config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys: {unknown}")
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ConfigError(f"model config is missing keys: {missing}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid model config: {exc}") from exc

    @classmethod
    def from_document(cls, data: dict[str, Any], required: tuple[str, ...], *, what: str, origin: str,
                      error: type[Exception]) -> ModelConfig:
        """The ``config`` of a saved document (checkpoint, manifest) after checking its required entries.

        Errors are raised as ``error`` and name ``origin`` and the missing entry or bad field.
        """
        for key in ("config", *required):
            if key not in data:
                raise error(f"{origin}: {what} has no {key!r} entry")
        try:
            return cls.from_dict(data["config"])
        except ConfigError as exc:
            raise error(f"{origin}: {exc}") from exc
