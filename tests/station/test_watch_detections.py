"""``promptcam-watch --detections sidecar``: per-image MegaDetector sidecars, classified crop by crop.

Real inbox folders, the real demo model in ONNX Runtime, real JPEG frames with creatures at known
boxes, real SQLite. The watcher is driven scan by scan (``InboxWatcher.step``) on a clock the test
advances, so settle times and the sidecar wait are exact and no test sleeps.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from camera_trap_scenes import build_scene, detection_file_run, val_tiles, write_md
from watch_helpers import Clock, db_rows, watch

from helpers import run_cli
from promptcam.results.megadetector import MEGADETECTOR_CATEGORIES
from promptcam.runtime import Predictor
from promptcam.station.inbox import InboxWatcher
from promptcam.station.options import SidecarOptions, WatchOptions

SETTLE = 1.0
SIDECAR_WAIT = 30.0
INCOMPLETE_WAIT = 10.0


@pytest.fixture(scope="module")
def scene(trained_world, tmp_path_factory):
    """Six 1600x1200 frames (two creatures each, a sub-threshold animal and a person; frame 1 adds a
    tiny creature, frame 2 is stored with EXIF orientation 6) and the reference file run on them."""
    root = tmp_path_factory.mktemp("station")
    scene = build_scene(root / "photos", val_tiles(trained_world["world"], per_class=1), frames=6, large=0)
    md = write_md(root / "md_results.json", scene.md_json())
    return {"scene": scene, "md": md, "root": root}


@pytest.fixture(scope="module")
def predictor(trained_world):
    with Predictor(trained_world["model"], "ort-cpu", batch_size=8) as p:
        yield p


@pytest.fixture(scope="module")
def file_run(scene, predictor, tmp_path_factory) -> dict[str, list[dict]]:
    """``promptcam-run --detections`` on the same frames (with heatmaps, as the watchers below): its
    detections by file, the reference the watcher must agree with."""
    out = tmp_path_factory.mktemp("file_run")
    summary, results = detection_file_run(predictor, scene, out, lambda _: None)
    assert summary.failed == 0
    return {e["file"]: e["detections"] for e in results["images"]}


def _drop(scene, inbox: Path, index: int) -> Path:
    """Copy frame ``index`` into the inbox (as cam/IMG_000N.JPG); returns its path there."""
    name = f"cam/IMG_{index:04d}.JPG"
    target = inbox / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(scene["scene"].root / name, target)
    return target


def _batch_sidecar(scene, index: int, path: Path, *, file: str | None = None) -> None:
    """A MegaDetector batch file of one image, as ``run_detector_batch`` writes it for one photo."""
    name = f"cam/IMG_{index:04d}.JPG"
    path.write_text(json.dumps({
        "info": {"format_version": "1.4", "detector": "md_v5a.0.0.pt"},
        "detection_categories": dict(MEGADETECTOR_CATEGORIES),
        "images": [{"file": file or name, "detections": scene["scene"].detections[name]}]}))


def _bare_sidecar(scene, index: int, path: Path) -> None:
    path.write_text(json.dumps({"detections": scene["scene"].detections[f"cam/IMG_{index:04d}.JPG"]}))


def _watcher(predictor, tmp_path: Path, clock: Clock, logs: list[str], **extra) -> InboxWatcher:
    """A watcher with heatmaps (so photos decode at the reduction of the reference file run)."""
    extra.setdefault("heatmaps", tmp_path / "heat")
    options = WatchOptions(inbox=tmp_path / "inbox", db=tmp_path / "results.sqlite", settle=SETTLE, use_events=False,
                           detections=SidecarOptions(wait=SIDECAR_WAIT), incomplete_wait=INCOMPLETE_WAIT, **extra)
    watcher = InboxWatcher(predictor, options, log=logs.append, clock=clock)
    watcher.start()
    return watcher


def _drive(watcher: InboxWatcher, clock: Clock, seconds: float) -> None:
    """Scan once a second for ``seconds`` of the test's clock, processing every batch that is ready."""
    for _ in range(round(seconds)):
        clock.now += 1.0
        while watcher.step():
            pass


def _rows(tmp_path: Path) -> dict[str, dict]:
    rows = db_rows(tmp_path / "results.sqlite")
    assert len({r["file"] for r in rows}) == len(rows), "one row per image"
    return {r["file"]: r for r in rows}


