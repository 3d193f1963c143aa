"""Image dimensions from the file header, read before any pixel is decoded.

A decompression bomb is a small file that declares a huge image (a 30000x30000 PNG of zeros is
250 KB and 2.7 GB decoded). The header says so in its first bytes, so the size limit is checked
there, for every format the runtime accepts: PNG (IHDR), JPEG (SOFn), TIFF and BigTIFF (first
IFD), BMP and WebP (VP8, VP8L, VP8X).
"""

from __future__ import annotations

import re
import struct

import numpy as np

from promptcam.core.errors import ImageError

JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
FORMATS = "JPEG, PNG, TIFF, BMP or WebP"
# bounds on the JPEG marker walk, so a hostile file costs a bounded amount of work: the frame header
# (SOFn) must start in the first 16 MiB, after at most 65536 markers (cameras write a few dozen)
JPEG_SCAN_LIMIT = 16 * 2**20
JPEG_MAX_MARKERS = 65536
_MARKER_PREFIX = re.compile(rb"\xff")
_FILL_RUN = re.compile(rb"\xff*")


def image_dimensions(data: bytes | memoryview | np.ndarray, name: str = "<bytes>") -> tuple[int, int]:
    """(width, height) declared by an image header.

    Raises:
        ImageError: not one of the accepted formats, or a header too damaged to say its size.
    """
    data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    head = bytes(data[:32])
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            size = _png(data)
        elif head.startswith(b"\xff\xd8"):
            size = _jpeg(data, name)
        elif head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            size = _tiff(data)
        elif head.startswith(b"BM"):
            size = _bmp(data)
        elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            size = _webp(data)
        else:
            raise ImageError(f"{name}: not a decodable image (unrecognised header; accepted: {FORMATS})")
    except (struct.error, IndexError) as exc:
        raise ImageError(f"{name}: not a decodable image (header truncated or damaged)") from exc
    if size is None:
        raise ImageError(f"{name}: not a decodable image (header truncated or damaged: no image size)")
    return size


def _png(data: bytes | memoryview) -> tuple[int, int] | None:
    if bytes(data[12:16]) != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _jpeg(data: bytes | memoryview, name: str) -> tuple[int, int] | None:
    """The SOFn size, walking the markers before it as libjpeg does (garbage and fill bytes skipped).

    Linear and bounded: the skips are C searches from an offset (nothing is copied), the frame header
    must start in the first ``JPEG_SCAN_LIMIT`` bytes, and at most ``JPEG_MAX_MARKERS`` markers are read
    before it (real files have a few dozen).
    """
    end = len(data)
    limit = min(end, JPEG_SCAN_LIMIT)
    pos = 2
    for _ in range(JPEG_MAX_MARKERS):
        if pos + 4 > end:
            return None
        if pos >= limit:
            raise _too_far(name, f"the first {JPEG_SCAN_LIMIT // 2**20} MiB")
        if data[pos] != 0xFF:
            # garbage between segments: decoders skip to the next marker, so do we
            found = _MARKER_PREFIX.search(data, pos, limit)
            if found is None:
                if limit < end:
                    raise _too_far(name, f"the first {JPEG_SCAN_LIMIT // 2**20} MiB")
                return None
            pos = found.start()
            continue
        if data[pos + 1] == 0xFF:  # fill bytes: the marker is the first byte after the run
            after = _FILL_RUN.match(data, pos + 1, limit).end()
            if after >= limit:
                if limit < end:
                    raise _too_far(name, f"the first {JPEG_SCAN_LIMIT // 2**20} MiB")
                return None
            pos = after - 1
            continue
        marker = data[pos + 1]
        if marker in JPEG_STANDALONE or marker == 0x00:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in JPEG_SOF:
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    raise _too_far(name, f"the first {JPEG_MAX_MARKERS} markers")


def _too_far(name: str, within: str) -> ImageError:
    return ImageError(f"{name}: not a decodable image (no JPEG frame header within {within})")


def _tiff(data: bytes | memoryview) -> tuple[int, int] | None:
    endian = "<" if bytes(data[:2]) == b"II" else ">"
    big = struct.unpack(endian + "H", data[2:4])[0] == 43
    if big:
        offset = struct.unpack(endian + "Q", data[8:16])[0]
        count = struct.unpack(endian + "Q", data[offset:offset + 8])[0]
        first, entry_size = offset + 8, 20
    else:
        offset = struct.unpack(endian + "I", data[4:8])[0]
        count = struct.unpack(endian + "H", data[offset:offset + 2])[0]
        first, entry_size = offset + 2, 12
    found: dict[int, int] = {}
    for i in range(min(count, 4096)):
        at = first + i * entry_size
        tag, kind = struct.unpack(endian + "HH", data[at:at + 4])
        if tag not in (256, 257):
            continue
        value_at = at + (12 if big else 8)
        if kind == 3:  # SHORT
            found[tag] = struct.unpack(endian + "H", data[value_at:value_at + 2])[0]
        elif kind == 4:  # LONG
            found[tag] = struct.unpack(endian + "I", data[value_at:value_at + 4])[0]
        elif kind == 16:  # LONG8 (BigTIFF)
            found[tag] = struct.unpack(endian + "Q", data[value_at:value_at + 8])[0]
        if len(found) == 2:
            return found[256], found[257]
    return None


def _bmp(data: bytes | memoryview) -> tuple[int, int] | None:
    header_size = struct.unpack("<I", data[14:18])[0]
    if header_size == 12:  # OS/2 core header
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)


def _webp(data: bytes | memoryview) -> tuple[int, int] | None:
    chunk = bytes(data[12:16])
    if chunk == b"VP8X":
        width = int.from_bytes(bytes(data[24:27]), "little") + 1
        height = int.from_bytes(bytes(data[27:30]), "little") + 1
        return width, height
    if chunk == b"VP8 ":
        if bytes(data[23:26]) != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            return None
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None
