"""Image decoding and resizing with OpenCV (releases the GIL, so worker threads overlap inference).

Every failure is an ``ImageError`` naming the file and the problem; callers turn it into a
per-image failure record.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from promptcam.core.config import ModelConfig
from promptcam.core.errors import ImageError

from . import fastjpeg
from .imageheader import JPEG_MAX_MARKERS, image_dimensions

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
MAX_FILE_BYTES = 512 * 1024 * 1024  # larger files are refused before reading
MAX_PIXELS = 250_000_000  # images declaring more are refused from their header (decompression bombs)
# a progressive JPEG has about 10 scans; each one more is a decode pass over every block of the photo, for
# a dozen bytes (a 40 kB file of 3000 scans decoded for 30 s): more are refused from a walk of the markers
MAX_JPEG_SCANS = 64
_SCAN_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # in a scan's data: FF 00 and RSTn are data, not markers
_ANY_MARKER = re.compile(rb"\xff[^\x00]")
_NOT_FILL = re.compile(rb"[^\xff]")
REDUCED_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}


class PixelBudget:
    """Bounds the pixels being decoded by all worker threads together (memory ~ 3-6 bytes a pixel).

    ``hold(n)`` waits until ``n`` more pixels fit; one image alone always fits, so an image up to
    ``MAX_PIXELS`` is never refused for the budget, only queued.
    """

    def __init__(self, pixels: int) -> None:
        self.limit = pixels
        self.in_flight = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self.in_flight == 0 or self.in_flight + pixels <= self.limit)
            self.in_flight += pixels
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= pixels
                self._cond.notify_all()


DECODE_BUDGET = PixelBudget(MAX_PIXELS)


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB uint8 [H, W, 3], EXIF orientation applied.

    Raises:
        ImageError: zero-byte, too large, unreadable, not a regular file or undecodable files.
    """
    return decode_image(read_file_bytes(path), str(path))


def read_file_bytes(path: str | Path) -> np.ndarray:
    """The raw bytes of an image file as uint8, after the checks: a regular file, not empty, not too large.

    Opened without blocking, so a FIFO or a device named ``*.jpg`` is refused instead of hanging the run.
    """
    return read_regular_file(path)[0]


def read_regular_file(path: str | Path, *, follow_links: bool = True,
                      allow_empty: bool = False) -> tuple[np.ndarray, os.stat_result]:
    """``read_file_bytes`` and the file's stat; ``follow_links=False`` refuses a symbolic link, ``allow_empty``
    returns an empty file's no bytes (a station's inbox: an upload that has not started yet).

    Raises:
        ImageError: not a regular file, empty, above ``MAX_FILE_BYTES``, or unreadable.
    """
    path = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{path}: not a regular file")
        if st.st_size == 0 and not allow_empty:
            raise ImageError(f"{path}: zero-byte file")
        if st.st_size > MAX_FILE_BYTES:
            raise ImageError(f"{path}: file is {st.st_size / 2**20:.0f} MiB, above the "
                             f"{MAX_FILE_BYTES / 2**20:.0f} MiB limit")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = np.fromfile(fh, dtype=np.uint8, count=st.st_size)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    if data.size == 0 and not allow_empty:
        raise ImageError(f"{path}: zero-byte file")
    return data, st


def check_dimensions(data: bytes | np.ndarray, name: str = "<bytes>") -> tuple[int, int]:
    """(width, height) from the header, refused above ``MAX_PIXELS`` before anything is decoded.

    Raises:
        ImageError: unrecognised or damaged header, or too many pixels.
    """
    width, height = image_dimensions(data, name)
    if width * height > MAX_PIXELS:
        raise ImageError(f"{name}: {width}x{height} pixels is above the {MAX_PIXELS} limit")
    if width == 0 or height == 0:
        raise ImageError(f"{name}: not a decodable image (header says {width}x{height} pixels)")
    return width, height


def is_jpeg(data: bytes | np.ndarray) -> bool:
    return bytes(data[:2]) == b"\xff\xd8"


