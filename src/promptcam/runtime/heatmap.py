"""Heatmap overlays: attention upsampled to the original image, colour-mapped and blended (OpenCV)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from promptcam.core.atomic import atomic_write_bytes
from promptcam.core.errors import ImageError


def normalise_map(attention: np.ndarray) -> np.ndarray:
    """Min-max scale a map to [0, 1] (a flat map becomes zeros)."""
    a = attention.astype(np.float32)
    span = float(a.max() - a.min())
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)


def overlay(image_rgb: np.ndarray, attention: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """Blend a [grid, grid] attention map over an RGB image; returns BGR uint8 of the image's size."""
    h, w = image_rgb.shape[:2]
    heat = cv2.resize(normalise_map(attention), (w, h), interpolation=cv2.INTER_CUBIC)
    colour = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    return cv2.addWeighted(colour, alpha, bgr, 1 - alpha, 0)


def thumbnail(image_rgb: np.ndarray, tile: int) -> np.ndarray:
    """The image with its longest side ``tile`` pixels (area-averaged when shrinking)."""
    h, w = image_rgb.shape[:2]
    scale = tile / max(h, w)
    return cv2.resize(image_rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def caption(tile: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Write text lines at the top of a tile, white on a darkened band (readable on any heatmap)."""
    scale = max(0.3, tile.shape[1] / 520)
    step = int(20 * scale) + 4
    band = tile[: step * len(lines) + step // 2]
    band[:] = (band * 0.45).astype(np.uint8)
    for row, text in enumerate(lines):
        cv2.putText(tile, text, (4, step * (row + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return tile


def contact_sheet(image_rgb: np.ndarray, head_maps: np.ndarray, heads: Sequence[int], *, tile: int = 224) -> np.ndarray:
    """One small overlay per trait head, side by side, labelled ``head h``."""
    small = thumbnail(image_rgb, tile)
    return np.concatenate([caption(overlay(small, head_maps[head]), [f"head {head}"]) for head in heads], axis=1)


def write_image(path: Path, bgr: np.ndarray, quality: int = 90) -> Path:
    """Write a JPEG/PNG atomically and durably (a unique short temp name beside it, fsync, rename), so
    two writers never share a temp file and a name near the 255-byte limit still works."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix or ".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError(f"{path}: could not encode heatmap")
    return atomic_write_bytes(path, data.tobytes())
