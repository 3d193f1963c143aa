"""``promptcam train --detections``: training crops are the run's crops, the jitter stays in its bounds,
and a hostile detector file costs its bad entries only. Real JPEGs, a real detector file, the run's own
loader (``DetectionPlan.load_item``) as the reference."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from camera_trap_scenes import write_jpeg

from promptcam.batch.detection_run import DetectionPlan
from promptcam.batch.inputs import collect_inputs
from promptcam.batch.options import DetectionOptions
from promptcam.core.errors import ConfigError, PromptCamError
from promptcam.models.registry import make_config
from promptcam.runtime.crops import RUN_CONTEXT, CropContext, crop_square
from promptcam.train.crop_data import (
    NO_JITTER,
    CropJitter,
    DetectionCropData,
    crop_samples,
    cut_training_crop,
    margin_range,
)
from promptcam.train.data import find_classes, list_samples

CONFIG = make_config("vit_micro_patch8", 2, class_names=["deer", "fox"])
CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}


def _photos(root: Path) -> list[tuple[Path, int]]:
    classes = find_classes(root / "train")
    return list_samples(root / "train", [f for f, _ in classes])


def _md(path: Path, images: list) -> Path:
    path.write_text(json.dumps({"info": {"format_version": "1.4"}, "detection_categories": CATEGORIES,
                                "images": images}))
    return path


@pytest.fixture(scope="module")
def large_photos(tmp_path_factory) -> Path:
    """Two 2400x1800 noisy JPEGs (crops decoded at a JPEG reduction), one stored with EXIF orientation 6,
    boxes of several sizes, one leaving the photo (padded), one tiny (under the model's size)."""
    root = tmp_path_factory.mktemp("large")
    rng = np.random.default_rng(0)
    images = []
    for k, (cls, orientation) in enumerate((("deer", None), ("fox", 6))):
        frame = cv2.resize(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), (2400, 1800),
                           interpolation=cv2.INTER_CUBIC)
        frame = np.clip(frame.astype(np.int16) + rng.integers(-20, 21, frame.shape), 0, 255).astype(np.uint8)
        name = f"train/{cls}/IMG_{k}.JPG"
        write_jpeg(root / name, frame, orientation=orientation)
        images.append({"file": name, "detections": [
            {"category": "1", "conf": 0.9, "bbox": [0.1, 0.2, 0.35, 0.4]},  # big: alone, a 1/8 decode would do
            {"category": "1", "conf": 0.8, "bbox": [0.85, 0.7, 0.2, 0.25]},  # leaves the photo
            {"category": "1", "conf": 0.7, "bbox": [0.5, 0.1, 0.01, 0.012]},  # 24 px: the photo decodes at full size
            {"category": "2", "conf": 0.9, "bbox": [0.4, 0.4, 0.1, 0.3]},  # a person: not a training crop
        ]})
    _md(root / "md.json", images)
    return root


def test_training_crops_are_the_runs_crops_byte_for_byte(large_photos):
    options = DetectionOptions(large_photos / "md.json")
    samples, counts = crop_samples(_photos(large_photos), large_photos, options)
    assert counts.crops == 6 and counts.photos_with_crops == 2 and len(samples) == 6
    files = collect_inputs([large_photos / "train"]).files
    plan = DetectionPlan(DetectionOptions(large_photos / "md.json", root=large_photos), files)
    run_crops = {}
    for item in files:
        loaded = plan.load_item(item, CONFIG, keep_preview=False)
        assert loaded.failure is None and len(loaded.pixels) == 3
        entry = plan.matching.entries[item.key]
        for row, index in enumerate(loaded.selected):
            run_crops[(Path(item.path).resolve(), tuple(entry["detections"][index]["bbox"]))] = loaded.pixels[row]
    data = DetectionCropData(samples, CONFIG, jitter=NO_JITTER)
    for i, sample in enumerate(samples):
        expected = run_crops[(sample.path.resolve(), sample.box)]
        assert np.array_equal(cut_training_crop(sample, CONFIG), expected), sample
        crop, label = data.crop(i)
        assert np.array_equal(crop, expected) and label == ("fox" in str(sample.path))
    # the photo's other boxes set the JPEG reduction: cut alone, the big box would decode at 1/8 instead
    big = next(s for s in samples if s.box[2] == 0.35)
    alone = type(big)(big.path, big.label, big.box, (big.box,))
    assert not np.array_equal(cut_training_crop(alone, CONFIG), run_crops[(big.path.resolve(), big.box)])
    # jitter changes the crop; the run's context gives it back
    jittered = DetectionCropData(samples, CONFIG, jitter=CropJitter(0.0, 0.3, 0.1))
    torch.manual_seed(0)
    assert sum(not np.array_equal(jittered.crop(i)[0], data.crop(i)[0]) for i in range(len(samples))) >= 5