def reduced_size(width: int, height: int, reduction: int) -> tuple[int, int]:
    """(width, height) of a JPEG decoded at 1/``reduction`` (libjpeg rounds up)."""
    return -(-width // reduction), -(-height // reduction)


def full_size_of(header_size: tuple[int, int], decoded: np.ndarray, reduction: int) -> tuple[int, int]:
    """(height, width) of the full-size, EXIF-oriented photo, from the header's stored (width, height)
    and a decode at 1/``reduction`` (which shows whether orientation swapped the sides)."""
    width, height = header_size
    if reduction == 1:
        return decoded.shape[0], decoded.shape[1]
    rw, rh = reduced_size(width, height, reduction)
    if (decoded.shape[1], decoded.shape[0]) == (rw, rh) or rw == rh:
        return height, width
    return width, height  # EXIF orientation 5-8 turned it


def decode_image(data: bytes | np.ndarray, name: str = "<bytes>", *, reduction: int = 1,
                 header: tuple[int, int] | None = None) -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 [H, W, 3], EXIF orientation applied.

    The header's size is checked first, so a decompression bomb is refused without being decoded.
    ``reduction`` (2, 4, 8): a JPEG is decoded at that fraction of its size in the DCT domain
    (libjpeg scaling); other formats are always decoded at full size. JPEGs decode with simplejpeg
    when it is installed (``fastjpeg``: the same pixels, twice as fast at full size); whatever it
    refuses, and every other format, decodes with OpenCV (``IMREAD_COLOR`` / ``IMREAD_REDUCED_COLOR_*``,
    which apply EXIF orientation), so damaged files fail as they always did. ``header``: the (width,
    height) ``check_dimensions`` already read from these bytes (not parsed again).
    """
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    if buf.size == 0:
        raise ImageError(f"{name}: zero-byte file")
    width, height = header or check_dimensions(buf, name)
    jpeg = is_jpeg(buf)
    if jpeg:
        check_jpeg_scans(buf, name)
    if jpeg and reduction in REDUCED_FLAGS:
        image = fastjpeg.decode_jpeg_rgb(buf, width, height, reduction)
        if image is not None:
            return image
    return decode_with_opencv(buf, name, reduction=reduction)


def check_jpeg_scans(data: bytes | np.ndarray, name: str = "<bytes>") -> None:
    """Refuse a JPEG of more than ``MAX_JPEG_SCANS`` scans (or ``JPEG_MAX_MARKERS`` markers), before decoding.

    The markers of the first image are walked (segments skipped by their length, a scan's data by a C
    search for the next marker; linear, nothing copied) up to its end marker: data after it (a second
    picture, an appended video) is not counted.

    Raises:
        ImageError: naming the file and the limit.
    """
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    pos, scans, in_scan = 2, 0, False
    for _ in range(JPEG_MAX_MARKERS):
        found = _next_jpeg_marker(view, pos, in_scan)
        if found is None:
            return
        marker, pos = found
        in_scan = False
        if marker == 0xD9:  # end of image
            return
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone
            continue
        if pos + 2 > len(view):
            return
        length = view[pos] << 8 | view[pos + 1]
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageError(f"{name}: not decoded: a JPEG of more than {MAX_JPEG_SCANS} scans (each one a "
                                 "decode pass over the whole photo)")
            in_scan = True
        pos += length
    raise ImageError(f"{name}: not decoded: more than {JPEG_MAX_MARKERS} JPEG markers")


def _next_jpeg_marker(view: bytes | memoryview, pos: int, in_scan: bool) -> tuple[int, int] | None:
    """(marker, the offset after it) of the next marker from ``pos``: garbage and fill bytes skipped as
    libjpeg does; in a scan's data, stuffed FF 00 and restart markers are data."""
    pattern = _SCAN_MARKER if in_scan else _ANY_MARKER
    while True:
        found = pattern.search(view, pos)
        if found is None:
            return None
        at = found.start() + 1
        if view[at] == 0xFF:  # fill bytes: the marker is the first byte after the run
            after = _NOT_FILL.search(view, at)
            if after is None:
                return None
            at = after.start()
            if view[at] == 0x00 or (in_scan and 0xD0 <= view[at] <= 0xD7):
                pos = at + 1
                continue
        return view[at], at + 1


def decode_with_opencv(buf: np.ndarray, name: str = "<bytes>", *, reduction: int = 1) -> np.ndarray:
    """``decode_image`` by OpenCV alone (after the header checks): every format, and the JPEGs simplejpeg refuses.

    ``reduction`` applies to JPEGs only (OpenCV's reduced flags would shrink other formats after decoding).
    """
    flags = REDUCED_FLAGS.get(reduction, cv2.IMREAD_COLOR) if is_jpeg(buf) else cv2.IMREAD_COLOR
    try:
        image = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        raise ImageError(f"{name}: cannot decode image ({str(exc).strip().splitlines()[-1]})") from exc
    if image is None:
        raise ImageError(f"{name}: not a decodable image (corrupt, truncated or unsupported format)")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:  # a header that lied
        raise ImageError(f"{name}: {image.shape[1]}x{image.shape[0]} pixels is above the {MAX_PIXELS} limit")
    if image.dtype != np.uint8:
        top = np.iinfo(image.dtype).max if np.issubdtype(image.dtype, np.integer) else 1.0
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(1, top))
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: no second full-size copy


def resize_for_model(image: np.ndarray, config: ModelConfig, out: np.ndarray | None = None) -> np.ndarray:
    """Resize RGB uint8 to the model's square input, as the model config says.

    ``bilinear`` uses area averaging when shrinking (antialiased, close to PIL's bilinear filter
    used by torchvision) and bilinear when enlarging; ``bicubic`` (CLIP/BioCLIP) likewise, with
    bicubic when enlarging. ``out``: a contiguous [S, S, 3] uint8 array
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
    enlarge = cv2.INTER_CUBIC if config.interpolation == "bicubic" else cv2.INTER_LINEAR
    interpolation = cv2.INTER_AREA if (config.interpolation == "area" or shrinking) else enlarge
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
            # surrogateescape: a listed non-UTF-8 file name stays the exact bytes on disk
            for line in path.read_text(encoding="utf-8", errors="surrogateescape").splitlines():
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
