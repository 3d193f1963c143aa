"""``manifest.json``: what an exported model directory holds. Written by export, read by the runtime.

The runtime reads image size, mean/std and class names from here -- never guesses -- and checks at
load time that the graphs beside it carry the same config in their metadata and have the tensors
``promptcam.core.iospec`` declares for it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptcam.core.atomic import atomic_write_text
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
        inputs / outputs: Tensor name -> {dtype, shape} of ``model.onnx`` (from ``iospec.model_io``).
        trait_head_io: ``{"inputs": ..., "outputs": ...}`` of ``trait_head.onnx`` (``iospec.trait_head_io``).
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
    trait_head_io: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    exporter: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "config": self.config.to_dict(),
            "precision": self.precision, "files": self.files, "inputs": self.inputs, "outputs": self.outputs,
            "trait_head_io": self.trait_head_io, "source": self.source, "exporter": self.exporter,
            "validation": self.validation, "engine": self.engine,
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
        files = data["files"]
        if not isinstance(files, dict):
            raise ManifestError(f"{origin}: manifest 'files' must map roles to file names")
        for role, name in files.items():
            problem = file_name_problem(name)
            if problem:
                raise ManifestError(f"{origin}: files[{role!r}] = {name!r} {problem}")
        return cls(config=config, precision=data["precision"], files=dict(files),
                   inputs=data.get("inputs", {}), outputs=data.get("outputs", {}),
                   trait_head_io=data.get("trait_head_io", {}),
                   source=data.get("source", {}), exporter=data.get("exporter", {}),
                   validation=data.get("validation", {}), engine=data.get("engine", {}))

    def write(self, model_dir: str | Path) -> Path:
        return atomic_write_text(Path(model_dir) / MANIFEST_NAME, self.to_json() + "\n")

    def file(self, model_dir: str | Path, role: str) -> Path:
        """Path of the file with ``role`` inside ``model_dir``.

        Raises:
            ManifestError: the manifest lists no such file, its name is not a plain file name, it
                is a link leading out of the directory, or it is missing.
        """
        if role not in self.files:
            raise ManifestError(f"{model_dir}: manifest lists no {role!r} file")
        name = self.files[role]
        problem = file_name_problem(name)
        if problem:
            raise ManifestError(f"{Path(model_dir) / MANIFEST_NAME}: files[{role!r}] = {name!r} {problem}")
        path = Path(model_dir) / name
        if path.is_symlink() and Path(os.path.realpath(path)).parent != Path(os.path.realpath(model_dir)):
            raise ManifestError(f"{path}: listed in the manifest as {role!r} but a link leading out of {model_dir}")
        if not path.is_file():
            raise ManifestError(f"{path}: listed in the manifest as {role!r} but missing")
        return path


def file_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a manifest file entry (None when it is a plain name inside the directory).

    The runtime joins these names to the model directory: an absolute path, ``..`` or a separator
    would let a manifest load any file on the machine.
    """
    if not isinstance(name, str) or not name:
        return "is not a file name"
    if name in (".", "..") or "/" in name or "\\" in name or "\x00" in name or os.path.isabs(name):
        return "is not a plain file name inside the model directory (no paths, '..' or separators)"
    return None


# config fields whose disagreement between a graph's metadata and manifest.json is worth a sentence each
CONFIG_CHECKS = ("num_classes", "class_names", "img_size", "patch_size", "embed_dim", "depth", "num_heads",
                 "layerscale", "mean", "std", "interpolation", "arch", "mlp_ratio", "norm_eps", "pre_norm", "act")


def manifest_differences(manifest: Manifest, embedded: Manifest, where: str) -> list[str]:
    """Where a graph's embedded manifest (``where``: its file name) disagrees with manifest.json.

    Compares the model config field by field (class names in order) and the precision -- what
    decides how images are fed and what the outputs mean. ``files``, validation and engine facts
    may legitimately differ (an engine is added after the graph is written).
    """
    ours, theirs = manifest.config.to_dict(), embedded.config.to_dict()
    problems = []
    for key in CONFIG_CHECKS:
        if ours.get(key) != theirs.get(key):
            if key == "class_names" and sorted(ours[key]) == sorted(theirs[key]):
                order = next(i for i, (a, b) in enumerate(zip(ours[key], theirs[key], strict=True)) if a != b)
                problems.append(f"class_names are in another order (first at index {order}: manifest.json has "
                                f"{ours[key][order]!r}, {where} has {theirs[key][order]!r})")
            else:
                problems.append(f"{key}: manifest.json has {_short(ours.get(key))}, {where} has "
                                f"{_short(theirs.get(key))}")
    if manifest.precision != embedded.precision:
        problems.append(f"precision: manifest.json has {manifest.precision!r}, {where} has {embedded.precision!r}")
    return problems


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
