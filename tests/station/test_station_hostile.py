"""A hostile sidecar or detector file is one failed record, never a crashed station; a backlog costs linear time.

Issue 28, items 1 and 5: a sidecar nested 100,000 deep made ``json.loads`` raise ``RecursionError``,
which escaped the watcher (a crash loop under ``Restart=always``); each batch of 8 rescanned the
whole inbox, so a backlog of N files cost O(N^2) directory work.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from watch_helpers import Clock, db_rows, jpeg

from promptcam.batch.detections import load_detector_file
from promptcam.core.errors import PromptCamError
from promptcam.core.untrusted import UntrustedJSONError, loads_untrusted
from promptcam.runtime.predictor import Predictor
from promptcam.station.inbox import InboxWatcher
from promptcam.station.options import SidecarOptions, WatchOptions
from promptcam.station.readiness import InboxScanner


@pytest.fixture(scope="module")
def predictor(tiny_predictor: Predictor) -> Predictor:
    return tiny_predictor


def _drive(watcher: InboxWatcher, clock: Clock, steps: int) -> None:
    for _ in range(steps):
        clock.now += 1.0
        watcher.step()


def _nested(depth: int, opener: str = "[", closer: str = "]") -> str:
    return '{"detections": ' + opener * depth + closer * depth + "}"


HOSTILE_SIDECARS = {
    "deep_list_100k": _nested(100_000),
    "deep_list_20k": _nested(20_000),
    "deep_objects_50k": '{"detections": [' + '{"a":' * 50_000 + "1" + "}" * 50_000 + "]}",
    "deep_mixed_30k": '{"detections": ' + '[{"x":' * 15_000 + "0" + "}]" * 15_000 + "}",
    "deep_unclosed_100k": '{"detections": ' + "[" * 100_000,  # also never complete
}


@pytest.mark.parametrize("text", [_nested(d) for d in (2_000, 20_000, 200_000)] + ['{"a": ' * 30_000 + "1"])
def test_untrusted_json_refuses_deep_nesting_as_a_value_error(text: str) -> None:
    with pytest.raises(UntrustedJSONError, match="probe: JSON nested too deeply|probe: not JSON") as caught:
        loads_untrusted(text, "probe")
    assert isinstance(caught.value, ValueError)


def test_hostile_sidecars_are_failed_records_and_the_batch_goes_on(predictor, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    good = [jpeg(inbox / f"good_{i}.jpg", i) for i in range(3)]
    for i in range(3):
        (inbox / f"good_{i}.jpg.json").write_text(json.dumps({"detections": [
            {"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.5, 0.5]}]}))
    for index, (name, text) in enumerate(HOSTILE_SIDECARS.items()):
        jpeg(inbox / f"{name}.jpg", 100 + index)
        (inbox / f"{name}.jpg.json").write_text(text)
    clock, logs = Clock(), []
    options = WatchOptions(inbox=inbox, db=tmp_path / "results.sqlite", settle=0.5, use_events=False,
                           incomplete_wait=0.0, detections=SidecarOptions(wait=5.0))
    watcher = InboxWatcher(predictor, options, log=logs.append, clock=clock)
    try:
        watcher.start()
        _drive(watcher, clock, 4)  # never raises: before the fix RecursionError escaped step()
    finally:
        watcher.close()
    rows = {row["file"]: row for row in db_rows(tmp_path / "results.sqlite")}
    assert sorted(rows) == sorted([f"good_{i}.jpg" for i in range(len(good))] + [f"{n}.jpg" for n in HOSTILE_SIDECARS])
    for i in range(len(good)):
        row = rows[f"good_{i}.jpg"]
        assert row["status"] == "ok" and "classifications" in json.loads(row["detections"])[0]
    for name in HOSTILE_SIDECARS:
        row = rows[f"{name}.jpg"]
        assert row["status"] == "failed" and f"{name}.jpg.json" in row["failure"], (name, row["failure"])


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_a_deep_detector_file_is_one_clear_error(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "md.json"
    path.write_text('{"images": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(PromptCamError, match="md.json: not a JSON detector file"):
        load_detector_file(path)


def _looks_to_drain(predictor: Predictor, tmp_path: Path, count: int) -> tuple[int, int]:
    """(inbox entries looked at, scans) to drain a backlog of ``count`` photos that are all ready at once."""
    inbox = tmp_path / f"inbox{count}"
    for i in range(count):
        jpeg(inbox / f"cam{i % 3}" / f"IMG_{i:05d}.jpg", i, size=(16, 16))
    looked = 0
    original = InboxScanner._look

    def counting(self, *args):  # noqa: ANN001, ANN202 - counts the real method's calls
        nonlocal looked
        looked += 1
        return original(self, *args)

    clock, scans = Clock(), 0
    watcher = InboxWatcher(predictor, WatchOptions(inbox=inbox, db=tmp_path / f"db{count}.sqlite", settle=0.5,
                                                   use_events=False), log=lambda _: None, clock=clock)
    InboxScanner._look = counting
    try:
        while watcher.processed < count and scans < count:
            _drive(watcher, clock, 1)
            scans += 1
    finally:
        InboxScanner._look = original
        watcher.close()
    assert watcher.processed == count == len(db_rows(tmp_path / f"db{count}.sqlite"))
    return looked, scans


def test_a_backlog_is_drained_in_linear_directory_work(predictor, tmp_path: Path) -> None:
    """Doubling the backlog doubles the inbox entries looked at. Before the fix each scan took one batch
    (8) of the ready files and the next scan visited every waiting file again: quadratic (1k files 2.5 s,
    4k files 34.6 s of scanning on a 2-core station; 20k about 14 minutes)."""
    small, small_scans = _looks_to_drain(predictor, tmp_path, 96)
    large, large_scans = _looks_to_drain(predictor, tmp_path, 192)
    assert large_scans == small_scans <= 3, (small_scans, large_scans)
    assert large <= 2.2 * small, (small, large)


@pytest.mark.parametrize("outside", [[1.2, 0.1, 0.2, 0.2], [-0.5, 0.1, 0.3, 0.3], [0.1, 1.0, 0.2, 0.2],
                                     [0.3, -0.4, 0.2, 0.3], [1.0, 0.0, 0.3, 0.3], [0.2, 0.2, 1e-9, 1e-9]])
def test_a_box_outside_the_photo_is_a_failed_detection_at_a_station(predictor, tmp_path: Path, outside) -> None:
    """Issue 28 item 14 at the station: a sidecar box with no pixel of the photo is never classified from
    black padding; it is a failed detection with its reason, and the photo's other boxes are classified."""
    inbox = tmp_path / "inbox"
    jpeg(inbox / "IMG_0001.JPG", 1, size=(120, 160))
    (inbox / "IMG_0001.JPG.json").write_text(json.dumps({"detections": [
        {"category": "1", "conf": 0.9, "bbox": [0.1, 0.1, 0.5, 0.5]},
        {"category": "1", "conf": 0.8, "bbox": outside}]}))
    clock = Clock()
    watcher = InboxWatcher(predictor, WatchOptions(inbox=inbox, db=tmp_path / "results.sqlite", settle=0.5,
                                                   use_events=False, detections=SidecarOptions(wait=5.0)),
                           log=lambda _: None, clock=clock)
    try:
        _drive(watcher, clock, 3)
    finally:
        watcher.close()
    (row,) = db_rows(tmp_path / "results.sqlite")
    good, bad = json.loads(row["detections"])
    assert row["status"] == "ok" and "classifications" in good and "failure" not in good
    assert "classifications" not in bad and ("outside the photo" in bad["failure"] or "less than one pixel"
                                             in bad["failure"]), bad
