"""The station with clips and events: a video's verdict and strip in SQLite; events formed as photos
arrive, across a restart mid-event (no split, no merge), two cameras interleaved."""

from __future__ import annotations

import json
from datetime import timedelta

import cv2
from camera_trap_scenes import T0, write_shot
from video_world import write_clip
from watch_helpers import db_rows, watch_in_process


def test_clip_in_the_inbox_has_its_verdict_and_strip(tiny_predictor, tmp_path):
    inbox = tmp_path / "inbox"
    write_clip(inbox / "cam1" / "clip.mp4", None, 0, frames=30)
    (inbox / "cam1" / "broken.avi").write_bytes(b"RIFF\x00\x00\x00\x00AVI junk")
    watch_in_process(tiny_predictor, inbox, tmp_path / "r.sqlite", heatmaps=tmp_path / "heat")
    rows = {r["file"]: r for r in db_rows(tmp_path / "r.sqlite")}
    clip = rows["cam1/clip.mp4"]
    assert clip["status"] == "ok" and clip["media"] == "video" and clip["frame_rate"] == 10.0
    assert [f["frame_number"] for f in json.loads(clip["frames"])] == [0, 10, 20]
    assert json.loads(clip["decisive_frames"]) and clip["top1"]
    assert cv2.imread(clip["heatmap"]).shape[1] > cv2.imread(clip["heatmap"]).shape[0]  # the strip
    assert rows["cam1/broken.avi"]["status"] == "failed"


def test_events_form_as_photos_arrive_and_survive_a_restart(tiny_predictor, tmp_path):
    inbox, db = tmp_path / "inbox", tmp_path / "r.sqlite"
    burst = [("cam1", "A1.JPG", 0), ("cam2", "B1.JPG", 1), ("cam1", "A2.JPG", 3), ("cam2", "B2.JPG", 4)]
    for k, (camera, name, seconds) in enumerate(burst):
        write_shot(inbox / camera / name, T0 + timedelta(seconds=seconds), k)
    watch_in_process(tiny_predictor, inbox, db, events=60)
    # the station restarts; the rest of the bursts arrive, then a later one on cam1
    later = [("cam1", "A3.JPG", 6), ("cam2", "B3.JPG", 50), ("cam1", "A4.JPG", 400)]
    for k, (camera, name, seconds) in enumerate(later):
        write_shot(inbox / camera / name, T0 + timedelta(seconds=seconds), 10 + k)
    watch_in_process(tiny_predictor, inbox, db, events=60)
    rows = {r["file"]: r for r in db_rows(db)}
    first = "cam1@2026-05-01T06:00:00"
    assert [rows[f"cam1/A{k}.JPG"]["event_id"] for k in (1, 2, 3)] == [first] * 3
    assert [rows[f"cam1/A{k}.JPG"]["frame_num"] for k in (1, 2, 3)] == [0, 1, 2]
    assert {rows[f"cam2/B{k}.JPG"]["event_id"] for k in (1, 2, 3)} == {"cam2@2026-05-01T06:00:01"}
    assert rows["cam1/A4.JPG"]["event_id"] == "cam1@2026-05-01T06:06:40"
    events = {e["event_id"]: e for e in db_rows(db, "events", "start")}
    assert events[first]["seq_num_frames"] == 3 and events[first]["closed"] == 1  # A4 came 394 s later
    assert events["cam1@2026-05-01T06:06:40"]["closed"] == 0
    assert events[first]["verdict"] == rows["cam1/A1.JPG"]["top1"] or events[first]["event_confidence"] > 0

