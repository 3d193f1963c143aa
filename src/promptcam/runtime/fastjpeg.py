"""JPEG decoding with simplejpeg (libjpeg-turbo's TurboJPEG API, bundled in a ~1 MB wheel) when it is installed.

It gives the very pixels of OpenCV's ``imdecode`` (accurate integer DCT and fancy upsampling on both sides),
faster where the IDCT and the colour pass matter. A 12 MP camera-trap JPEG (quality 88) on one thread,
medians (issue 15): full size 33 ms against 72 ms with OpenCV (imdecode and the BGR-to-RGB pass), 1/2 scale
25 against 27 ms, 1/4 and 1/8 the same (22 and 20 ms: Huffman decoding of every coefficient is what is left,
and both use the same libjpeg-turbo for it).

simplejpeg does not apply EXIF orientation: ``exif_orientation`` reads the tag where OpenCV does and
``orient`` turns the pixels as OpenCV's ``ExifTransform`` does, so both decoders return the same array.
Anything simplejpeg refuses (CMYK, arithmetic coding, a warning about damaged data) returns None and the
caller decodes with OpenCV, which then keeps its behaviour for damaged files.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from .exif import exif_tiff

try:  # a core dependency; a build without it decodes every JPEG with OpenCV
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the installation
    simplejpeg = None

ORIENTATION_TAG = 0x0112
# flips after a transpose, per EXIF orientation, exactly as OpenCV's ExifTransform (loadsave.cpp)
ORIENTATION_OPS: dict[int, tuple[bool, int | None]] = {
    1: (False, None), 2: (False, 1), 3: (False, -1), 4: (False, 0),
    5: (True, None), 6: (True, 1), 7: (True, -1), 8: (True, 0),
}


def available() -> bool:
    """Whether simplejpeg is installed (else JPEGs decode with OpenCV)."""
    return simplejpeg is not None


def exif_orientation(data: np.ndarray | bytes) -> int:
    """The EXIF orientation (1-8) of a JPEG, 1 when it has none or a malformed one.

    Read like OpenCV's ``ExifReader``: the 16-bit value of IFD0's tag 0x0112, whatever type the entry
    claims; values outside 1-8 mean no transform.
    """
    try:
        tiff = exif_tiff(memoryview(data).cast("B"))
        if tiff is None or len(tiff) < 8:
            return 1
        tiff = bytes(tiff)
        endian = {b"II": "<", b"MM": ">"}.get(tiff[:2])
        if endian is None:
            return 1
        ifd0 = struct.unpack(endian + "I", tiff[4:8])[0]
        count = struct.unpack(endian + "H", tiff[ifd0:ifd0 + 2])[0]
        for i in range(count):
            entry = tiff[ifd0 + 2 + 12 * i: ifd0 + 14 + 12 * i]
            if len(entry) < 12:
                return 1
            if struct.unpack(endian + "H", entry[:2])[0] == ORIENTATION_TAG:
                value = struct.unpack(endian + "H", entry[8:10])[0]
                return value if value in ORIENTATION_OPS else 1
    except (struct.error, IndexError, ValueError, TypeError):
        pass  # malformed EXIF is common on cheap cameras: the pixels as stored
    return 1


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """``image`` turned and flipped for EXIF ``orientation`` (1-8), as OpenCV applies it on decode."""
    transpose, flip = ORIENTATION_OPS.get(orientation, (False, None))
    if transpose:
        image = cv2.transpose(image)
    if flip is not None:
        image = cv2.flip(image, flip)
    return image


def decode_jpeg_rgb(buf: np.ndarray, width: int, height: int, reduction: int = 1) -> np.ndarray | None:
    """RGB uint8 [H, W, 3] of a JPEG at 1/``reduction`` (1, 2, 4, 8), EXIF orientation applied, or None.

    Args:
        buf: The file's bytes.
        width: Stored width from the header (before orientation).
        height: Stored height from the header.
        reduction: DCT-domain scale; the result is ``ceil(width / reduction)`` by ``ceil(height / reduction)``
            before orientation, as libjpeg scales.

    Returns:
        None when simplejpeg is missing or refuses the data (unsupported colour space or coding, damaged or
        truncated data: ``strict`` turns libjpeg's warnings into refusals), so OpenCV decides those files.
    """
    if simplejpeg is None:
        return None
    min_width, min_height = -(-width // reduction), -(-height // reduction)
    try:
        image = simplejpeg.decode_jpeg(buf, colorspace="RGB", fastdct=False, fastupsample=False,
                                       min_height=min_height, min_width=min_width, min_factor=reduction,
                                       strict=True)
    except (ValueError, RuntimeError, MemoryError):
        return None
    if image.shape[:2] != (min_height, min_width):  # another scale than asked: let OpenCV decide
        return None
    return orient(image, exif_orientation(buf))
