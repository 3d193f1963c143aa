"""Issue 28, item 10: ``promptcam-watch --once`` over any inbox takes time linear in the inbox's bytes.

A first ``--once`` over an inbox of hostile files ran past 90 s: the JPEG header walk copied the rest of
the file at every garbage byte (quadratic; ``runtime/imageheader.py`` walks it in place now). Also here:
a progressive JPEG can repeat its scans, each one a decode pass over every block of the photo (a 2000 x
2000 JPEG of 27 kB with 200 repeated scans decoded in 1.6 s, at 8000 x 8000 and 395 kB in 33 s: the cost
of a byte grew with the pixels), and the search for the written end of a preallocated file (zeros at its
end) made an index of every non-zero byte (8 bytes each: 4 GB for a 512 MB file).
"""

from __future__ import annotations

import io
import struct
import subprocess
import time
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hostile_corpus import make_hostile_corpus
from PIL import Image
from watch_helpers import db_rows, watch

from promptcam.core.errors import ImageError
from promptcam.runtime.images import MAX_JPEG_SCANS, decode_image
from promptcam.station.intake import upload_incomplete


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _fill(pattern: bytes, size: int) -> bytes:
    return (pattern * (size // len(pattern) + 1))[:size]


def _encoded(ext: str, side: int = 16) -> bytes:
    ok, data = cv2.imencode(ext, np.full((side, side, 3), 77, np.uint8))
    assert ok
    return data.tobytes()


def _large_hostile(size: int) -> dict[str, bytes]:
    """Files of about ``size`` bytes made of what header walks and decoders trip on."""
    jpg, png = _encoded(".jpg"), _encoded(".png")
    return {
        "ff00A.jpg": b"\xff\xd8" + _fill(b"\xff\x00A", size) + b"\xff\xd9",  # garbage between markers
        "ff_run.jpg": b"\xff\xd8" + b"\xff" * size + b"\xff\xd9",  # one long fill run
        "ff00A_after_frame.jpg": jpg[:-2] + _fill(b"\xff\x00A", size) + b"\xff\xd9",
        "ff_run_after_frame.jpg": jpg[:-2] + b"\xff" * size + b"\xff\xd9",
        "empty_segments.jpg": b"\xff\xd8" + _fill(b"\xff\xe2\x00\x02", size) + jpg[2:],
        "restart_markers.jpg": jpg[:-2] + _fill(b"\xff\xd0", size) + b"\xff\xd9",
        "zero_tail.jpg": jpg + b"\x00" * size,
        "text_chunks.png": png[:33] + _fill(_chunk(b"tEXt", b"k\x00v"), size) + png[33:],
        "empty_idat_chunks.png": png[:33] + _fill(_chunk(b"IDAT", b""), size) + png[33:],
        "unknown_chunks.png": png[:33] + _fill(_chunk(b"zzZz", b""), size) + png[33:],
        "ff00A.png": png[:33] + _fill(b"\xff\x00A", size) + b"IEND\xaeB`\x82",
    }


def _inbox(root: Path, scale: int, size: int) -> int:
    """``scale`` copies of the hostile corpus, and the large files at ``scale * size`` bytes each; returns
    the inbox's bytes (regular files)."""
    for copy in range(scale):
        make_hostile_corpus(root / f"copy{copy}")
    (root / "large").mkdir()
    for name, data in _large_hostile(scale * size).items():
        (root / "large" / name).write_bytes(data)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _once(model: Path, root: Path, scale: int, size: int, timeout: float) -> tuple[float, int]:
    inbox = root / f"inbox{scale}"
    total = _inbox(inbox, scale, size)
    started = time.perf_counter()
    result = watch(model, inbox, root / f"db{scale}.sqlite", "--incomplete-wait", "0", "--failed", root / f"f{scale}",
                   timeout=timeout)
    took = time.perf_counter() - started
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(db_rows(root / f"db{scale}.sqlite")) > 200 * scale
    return took, total


def test_once_over_a_hostile_inbox_takes_time_linear_in_its_bytes(tiny_export, tmp_path: Path) -> None:
    """Twice the inbox (two corpora, the large files twice as large) takes less than 2.5 times as long:
    12.5 MB and 24.9 MB took 4.7 s and 6.1 s. With the quadratic header walk (commit 214cf7e) they took
    14.6 s and 99.2 s (6.8x); at 512 kB large files 5.8 s and 19.0 s (3.3x)."""
    try:
        small, small_bytes = _once(tiny_export, tmp_path, 1, 2**20, timeout=120)
        large, large_bytes = _once(tiny_export, tmp_path, 2, 2**20, timeout=max(60.0, 5 * small))
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"--once ran past {exc.timeout:.0f} s")
    assert 1.9 < large_bytes / small_bytes < 2.1
    assert large < 2.5 * small, (small, large)


# -- a JPEG's scans --------------------------------------------------------------------------------

def _progressive(side: int) -> bytes:
    buf = io.BytesIO()
    pixels = np.full((side, side, 3), 100, np.uint8)
    pixels[side // 4:side // 2, side // 3:side // 2] = (20, 140, 60)
    Image.fromarray(pixels).save(buf, "JPEG", progressive=True, quality=90)
    return buf.getvalue()


def _with_extra_scans(data: bytes, extra: int) -> bytes:
    """``data`` with its last scan repeated ``extra`` times before the end marker (libjpeg warns, and
    decodes every one: a pass over all the photo's blocks each)."""
    sos = data.rindex(b"\xff\xda")
    eoi = data.rindex(b"\xff\xd9")
    return data[:eoi] + data[sos:eoi] * extra + data[eoi:]


def _decode_seconds(data: bytes) -> tuple[float, str | None]:
    started = time.perf_counter()
    try:
        decode_image(np.frombuffer(data, np.uint8), "bomb.jpg", reduction=8)
        refused = None
    except ImageError as exc:
        refused = str(exc)
    return time.perf_counter() - started, refused


def test_repeated_jpeg_scans_cost_no_more_than_the_photo() -> None:
    """Repeating a scan adds its bytes (tens to hundreds) and a decode pass over the whole photo: before the
    fix a 3000 x 3000 JPEG decoded in 0.07 s, with 30, 60 and 128 extra scans in 0.31, 0.60 and 1.23 s. Now
    a JPEG of more than ``MAX_JPEG_SCANS`` scans is refused from a walk of its markers (linear, no decode)."""
    photo = _progressive(3000)
    alone, refused = _decode_seconds(photo)
    assert refused is None
    assert _decode_seconds(_with_extra_scans(photo, MAX_JPEG_SCANS - 12))[1] is None  # a few scans more: decoded
    for extra in (MAX_JPEG_SCANS, 2 * MAX_JPEG_SCANS, 4000):
        took, refused = _decode_seconds(_with_extra_scans(photo, extra))
        assert refused is not None and "scans" in refused, (extra, refused)
        assert took < 3 * alone + 0.05, (extra, took, alone)


def test_a_scan_bomb_in_the_inbox_is_one_quick_failed_row(tiny_export, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    photo = _progressive(2000)
    (inbox / "photo.jpg").write_bytes(photo)
    (inbox / "bomb.jpg").write_bytes(_with_extra_scans(photo, 3000))  # 299 kB: ~25 s of decoding before the fix
    result = watch(tiny_export, inbox, tmp_path / "db.sqlite", "--incomplete-wait", "0", timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {r["file"]: r for r in db_rows(tmp_path / "db.sqlite")}
    assert rows["photo.jpg"]["status"] == "ok"
    assert rows["bomb.jpg"]["status"] == "failed" and "scans" in rows["bomb.jpg"]["failure"]


# -- the written end of a preallocated file ----------------------------------------------------------

def _peak_of_incomplete(data: np.ndarray) -> int:
    tracemalloc.start()
    try:
        assert upload_incomplete(data) == "no JPEG end marker yet"
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("tail", [1, 2**20], ids=["one_zero", "a_mebibyte_of_zeros"])
def test_the_written_end_of_a_preallocated_file_is_found_in_bounded_memory(tail: int) -> None:
    """Before the fix the search made an index of every non-zero byte: 16 and 32 MB of written data took
    128 and 256 MB (8 bytes a byte); now the peak does not grow with the file."""
    peaks = []
    for written in (16 * 2**20, 32 * 2**20):
        data = np.full(written + tail, 0x41, np.uint8)
        data[:2] = (0xFF, 0xD8)
        data[written:] = 0
        peaks.append(_peak_of_incomplete(data))
    assert max(peaks) < 4 * 2**20 and peaks[1] < 2 * peaks[0] + 2**20, peaks