def test_jitter_stays_in_its_bounds():
    jitter = CropJitter(0.02, 0.25, 0.05)
    generator = torch.Generator().manual_seed(1)
    draws = [jitter.draw(generator) for _ in range(2000)]
    margins = np.array([d.margin for d in draws])
    shifts = np.array([(d.shift_x, d.shift_y) for d in draws])
    assert margins.min() >= 0.02 and margins.max() <= 0.25 and np.abs(shifts).max() <= 0.05
    # spread over the range, not stuck at one value
    assert margins.min() < 0.04 and margins.max() > 0.23 and shifts.min() < -0.045 and shifts.max() > 0.045
    # in pixels: the square's side and centre follow the draw
    box, width, height = [0.2, 0.3, 0.25, 0.1], 1000, 800  # longer side 250 px
    run = crop_square(box, width, height)
    assert run.side == pytest.approx(250 * 1.2) and crop_square(box, width, height, RUN_CONTEXT) == run
    for context in draws[:200]:
        square = crop_square(box, width, height, context)
        assert 250 * 1.04 - 1e-9 <= square.side <= 250 * 1.5 + 1e-9
        dx = square.left + square.side / 2 - (run.left + run.side / 2)
        dy = square.top + square.side / 2 - (run.top + run.side / 2)
        assert abs(dx) <= 0.05 * 250 + 1e-9 and abs(dy) <= 0.05 * 250 + 1e-9
    assert NO_JITTER.draw() == RUN_CONTEXT and NO_JITTER.is_none
    assert CropJitter(0.0, 0.0, 0.0).draw(generator) == CropContext(0.0, 0.0, 0.0)
    for bad in ((0.3, 0.2, 0.0), (-0.1, 0.2, 0.0), (0.0, 1.5, 0.0), (0.0, 0.2, 0.6), (0.0, 0.2, -0.1)):
        with pytest.raises(ConfigError):
            CropJitter(*bad)
    assert margin_range("0,0.25") == (0.0, 0.25) and margin_range("0.1") == (0.1, 0.1)
    for text in ("a,b", "0,1,2", "nan,0.2"):
        with pytest.raises(ConfigError):
            margin_range(text)


def test_margin_is_foreign_context_in_pixels(tmp_path):
    """A white square box on black: a crop with margin m is white over 1 / (1 + 2m)^2 of its area."""
    frame = np.zeros((600, 800, 3), np.uint8)
    frame[200:400, 300:500] = 255
    path = tmp_path / "train" / "deer" / "a.png"
    path.parent.mkdir(parents=True)
    cv2.imwrite(str(path), frame)
    md = _md(tmp_path / "md.json", [{"file": "train/deer/a.png", "detections": [
        {"category": "1", "conf": 0.9, "bbox": [300 / 800, 200 / 600, 200 / 800, 200 / 600]}]}])
    (sample,), _ = crop_samples([(path, 0)], tmp_path, DetectionOptions(md))
    for margin in (0.0, 0.1, 0.2, 0.5):
        crop = cut_training_crop(sample, CONFIG, CropContext(margin))
        white = (crop.mean(axis=2) > 127).mean()
        assert white == pytest.approx(1 / (1 + 2 * margin) ** 2, abs=0.03), margin
    shifted = cut_training_crop(sample, CONFIG, CropContext(0.0, 0.25, 0.0))  # a quarter box to the right
    assert (shifted[:, :40].mean() > 127) and (shifted[:, 52:].mean() < 127)


