"""``manifest.json``: what an exported model directory holds. Written by export, read by the runtime.

The runtime reads image size, mean/std, class names and tensor names from here -- never guesses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptcam.core.config import ModelConfig
from promptcam.core.errors import ManifestError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "promptcam-model"
MANIFEST_VERSION = 1
METADATA_KEY = "promptcam.manifest"  # ONNX metadata_props key holding the same JSON


@dataclass
class Manifest:
    """Description of an exported model directory.

    Attributes:
        config: The model config (single source of truth).
        precision: ``fp32``, ``fp16`` or ``int8``.
        files: Role -> file name (``model``, ``trait_head``, optionally ``engine``).
        inputs / outputs: Tensor name -> {dtype, shape}.
        source: Checkpoint path and sha256.
        exporter: Versions (promptcam, onnx, opset, torch).
        validation: Numbers from the validation pass.
        engine: TensorRT engine facts (TRT version, GPU, batch profile) when one was built.
    """

    config: ModelConfig
    precision: str
    files: dict[str, str]
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    exporter: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "config": self.config.to_dict(),
            "precision": self.precision, "files": self.files, "inputs": self.inputs, "outputs": self.outputs,
            "source": self.source, "exporter": self.exporter, "validation": self.validation,
            "engine": self.engine,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "manifest") -> Manifest:
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"{origin}: not a promptcam model manifest")
        if data.get("version") != MANIFEST_VERSION:
            raise ManifestError(f"{origin}: manifest version {data.get('version')!r} is not supported "
                                f"(this runtime reads version {MANIFEST_VERSION})")
        config = ModelConfig.from_document(data, ("precision", "files"), what="manifest", origin=origin,
                                           error=ManifestError)
        return cls(config=config, precision=data["precision"], files=dict(data["files"]),
                   inputs=data.get("inputs", {}), outputs=data.get("outputs", {}),
                   source=data.get("source", {}), exporter=data.get("exporter", {}),
                   validation=data.get("validation", {}), engine=data.get("engine", {}))

    def write(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / MANIFEST_NAME
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    def file(self, model_dir: str | Path, role: str) -> Path:
        """Path of the file with ``role``; a clear error if the manifest lists none or it is missing."""
        if role not in self.files:
            raise ManifestError(f"{model_dir}: manifest lists no {role!r} file")
        path = Path(model_dir) / self.files[role]
        if not path.is_file():
            raise ManifestError(f"{path}: listed in the manifest as {role!r} but missing")
        return path


def read_manifest(model_dir: str | Path) -> Manifest:
    """Read ``model_dir/manifest.json``."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ManifestError(f"{model_dir}: model directory not found")
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest; export the model with promptcam-export")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: manifest is not valid JSON: {exc}") from exc
    return Manifest.from_dict(data, origin=str(path))
