"""The field-station runtime: numpy, OpenCV and ONNX Runtime / TensorRT only -- never torch or timm.

The Predictor (and through it onnxruntime) loads lazily, so ``promptcam.runtime.images`` and the
other helpers import with numpy and OpenCV alone.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from promptcam.core.manifest import Manifest, read_manifest

_LAZY = {"ClassScore": "predictor", "Prediction": "predictor", "Predictor": "predictor"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Manifest", "read_manifest", *_LAZY]
