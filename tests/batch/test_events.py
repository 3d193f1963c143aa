"""``--events``: bursts of each camera grouped by EXIF capture time (two cameras interleaved, clock jumps,
a file-time fallback), COCO sequence fields on every record, the event table and its verdict."""

from __future__ import annotations

import csv
import json
import os
from datetime import timedelta

import numpy as np
import pytest
from camera_trap_scenes import T0, write_shot

from promptcam.batch.run import RunOptions, run_files
from promptcam.core.errors import PromptCamError
from promptcam.results.events import camera_of, camera_pattern, group_events
from promptcam.runtime.records import ImageRecord

# (camera folder, file, seconds after T0, the event it belongs to)
SHOTS = [
    ("cam1", "IMG_0001.JPG", 0, "cam1@2026-05-01T06:00:00"),
    ("cam2", "IMG_0001.JPG", 1, "cam2@2026-05-01T06:00:01"),  # the other camera, interleaved in time
    ("cam1", "IMG_0002.JPG", 2, "cam1@2026-05-01T06:00:00"),
    ("cam2", "IMG_0002.JPG", 3, "cam2@2026-05-01T06:00:01"),
    ("cam1", "IMG_0003.JPG", 4, "cam1@2026-05-01T06:00:00"),
    ("cam1", "IMG_0004.JPG", 50, "cam1@2026-05-01T06:00:00"),  # 46 s after the last: within 60 s, same burst
    ("cam1", "IMG_0005.JPG", 200, "cam1@2026-05-01T06:03:20"),  # 150 s gap: a new event
    ("cam1", "IMG_0006.JPG", 201, "cam1@2026-05-01T06:03:20"),
    ("cam1", "IMG_0007.JPG", 3600 + 201, "cam1@2026-05-01T07:03:21"),  # the clock jumps an hour (DST)
    ("cam1", "IMG_0008.JPG", 3600 + 202, "cam1@2026-05-01T07:03:21"),
    ("cam2", "IMG_0003.JPG", -86400 * 400, "cam2@2025-03-27T06:00:00"),  # a reset clock, a year back
    ("cam2", "IMG_0004.JPG", -86400 * 400 + 5, "cam2@2025-03-27T06:00:00"),
]


@pytest.fixture
def bursts(tmp_path):
    root = tmp_path / "site"
    for k, (camera, name, seconds, _) in enumerate(SHOTS):
        write_shot(root / camera / name, T0 + timedelta(seconds=seconds), k)
    write_shot(root / "cam3" / "no_exif.jpg", None, 99)  # no EXIF: the file's time
    os.utime(root / "cam3" / "no_exif.jpg", (1_700_000_000, 1_700_000_000))
    return root


def test_events_group_bursts_per_camera(bursts, tiny_predictor, tmp_path):
    out = tmp_path / "out"
    summary = run_files(tiny_predictor, RunOptions(inputs=[bursts], out_dir=out, progress=False, events=60),
                        log=lambda _: None)
    records = {r["file"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert summary.events == 6
    rows = {r["file"]: r for r in csv.DictReader((out / "results.csv").open())}
    for camera, name, _, expected in SHOTS:
        assert rows[f"{camera}/{name}"]["event_id"] == expected, name
    assert rows["cam3/no_exif.jpg"]["event_id"] == "cam3@2023-11-14T22:13:20"
    burst = [rows[f"cam1/IMG_000{k}.JPG"] for k in (1, 2, 3, 4)]
    assert [r["frame_num"] for r in burst] == ["0", "1", "2", "3"] and {r["seq_num_frames"] for r in burst} == {"4"}
    events = {e["event_id"]: e for e in csv.DictReader((out / "events.csv").open())}
    first = events["cam1@2026-05-01T06:00:00"]
    assert first["seq_num_frames"] == "4" and first["camera"] == "cam1"
    # the verdict is the mean of the frames' probabilities: check it from the records' own top-k
    mean = np.mean([[c["probability"] for c in sorted(records[f"cam1/IMG_000{k}.JPG"]["top_k"],
                                                      key=lambda c: c["index"])] for k in (1, 2, 3, 4)], axis=0)
    assert float(first["event_confidence"]) == pytest.approx(mean.max(), abs=1e-6)
    data = json.loads((out / "results.json").read_text())
    assert {i["promptcam"]["event_id"] for i in data["images"]} == set(events)


def test_camera_from_pattern_and_bad_input():
    pattern = camera_pattern(r"^(site\d+)_")
    assert camera_of("site12_IMG_0001.JPG", pattern) == "site12"
    assert camera_of("other/IMG_0001.JPG", pattern) == "other"  # no match: the folder
    assert camera_of("IMG_0001.JPG") == "."
    with pytest.raises(PromptCamError, match="camera-from"):
        camera_pattern("(unclosed")
    records = [ImageRecord(file=f"c/{k}.jpg", taken_at=f"2026-01-01T00:00:0{k}", top_k=[]) for k in range(3)]
    events = group_events(records, 5, 4)
    assert len(events) == 1 and events[0].verdict.blank  # no probabilities at all: no verdict
    with pytest.raises(PromptCamError):
        group_events(records, 0, 4)
