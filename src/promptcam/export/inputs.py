"""What the export passes feed and stamp on a graph: synthetic and calibration images, the batch and
metadata of an ONNX model, and the versions of the tools that exported it."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from promptcam.core.errors import ExportError, ImageError
from promptcam.core.manifest import METADATA_KEY, Manifest
from promptcam.models.promptcam import PromptCAM
from promptcam.runtime.images import iter_image_files, read_image, resize_for_model


def fix_batch(model: onnx.ModelProto, batch: int) -> None:
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = batch


def set_metadata(model: onnx.ModelProto, manifest: Manifest) -> None:
    for entry in list(model.metadata_props):
        if entry.key == METADATA_KEY:
            model.metadata_props.remove(entry)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, manifest.to_json()


def exporter_versions(opset: int) -> dict[str, Any]:
    import torch

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"promptcam": version("promptcam"), "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "torch": torch.__version__, "opset": opset}


def synthetic_pixels(batch: int, size: int, seed: int, coarse: int = 8) -> np.ndarray:
    """Smooth random RGB images (bicubic-upsampled ``coarse`` x ``coarse`` noise), deterministic per seed."""
    import cv2

    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, size=(batch, coarse, coarse, 3)).astype(np.uint8)
    return np.stack([cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC) for img in grid])


def synthetic_pool(count: int, size: int, seed: int = 0) -> np.ndarray:
    """``count`` synthetic images from coarse (large blobs) to fine (texture) detail, interleaved, so
    any prefix mixes every kind."""
    grids = (4, 8, 16, 32)
    kinds = [synthetic_pixels(-(-count // len(grids)), size, seed=seed * 101 + g, coarse=g) for g in grids]
    return np.stack([kinds[i % len(grids)][i // len(grids)] for i in range(count)])


def load_calibration(folder: Path, model: PromptCAM, limit: int, batch: int = 8) -> list[np.ndarray]:
    """Calibration images resized like the runtime does, in batches."""
    if not folder.is_dir():
        raise ExportError(f"{folder}: calibration folder not found")
    images = []
    for path in iter_image_files([folder]):
        try:
            images.append(resize_for_model(read_image(path), model.config))
        except ImageError as exc:  # an unreadable calibration image is skipped, not fatal
            print(f"skipping calibration image: {exc}")
        if len(images) >= limit:
            break
    if not images:
        raise ExportError(f"{folder}: no readable images for calibration")
    return [np.stack(images[i:i + batch]) for i in range(0, len(images), batch)]
