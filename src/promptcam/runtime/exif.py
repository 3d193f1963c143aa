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


def exif_datetime(data: bytes) -> str | None:
    """``YYYY-MM-DDTHH:MM:SS`` from a JPEG's EXIF (DateTimeOriginal, else DateTime), or None."""
    try:
        tiff = exif_tiff(data)
        if tiff is None:
            return None
        endian = "<" if tiff[:2] == b"II" else ">"
        ifd0 = struct.unpack(endian + "I", tiff[4:8])[0]
        tags0 = _read_ifd(tiff, ifd0, endian)
        value = None
        if EXIF_IFD_POINTER in tags0:
            value = _read_ifd(tiff, tags0[EXIF_IFD_POINTER], endian).get(DATETIME_ORIGINAL)
        value = value or tags0.get(DATETIME)
        return valid_exif_datetime(value)
    except (struct.error, IndexError, ValueError, RecursionError):
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


def exif_tiff(data: bytes) -> bytes | None:
    """The TIFF block of a JPEG's APP1 Exif segment (before the image data), or None."""
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\x00\x00":
            return data[pos + 10:pos + 2 + length]
        if marker == 0xDA:  # start of scan: no EXIF before the image data
            return None
        pos += 2 + length
    return None


def _read_ifd(tiff: bytes, offset: int, endian: str) -> dict[int, object]:
    count = struct.unpack(endian + "H", tiff[offset:offset + 2])[0]
    tags: dict[int, object] = {}
    for i in range(count):
        entry = tiff[offset + 2 + 12 * i: offset + 14 + 12 * i]
        tag, kind, n = struct.unpack(endian + "HHI", entry[:8])
        if kind == 2:  # ASCII
            raw = entry[8:8 + n] if n <= 4 else tiff[struct.unpack(endian + "I", entry[8:12])[0]:][:n]
            tags[tag] = raw.split(b"\x00")[0].decode("ascii", "replace")
        elif kind == 4:  # LONG (IFD pointers)
            tags[tag] = struct.unpack(endian + "I", entry[8:12])[0]
    return tags
