"""The torch-free core: model config, errors, manifest, tensor IO spec, atomic writes.

Every other layer builds on this one; it imports numpy and the standard library only (no
onnxruntime, onnx, torch or timm), so a field station, the exporter and training share it.
"""

from .config import ModelConfig
from .errors import (
    BackendUnavailableError,
    CheckpointError,
    ConfigError,
    ExportError,
    ImageError,
    ManifestError,
    PromptCamError,
    ValidationError,
)
from .manifest import Manifest, read_manifest

__all__ = [
    "BackendUnavailableError", "CheckpointError", "ConfigError", "ExportError", "ImageError", "Manifest",
    "ManifestError", "ModelConfig", "PromptCamError", "ValidationError", "read_manifest",
]
