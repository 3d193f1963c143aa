"""JPEG decoding with simplejpeg (``fastjpeg``): the very pixels of OpenCV's decode at every reduction, EXIF
orientation applied as OpenCV applies it, damaged files failing as before, and OpenCV alone without it."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
from camera_trap_scenes import val_tiles, with_orientation
from hostile_corpus import make_hostile_corpus

from promptcam.core.errors import ImageError
from promptcam.runtime import Predictor, fastjpeg
from promptcam.runtime.images import (
    check_dimensions,
    decode_image,
    decode_with_opencv,
    read_file_bytes,
    resize_for_model,
)

pytest.importorskip("simplejpeg")
REDUCTIONS = (1, 2, 4, 8)


def decode_or_error(decode, buf: np.ndarray, name: str, reduction: int) -> np.ndarray | str:
    try:
        return decode(buf, name, reduction=reduction)
    except ImageError as exc:
        return f"ImageError: {exc}"


def jpeg_of(rgb: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def corpus_jpegs(tmp_path_factory) -> list:
    corpus = make_hostile_corpus(tmp_path_factory.mktemp("hostile"))
    paths = [e["path"] for e in corpus["entries"]
             if e["path"].suffix.lower() in (".jpg", ".jpeg") and e["path"].is_file() and not e["path"].is_symlink()]
    return [(p, p.read_bytes()) for p in paths]


def test_same_pixels_or_same_error_as_opencv_on_the_hostile_corpus(corpus_jpegs):
    """Every JPEG of the hostile corpus (truncated, bit-flipped, zero tails, gray, CMYK, progressive, EXIF
    orientations in both byte orders, broken IFDs, bombs) at every reduction: the same array as OpenCV's
    decode, or an ImageError from both."""
    assert len(corpus_jpegs) > 60
    by_turbo, refused = 0, 0
    for path, data in corpus_jpegs:
        buf = np.frombuffer(data, np.uint8)
        for reduction in REDUCTIONS:
            ours = decode_or_error(decode_image, buf, str(path), reduction)
            try:
                size = check_dimensions(buf, str(path))
            except ImageError:  # refused from the header (a bomb, a broken header) by decode_image as well
                assert isinstance(ours, str) and str(path) in ours
                continue
            reference = decode_or_error(decode_with_opencv, buf, str(path), reduction)
            if isinstance(ours, str) or isinstance(reference, str):
                assert isinstance(ours, str) and isinstance(reference, str), (path, reduction)
                assert str(path) in ours
                refused += 1
                continue
            assert ours.dtype == np.uint8 and ours.ndim == 3
            assert np.array_equal(ours, reference), (path, reduction, ours.shape, reference.shape)
            if fastjpeg.decode_jpeg_rgb(buf, *size, reduction) is not None:
                by_turbo += 1
    assert by_turbo > 150 and refused > 10  # both paths exercised: simplejpeg decoded, damaged files refused


@pytest.mark.parametrize("orientation", range(0, 10))
@pytest.mark.parametrize("reduction", (1, 8))
def test_exif_orientation_as_opencv_applies_it(orientation, reduction):
    stored = noise(48, 80, seed=orientation)
    data = with_orientation(jpeg_of(stored), orientation)
    buf = np.frombuffer(data, np.uint8)
    ours = decode_image(buf, reduction=reduction)
    assert np.array_equal(ours, decode_with_opencv(buf, reduction=reduction))
    assert fastjpeg.exif_orientation(buf) == (orientation if 1 <= orientation <= 8 else 1)
    upright = decode_image(jpeg_of(stored), reduction=reduction)
    t = upright.transpose(1, 0, 2)  # EXIF: 5 transpose, 6 turn clockwise, 7 transverse, 8 turn counter-clockwise
    turned = {2: upright[:, ::-1], 3: upright[::-1, ::-1], 4: upright[::-1],
              5: t, 6: np.rot90(upright, k=-1), 7: t[::-1, ::-1], 8: np.rot90(upright, k=1)}.get(orientation, upright)
    assert np.array_equal(ours, turned)


def test_orientation_big_endian_long_typed_and_after_another_app1():
    stored = noise(40, 64, seed=3)
    plain = jpeg_of(stored)
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack(">I", 0)
    big = b"Exif\x00\x00MM\x00*" + struct.pack(">I", 8) + ifd
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta/>"
    long_typed = b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + \
        struct.pack("<HHII", 0x0112, 4, 1, 8) + struct.pack("<I", 0)
    variants = {
        "big_endian": plain[:2] + _app1(big) + plain[2:],
        "xmp_first": plain[:2] + _app1(xmp) + _app1(big) + plain[2:],
        "long_typed": plain[:2] + _app1(long_typed) + plain[2:],
    }
    for name, data in variants.items():
        buf = np.frombuffer(data, np.uint8)
        for reduction in (1, 4):
            assert np.array_equal(decode_image(buf, name, reduction=reduction),
                                  decode_with_opencv(buf, name, reduction=reduction)), (name, reduction)
    assert decode_image(variants["big_endian"]).shape == (64, 40, 3)


def _app1(payload: bytes) -> bytes:
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def test_damaged_jpeg_is_one_clear_error_naming_the_file(tmp_path):
    good = jpeg_of(noise(600, 800))
    damaged = good[:300] + b"\x00" * 64 + b"\xff\xd9"  # a header, then nothing decodable
    path = tmp_path / "cam03" / "IMG_0042.JPG"
    path.parent.mkdir()
    for data in (b"\xff\xd8\xff\xe0" + b"\x00" * 40, good[:40], damaged):
        path.write_bytes(data)
        for reduction in (1, 8):
            try:
                decode_image(read_file_bytes(path), str(path), reduction=reduction)
            except ImageError as exc:
                assert str(path) in str(exc)
            else:  # libjpeg may render what it has of a damaged scan: then as OpenCV renders it
                buf = read_file_bytes(path)
                assert np.array_equal(decode_image(buf, str(path), reduction=reduction),
                                      decode_with_opencv(buf, str(path), reduction=reduction))
    path.write_bytes(good[:40])
    with pytest.raises(ImageError, match="IMG_0042.JPG"):
        decode_image(read_file_bytes(path), str(path), reduction=8)


def test_without_simplejpeg_opencv_decodes(monkeypatch):
    data = with_orientation(jpeg_of(noise(48, 80)), 6)
    with_turbo = decode_image(data, reduction=2)
    monkeypatch.setattr(fastjpeg, "simplejpeg", None)
    assert not fastjpeg.available() and fastjpeg.decode_jpeg_rgb(np.frombuffer(data, np.uint8), 80, 48, 2) is None
    assert np.array_equal(decode_image(data, reduction=2), with_turbo)


def test_model_predicts_the_same_from_either_decoder(trained_world):
    """The held-out world upscaled to 12 MP, decoded at 1/8 by simplejpeg and by OpenCV: the same pixels,
    hence the same top-1 on the demo model."""
    tiles = val_tiles(trained_world["world"], per_class=1)
    with Predictor(trained_world["model"], "ort-cpu", batch_size=8) as predictor:
        batches = {"turbo": [], "opencv": []}
        for tile, _ in tiles:
            data = np.frombuffer(jpeg_of(cv2.resize(tile, (4000, 3000), interpolation=cv2.INTER_LINEAR), 88), np.uint8)
            turbo = fastjpeg.decode_jpeg_rgb(data, 4000, 3000, 8)
            assert turbo is not None and turbo.shape == (375, 500, 3)
            batches["turbo"].append(resize_for_model(turbo, predictor.config))
            batches["opencv"].append(resize_for_model(decode_with_opencv(data, reduction=8), predictor.config))
        top1 = {name: [p.top_k[0].index for p in predictor.predict(pixels)] for name, pixels in batches.items()}
    assert np.array_equal(np.stack(batches["turbo"]), np.stack(batches["opencv"]))
    assert top1["turbo"] == top1["opencv"] and len(top1["turbo"]) == len(tiles)
    assert np.mean([i == cls for i, (_, cls) in zip(top1["turbo"], tiles, strict=True)]) > 0.5
