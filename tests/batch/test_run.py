"""promptcam-run end to end on real files: failures as records, result formats, heatmaps, resume."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers import run_cli
from promptcam.batch.run import RunOptions, run_files
from promptcam.export.validate import eager_outputs
from promptcam.models.checkpoint import load_model
from promptcam.runtime import Predictor
from promptcam.runtime.images import read_image, resize_for_model


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    """Nested folders with good images and every kind of bad file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(14):
        folder = root / ("site_a" if i % 2 else "site_b/cam_1")
        folder.mkdir(parents=True, exist_ok=True)
        size = (48 + 3 * i, 80 - 2 * i, 3)
        name = f"img_{i:02d}.{'jpg' if i % 3 else 'png'}"
        cv2.imwrite(str(folder / name), rng.integers(0, 256, size, dtype=np.uint8))
    good = (root / "site_a" / "img_01.jpg").read_bytes()
    (root / "site_a" / "corrupt.jpg").write_bytes(good[: len(good) // 3])
    (root / "site_a" / "zero.jpg").write_bytes(b"")
    (root / "site_b" / "notes.jpg").write_text("field notes, not a picture")
    (root / "site_b" / "readme.txt").write_text("ignored")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)).save(root / "rotated.jpg", exif=exif)
    return root


def _run(model_dir: Path, inputs: list[Path], out: Path, **kwargs) -> dict:
    predictor = Predictor(model_dir, "ort-cpu", batch_size=kwargs.pop("batch_size", 4))
    summary = run_files(predictor, RunOptions(inputs=inputs, out_dir=out, progress=False, **kwargs), log=lambda _: None)
    return {"summary": summary, "json": json.loads((out / "results.json").read_text())}


