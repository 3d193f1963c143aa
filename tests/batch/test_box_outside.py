"""--detections boxes with no pixels in the photo: a failed detection with its reason, never a class read
from black padding; a box partly outside is still classified from its padded crop (issue 28, item 14)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import promptcam.batch.detection_run as detection_run
from promptcam.batch.options import DetectionOptions
from promptcam.batch.run import RunOptions, run_files
from promptcam.runtime import Predictor
from promptcam.runtime.crops import box_failure

W, H = 200, 160

BOXES = {  # name: (bbox, failure expected: None = classified)
    "inside": ([0.2, 0.2, 0.3, 0.3], None),
    "partly_left": ([-0.1, 0.3, 0.3, 0.3], None),
    "partly_below_right": ([0.9, 0.9, 0.3, 0.3], None),
    "left": ([-0.5, 0.3, 0.3, 0.3], "outside"),
    "right": ([1.2, 0.3, 0.2, 0.2], "outside"),
    "above": ([0.3, -0.6, 0.2, 0.3], "outside"),
    "below": ([0.3, 1.05, 0.2, 0.2], "outside"),
    "far_corner": ([-3.0, -3.0, 1.0, 1.0], "outside"),
    "edge_right": ([1.0, 0.3, 0.2, 0.2], "outside"),  # touches the edge: zero width once clipped
    "edge_top": ([0.3, -0.2, 0.2, 0.2], "outside"),  # ends where the photo starts
    "corner_sliver": ([0.999, 0.999, 0.2, 0.2], "pixel"),  # 0.2 x 0.16 px inside the photo
    "tiny": ([0.5, 0.5, 0.002, 0.002], "pixel"),  # 0.4 x 0.32 px
}


def md_file(path: Path, entries: dict[str, list[str]]) -> Path:
    images = [{"file": name, "max_detection_conf": 0.9,
               "detections": [{"category": "1", "conf": 0.9, "bbox": BOXES[box][0]} for box in boxes]}
              for name, boxes in entries.items()]
    path.write_text(json.dumps({"info": {"format_version": "1.4", "detector": "md_v5a.0.0.pt"},
                                "detection_categories": {"1": "animal"}, "images": images}))
    return path


@pytest.fixture(scope="module")
def predictor(tiny_export):
    with Predictor(tiny_export, "ort-cpu", batch_size=4) as p:
        yield p


@pytest.fixture()
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("mixed.jpg", "all_out.jpg", "partly.jpg"):
        cv2.imwrite(str(root / name), rng.integers(60, 256, (H, W, 3), dtype=np.uint8))
    return root


def test_box_failure_rule() -> None:
    for name, (bbox, expected) in BOXES.items():
        reason = box_failure(bbox, W, H)
        if expected is None:
            assert reason is None, name
        elif expected == "outside":
            assert reason == "box outside the photo", name
            assert box_failure(bbox) == reason  # known before the photo is decoded
        else:
            assert "less than one pixel" in reason, (name, reason)
            assert box_failure(bbox) is None  # depends on the photo's size
    assert box_failure([0.999, 0.999, 0.2, 0.2], 4000, 3000) is None  # 4 x 3 px on a 12 MP photo


def test_boxes_outside_are_failed_detections(predictor, photos, tmp_path, monkeypatch) -> None:
    cut: list[int] = []
    original = detection_run.model_input

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        cut.append(len(kwargs["boxes"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(detection_run, "model_input", spy)
    mixed = list(BOXES)
    md = md_file(tmp_path / "md.json", {"mixed.jpg": mixed, "all_out.jpg": ["left", "edge_right", "below"],
                                        "partly.jpg": ["partly_left"]})
    out = tmp_path / "out"
    summary = run_files(predictor, RunOptions(inputs=[photos], out_dir=out, progress=False, heatmaps=tmp_path / "heat",
                                              detections=DetectionOptions(path=md)), log=lambda _: None)
    assert summary.failed == 0 and summary.ok == 3
    data = json.loads((out / "results.json").read_text())
    by_file = {im["file"]: im for im in data["images"]}
    for name, det in zip(mixed, by_file["mixed.jpg"]["detections"], strict=True):
        expected = BOXES[name][1]
        assert det["bbox"] == BOXES[name][0] and det["conf"] == 0.9
        if expected is None:
            assert "failure" not in det and len(det["classifications"]) > 0, name
        else:
            assert "classifications" not in det, name
            reason = "box outside the photo" if expected == "outside" else "less than one pixel"
            assert reason in det["failure"], (name, det)
    # only the boxes with pixels were cut; a photo whose boxes are all outside is not even decoded
    assert sorted(cut) == [1, 5]  # partly.jpg: 1; mixed.jpg: inside, 2 partly, 2 sub-pixel (known after decode)
    assert all("failure" in d and "classifications" not in d for d in by_file["all_out.jpg"]["detections"])
    assert "failure" not in by_file["all_out.jpg"]  # the photo is fine, its detections are not
    assert "classifications" in by_file["partly.jpg"]["detections"][0]

    # the heatmap draws the classified boxes only; the journal keeps the same detections (resume)
    assert Path(by_file["mixed.jpg"]["promptcam"]["heatmap"]).is_file()
    assert "heatmap" not in by_file["all_out.jpg"].get("promptcam", {})
    journal = {r["file"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert journal["mixed.jpg"]["detections"] == by_file["mixed.jpg"]["detections"]

    # the CSV says which detection failed and why
    rows = [r for r in csv.DictReader(open(out / "results.csv", encoding="utf-8", newline=""))
            if r["file"] == "mixed.jpg"]
    for name, row in zip(mixed, rows, strict=True):
        assert (row["status"] == "failed") == (BOXES[name][1] is not None), (name, row)
        assert bool(row["failure"]) == (BOXES[name][1] is not None) and not (row["failure"] and row["top1_class"])

    validate = pytest.importorskip("megadetector.postprocessing.validate_batch_results")
    report = validate.validate_batch_results(str(out / "results.json"))["validation_results"]
    assert report["errors"] == [], report

    # a detector file whose detections bring classifications and failures (results fed back): ours replace them
    brought = json.loads(md.read_text())
    for det in brought["images"][0]["detections"]:
        det.update(classifications=[["0", 0.5]], failure="brought")
    md2 = tmp_path / "md2.json"
    md2.write_text(json.dumps(brought))
    again = tmp_path / "again"
    run_files(predictor, RunOptions(inputs=[photos], out_dir=again, progress=False,
                                    detections=DetectionOptions(path=md2)), log=lambda _: None)
    rerun = {im["file"]: im for im in json.loads((again / "results.json").read_text())["images"]}
    for before, after in zip(by_file["mixed.jpg"]["detections"], rerun["mixed.jpg"]["detections"], strict=True):
        assert before.get("failure") == after.get("failure")
        assert ("classifications" in before) == ("classifications" in after)


def test_a_box_partly_outside_is_cut_with_black_padding(predictor, photos, tmp_path, monkeypatch) -> None:
    crops: list[np.ndarray] = []
    original = detection_run.model_input

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        result = original(*args, **kwargs)
        crops.extend(result.pixels)
        return result

    monkeypatch.setattr(detection_run, "model_input", spy)
    md = md_file(tmp_path / "md.json", {"partly.jpg": ["partly_left"]})
    run_files(predictor, RunOptions(inputs=[photos], out_dir=tmp_path / "out", progress=False,
                                    detections=DetectionOptions(path=md)), log=lambda _: None)
    (crop,) = crops
    assert crop[:, 0].max() == 0 and crop[:, -1].min() > 0  # padded on the left (the photo has no black)
