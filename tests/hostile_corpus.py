"""The project's hostile-corpus generator: what a camera, an SD card or a user drops into a station.

``make_hostile_corpus(root)`` writes a few hundred small files under ``root`` and returns what it
made and what a robust reader must do with each one. Used by the ``promptcam-run`` tests and the
inbox tests, so the returned keys are a stable API:

- ``inputs``: the input roots, in order, to hand to ``promptcam-run`` (the main corpus folder, then
  roots that share relative names: ``cam01``/``cam02`` and two roots both called ``DCIM``);
- ``entries``: one dict per created object: ``path`` (Path; non-UTF-8 names use surrogateescape),
  ``root`` (its input root), ``kind`` (short tag) and ``expect``, one of
  ``ok`` (a valid image: must be classified), ``failure`` (image suffix, must become a failure
  record), ``either`` (damaged but maybe decodable: one record, ok or failed), ``skip`` (not an
  image file: counted as skipped), ``alias`` (a symlink to an image already listed: the same file) or
  ``absent`` (a folder or folder symlink: walked or not, never a record of its own);
- ``valid``, ``invalid``, ``damaged``, ``non_images``, ``aliases``, ``absent``: the paths per ``expect``;
- ``fs_objects``: {path: "symlink_loop" | "self_loop" | "dangling" | "fifo" | "dir_loop" | "device" | ...};
- ``bombs``: files whose header declares far more pixels than any camera makes;
- ``exif_dates``: {path: the raw DateTimeOriginal string} for the hostile EXIF dates;
- ``orientations``: {path: EXIF orientation value};
- ``names``: {tag: path} for the name cases (``non_utf8``, ``long_255``, ``leading_eq`` ...);
- ``count``: how many entries.

Generation is deterministic (seeded) and takes about a second.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

FORMATS = (".jpg", ".png", ".tif", ".bmp", ".webp")
TRUNCATE_AT = (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, -1)  # fractions of the file; -1: all but the last byte
HOSTILE_DATES = (
    "/abs/dir 00:00:00",
    "../../../. 00:00:00",
    "../../.. 00:00:00",
    "2024:01:01/../.. 00:00:00",
    "..:..:.. ..:..:..",
    "2024:13:45 99:99:99",
    "0000:00:00 00:00:00",
    "    :  :     :  :  ",
    "2024:01:01 12:00:00\x00garbage",
    "2024-01-01T12:00:00",
    "2024:02:30 12:00:00",
    "x" * 1000,
    "C:\\Windows\\x 00:00:00",
    "2024:01:01 12:00:0\n",
)
ORIENTATIONS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 65535)


def _noise(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _encode(ext: str, image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok, ext
    return data.tobytes()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int, *, idat: bytes = b"", colour_type: int = 2) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` (8-bit), with the given IDAT payload."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@functools.lru_cache(maxsize=1)
def _zeros_idat(width: int, height: int) -> bytes:
    # a real bomb: every row present, all zero (grayscale), ~250 KB compressed for 256 M pixels
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    return b"".join(comp.compress(row) for _ in range(height)) + comp.flush()


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small valid JPEG with its SOF0 frame size patched to ``width`` x ``height``."""
    data = bytearray(_encode(".jpg", _noise(16, 16)))
    pos = 2
    while pos < len(data):
        marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[pos + 5:pos + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        pos += 2 + length
    raise AssertionError("no SOF marker")


def bmp_declaring(width: int, height: int) -> bytes:
    data = bytearray(_encode(".bmp", _noise(4, 4)))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def tiff_declaring(width: int, height: int) -> bytes:
    # little-endian TIFF, one IFD: width, length, 8-bit RGB, one strip of 16 bytes
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 8 + 2 + 12 * 8 + 4), (277, 3, 1, 3), (279, 4, 1, 16)]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3
                                                        else struct.pack("<I", value))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00" * 16


