"""EXIF DateTimeOriginal from JPEG bytes, without extra dependencies (camera traps stamp their shots)."""

from __future__ import annotations

import re
import struct
from datetime import datetime

EXIF_DATETIME = re.compile(r"\d{4}:\d{2}:\d{2} \d{2}:\d{2}:\d{2}", re.ASCII)
MIN_YEAR, MAX_YEAR = 1970, 2100  # camera clocks outside this were never set
EXIF_IFD_POINTER = 0x8769
DATETIME_ORIGINAL = 0x9003
DATETIME = 0x0132
# bounds on the JPEG marker walk to the APP1 Exif segment (cameras write it first or second)
EXIF_SCAN_LIMIT = 16 * 2**20
EXIF_MAX_SEGMENTS = 4096


def exif_datetime(data: bytes) -> str | None:
    """``YYYY-MM-DDTHH:MM:SS`` from a JPEG's EXIF (DateTimeOriginal, else DateTime), or None."""
    try:
        tiff = exif_tiff(data)
        if tiff is None:
            return None
        tiff = bytes(tiff)  # the APP1 segment: at most 64 KiB
        endian = "<" if tiff[:2] == b"II" else ">"
        ifd0 = struct.unpack(endian + "I", tiff[4:8])[0]
        tags0 = _read_ifd(tiff, ifd0, endian, (EXIF_IFD_POINTER, DATETIME))
        value = None
        pointer = tags0.get(EXIF_IFD_POINTER)
        if isinstance(pointer, int):  # a LONG; an ASCII "pointer" is a damaged tag
            value = _read_ifd(tiff, pointer, endian, (DATETIME_ORIGINAL,)).get(DATETIME_ORIGINAL)
        value = value or tags0.get(DATETIME)
        return valid_exif_datetime(value)
    except (struct.error, IndexError, ValueError, TypeError, RecursionError):
        return None  # malformed EXIF is common on cheap cameras: no timestamp, not an error


def valid_exif_datetime(value: object) -> str | None:
    """``YYYY-MM-DDTHH:MM:SS`` from an EXIF ``YYYY:MM:DD HH:MM:SS`` that is a real calendar time, else None.

    The string comes from the file, and callers make folder names of its date: anything else
    (``"/abs/dir 00:00:00"``, ``"../../../. 00:00:00"``, month 13, an unset ``0000:00:00``) is refused.
    """
    if not isinstance(value, str) or not EXIF_DATETIME.fullmatch(value[:19]):
        return None
    try:
        stamp = datetime.strptime(value[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    if not MIN_YEAR <= stamp.year <= MAX_YEAR:
        return None
    return stamp.strftime("%Y-%m-%dT%H:%M:%S")


def exif_tiff(data: bytes | memoryview) -> bytes | memoryview | None:
    """The TIFF block of a JPEG's APP1 Exif segment (before the image data), or None.

    A slice of ``data`` (a memoryview stays one: nothing is copied). The walk is bounded: the segment
    must start in the first ``EXIF_SCAN_LIMIT`` bytes, among the first ``EXIF_MAX_SEGMENTS`` segments.
    """
    if data[:2] != b"\xff\xd8":
        return None
    pos, end = 2, min(len(data), EXIF_SCAN_LIMIT)
    for _ in range(EXIF_MAX_SEGMENTS):
        if pos + 4 > end or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\x00\x00":
            return data[pos + 10:pos + 2 + length]
        if marker == 0xDA:  # start of scan: no EXIF before the image data
            return None
        pos += 2 + length
    return None


def _read_ifd(tiff: bytes, offset: int, endian: str, wanted: tuple[int, ...] | None = None) -> dict[int, object]:
    """ASCII and LONG values of an IFD's entries (of the ``wanted`` tags only, when given).

    Linear in the entry count (which the 64 KiB segment bounds): an entry is 12 bytes read in place,
    and each string is decoded once, for the last entry of its tag, as a dict of all of them would keep.
    """
    count = struct.unpack(endian + "H", tiff[offset:offset + 2])[0]
    size = len(tiff)
    last: dict[int, int] = {}  # tag -> offset of its last ASCII or LONG entry
    for at in range(offset + 2, offset + 2 + 12 * count, 12):
        tag, kind, n = struct.unpack_from(endian + "HHI", tiff, at)  # struct.error past the end
        if kind == 4 or (kind == 2 and n > 4):
            if at + 12 > size:
                raise struct.error("IFD entry cut by the end of the EXIF block")
        elif kind != 2:
            continue
        if wanted is None or tag in wanted:
            last[tag] = at
    tags: dict[int, object] = {}
    for tag, at in last.items():
        kind, n = struct.unpack_from(endian + "HI", tiff, at + 2)
        if kind == 2:  # ASCII, in the entry when it fits there
            start = at + 8 if n <= 4 else struct.unpack_from(endian + "I", tiff, at + 8)[0]
            stop = start + n
            nul = tiff.find(b"\x00", start, stop)
            tags[tag] = tiff[start:stop if nul < 0 else nul].decode("ascii", "replace")
        else:  # LONG (IFD pointers)
            tags[tag] = struct.unpack_from(endian + "I", tiff, at + 8)[0]
    return tags
