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


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    scale = max(0.35, tile.shape[1] / 400)
    cv2.putText(tile, text, (4, int(18 * scale) + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 2, cv2.LINE_AA)
    cv2.putText(tile, text, (4, int(18 * scale) + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return tile


def contact_sheet(image_rgb: np.ndarray, head_maps: np.ndarray, heads: Sequence[int], *, tile: int = 224) -> np.ndarray:
    """One small overlay per trait head, side by side, labelled ``head h``."""
    h, w = image_rgb.shape[:2]
    scale = tile / max(h, w)
    small = cv2.resize(image_rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    tiles = [_label(overlay(small, head_maps[head]), f"head {head}") for head in heads]
    return np.concatenate(tiles, axis=1)


def write_image(path: Path, bgr: np.ndarray, quality: int = 90) -> Path:
    """Write a JPEG/PNG atomically and durably (a unique short temp name beside it, fsync, rename), so
    two writers never share a temp file and a name near the 255-byte limit still works."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix or ".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError(f"{path}: could not encode heatmap")
    return atomic_write_bytes(path, data.tobytes())