def _assert_matches_file_run(stored: list[dict], reference: list[dict]) -> None:
    """Every detector detection kept; the same ones classified, with the file run's classes."""
    assert len(stored) == len(reference)
    for mine, theirs in zip(stored, reference, strict=True):
        for key in ("category", "conf", "bbox"):
            assert mine[key] == theirs[key]
        assert ("classifications" in mine) == ("classifications" in theirs)
        if "classifications" in mine:
            assert mine["classifications"][0][0] == theirs["classifications"][0][0]
            assert mine["classifications"][0][1] == pytest.approx(theirs["classifications"][0][1], abs=1e-4)


def _classified(detections: list[dict]) -> list[int]:
    return [i for i, d in enumerate(detections) if "classifications" in d]


def test_sidecars_of_both_shapes_give_per_detection_classifications(scene, predictor, file_run, trained_world,
                                                                    tmp_path):
    inbox, done, heat, log = tmp_path / "inbox", tmp_path / "done", tmp_path / "heat", tmp_path / "rows.jsonl"
    images = {0: _drop(scene, inbox, 0), 2: _drop(scene, inbox, 2), 3: _drop(scene, inbox, 3)}
    _batch_sidecar(scene, 0, inbox / "cam/IMG_0000.JPG.json")  # batch shape, IMG.JPG.json
    _bare_sidecar(scene, 2, inbox / "cam/IMG_0002.json")  # bare shape, IMG.json (frame with EXIF orientation 6)
    _bare_sidecar(scene, 3, inbox / "cam/IMG_0003.JPG.json")
    clock, logs = Clock(), []
    watcher = _watcher(predictor, tmp_path, clock, logs, heatmaps=heat, move_processed=done, jsonl=log)
    try:
        _drive(watcher, clock, 4)
    finally:
        watcher.close()
    rows = _rows(tmp_path)
    assert sorted(rows) == [f"cam/IMG_{i:04d}.JPG" for i in images], logs
    truth, right, total = scene["scene"].truth, 0, 0
    for name, row in rows.items():
        assert row["status"] == "ok" and (row["width"], row["height"]) == (1600, 1200), row
        detections = json.loads(row["detections"])
        _assert_matches_file_run(detections, file_run[name])
        # the sub-threshold animal (0.15) and the person are kept unclassified; both creatures are classified
        assert _classified(detections) == [0, 1]
        assert [d["conf"] for d in detections if "classifications" not in d] == [0.15, 0.8]
        right += sum(int(detections[i]["classifications"][0][0]) == truth[name][i] for i in (0, 1))
        total += 2
        # one overlay per photo, covering its boxes
        assert row["heatmap"] and Path(row["heatmap"]).is_file() and Path(row["heatmap"]).parent.parent == heat
    assert right >= total - 2, (right, total)  # the demo model's crop accuracy is ~0.86
    assert len(list(heat.rglob("*.heatmap.jpg"))) == 3

    # images moved with their sidecars, each sidecar under its own naming form; nothing left in the inbox
    assert not [p for p in inbox.rglob("*") if p.is_file()]
    for name, row in rows.items():
        stored = Path(row["stored_path"])
        assert row["moved"] == 1 and stored.is_file() and stored.relative_to(done).parts[1:] == tuple(name.split("/"))
    day = Path(rows["cam/IMG_0000.JPG"]["stored_path"]).parent
    assert sorted(p.name for p in day.iterdir()) == ["IMG_0000.JPG", "IMG_0000.JPG.json", "IMG_0002.JPG",
                                                     "IMG_0002.json", "IMG_0003.JPG", "IMG_0003.JPG.json"]

    # the JSONL log carries the classified detections
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(line["file"] for line in lines) == sorted(rows)
    assert all(_classified(line["detections"]) == [0, 1] for line in lines)

    # export-results: the MegaDetector file has the detector's categories and one box per detection
    out = tmp_path / "export.json"
    result = run_cli("promptcam-export-results", tmp_path / "results.sqlite", "-o", out)
    assert result.returncode == 0, result.stderr
    exported = json.loads(out.read_text())
    assert exported["detection_categories"] == MEGADETECTOR_CATEGORIES
    names = json.loads((trained_world["model"] / "manifest.json").read_text())["config"]["class_names"]
    assert list(exported["classification_categories"].values()) == names
    assert {e["file"]: e["detections"] for e in exported["images"]} == {
        name: json.loads(row["detections"]) for name, row in rows.items()}
    table = tmp_path / "export.csv"
    result = run_cli("promptcam-export-results", tmp_path / "results.sqlite", "--format", "csv", "-o", table)
    assert result.returncode == 0, result.stderr
    per_detection = list(csv.DictReader(table.open(encoding="utf-8")))
    assert len(per_detection) == 3 * 4 and sum(r["status"] == "classified" for r in per_detection) == 3 * 2
    assert {r["category"] for r in per_detection if r["status"] == "unclassified"} == {"animal", "person"}
    validate = pytest.importorskip("megadetector.postprocessing.validate_batch_results")
    assert validate.validate_batch_results(str(out))["validation_results"]["errors"] == []


