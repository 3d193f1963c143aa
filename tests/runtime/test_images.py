"""Real OpenCV decoding: orientation, modes, and one clear error per bad file."""

from __future__ import annotations

import os
import re
import threading

import cv2
import numpy as np
import pytest
from hostile_corpus import make_hostile_corpus
from PIL import Image

from promptcam.core.config import ModelConfig
from promptcam.core.errors import ImageError
from promptcam.runtime import images as images_module
from promptcam.runtime.exif import exif_datetime
from promptcam.runtime.imageheader import image_dimensions
from promptcam.runtime.images import PixelBudget, check_dimensions, iter_image_files, read_image, resize_for_model


def test_exif_orientation_is_applied(tmp_path) -> None:
    data = np.zeros((20, 40, 3), np.uint8)
    data[:, :10] = (255, 0, 0)  # red band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.fromarray(data).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    rgb = read_image(tmp_path / "rotated.jpg")
    assert rgb.shape == (40, 20, 3)
    assert rgb[:8, :, 0].mean() > 200 and rgb[-8:, :, 0].mean() < 60  # the band is now on top


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P"])
def test_other_modes_become_rgb(tmp_path, mode: str) -> None:
    if mode == "I;16":
        cv2.imwrite(str(tmp_path / "img.png"), np.full((10, 12), 40000, np.uint16))
    else:
        Image.new("RGB", (12, 10), (10, 200, 30)).convert(mode).save(tmp_path / "img.png")
    rgb = read_image(tmp_path / "img.png")
    assert rgb.shape == (10, 12, 3) and rgb.dtype == np.uint8


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif", ".bmp", ".webp"])
def test_formats(tmp_path, suffix: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    assert cv2.imwrite(str(tmp_path / f"x{suffix}"), pixels)
    assert read_image(tmp_path / f"x{suffix}").shape == (16, 24, 3)


def test_bad_files_raise_named_errors(tmp_path, monkeypatch) -> None:
    good = tmp_path / "good.jpg"
    cv2.imwrite(str(good), np.zeros((64, 64, 3), np.uint8))
    data = good.read_bytes()
    cases = {
        "zero.jpg": (b"", "zero-byte file"),
        "text.jpg": (b"hello, I am text", "not a decodable image"),
        "truncated.jpg": (data[:40], "not a decodable image"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ImageError, match=message) as info:
            read_image(tmp_path / name)
        assert name in str(info.value)
    with pytest.raises(ImageError, match="cannot read file"):
        read_image(tmp_path / "missing.jpg")
    monkeypatch.setattr(images_module, "MAX_PIXELS", 100)
    with pytest.raises(ImageError, match="64x64 pixels is above the 100 limit"):
        read_image(good)


def test_resize_for_model() -> None:
    config = ModelConfig(arch="x", img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=2)
    assert resize_for_model(np.zeros((100, 50, 3), np.uint8), config).shape == (32, 32, 3)
    assert resize_for_model(np.zeros((10, 20, 3), np.uint8), config).shape == (32, 32, 3)


def test_iter_image_files(tmp_path) -> None:
    (tmp_path / "b" / "c").mkdir(parents=True)
    for rel in ("a.jpg", "b/c/d.PNG", "b/notes.txt", "b/e.webp"):
        (tmp_path / rel).write_bytes(b"x")
    skipped: list = []
    found = [p.relative_to(tmp_path).as_posix() for p in iter_image_files([tmp_path], skipped)]
    assert found == ["a.jpg", "b/e.webp", "b/c/d.PNG"]
    assert [p.name for p in skipped] == ["notes.txt"]
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\na.jpg\nb/e.webp\n")
    assert [p.name for p in iter_image_files([listing])] == ["a.jpg", "e.webp"]


def test_header_dimensions_match_decoded_images(tmp_path) -> None:
    corpus = make_hostile_corpus(tmp_path)
    valid = [e["path"] for e in corpus["entries"] if e["kind"] in ("valid", "mode") and e["expect"] == "ok"]
    assert {p.suffix for p in valid} >= {".jpg", ".png", ".tif", ".bmp", ".webp"}
    for path in valid:
        data = np.fromfile(path, np.uint8)
        decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        assert image_dimensions(data, path.name) == (decoded.shape[1], decoded.shape[0]), path.name
    for bomb in corpus["bombs"]:
        with pytest.raises(ImageError, match="pixels is above the 250000000 limit"):
            check_dimensions(np.fromfile(bomb, np.uint8), bomb.name)


def test_fifo_and_device_are_refused_without_blocking(tmp_path) -> None:
    os.mkfifo(tmp_path / "fifo.jpg")  # opening it for reading would block forever
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    for name in ("fifo.jpg", "zero.jpg"):
        with pytest.raises(ImageError, match="not a regular file"):
            read_image(tmp_path / name)


def test_pixel_budget_queues_decodes_beyond_the_limit() -> None:
    budget = PixelBudget(100)
    entered = threading.Event()

    def second() -> None:
        with budget.hold(60):
            entered.set()

    with budget.hold(60):
        worker = threading.Thread(target=second)
        worker.start()
        assert not entered.wait(0.2) and budget.in_flight == 60  # 120 > 100: the second decode waits
    worker.join(5)
    assert entered.is_set() and budget.in_flight == 0
    with budget.hold(500):  # one image alone always fits
        assert budget.in_flight == 500


def test_hostile_exif_dates_never_become_paths(tmp_path) -> None:
    corpus = make_hostile_corpus(tmp_path)
    seen = {}
    for path, raw in corpus["exif_dates"].items():
        seen[raw] = exif_datetime(path.read_bytes())
        assert seen[raw] is None or re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", seen[raw]), (raw, seen[raw])
    assert seen["/abs/dir 00:00:00"] is None and seen["../../../. 00:00:00"] is None
    assert seen["2024:13:45 99:99:99"] is None and seen["2024:02:30 12:00:00"] is None
    assert seen["0000:00:00 00:00:00"] is None
    assert seen["2024:01:01 12:00:00\x00garbage"] == "2024-01-01T12:00:00"
    for path in (e["path"] for e in corpus["entries"] if e["kind"] == "broken_exif"):
        # no exception; a readable date behind a damaged count is still a date
        assert exif_datetime(path.read_bytes()) in (None, "2024-01-01T00:00:00"), path.name
