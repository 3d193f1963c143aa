""""Why this class and not that one": compare sheets from the Predictor and from promptcam-run --compare."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from helpers import run_cli
from promptcam.core.iospec import ATTENTION, LOGITS
from promptcam.runtime import Predictor
from promptcam.runtime.compare import COMPARE_SUFFIX, compare_classes, compare_sheet
from promptcam.runtime.images import read_image


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list:
    root = tmp_path_factory.mktemp("compare_images")
    rng = np.random.default_rng(5)
    paths = []
    for i in range(3):
        paths.append(root / f"cam_{i}.jpg")
        cv2.imwrite(str(paths[-1]), rng.integers(0, 256, (48 + 8 * i, 72, 3), dtype=np.uint8))
    return paths


def test_predict_compare_returns_the_top_classes_maps_from_one_inference(tiny_export, images) -> None:
    with Predictor(tiny_export, "ort-cpu", batch_size=4) as predictor:
        predictions = predictor.predict(images, compare=3)
        pixels = np.stack([predictor.prepare(p)[0] for p in images])
        full = predictor.backend.infer(pixels, (LOGITS, ATTENTION))
    grid = predictor.config.grid_size
    for i, prediction in enumerate(predictions):
        expected = np.argsort(-full[LOGITS][i], kind="stable")[:3].tolist()
        assert list(prediction.attention) == expected  # most probable first; the first is the explained one
        assert compare_classes(prediction, 3) == expected
        for c in expected:
            np.testing.assert_allclose(prediction.attention[c], full[ATTENTION][i, c].reshape(-1, grid, grid),
                                       atol=1e-6)


def test_predictor_compare_sheet_with_a_chosen_class(tiny_export, images) -> None:
    with Predictor(tiny_export, "ort-cpu") as predictor:
        first = predictor.predict(images[:1], top_k=5)[0]
        least = first.top_k[-1]  # the least probable of 5 classes: never among the top 2
        prediction, sheet = predictor.compare(images[0], k=2, classes=[least.name])
    assert list(prediction.attention) == [least.index, first.top_k[0].index, first.top_k[1].index]
    assert compare_classes(prediction, 2, [least.index]) == [first.top_k[0].index, first.top_k[1].index, least.index]
    h, w = read_image(images[0]).shape[:2]
    tile_w, tile_h = round(w * 224 / max(h, w)), round(h * 224 / max(h, w))
    assert sheet.shape == (tile_h, 3 * tile_w, 3) and sheet.dtype == np.uint8
    with pytest.raises(KeyError):
        compare_sheet(read_image(images[0]), first, predictor.class_names, 2)  # a plain prediction lacks the maps


def test_run_compare_writes_sheets_in_probability_order(tiny_export, images, tmp_path) -> None:
    result = run_cli("promptcam-run", "--model", tiny_export, *images, "--out", tmp_path / "out", "--heatmaps",
                     tmp_path / "heat", "--compare", "3", "--engine", "ort-cpu", "--no-progress")
    assert result.returncode == 0, result.stderr
    with Predictor(tiny_export, "ort-cpu") as predictor:
        for path in images:
            (sheet_path,) = (tmp_path / "heat").rglob(path.name + COMPARE_SUFFIX)  # beside NAME.heatmap.jpg
            assert sheet_path.with_name(path.name + ".heatmap.jpg").is_file()
            written = cv2.imread(str(sheet_path))
            rgb = read_image(path)
            prediction = predictor.predict([rgb], compare=3)[0]
            expected = compare_sheet(rgb, prediction, predictor.class_names, 3)
            assert written.shape == expected.shape
            # the same tiles in the same order (JPEG noise aside), and not the same tiles reordered
            tile = expected.shape[1] // 3
            swapped = np.concatenate([expected[:, tile:2 * tile], expected[:, :tile], expected[:, 2 * tile:]], axis=1)
            same = np.abs(written.astype(float) - expected).mean()
            assert same < 4.0 < np.abs(written.astype(float) - swapped).mean()


def test_run_compare_needs_heatmaps(tiny_export, images, tmp_path) -> None:
    result = run_cli("promptcam-run", "--model", tiny_export, images[0], "--out", tmp_path / "out", "--compare", "2")
    assert result.returncode != 0 and "--heatmaps" in result.stderr + result.stdout