def test_folder_run_with_failures(tiny_export, image_tree, tmp_path) -> None:
    result = run_cli("promptcam-run", "--model", tiny_export, image_tree, "--out", tmp_path / "out", "--heatmaps",
                     tmp_path / "heat", "--traits", "2", "--batch-size", "4", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "15 classified, 3 failed, 1 non-image file(s) skipped" in result.stdout
    data = json.loads((tmp_path / "out" / "results.json").read_text())

    # MegaDetector batch output 1.6, whole-image classifications
    assert data["info"]["format_version"] == "1.6"
    assert data["detection_categories"] == {"1": "animal"}
    assert data["classification_categories"] == {str(i): f"class_{i:03d}" for i in range(5)}
    assert set(data["classification_category_descriptions"]) == set(data["classification_categories"])
    files = [im["file"] for im in data["images"]]
    assert len(files) == 18 and "site_b/cam_1/img_00.png" in files and "rotated.jpg" in files
    for image in data["images"]:
        if "failure" in image:
            assert image["detections"] is None and image["failure"]
            continue
        (det,) = image["detections"]
        assert det["category"] == "1" and det["bbox"] == [0.0, 0.0, 1.0, 1.0]
        confs = [conf for _, conf in det["classifications"]]
        assert confs == sorted(confs, reverse=True) and len(confs) == 5
        assert all(cat in data["classification_categories"] for cat, _ in det["classifications"])
        assert len(image["promptcam"]["trait_heads"]) == 2
    failures = {im["file"]: im["failure"] for im in data["images"] if "failure" in im}
    assert set(failures) == {"site_a/corrupt.jpg", "site_a/zero.jpg", "site_b/notes.jpg"}
    assert "zero-byte" in failures["site_a/zero.jpg"] and "notes.jpg" in failures["site_b/notes.jpg"]

    # heatmaps decode and have the source image's (EXIF-rotated) size
    by_file = {im["file"]: im for im in data["images"]}
    rotated = by_file["rotated.jpg"]["promptcam"]
    heat = cv2.imread(rotated["heatmap"])
    assert heat.shape[:2] == (60, 30)
    for name in ("site_a/img_05.jpg", "site_b/cam_1/img_00.png"):
        source = read_image(image_tree / name)
        assert cv2.imread(by_file[name]["promptcam"]["heatmap"]).shape[:2] == source.shape[:2]
        sheet = cv2.imread(by_file[name]["promptcam"]["traits_image"])
        assert sheet is not None and sheet.shape[1] > sheet.shape[0]

    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv", encoding="utf-8")))
    assert len(rows) == 18 and sum(r["status"] == "failed" for r in rows) == 3
    journal = [json.loads(line) for line in open(tmp_path / "out" / "results.jsonl", encoding="utf-8")]
    assert len(journal) == 18


def test_results_equal_eager(tiny_export, tiny_checkpoints, image_tree, tmp_path) -> None:
    out = _run(tiny_export, [image_tree / "site_a"], tmp_path / "out", top_k=5)
    model = load_model(tiny_checkpoints["dino"])
    for image in out["json"]["images"]:
        if "failure" in image:
            continue
        pixels = resize_for_model(read_image(image_tree / "site_a" / image["file"]), model.config)[None]
        logits, _ = eager_outputs(model, pixels)
        probs = np.exp(logits[0] - logits[0].max())
        probs /= probs.sum()
        got = {int(c): p for c, p in image["detections"][0]["classifications"]}
        assert list(got) == list(np.argsort(-probs)[:5])
        for c, p in got.items():
            assert p == pytest.approx(probs[c], abs=2e-6)


def test_resume_after_interruption_is_identical(tiny_export, image_tree, tmp_path) -> None:
    full = _run(tiny_export, [image_tree], tmp_path / "full", batch_size=4)["json"]
    # the on-disk state a kill leaves: some whole chunks journaled, then a torn line
    partial = tmp_path / "partial"
    partial.mkdir()
    lines = (tmp_path / "full" / "results.jsonl").read_text().splitlines(keepends=True)
    (partial / "results.jsonl").write_text("".join(lines[:8]) + lines[8][:25])
    resumed = _run(tiny_export, [image_tree], partial, batch_size=4, resume=True)
    assert resumed["summary"].resumed == 8
    for data in (full, resumed["json"]):
        data["info"].pop("classification_completion_time")
    assert resumed["json"] == full
    assert (partial / "results.csv").read_text() == (tmp_path / "full" / "results.csv").read_text()
    assert len((partial / "results.jsonl").read_text().splitlines()) == 18


def test_existing_run_is_not_overwritten(tiny_export, image_tree, tmp_path) -> None:
    _run(tiny_export, [image_tree / "site_a"], tmp_path / "out")
    result = run_cli("promptcam-run", "--model", tiny_export, image_tree / "site_a", "--out", tmp_path / "out",
                     "--no-progress")
    assert result.returncode == 1 and "pass --resume" in result.stderr


def test_explain_other_class_and_single_files(tiny_export, image_tree, tmp_path) -> None:
    files = [image_tree / "site_a" / "img_01.jpg", image_tree / "rotated.jpg"]
    out = _run(tiny_export, files, tmp_path / "out", explain_class="class_002", heatmaps=tmp_path / "heat")
    assert [im["file"] for im in out["json"]["images"]] == [f.as_posix() for f in files]
    assert all(im["promptcam"]["explained_class"] == "class_002" for im in out["json"]["images"])
    result = run_cli("promptcam-run", "--model", tiny_export, files[0], "--out", tmp_path / "o2", "--class", "zebra")
    assert result.returncode == 1 and "unknown class 'zebra'" in result.stderr


def test_missing_input(tiny_export, tmp_path) -> None:
    result = run_cli("promptcam-run", "--model", tiny_export, tmp_path / "nothing", "--out", tmp_path / "out")
    assert result.returncode == 1 and "nothing: input not found" in result.stderr


def test_trained_model_on_held_out_world(trained_world, tmp_path) -> None:
    world = trained_world["world"]
    val = sorted((world / "val").iterdir())[:3]
    shutil.copytree(val[0], tmp_path / "images" / val[0].name)
    out = _run(trained_world["model"], [tmp_path / "images"], tmp_path / "out", traits=4)
    expected = val[0].name.split(".", 1)[1].replace("_", " ")
    tops = [im["detections"][0]["classifications"][0][0] for im in out["json"]["images"]]
    names = out["json"]["classification_categories"]
    assert sum(names[t] == expected for t in tops) / len(tops) >= 0.9