def test_hostile_detector_entries_are_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(3)
    names = {}
    for cls in ("deer", "fox"):
        for k in range(3):
            rel = f"train/{cls}/{k}.jpg"
            write_jpeg(tmp_path / rel, rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
            names[(cls, k)] = rel
    (tmp_path / "train" / "fox" / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")  # header unreadable
    good = [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.5, 0.5]}]
    surer = {"category": "1", "conf": 0.95, "bbox": [0.2, 0.2, 0.3, 0.3]}
    images = [
        {"file": names[("deer", 0)], "detections": good},
        {"file": names[("deer", 1)], "detections": [*good, surer]},
        {"file": names[("deer", 2)], "detections": [{"category": "1", "conf": "high", "bbox": [0, 0, 1, 1]}]},
        {"file": names[("fox", 0)], "detections": [{"category": "9", "conf": 0.9, "bbox": [0, 0, 1, 1]}]},
        {"file": names[("fox", 1)], "detections": [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.5]}]},
        {"file": names[("fox", 1)], "detections": good},  # listed again, well-formed: this one is used
        {"file": names[("fox", 2)], "detections": None, "failure": "Failure image access"},
        {"file": "train/fox/3.jpg", "detections": good},
        "not an entry", {"detections": good}, {"file": 7, "detections": good},
        {"file": names[("deer", 0)] + ".missing", "detections": good},
        {"file": "../../etc/passwd", "detections": good},
        {"file": "train/deer/nan.jpg", "detections": [{"category": "1", "conf": float("nan"), "bbox": [0, 0, 1, 1]}]},
        {"file": "train/deer/x.jpg", "detections": "none"},
        {"file": "train/deer/y.jpg", "detections": None},
    ]
    md = tmp_path / "md.json"
    md.write_text(json.dumps({"info": {"format_version": "1.3"}, "detection_categories": CATEGORIES,
                              "images": images}))
    photos = list_samples(tmp_path / "train", ["deer", "fox"])
    samples, counts = crop_samples(photos, tmp_path, DetectionOptions(md))
    assert len(counts.entries_skipped) == 9, counts.entries_skipped
    assert all("images[" in reason for reason in counts.entries_skipped)
    assert counts.photos == 7 and counts.photos_detector_failed == 1 and len(counts.photos_unreadable) == 1
    assert counts.photos_not_in_file == 2  # deer/2 and fox/0: their only entries were malformed
    assert counts.crops == 4 and counts.photos_with_crops == 3
    assert counts.entries_not_in_data == 2  # the missing photo and ../../etc/passwd, never read
    assert [s.label for s in samples] == [0, 0, 0, 1]
    assert "4 crop(s) from 3 of 7 photo(s)" in counts.summary()
    # the most confident box first, as the run orders them; boxes outside the photo are counted, not cut
    assert samples[1].box == (0.2, 0.2, 0.3, 0.3)
    md.write_text(json.dumps({"detection_categories": CATEGORIES, "images": [
        {"file": names[("deer", 0)], "detections": [{"category": "1", "conf": 0.9, "bbox": [1.5, 0.1, 0.2, 0.2]},
                                                     {"category": "1", "conf": 0.8, "bbox": [0.5, 0.5, 1e-9, 1e-9]},
                                                     {"category": "1", "conf": 0.7, "bbox": [0.1, 0.1, 0.5, 0.5]}]},
        {"file": names[("deer", 1)], "detections": []}]}))
    samples, counts = crop_samples(photos, tmp_path, DetectionOptions(md))
    assert counts.boxes_outside == 2 and counts.crops == 1 and counts.photos_without_boxes == 1
    # a photo whose header reads but whose pixels do not: that draw takes the next crop, with its own label
    broken = tmp_path / "train" / "deer" / "0.jpg"
    broken.write_bytes(broken.read_bytes()[:400])
    both = samples + [type(samples[0])(tmp_path / names[("fox", 0)], 1, (0.1, 0.1, 0.5, 0.5), ((0.1, 0.1, 0.5, 0.5),))]
    data = DetectionCropData(both, CONFIG)
    crop, label = data.crop(0)
    assert label == 1 and crop.shape == (64, 64, 3) and data.failed == {broken}
    # the whole file is one clear error when it is not a detector file at all
    for text in ("{", json.dumps({"images": []}), json.dumps({"info": {"format_version": "2.0"}, "images": [],
                                                               "detection_categories": CATEGORIES})):
        md.write_text(text)
        with pytest.raises(PromptCamError):
            crop_samples(photos, tmp_path, DetectionOptions(md))


def test_train_cli_trains_on_scene_crops(tmp_path):
    """``promptcam train --detections`` end to end (its click command in this process: a subprocess would
    import torch again; a random micro backbone, one epoch): it reads the scenes' md.json, says what it
    left out, and writes its checkpoints."""
    from click.testing import CliRunner

    from promptcam.train.cli import train
    from promptcam.train.scenes import MD_NAME, SceneSpec, generate_scenes
    from promptcam.train.synthetic import WorldSpec

    spec = SceneSpec(world=WorldSpec(head_colours=2, tail_colours=1), train_per_class=6, val_per_class=2,
                     empty_rate=0.4, seed=1)
    scenes = generate_scenes(tmp_path / "scenes", spec)
    md = json.loads((scenes / MD_NAME).read_text())
    md["images"].append({"file": "train/x.jpg", "detections": [{"category": "1", "conf": 2.0, "bbox": [0, 0, 1, 1]}]})
    (scenes / MD_NAME).write_text(json.dumps(md))
    photos = [p for p in (scenes / "train").rglob("*.jpg")] + [p for p in (scenes / "val").rglob("*.jpg")]
    empty = sum(1 for e in md["images"] if e["file"] != "train/x.jpg"
                and not any(d["category"] == "1" and d["conf"] >= 0.2 for d in e["detections"]))
    assert len(photos) == 16 and 0 < empty < 16
    args = ["--data", scenes, "--detections", scenes / MD_NAME, "--backbone", "vit_micro_patch8"]
    result = CliRunner().invoke(train, list(map(str, [
        *args, "--out", tmp_path / "run", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "8",
        "--workers", "0", "--no-progress", "--crop-margin", "0,0.3", "--crop-shift", "0.1"])))
    assert result.exit_code == 0, result.output
    assert f"from {16 - empty} of 16 photo(s); left out: 1 malformed detector entr(ies)" in result.output
    assert f"{empty} without a qualifying box" in result.output
    assert (tmp_path / "run" / "best.pt").is_file()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    bad = CliRunner().invoke(train, list(map(str, [*args, "--out", tmp_path / "bad", "--crop-margin", "0.3,0.1"])))
    assert bad.exit_code != 0 and "crop margin jitter" in bad.output and "Traceback" not in bad.output
