"""The hand-written header parsers (image size, EXIF date and orientation) do work linear in the file's
size and bounded per file, whatever the bytes: hostile inputs are timed at N and 4N (growth well below
quadratic) and at tens of MB (well under a second), and ordinary files keep their answers."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import cv2
import numpy as np
import pytest

from promptcam.core.errors import ImageError
from promptcam.runtime.exif import exif_datetime
from promptcam.runtime.fastjpeg import exif_orientation
from promptcam.runtime.imageheader import image_dimensions

SMALL = 150_000  # N for the growth ratio (and 4N)
LARGE = 32_000_000  # past the 16 MiB scan limit: the work must stop growing
MAX_GROWTH = 8.0  # 4x the input: linear is 4, quadratic 16
LARGE_BUDGET_S = 0.5
FLOOR_S = 5e-3  # below this a timing is noise on a loaded 2-core machine: the ratio is taken against it
# (the quadratic walk this guards against took 0.66 s at 400 KB: far above any floor)
JPEG_SCAN_LIMIT = 16 * 2**20  # the frame header must start in the first 16 MiB


def best_time(fn: Callable[[object], object], data: object, repeats: int = 3, enough: float = 0.0) -> float:
    """The least of ``repeats`` timings of ``fn(data)`` (an ImageError is an answer); stops once under ``enough``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        try:
            fn(data)
        except ImageError:
            pass
        best = min(best, time.perf_counter() - start)
        if best < enough:
            break
    return best


def assert_linear_and_bounded(fn: Callable[[object], object], make: Callable[[int], object]) -> None:
    """Growth from N to 4N well below quadratic, then the LARGE input well under a second."""
    small, big = best_time(fn, make(SMALL)), best_time(fn, make(4 * SMALL))
    assert big / max(small, FLOOR_S) < MAX_GROWTH, f"{SMALL} B: {small:.4f}s, {4 * SMALL} B: {big:.4f}s"
    large = best_time(fn, make(LARGE), enough=LARGE_BUDGET_S)
    assert large < LARGE_BUDGET_S, f"{LARGE} B: {large:.3f}s"


