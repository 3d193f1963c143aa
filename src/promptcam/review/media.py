"""The pictures the page shows: cached thumbnails, browser-ready photos, and heatmaps computed on demand.

Only paths stored in the review database (copied from the results) are ever opened; the server
looks them up by item id. Thumbnails and on-demand heatmaps are written once into the cache
folder (atomically, named by a hash of the item key) and served from there afterwards.

Every photo is decoded as the runtime decodes its inputs: the header checked first (no decompression
bomb is decoded), a JPEG at the largest DCT reduction that still covers the size wanted, and the
decode holding its pixels in the process-wide ``DECODE_BUDGET``, so concurrent thumbnail requests of
large photos wait for each other instead of taking the server's memory.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from promptcam.core.atomic import atomic_write_bytes
from promptcam.core.errors import ImageError
from promptcam.runtime.heatmap import overlay
from promptcam.runtime.images import (
    DECODE_BUDGET,
    check_dimensions,
    decode_image,
    is_jpeg,
    read_file_bytes,
    reduced_size,
)
from promptcam.runtime.video import VideoError, sample_frames

THUMB_SIZE = 256
DISPLAY_SIZE = 2048  # photos the browser cannot show (TIFF) are converted to a JPEG this wide at most
BROWSER_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"})
MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".gif": "image/gif", ".bmp": "image/bmp"}


def cache_name(item: Mapping[str, Any], kind: str) -> str:
    """The cache file of one picture of an item: changes when the photo on disk does (a rerun overwrote it)."""
    try:
        st = os.stat(item["image"]) if item["image"] else None
    except OSError:
        st = None
    stamp = f"{st.st_size}:{st.st_mtime_ns}" if st is not None else "-"
    digest = hashlib.sha256(f"{item['key']}\x00{stamp}".encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"{digest}.{kind}.jpg"


def encode_jpeg(bgr: np.ndarray, quality: int = 85) -> bytes:
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError("could not encode JPEG")
    return data.tobytes()


def shrink(rgb: np.ndarray, longest: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = longest / max(h, w)
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def jpeg_reduction(width: int, height: int, longest: int) -> int:
    """The largest JPEG DCT reduction (8, 4, 2, else 1) whose long side still reaches ``longest`` pixels."""
    return next((r for r in (8, 4, 2) if max(width, height) / r >= longest), 1)


def decode_photo(path: str, longest: int) -> np.ndarray:
    """The photo at ``path`` as RGB, its long side at most ``longest`` (``ImageError`` when unreadable).

    A JPEG decodes at ``jpeg_reduction`` (libjpeg scales in the DCT domain: 1/8 of a 48 MP photo is a
    fraction of the work and memory of a full decode); other formats decode whole. The decode holds
    its pixels in ``DECODE_BUDGET`` until it is shrunk, so the full-size array is counted while it lives.
    """
    data = read_file_bytes(path)
    width, height = check_dimensions(data, path)  # a decompression bomb is refused before any decode
    reduction = jpeg_reduction(width, height, longest) if is_jpeg(data) else 1
    decoded_width, decoded_height = reduced_size(width, height, reduction)
    with DECODE_BUDGET.hold(decoded_width * decoded_height):
        return shrink(decode_image(data, path, reduction=reduction, header=(width, height)), longest)


def thumbnail(path: str, cache: Path, name: str) -> Path:
    """A small JPEG of ``path``, made on first request and cached (``ImageError`` when unreadable)."""
    target = cache / name
    if target.is_file():
        return target
    small = decode_photo(path, THUMB_SIZE)
    cache.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(target, encode_jpeg(cv2.cvtColor(small, cv2.COLOR_RGB2BGR)), durable=False)


def clip_still(path: str, cache: Path, name: str, longest: int = THUMB_SIZE) -> Path:
    """A JPEG of a clip's first frame (a blank clip has no strip to show), decoded by the runtime's
    bounded video reader; cached (``ImageError`` when the clip is unreadable)."""
    target = cache / name
    if target.is_file():
        return target
    _, frames = sample_frames(path, max_frames=1)
    try:
        first = next(frames)
    except StopIteration:
        raise VideoError(f"{path}: no frame decodes") from None
    finally:
        frames.close()  # releases the capture
    cache.mkdir(parents=True, exist_ok=True)
    small = shrink(first.rgb, longest)
    return atomic_write_bytes(target, encode_jpeg(cv2.cvtColor(small, cv2.COLOR_RGB2BGR)), durable=False)


def display_photo(path: str, cache: Path, name: str) -> Path:
    """The photo itself when a browser shows its format, else a cached JPEG copy."""
    if Path(path).suffix.lower() in BROWSER_SUFFIXES:
        return Path(path)
    target = cache / name
    if not target.is_file():
        rgb = decode_photo(path, DISPLAY_SIZE)
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, encode_jpeg(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), 90), durable=False)
    return target


class Explainer:
    """Any class's heatmap on demand ("why not this class?"), from the ``Predictor`` of ``--model``."""

    def __init__(self, model_dir: Path, engine: str = "auto") -> None:
        from promptcam.runtime import Predictor

        self.predictor = Predictor(model_dir, engine, batch_size=1)
        manifest = Path(model_dir).resolve() / "manifest.json"
        # cached maps are named by model too: another --model never shows this one's maps
        self.tag = hashlib.sha256(f"{manifest}:{manifest.stat().st_mtime_ns}".encode()).hexdigest()[:12]
        self._lock = threading.Lock()  # one inference at a time: the page asks for one map per click

    @property
    def class_names(self) -> list[str]:
        return self.predictor.class_names

    def heatmap(self, path: str, class_index: int, cache: Path, name: str) -> Path:
        """Overlay of class ``class_index``'s head-mean attention on the photo (cached)."""
        target = cache / name
        if target.is_file():
            return target
        rgb = decode_photo(path, DISPLAY_SIZE)
        with self._lock:
            prediction = self.predictor.predict([rgb], classes=[class_index])[0]
        cache.mkdir(parents=True, exist_ok=True)
        return atomic_write_bytes(target, encode_jpeg(overlay(rgb, prediction.attention_mean(class_index)), 88),
                                  durable=False)

    def close(self) -> None:
        self.predictor.close()