def test_an_image_waits_for_its_sidecar_while_others_go_on(scene, predictor, file_run, tmp_path):
    inbox = tmp_path / "inbox"
    waiting = _drop(scene, inbox, 1)  # the frame with a tiny creature: its sidecar comes later
    _drop(scene, inbox, 3)
    _bare_sidecar(scene, 3, inbox / "cam/IMG_0003.JPG.json")
    clock, logs = Clock(), []
    watcher = _watcher(predictor, tmp_path, clock, logs)
    try:
        _drive(watcher, clock, 5)
        assert sorted(_rows(tmp_path)) == ["cam/IMG_0003.JPG"], "the image without its sidecar is not a failure"
        assert set(watcher.sidecar_since) == {waiting.resolve()}

        # the detector is still writing the sidecar: not complete JSON yet, so the image goes on waiting
        sidecar = inbox / "cam/IMG_0001.JPG.json"
        _bare_sidecar(scene, 1, sidecar)
        text = sidecar.read_text()
        sidecar.write_text(text[: len(text) // 2])
        _drive(watcher, clock, 4)
        assert sorted(_rows(tmp_path)) == ["cam/IMG_0003.JPG"] and watcher.not_ready >= 1

        sidecar.write_text(text)
        _drive(watcher, clock, 3)
    finally:
        watcher.close()
    rows = _rows(tmp_path)
    assert sorted(rows) == ["cam/IMG_0001.JPG", "cam/IMG_0003.JPG"] and clock.now - 1000 < SIDECAR_WAIT
    row = rows["cam/IMG_0001.JPG"]
    assert row["status"] == "ok", row["failure"]
    detections = json.loads(row["detections"])
    _assert_matches_file_run(detections, file_run["cam/IMG_0001.JPG"])
    assert _classified(detections) == [0, 1, 2]  # the tiny (24 px) creature at 0.5 is classified too
    _assert_matches_file_run(json.loads(rows["cam/IMG_0003.JPG"]["detections"]), file_run["cam/IMG_0003.JPG"])


def test_missing_and_malformed_sidecars_are_one_failed_record_each(scene, predictor, file_run, tmp_path):
    inbox, failed = tmp_path / "inbox", tmp_path / "failed"
    for index in range(6):
        _drop(scene, inbox, index)
    _batch_sidecar(scene, 0, inbox / "cam/IMG_0000.json")  # good
    # IMG_0001: no sidecar, ever
    (inbox / "cam/IMG_0002.JPG.json").write_text(json.dumps(
        {"detections": [{"category": "1", "conf": 1.7, "bbox": [0.1, 0.1, 0.2, 0.2]}]}))
    _batch_sidecar(scene, 3, inbox / "cam/IMG_0003.JPG.json", file="cam/IMG_9999.JPG")  # another image's
    (inbox / "cam/IMG_0004.JPG.json").write_text('{"detections": [{"category": "1", "conf": 0.9, "bb')  # torn
    (inbox / "cam/IMG_0005.JPG.json").write_text(json.dumps({"boxes": []}))
    # an image whose detections are all below the threshold or not animals: a success, nothing classified
    shutil.copyfile(scene["scene"].root / "cam/IMG_0000.JPG", inbox / "cam/quiet.JPG")
    (inbox / "cam/quiet.JPG.json").write_text(json.dumps({"detections": [
        {"category": "1", "conf": 0.19, "bbox": [0.2, 0.2, 0.1, 0.1]},
        {"category": "2", "conf": 0.9, "bbox": [0.5, 0.5, 0.1, 0.2]}]}))
    clock, logs = Clock(), []
    watcher = _watcher(predictor, tmp_path, clock, logs, failed_dir=failed)
    try:
        _drive(watcher, clock, 5)
        early = _rows(tmp_path)
        assert sorted(early) == ["cam/IMG_0000.JPG", "cam/IMG_0002.JPG", "cam/IMG_0003.JPG", "cam/IMG_0005.JPG",
                                 "cam/quiet.JPG"], "the missing and the torn sidecar are still waited for"
        _drive(watcher, clock, SIDECAR_WAIT + 5)
        _drive(watcher, clock, 5)  # and nothing more happens
    finally:
        watcher.close()
    rows = _rows(tmp_path)
    assert len(rows) == 7
    assert rows["cam/IMG_0000.JPG"]["status"] == "ok"
    _assert_matches_file_run(json.loads(rows["cam/IMG_0000.JPG"]["detections"]), file_run["cam/IMG_0000.JPG"])
    quiet = rows["cam/quiet.JPG"]
    assert quiet["status"] == "ok" and quiet["heatmap"] is None and (quiet["width"], quiet["height"]) == (1600, 1200)
    assert [("classifications" in d) for d in json.loads(quiet["detections"])] == [False, False]

    failures = {name: row["failure"] for name, row in rows.items() if row["status"] == "failed"}
    assert sorted(failures) == [f"cam/IMG_000{i}.JPG" for i in range(1, 6)]
    missing = failures["cam/IMG_0001.JPG"]
    assert "IMG_0001.JPG: no detection sidecar (IMG_0001.JPG.json or IMG_0001.json)" in missing
    assert f"--sidecar-wait {SIDECAR_WAIT:g} s" in missing
    assert "IMG_0002.JPG.json" in failures["cam/IMG_0002.JPG"] and "conf 1.7" in failures["cam/IMG_0002.JPG"]
    assert "IMG_0003.JPG.json" in failures["cam/IMG_0003.JPG"]
    assert "describes 'cam/IMG_9999.JPG'" in failures["cam/IMG_0003.JPG"]
    assert "IMG_0004.JPG.json" in failures["cam/IMG_0004.JPG"] and "not complete JSON" in failures["cam/IMG_0004.JPG"]
    assert "IMG_0005.JPG.json: not a detection sidecar" in failures["cam/IMG_0005.JPG"]
    assert all(rows[name]["detections"] is None for name in failures)

    # failed images went to --failed with their sidecars; the good ones stay (no --move-processed)
    assert sorted(p.relative_to(failed).as_posix() for p in failed.rglob("*") if p.is_file()) == [
        "cam/IMG_0001.JPG", "cam/IMG_0002.JPG", "cam/IMG_0002.JPG.json", "cam/IMG_0003.JPG", "cam/IMG_0003.JPG.json",
        "cam/IMG_0004.JPG", "cam/IMG_0004.JPG.json", "cam/IMG_0005.JPG", "cam/IMG_0005.JPG.json"]
    assert sorted(p.name for p in (inbox / "cam").iterdir()) == ["IMG_0000.JPG", "IMG_0000.json", "quiet.JPG",
                                                                 "quiet.JPG.json"]


def test_watch_command_with_sidecars(scene, trained_world, tmp_path):
    inbox, db = tmp_path / "inbox", tmp_path / "results.sqlite"
    _drop(scene, inbox, 3)
    _bare_sidecar(scene, 3, inbox / "cam/IMG_0003.JPG.json")
    result = watch(trained_world["model"], inbox, db, "--detections", "sidecar", "--det-threshold", "0.1",
                   "--sidecar-wait", "5")
    assert result.returncode == 0, result.stderr
    (row,) = db_rows(db)
    assert row["status"] == "ok"
    # at 0.1 the sub-threshold animal (0.15) is classified too; the person is not an animal
    assert _classified(json.loads(row["detections"])) == [0, 1, 2]


@pytest.mark.parametrize(("args", "message"), [
    (("--detections", "growing"), "--detections 'growing' is not a mode of promptcam-watch"),
    (("--detections", "sidecar", "--traits", "2"), "--traits cannot be used with --detections"),
])
def test_watch_refuses_what_it_cannot_do(tmp_path, args, message):
    (tmp_path / "inbox").mkdir()
    result = run_cli("promptcam-watch", tmp_path / "inbox", "--model", tmp_path / "no-model", "--once", *args)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