def webp_declaring(width: int, height: int) -> bytes:
    """A VP8X WebP header declaring the canvas size, followed by a tiny real frame."""
    small = _encode(".webp", _noise(4, 4))
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + \
        (height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + small[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _exif_jpeg(exif: Image.Exif, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_noise(24, 40, seed=seed)).save(buf, "JPEG", exif=exif)
    return buf.getvalue()


def _jpeg_with_app1(app1_payload: bytes, seed: int) -> bytes:
    """A JPEG whose first segment is an APP1 carrying ``app1_payload`` (after ``Exif\\0\\0``)."""
    plain = _encode(".jpg", _noise(24, 40, seed=seed))
    segment = b"Exif\x00\x00" + app1_payload
    return plain[:2] + b"\xff\xe1" + struct.pack(">H", min(len(segment) + 2, 0xFFFF)) + segment + plain[2:]


def _broken_ifds() -> dict[str, bytes]:
    hdr = b"II*\x00"
    return {
        "ifd_offset_past_end": hdr + struct.pack("<I", 0x7FFFFFFF),
        "ifd_count_65535": hdr + struct.pack("<I", 8) + struct.pack("<H", 0xFFFF) + b"\x00" * 20,
        "ifd_points_to_itself": hdr + struct.pack("<I", 8) + struct.pack("<H", 1)
        + struct.pack("<HHII", 0x8769, 4, 1, 8) + struct.pack("<I", 8),
        "exif_pointer_out_of_range": hdr + struct.pack("<I", 8) + struct.pack("<H", 1)
        + struct.pack("<HHII", 0x8769, 4, 1, 0xFFFFFF00) + struct.pack("<I", 0),
        "ascii_count_huge": hdr + struct.pack("<I", 8) + struct.pack("<H", 1)
        + struct.pack("<HHII", 0x0132, 2, 0xFFFFFFFF, 26) + struct.pack("<I", 0) + b"2024:01:01 00:00:00\x00",
        "orientation_wrong_type": hdr + struct.pack("<I", 8) + struct.pack("<H", 1)
        + struct.pack("<HHII", 0x0112, 2, 4, 0x00393939) + struct.pack("<I", 0),
        "bad_byte_order": b"XX*\x00" + struct.pack("<I", 8),
        "empty_tiff": b"",
        "truncated_entry": hdr + struct.pack("<I", 8) + struct.pack("<H", 3) + b"\x12\x01\x03",
    }


class _Corpus:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries: list[dict[str, Any]] = []
        self.fs_objects: dict[Path, str] = {}
        self.bombs: list[Path] = []
        self.exif_dates: dict[Path, str] = {}
        self.orientations: dict[Path, int] = {}
        self.names: dict[str, Path] = {}

    def add(self, root: Path, rel: str | bytes, data: bytes, kind: str, expect: str) -> Path:
        path = root / (os.fsdecode(rel) if isinstance(rel, bytes) else rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(os.fsencode(path), "wb") as fh:
            fh.write(data)
        self.entries.append({"path": path, "root": root, "kind": kind, "expect": expect})
        return path

    def special(self, root: Path, rel: str, kind: str, expect: str, make: Any) -> Path:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        make(path)
        self.entries.append({"path": path, "root": root, "kind": kind, "expect": expect})
        self.fs_objects[path] = kind
        return path


def make_hostile_corpus(root: Path) -> dict[str, Any]:
    """Write the hostile corpus under ``root`` (created) and return what was made and what to expect."""
    root = Path(root)
    main = root / "corpus"
    roots = [main, root / "cam01", root / "cam02", root / "site1" / "DCIM", root / "site2" / "DCIM"]
    for r in roots:
        r.mkdir(parents=True, exist_ok=True)
    c = _Corpus(root)

    # truncation and corruption, per format
    rng = np.random.default_rng(1234)
    for fi, ext in enumerate(FORMATS):
        name = ext[1:]
        good = _encode(ext, _noise(40 + fi, 56, seed=fi))
        c.add(main, f"formats/{name}/valid{ext}", good, "valid", "ok")
        for frac in TRUNCATE_AT:
            cut = len(good) - 1 if frac < 0 else max(1, int(len(good) * frac))
            c.add(main, f"formats/{name}/truncated_{cut:05d}{ext}", good[:cut], "truncated",
                  "failure" if cut <= 16 else "either")
        for i in range(6):
            data = bytearray(good)
            for pos in rng.integers(0, len(data), size=1 + 3 * i):
                data[pos] ^= 1 << int(rng.integers(0, 8))
            c.add(main, f"formats/{name}/bitflip_{i}{ext}", bytes(data), "bitflip", "either")
        for frac in (0.25, 0.5, 0.9):
            cut = int(len(good) * frac)
            c.add(main, f"formats/{name}/zero_tail_{int(frac * 100):02d}{ext}",
                  good[:cut] + b"\x00" * (len(good) - cut), "zero_tail", "either")
        c.add(main, f"formats/{name}/zero_byte{ext}", b"", "zero_byte", "failure")
        c.add(main, f"formats/{name}/text{ext}", b"field notes, not a picture\n", "text", "failure")
        c.add(main, f"formats/{name}/all_zero{ext}", b"\x00" * 4096, "all_zero", "failure")

    # decompression bombs: small files declaring huge images
    bombs = {
        "png_30000.png": png_declaring(30000, 30000, idat=zlib.compress(b"\x00" * 64)),
        "png_65535.png": png_declaring(65535, 65535),
        "png_2e31.png": png_declaring(2**31 - 1, 2**31 - 1),
        "png_real_zeros_16000.png": png_declaring(16000, 16000, idat=_zeros_idat(16000, 16000), colour_type=0),
        "jpeg_30000.jpg": jpeg_declaring(30000, 30000),
        "jpeg_65500.jpg": jpeg_declaring(65500, 65500),
        "bmp_30000.bmp": bmp_declaring(30000, 30000),
        "tiff_30000.tif": tiff_declaring(30000, 30000),
        "webp_16383.webp": webp_declaring(16383, 16383),
    }
    for rel, data in bombs.items():
        c.bombs.append(c.add(main, f"bombs/{rel}", data, "bomb", "failure"))

    # odd modes
    buf = io.BytesIO()
    modes: dict[str, bytes] = {
        "gray.png": _encode(".png", _noise(20, 30, 1)),
        "gray.jpg": _encode(".jpg", _noise(20, 30, 1)),
        "gray16.png": _encode(".png", (np.arange(600, dtype=np.uint16).reshape(20, 30) * 97)),
        "rgb16.png": _encode(".png", np.random.default_rng(3).integers(0, 65535, (20, 30, 3), dtype=np.uint16)),
        "rgb16.tif": _encode(".tif", np.random.default_rng(4).integers(0, 65535, (20, 30, 3), dtype=np.uint16)),
        "rgba.png": _encode(".png", _noise(20, 30, 4)),
        "rgba.webp": _encode(".webp", _noise(20, 30, 4)),
        "one_pixel.png": _encode(".png", _noise(1, 1)),
        "one_pixel.jpg": _encode(".jpg", _noise(1, 1)),
        "one_pixel.bmp": _encode(".bmp", _noise(1, 1)),
        "one_pixel.webp": _encode(".webp", _noise(1, 1)),
        "thin_1x2000.png": _encode(".png", _noise(1, 2000)),
        "thin_2000x1.png": _encode(".png", _noise(2000, 1)),
    }
    for mode, rel in (("P", "palette.png"), ("LA", "gray_alpha.png"), ("1", "bilevel.png"), ("I;16", "i16.png"),
                      ("CMYK", "cmyk.jpg"), ("CMYK", "cmyk.tif"), ("L", "gray.bmp"), ("P", "palette.bmp")):
        buf = io.BytesIO()
        image = Image.fromarray(_noise(20, 30)).convert(mode)
        image.save(buf, Path(rel).suffix[1:].replace("jpg", "jpeg").replace("tif", "tiff"))
        modes[rel] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(_noise(20, 30)).save(buf, "JPEG", progressive=True)
    modes["progressive.jpg"] = buf.getvalue()
    buf = io.BytesIO()
    palette = Image.fromarray(_noise(20, 30)).convert("P")
    palette.info["transparency"] = 0
    palette.save(buf, "PNG", transparency=0)
    modes["palette_transparent.png"] = buf.getvalue()
    for rel, data in modes.items():
        c.add(main, f"modes/{rel}", data, "mode", "ok")
    # OpenCV refuses 32-bit float samples in colour mode; other readers may not
    c.add(main, "modes/float32.tif", _encode(".tif", np.random.default_rng(5).random((20, 30, 3), dtype=np.float32)),
          "mode", "either")

    # EXIF: orientations (both byte orders), broken IFDs, hostile dates
    for value in ORIENTATIONS:
        exif = Image.Exif()
        exif[0x0112] = value
        path = c.add(main, f"exif/orientation_{value}.jpg", _exif_jpeg(exif, value), "orientation", "ok")
        c.orientations[path] = value
        big = _tiff_ifd_big_endian_orientation(value)
        path = c.add(main, f"exif/orientation_mm_{value}.jpg", _jpeg_with_app1(big, value), "orientation", "ok")
        c.orientations[path] = value
    for tag, payload in _broken_ifds().items():
        c.add(main, f"exif/broken_{tag}.jpg", _jpeg_with_app1(payload, 7), "broken_exif", "ok")
    c.add(main, "exif/broken_app1_length.jpg", _encode(".jpg", _noise(8, 8))[:2] + b"\xff\xe1\xff\xff" +
          b"Exif\x00\x00II*\x00", "broken_exif", "failure")
    for i, date in enumerate(HOSTILE_DATES):
        exif = Image.Exif()
        exif.get_ifd(0x8769)[0x9003] = date
        exif[0x0132] = date
        path = c.add(main, f"exif/date_{i:02d}.jpg", _exif_jpeg(exif, 100 + i), "hostile_date", "ok")
        c.exif_dates[path] = date

    # names
    jpg, png = _encode(".jpg", _noise(18, 26, seed=50)), _encode(".png", _noise(18, 26, seed=51))
    names: dict[str, str | bytes] = {
        "non_utf8": b"names/caf\xe9.jpg",
        "non_utf8_ff": b"names/\xff\xfe.jpg",
        "non_utf8_mid": b"names/bad\x80name.png",
        "long_255": "names/" + "L" * 251 + ".jpg",
        "long_255_png": "names/" + "P" * 251 + ".png",
        "long_240": "names/" + "M" * 236 + ".jpg",
        "long_255_multibyte": "names/" + "é" * 125 + "x.jpg",
        "leading_eq": "names/=cmd.jpg",
        "leading_eq_formula": "names/=HYPERLINK(1).jpg",
        "leading_minus": "names/-rf.jpg",
        "leading_plus": "names/+1.jpg",
        "leading_at": "names/@SUM(1).jpg",
        "leading_tab": "names/\tx.jpg",
        "carriage_return": "names/cr\rname.jpg",
        "newline": "names/new\nline.jpg",
        "comma_quote": 'names/a,"b".jpg',
        "hidden": "names/.hidden.jpg",
        "dots": "names/..dots.jpg",
        "unicode": "names/ünïcødé 日本.jpg",
        "upper_ext": "names/UPPER.JPG",
        "heatmap_like": "names/cam.heatmap.jpg",
        "same_stem_jpg": "names/cam.jpg",
        "same_stem_png": "names/cam.png",
        "same_stem_jpeg": "names/cam.jpeg",
        "png_named_jpg": "names/really_png.jpg",
    }
    for tag, rel in names.items():
        data = png if tag == "png_named_jpg" or str(rel).endswith(".png") else jpg
        c.names[tag] = c.add(main, rel, data, "name", "ok")
    for r, seed in zip(roots[1:], (60, 61, 62, 63), strict=True):
        c.names[f"same_name_{r.parent.name}_{r.name}"] = c.add(
            r, "IMG_0001.JPG", _encode(".jpg", _noise(22, 30, seed=seed)), "same_name", "ok")
        c.add(r, "sub/IMG_0002.JPG", _encode(".jpg", _noise(22, 30, seed=seed + 10)), "same_name", "ok")

    # not images: skipped by suffix
    for rel, data in {"notes.txt": b"notes\n", "meta.json": b"{}", "README": b"readme",
                      "photo.jpg.part": jpg[:100], "thumbs.db": b"\x00" * 32}.items():
        c.add(main, f"other/{rel}", data, "non_image", "skip")
    # a clip suffix is taken as a clip: zeros are no video, one failed record
    c.add(main, "other/clip.mp4", b"\x00" * 64, "not_a_video", "failure")

    # file-system objects
    fs = main / "fs"
    fs.mkdir()
    c.special(main, "fs/loop_a.jpg", "symlink_loop", "failure", lambda p: os.symlink("loop_b.jpg", p))
    c.special(main, "fs/loop_b.jpg", "symlink_loop", "failure", lambda p: os.symlink("loop_a.jpg", p))
    c.special(main, "fs/self.jpg", "self_loop", "failure", lambda p: os.symlink("self.jpg", p))
    c.special(main, "fs/dangling.jpg", "dangling", "failure", lambda p: os.symlink("does_not_exist.jpg", p))
    c.special(main, "fs/fifo.jpg", "fifo", "failure", os.mkfifo)
    c.special(main, "fs/dev_zero.jpg", "device", "failure", lambda p: os.symlink("/dev/zero", p))
    c.special(main, "fs/alias.jpg", "file_symlink", "alias", lambda p: os.symlink("../modes/gray.png", p))
    c.special(main, "fs/dir_loop", "dir_loop", "absent", lambda p: os.symlink(".", p))
    c.special(main, "fs/dir_up", "dir_up", "absent", lambda p: os.symlink("..", p))
    c.special(main, "fs/dir_dangling", "dir_dangling", "skip", lambda p: os.symlink("no_such_dir", p))
    c.special(main, "fs/folder.jpg", "directory_named_jpg", "absent", lambda p: p.mkdir())

    by_expect: dict[str, list[Path]] = {k: [] for k in ("ok", "failure", "either", "skip", "alias", "absent")}
    for entry in c.entries:
        by_expect[entry["expect"]].append(entry["path"])
    return {
        "root": root,
        "inputs": roots,
        "entries": c.entries,
        "valid": by_expect["ok"],
        "invalid": by_expect["failure"],
        "damaged": by_expect["either"],
        "non_images": by_expect["skip"],
        "aliases": by_expect["alias"],
        "absent": by_expect["absent"],
        "fs_objects": c.fs_objects,
        "bombs": c.bombs,
        "exif_dates": c.exif_dates,
        "orientations": c.orientations,
        "names": c.names,
        "count": len(c.entries),
    }


def _tiff_ifd_big_endian_orientation(value: int) -> bytes:
    return b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, value, 0) + \
        struct.pack(">I", 0)
