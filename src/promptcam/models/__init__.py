"""Prompt-CAM model, config, registry and checkpoints.

``ModelConfig``, the registry and the errors are torch-free; the model and checkpoint helpers
import torch and timm, so they load lazily (the runtime imports this package without torch).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from promptcam.core.config import ModelConfig
from promptcam.core.errors import (
    BackendUnavailableError,
    CheckpointError,
    ConfigError,
    ExportError,
    ImageError,
    ManifestError,
    PromptCamError,
    ValidationError,
)

from .registry import BACKBONES, list_backbones, make_config

_LAZY = {
    "PromptCAM": "promptcam",
    "create_model": "factory",
    "load_model": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "rank_trait_heads": "blur",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKBONES", "BackendUnavailableError", "CheckpointError", "ConfigError", "ExportError", "ImageError",
    "ManifestError", "ModelConfig", "PromptCamError", "ValidationError", "list_backbones", "make_config",
    *_LAZY,
]