def repeat(unit: bytes, size: int) -> bytes:
    return unit * max(1, size // len(unit))


SOI = b"\xff\xd8"
JPEG_PATTERNS: dict[str, Callable[[int], bytes]] = {
    "stuffed zeros": lambda n: SOI + repeat(b"\xff\x00A", n),
    "restart markers": lambda n: SOI + repeat(b"\xff\xd0", n),
    "garbage between markers": lambda n: SOI + repeat(b"garbage\xff\x00", n),
    "fill bytes": lambda n: SOI + b"\xff" * n,
    "fill runs and stuffed zeros": lambda n: SOI + repeat(b"\xff" * 61 + b"\x00", n),
    "tiny APP0 segments": lambda n: SOI + repeat(b"\xff\xe0\x00\x02", n),
    "tiny APP1 segments, not Exif": lambda n: SOI + repeat(b"\xff\xe1\x00\x04XM", n),
}


@pytest.mark.parametrize("pattern", JPEG_PATTERNS)
def test_jpeg_header_walk_is_linear_and_bounded(pattern: str) -> None:
    make = JPEG_PATTERNS[pattern]
    assert_linear_and_bounded(lambda d: image_dimensions(d, "hostile.jpg"),
                              lambda n: np.frombuffer(make(n), np.uint8))
    with pytest.raises(ImageError, match="hostile.jpg: not a decodable image"):
        image_dimensions(np.frombuffer(make(LARGE), np.uint8), "hostile.jpg")


@pytest.mark.parametrize("pattern", ["tiny APP0 segments", "tiny APP1 segments, not Exif", "stuffed zeros"])
def test_exif_segment_walk_is_linear_and_bounded(pattern: str) -> None:
    make = JPEG_PATTERNS[pattern]
    assert_linear_and_bounded(exif_datetime, make)  # the inbox passes bytes
    assert_linear_and_bounded(exif_orientation, lambda n: np.frombuffer(make(n), np.uint8))  # the decoder arrays
    assert exif_datetime(make(LARGE)) is None
    assert exif_orientation(np.frombuffer(make(LARGE), np.uint8)) == 1


def test_the_frame_header_must_start_in_the_first_16_mib() -> None:
    jpeg = cv2.imencode(".jpg", np.zeros((24, 40, 3), np.uint8))[1].tobytes()
    app = b"\xff\xe2\xff\xff" + b"\x00" * 0xFFFD  # full-size APP2 segments before the frame header
    near = jpeg[:2] + app * 200 + jpeg[2:]  # 12.5 MiB
    assert image_dimensions(near, "near.jpg") == (40, 24)
    far = jpeg[:2] + app * (JPEG_SCAN_LIMIT // len(app) + 1) + jpeg[2:]
    with pytest.raises(ImageError, match=r"far.jpg: .*no JPEG frame header within the first 16 MiB"):
        image_dimensions(np.frombuffer(far, np.uint8), "far.jpg")


def png_with_chunks(size: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", 640, 480, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 0) + b"tEXt" + b"\x00\x00\x00\x00"
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + b"\x00" * 4
            + repeat(chunk, size) + struct.pack(">I", 0) + b"IEND" + b"\x00" * 4)


def tiff_with_huge_ifd(size: int, big: bool = False) -> bytes:
    """A TIFF whose first IFD (at the end of ``size`` bytes of padding) claims the most entries it can,
    none of them the size tags, and points to itself as the next IFD."""
    if big:
        head = b"II+\x00" + struct.pack("<HHQ", 8, 0, 16 + size)
        ifd = struct.pack("<Q", 2**64 - 1) + struct.pack("<HHQQ", 0x0110, 2, 4, 0) * 5000 + struct.pack("<Q", 16 + size)
    else:
        head = b"II*\x00" + struct.pack("<I", 8 + size)
        ifd = struct.pack("<H", 0xFFFF) + struct.pack("<HHII", 0x0110, 2, 4, 0) * 5000 + struct.pack("<I", 8 + size)
    return head + b"\x00" * size + ifd


@pytest.mark.parametrize("make", [png_with_chunks, tiff_with_huge_ifd, lambda n: tiff_with_huge_ifd(n, big=True)],
                         ids=["png many chunks", "tiff huge entry count", "bigtiff huge entry count"])
def test_other_headers_are_bounded(make) -> None:
    assert_linear_and_bounded(lambda d: image_dimensions(d, "many.img"), lambda n: np.frombuffer(make(n), np.uint8))


def tiff_entry(endian: str, tag: int, kind: int, count: int, value: bytes | int) -> bytes:
    if isinstance(value, int):
        value = struct.pack(endian + ("H" if kind == 3 else "I"), value).ljust(4, b"\x00")
    return struct.pack(endian + "HHI", tag, kind, count) + value.ljust(4, b"\x00")


def jpeg_with_exif(jpeg: bytes, tiff: bytes) -> bytes:
    """``jpeg`` with an APP1 Exif segment holding ``tiff``, after OpenCV's APP0 (as cameras write it)."""
    app1 = b"Exif\x00\x00" + tiff
    assert len(app1) + 2 <= 0xFFFF
    app0_end = 4 + struct.unpack(">H", jpeg[4:6])[0] if jpeg[2:4] == b"\xff\xe0" else 2
    return jpeg[:app0_end] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[app0_end:]


def exif_tiff_block(endian: str, *, orientation: int | None = None, datetime: str | None = None,
                    original: str | None = None) -> bytes:
    """A hand-written TIFF block: IFD0 (Orientation, DateTime, Exif pointer) and an Exif IFD (DateTimeOriginal)."""
    mark = b"II*\x00" if endian == "<" else b"MM\x00*"
    entries0, data = [], b""
    n0 = (orientation is not None) + (datetime is not None) + (original is not None)
    ifd0_size = 2 + 12 * n0 + 4
    exif_ifd_at = 8 + ifd0_size
    strings_at = exif_ifd_at + (2 + 12 + 4 if original is not None else 0)
    if orientation is not None:
        entries0.append(tiff_entry(endian, 0x0112, 3, 1, orientation))
    if datetime is not None:
        entries0.append(tiff_entry(endian, 0x0132, 2, 20, strings_at + len(data)))
        data += datetime.encode() + b"\x00"
    exif_ifd = b""
    if original is not None:
        entries0.append(tiff_entry(endian, 0x8769, 4, 1, exif_ifd_at))
        exif_ifd = (struct.pack(endian + "H", 1) + tiff_entry(endian, 0x9003, 2, 20, strings_at + len(data))
                    + struct.pack(endian + "I", 0))
        data += original.encode() + b"\x00"
    ifd0 = struct.pack(endian + "H", n0) + b"".join(entries0) + struct.pack(endian + "I", 0)
    return mark + struct.pack(endian + "I", 8) + ifd0 + exif_ifd + data


@pytest.mark.parametrize("endian", ["<", ">"])
def test_hand_written_exif_still_reads(endian: str) -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(30, 50, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    both = jpeg_with_exif(jpeg, exif_tiff_block(endian, orientation=6, datetime="2021:02:03 04:05:06",
                                                original="2020:01:02 03:04:05"))
    assert exif_datetime(both) == "2020-01-02T03:04:05"
    assert exif_orientation(np.frombuffer(both, np.uint8)) == 6
    assert image_dimensions(np.frombuffer(both, np.uint8), "a.jpg") == (50, 30)
    assert cv2.imdecode(np.frombuffer(both, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (50, 30)  # OpenCV turns it too
    only_ifd0 = jpeg_with_exif(jpeg, exif_tiff_block(endian, orientation=3, datetime="2021:02:03 04:05:06"))
    assert exif_datetime(only_ifd0) == "2021-02-03T04:05:06"
    assert exif_orientation(np.frombuffer(only_ifd0, np.uint8)) == 3
    bad_date = jpeg_with_exif(jpeg, exif_tiff_block(endian, orientation=9, original="0000:00:00 00:00:00"))
    assert exif_datetime(bad_date) is None
    assert exif_orientation(np.frombuffer(bad_date, np.uint8)) == 1
    assert exif_datetime(jpeg) is None and exif_orientation(np.frombuffer(jpeg, np.uint8)) == 1


def exif_with_many_strings(entries: int) -> bytes:
    """IFD0 of ``entries`` DateTime entries, each claiming 65000 characters from the IFD itself (full of
    NULs), the last a real date, then the orientation: a 64 KiB segment that costs no more than its size."""
    date_at = 8 + 2 + 12 * (entries + 1) + 4
    body = [tiff_entry("<", 0x0132, 2, 65000, 8)] * (entries - 1) + [tiff_entry("<", 0x0132, 2, 20, date_at)]
    ifd0 = struct.pack("<H", entries + 1) + b"".join(body) + tiff_entry("<", 0x0112, 3, 1, 8) + struct.pack("<I", 8)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd0 + b"2024:05:06 07:08:09\x00"
    jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    return jpeg_with_exif(jpeg, tiff)


def test_exif_ifd_with_thousands_of_long_strings() -> None:
    small, big = best_time(exif_datetime, exif_with_many_strings(1200)), best_time(exif_datetime,
                                                                                   exif_with_many_strings(4800))
    assert big / max(small, FLOOR_S) < MAX_GROWTH, (small, big)
    data = exif_with_many_strings(5400)
    assert best_time(exif_datetime, data, enough=0.1) < 0.1
    assert exif_datetime(data) == "2024-05-06T07:08:09"  # the last DateTime entry, as before
    assert exif_orientation(np.frombuffer(data, np.uint8)) == 8
    assert best_time(exif_orientation, np.frombuffer(data, np.uint8), enough=0.1) < 0.1


@pytest.mark.parametrize("endian", ["<", ">"])
def test_exif_ifd_loops_and_damaged_pointers(endian: str) -> None:
    jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    mark = b"II*\x00" if endian == "<" else b"MM\x00*"
    # IFD0 is its own Exif IFD and its own next IFD, and holds DateTimeOriginal
    loop = (mark + struct.pack(endian + "I", 8) + struct.pack(endian + "H", 2)
            + tiff_entry(endian, 0x8769, 4, 1, 8) + tiff_entry(endian, 0x9003, 2, 20, 8 + 2 + 24 + 4)
            + struct.pack(endian + "I", 8) + b"2019:09:09 09:09:09\x00")
    assert exif_datetime(jpeg_with_exif(jpeg, loop)) == "2019-09-09T09:09:09"
    assert exif_orientation(np.frombuffer(jpeg_with_exif(jpeg, loop), np.uint8)) == 1
    # an Exif "pointer" typed ASCII: no Exif IFD, the IFD0 DateTime still counts (it raised TypeError)
    ascii_pointer = (mark + struct.pack(endian + "I", 8) + struct.pack(endian + "H", 2)
                     + tiff_entry(endian, 0x8769, 2, 3, b"AB\x00") + tiff_entry(endian, 0x0132, 2, 20, 8 + 2 + 24 + 4)
                     + struct.pack(endian + "I", 0) + b"2018:08:08 08:08:08\x00")
    assert exif_datetime(jpeg_with_exif(jpeg, ascii_pointer)) == "2018-08-08T08:08:08"
    # the largest entry count a 16-bit field holds, in a segment with room for a few: nothing, quickly
    huge = (mark + struct.pack(endian + "I", 8) + struct.pack(endian + "H", 0xFFFF)
            + tiff_entry(endian, 0x0100, 3, 1, 5) * 20)
    assert exif_datetime(jpeg_with_exif(jpeg, huge)) is None
    assert exif_orientation(np.frombuffer(jpeg_with_exif(jpeg, huge), np.uint8)) == 1


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tiff", ".bmp", ".webp"])
@pytest.mark.parametrize("shape", [(1, 1), (37, 91), (480, 640)])
def test_opencv_images_keep_their_size(suffix: str, shape: tuple[int, int]) -> None:
    image = np.random.default_rng(shape[0]).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(suffix, image)
    assert ok
    expected = (shape[1], shape[0])
    assert image_dimensions(encoded, f"a{suffix}") == expected
    assert image_dimensions(encoded.tobytes(), f"a{suffix}") == expected


def test_jpeg_markers_before_the_frame_header_are_skipped_as_before() -> None:
    jpeg = cv2.imencode(".jpg", np.zeros((21, 13, 3), np.uint8))[1].tobytes()
    for junk in (b"\xff" * 1000, b"garbage", b"\xff\x00\xff\xd3zz", b"\xff\xfe\x00\x05hi!" + b"\xff" * 7):
        data = jpeg[:2] + junk + jpeg[2:]
        assert image_dimensions(data, "j.jpg") == (13, 21), junk
        assert image_dimensions(np.frombuffer(data, np.uint8), "j.jpg") == (13, 21), junk
    for cut in (jpeg[:2] + b"\xff" * 10, jpeg[:2] + b"junk", jpeg[:2] + b"\xff\xda\x00\x02", jpeg[:40]):
        with pytest.raises(ImageError, match="cut.jpg: not a decodable image"):
            image_dimensions(cut, "cut.jpg")
