"""Issue 28, item 3: a sidecar's bytes and a photo's crops are bounded.

``MAX_SIDECAR_BYTES`` was defined but never applied (a 43 MB sidecar of 800k detections was read under
the 512 MiB image limit, at a peak of 839 MB, and a 50 MB JSON value was stored in the row), and
every qualifying box became a crop (20k boxes in a 1.4 MB sidecar: 20k crops, ~6 GB at 224 px).
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from watch_helpers import Clock, db_rows, jpeg

from promptcam.results.megadetector import (
    LEFT_OUT_KEY,
    LEFT_OUT_REASON,
    MAX_CROPS_PER_PHOTO,
    left_out_count,
    mark_left_out,
    select_crops,
)
from promptcam.results.store import ResultStore
from promptcam.runtime.predictor import Predictor
from promptcam.station import sidecar as sidecar_module
from promptcam.station.inbox import InboxWatcher
from promptcam.station.options import SidecarOptions, WatchOptions
from promptcam.station.sidecar import MAX_SIDECAR_BYTES


@pytest.fixture(scope="module")
def predictor(tiny_predictor: Predictor) -> Predictor:
    return tiny_predictor


def _watch(predictor: Predictor, inbox: Path, db: Path, logs: list[str], steps: int = 4) -> InboxWatcher:
    clock = Clock()
    options = WatchOptions(inbox=inbox, db=db, settle=0.5, use_events=False, incomplete_wait=0.0,
                           detections=SidecarOptions(wait=5.0))
    watcher = InboxWatcher(predictor, options, log=logs.append, clock=clock)
    try:
        watcher.start()
        for _ in range(steps):
            clock.now += 1.0
            watcher.step()
    finally:
        watcher.close()
    return watcher


def _detection(i: int, conf: float | None = None, category: str = "1") -> dict:
    x = (i % 97) / 100
    y = (i // 97 % 97) / 100
    return {"category": category, "conf": conf if conf is not None else round(0.2 + (i % 800) / 1000, 3),
            "bbox": [x, y, 0.02 + (i % 5) / 100, 0.03]}


def _padded(text: str, size: int) -> str:
    """``text`` (a JSON object) padded with spaces inside its braces to exactly ``size`` bytes."""
    assert text.endswith("}") and len(text) <= size
    return text[:-1] + " " * (size - len(text)) + "}"


# -- the sidecar byte limit ------------------------------------------------------------------------

def _big_sidecars() -> dict[str, str]:
    """Sidecars over the limit, of several shapes: whitespace, one huge value, many detections, a batch file."""
    one = json.dumps({"detections": [_detection(0, 0.9)]})
    # below the threshold: before the fix the file was read, but made no crops (the test stays fast)
    many = {"detections": [_detection(i, 0.01) for i in range(MAX_SIDECAR_BYTES // 60)]}
    batch = {"images": [{"file": "PLACEHOLDER", "detections": [_detection(0, 0.9)]}],
             "detection_categories": {"1": "animal"}, "info": {"format_version": "1.4",
                                                               "pad": "x" * (MAX_SIDECAR_BYTES + 10)}}
    return {
        "one_byte_over": _padded(one, MAX_SIDECAR_BYTES + 1),
        "spaces_20mib": _padded(one, 20 * 2**20),
        "huge_value": json.dumps({"detections": [{**_detection(0, 0.9), "note": "n" * (24 * 2**20)}]}),
        "many_detections": json.dumps(many),
        "batch_file": json.dumps(batch),
    }


def test_a_sidecar_over_the_byte_limit_is_one_failed_row_naming_it(predictor, tmp_path: Path) -> None:
    """Before the fix every one of these was read (and the two valid ones classified; the 24 MiB note was
    stored in the row); now each is a failed row naming the sidecar and the limit, its bytes never read."""
    inbox, db = tmp_path / "inbox", tmp_path / "results.sqlite"
    big = _big_sidecars()
    for index, (name, text) in enumerate(big.items()):
        jpeg(inbox / f"{name}.jpg", index)
        (inbox / f"{name}.jpg.json").write_text(text.replace("PLACEHOLDER", f"{name}.jpg"))
    at_limit = _padded(json.dumps({"detections": [_detection(0, 0.9)]}), MAX_SIDECAR_BYTES)
    jpeg(inbox / "at_limit.jpg", 99)
    (inbox / "at_limit.jpg.json").write_text(at_limit)
    assert all(len(t) > MAX_SIDECAR_BYTES for t in big.values()) and len(at_limit) == MAX_SIDECAR_BYTES

    reads = []
    original = sidecar_module.parse_sidecar

    def counting(path, data, image_name):  # noqa: ANN001, ANN202 - counts the bytes parsed
        reads.append(len(data))
        return original(path, data, image_name)

    sidecar_module.parse_sidecar = counting
    import promptcam.station.intake as intake_module
    intake_module.parse_sidecar = counting
    try:
        logs: list[str] = []
        _watch(predictor, inbox, db, logs)
    finally:
        sidecar_module.parse_sidecar = original
        intake_module.parse_sidecar = original
    rows = {row["file"]: row for row in db_rows(db)}
    assert sorted(rows) == sorted([f"{n}.jpg" for n in big] + ["at_limit.jpg"])
    assert rows["at_limit.jpg"]["status"] == "ok", rows["at_limit.jpg"]["failure"]
    for name in big:
        row = rows[f"{name}.jpg"]
        assert row["status"] == "failed", (name, row["failure"])
        assert f"{name}.jpg.json" in row["failure"] and "16 MiB" in row["failure"], row["failure"]
        assert len(row["failure"]) < 1000 and row["detections"] is None
    assert max(reads) <= MAX_SIDECAR_BYTES, "a sidecar over the limit was read and parsed"


# -- the crops of one photo --------------------------------------------------------------------------

def test_select_crops_takes_the_most_confident_first() -> None:
    dets = [_detection(0, 0.5), _detection(1, 0.9), _detection(2, 0.1), _detection(3, 0.9, category="2"),
            _detection(4, 0.7), _detection(5, 0.9)]
    dets[4]["bbox"][2] = 0  # an empty box never qualifies
    chosen = select_crops(dets, frozenset({"1"}), 0.2, limit=2)
    assert chosen.selected == [1, 5] and chosen.left_out == [0]
    assert select_crops(dets, frozenset({"1"}), 0.2).selected == [1, 5, 0]
    many = [_detection(i) for i in range(1000)]
    chosen = select_crops(many, frozenset({"1"}), 0.2)
    assert len(chosen.selected) == MAX_CROPS_PER_PHOTO and len(chosen.left_out) == 1000 - MAX_CROPS_PER_PHOTO
    confs = [many[i]["conf"] for i in chosen.selected]
    assert confs == sorted(confs, reverse=True) and min(confs) >= max(many[i]["conf"] for i in chosen.left_out)
    marked = mark_left_out([{**d, "classifications": [["0", 0.5]]} for d in many], chosen.left_out)
    assert left_out_count(marked) == 1000 - MAX_CROPS_PER_PHOTO
    assert all("classifications" not in marked[i] and marked[i][LEFT_OUT_KEY] == LEFT_OUT_REASON
               for i in chosen.left_out)
    assert all(LEFT_OUT_KEY not in marked[i] for i in chosen.selected)
    assert "classifications" not in many[0] or True  # the input is not modified
    assert all(LEFT_OUT_KEY not in d for d in many)


def _crowded_photo(predictor: Predictor, tmp_path: Path, boxes: int) -> tuple[dict, list[str], int, int]:
    """One photo whose sidecar lists ``boxes`` qualifying detections (and a few that do not qualify):
    (its row, the log, crops given to the model, peak traced memory of the watcher's scans)."""
    inbox, db = tmp_path / f"inbox{boxes}", tmp_path / f"db{boxes}.sqlite"
    jpeg(inbox / "herd.jpg", boxes, size=(480, 640))
    dets = [_detection(i) for i in range(boxes)] + [_detection(i, 0.05) for i in range(7)]
    (inbox / "herd.jpg.json").write_text(json.dumps({"detections": dets}))
    crops = 0
    original = predictor.predict_batched

    def counting(pixels: np.ndarray, **kwargs):  # noqa: ANN202 - counts the crops classified
        nonlocal crops
        crops += len(pixels)
        return original(pixels, **kwargs)

    predictor.predict_batched = counting
    logs: list[str] = []
    tracemalloc.start()
    try:
        _watch(predictor, inbox, db, logs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        del predictor.predict_batched
    [row] = db_rows(db)
    return row, logs, crops, peak


def test_a_photo_classifies_at_most_max_crops_and_records_the_rest(predictor, tmp_path: Path) -> None:
    """Before the fix: 1,000 and 4,000 qualifying boxes made 1,000 and 4,000 crops, and the traced peak grew
    with them (26.9 MB, 107.5 MB); now 100 crops each, the rest marked in the row (surviving SQLite and the
    store's reader) and named in one log line, and the peak grows only by the detections' JSON (3.1 MB,
    5.3 MB)."""
    results = {n: _crowded_photo(predictor, tmp_path, n) for n in (1_000, 4_000)}
    for boxes, (row, logs, crops, _) in results.items():
        assert row["status"] == "ok", row["failure"]
        assert crops == MAX_CROPS_PER_PHOTO, (boxes, crops)
        dets = json.loads(row["detections"])
        assert len(dets) == boxes + 7
        classified = [d for d in dets if "classifications" in d]
        assert len(classified) == MAX_CROPS_PER_PHOTO
        assert left_out_count(dets) == boxes - MAX_CROPS_PER_PHOTO
        assert min(d["conf"] for d in classified) >= max(d["conf"] for d in dets if d.get(LEFT_OUT_KEY))
        assert all(LEFT_OUT_KEY not in d for d in dets if d["conf"] < 0.2)
        said = [line for line in logs if "herd.jpg" in line and str(boxes - MAX_CROPS_PER_PHOTO) in line]
        assert len(said) == 1 and str(MAX_CROPS_PER_PHOTO) in said[0], logs
        with_store = ResultStore(Path(row["source"]).parent / f"db{boxes}.sqlite")
        try:
            [record] = list(with_store.records())
        finally:
            with_store.close()
        assert left_out_count(record.detections) == boxes - MAX_CROPS_PER_PHOTO
    small, large = results[1_000][3], results[4_000][3]
    crop_bytes = predictor.config.img_size ** 2 * 3
    # 3,000 more boxes: a crop each would be 3,000 * crop_bytes more; their JSON and dicts are ~1-2 kB each
    assert large - small < 3_000 * max(crop_bytes, 4096) / 2, (small, large, crop_bytes)


def test_the_folder_run_shares_the_crop_selection(predictor, tmp_path: Path) -> None:
    """``promptcam run --detections`` chooses the same crops (the shared ``select_crops``) and marks the rest:
    before the fix 600 qualifying boxes were 600 crops."""
    from promptcam.batch.detection_run import DetectionPlan
    from promptcam.batch.inputs import collect_inputs
    from promptcam.batch.options import DetectionOptions, RunOptions

    photos = tmp_path / "photos"
    jpeg(photos / "herd.jpg", 1, size=(240, 320))
    dets = [_detection(i) for i in range(600)]
    md = {"images": [{"file": "herd.jpg", "detections": dets}], "detection_categories": {"1": "animal"},
          "info": {"format_version": "1.4"}}
    (tmp_path / "md.json").write_text(json.dumps(md))
    files = collect_inputs([photos]).files
    plan = DetectionPlan(DetectionOptions(path=tmp_path / "md.json"), files)
    [item] = files
    assert plan.selected(item) == select_crops(dets, frozenset({"1"}), 0.2).selected
    loaded = plan.load_item(item, predictor.config, keep_preview=False)
    assert len(loaded.pixels) == MAX_CROPS_PER_PHOTO
    options = RunOptions(inputs=[photos], out_dir=tmp_path / "out", detections=plan.options)
    [record] = plan.records(predictor, [loaded], plan.predict(predictor, [loaded], options), options)
    assert sum("classifications" in d for d in record.detections) == MAX_CROPS_PER_PHOTO
    assert left_out_count(record.detections) == 600 - MAX_CROPS_PER_PHOTO
