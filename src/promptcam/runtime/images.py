"""Image decoding and resizing with OpenCV (releases the GIL, so worker threads overlap inference).

Every failure is an ``ImageError`` naming the file and the problem; callers turn it into a
per-image failure record.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from promptcam.core.config import ModelConfig
from promptcam.core.errors import ImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
MAX_FILE_BYTES = 512 * 1024 * 1024  # larger files are refused before reading
MAX_PIXELS = 250_000_000  # decoded images above this are refused (decompression bombs)


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB uint8 [H, W, 3], EXIF orientation applied.

    Raises:
        ImageError: zero-byte, too large, unreadable or undecodable files.
    """
    return decode_image(read_file_bytes(path), str(path))


def read_file_bytes(path: str | Path) -> np.ndarray:
    """The raw bytes of an image file as uint8, after the size checks (zero-byte, too large)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc.strerror})") from exc
    if size == 0:
        raise ImageError(f"{path}: zero-byte file")
    if size > MAX_FILE_BYTES:
        raise ImageError(f"{path}: file is {size / 2**20:.0f} MiB, above the {MAX_FILE_BYTES / 2**20:.0f} MiB limit")
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc})") from exc


def decode_image(data: bytes | np.ndarray, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 [H, W, 3] (IMREAD_COLOR applies EXIF orientation)."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    if buf.size == 0:
        raise ImageError(f"{name}: zero-byte file")
    try:
        image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageError(f"{name}: cannot decode image ({str(exc).strip().splitlines()[-1]})") from exc
    if image is None:
        raise ImageError(f"{name}: not a decodable image (corrupt, truncated or unsupported format)")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise ImageError(f"{name}: {image.shape[1]}x{image.shape[0]} pixels is above the {MAX_PIXELS} limit")
    if image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(1, np.iinfo(image.dtype).max))
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def resize_for_model(image: np.ndarray, config: ModelConfig, out: np.ndarray | None = None) -> np.ndarray:
    """Resize RGB uint8 to the model's square input, as the model config says.

    ``bilinear`` uses area averaging when shrinking (antialiased, close to PIL's bilinear filter
    used by torchvision) and bilinear when enlarging. ``out``: a contiguous [S, S, 3] uint8 array
    to write into (a slot of a batch buffer), which is returned.
    """
    size = config.img_size
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        if out is None:
            return np.ascontiguousarray(image)
        out[...] = image
        return out
    shrinking = h > size or w > size
    interpolation = cv2.INTER_AREA if (config.interpolation == "area" or shrinking) else cv2.INTER_LINEAR
    if out is None:
        return cv2.resize(image, (size, size), interpolation=interpolation)
    cv2.resize(image, (size, size), dst=out, interpolation=interpolation)
    return out


def iter_image_files(sources: Iterable[str | Path], skipped: list[Path] | None = None) -> Iterator[Path]:
    """Expand folders (recursively, sorted), list files (one path per line) and single files.

    Non-image files are skipped and appended to ``skipped`` if given. A list file is any file
    ending in ``.txt`` or ``.lst``.
    """
    for source in sources:
        path = Path(source)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield from _keep_image(Path(root) / name, skipped)
        elif path.suffix.lower() in (".txt", ".lst") and path.is_file():
            base = path.parent
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip() and not line.startswith("#"):
                    entry = Path(line.strip())
                    yield from _keep_image(entry if entry.is_absolute() else base / entry, skipped)
        else:
            yield from _keep_image(path, skipped)


def _keep_image(path: Path, skipped: list[Path] | None) -> Iterator[Path]:
    if is_image_path(path):
        yield path
    elif skipped is not None:
        skipped.append(path)
