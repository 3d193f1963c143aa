"""The pictures the page shows: cached thumbnails, browser-ready photos, and heatmaps computed on demand.

Only paths stored in the review database (copied from the results) are ever opened; the server
looks them up by item id. Thumbnails and on-demand heatmaps are written once into the cache
folder (atomically, named by a hash of the item key) and served from there afterwards.
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
from promptcam.runtime.images import check_dimensions, decode_image, read_file_bytes, read_image

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


def thumbnail(path: str, cache: Path, name: str) -> Path:
    """A small JPEG of ``path``, made on first request and cached (``ImageError`` when unreadable)."""
    target = cache / name
    if target.is_file():
        return target
    data = read_file_bytes(path)
    check_dimensions(data, path)  # a decompression bomb is refused before any decode, reduced or not
    # libjpeg's DCT scaling decodes a 12 MP photo at 1/4 size for a fraction of a full decode
    small = cv2.imdecode(data, cv2.IMREAD_REDUCED_COLOR_4) if Path(path).suffix.lower() in (".jpg", ".jpeg") else None
    if small is None or min(small.shape[:2]) < THUMB_SIZE // 2:
        small = cv2.cvtColor(decode_image(data, path), cv2.COLOR_RGB2BGR)
    cache.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(target, encode_jpeg(shrink(small, THUMB_SIZE)), durable=False)


def display_photo(path: str, cache: Path, name: str) -> Path:
    """The photo itself when a browser shows its format, else a cached JPEG copy."""
    if Path(path).suffix.lower() in BROWSER_SUFFIXES:
        return Path(path)
    target = cache / name
    if not target.is_file():
        rgb = shrink(read_image(path), DISPLAY_SIZE)
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
        rgb = shrink(read_image(path), DISPLAY_SIZE)
        with self._lock:
            prediction = self.predictor.predict([rgb], classes=[class_index])[0]
        cache.mkdir(parents=True, exist_ok=True)
        return atomic_write_bytes(target, encode_jpeg(overlay(rgb, prediction.attention_mean(class_index)), 88),
                                  durable=False)

    def close(self) -> None:
        self.predictor.close()
