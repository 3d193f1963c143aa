"""Videos in ``promptcam run``: real MP4/AVI clips written with OpenCV, the synthetic video world's verdicts,
MegaDetector's video conventions (validator), ``--detections`` with a detector's video results, hostile clips."""

from __future__ import annotations

import csv
import json
import os
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from camera_trap_scenes import val_tiles
from video_world import FPS, build_video_world, md_video_results, rotate_mp4, write_clip, write_json

from helpers import run_cli
from promptcam.batch.options import DetectionOptions
from promptcam.batch.run import RunOptions, run_files
from promptcam.core.errors import PromptCamError
from promptcam.runtime.clips import ClipOptions
from promptcam.runtime.predictor import Predictor
from promptcam.runtime.video import MAX_VIDEO_PIXELS, sample_frames


def _validate(path) -> None:
    validate = pytest.importorskip("megadetector.postprocessing.validate_batch_results")
    options = validate.ValidateBatchResultsOptions()
    options.raise_errors = True
    assert validate.validate_batch_results(str(path), options)["validation_results"]["errors"] == []


@pytest.fixture(scope="module")
def world(trained_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("video_world")
    clips = build_video_world(root, val_tiles(trained_world["world"], 2), clips=20, empty=5)
    return root, clips


@pytest.fixture(scope="module")
def demo_predictor(trained_world):
    with Predictor(trained_world["model"], "ort-cpu", batch_size=8, threads=1) as predictor:
        yield predictor


def _verdicts(out) -> dict[str, dict]:
    return {r["file"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def test_video_world_verdicts_whole_frames_and_detections(world, demo_predictor, tmp_path):
    root, clips = world
    out = tmp_path / "whole"
    summary = run_files(demo_predictor, RunOptions(inputs=[root], out_dir=out, progress=False, heatmaps=out / "heat"),
                        log=lambda _: None)
    assert summary.videos == len(clips) and summary.failed == 0
    records = _verdicts(out)
    creatures = [c for c in clips if c.truth is not None]
    right = sum(records[c.name]["top_k"][0]["index"] == c.truth for c in creatures)
    assert right / len(creatures) >= 0.90, right
    _validate(out / "results.json")
    first = records[creatures[0].name]
    assert first["media"] == "video" and first["frame_rate"] == FPS
    assert [f["frame_number"] for f in first["frames"]] == list(range(0, 60, 10))  # 1 frame a second
    assert set(first["decisive_frames"]) <= {f["frame_number"] for f in first["frames"] if f["evidence"]}
    strip = cv2.imread(first["heatmap"])
    assert strip is not None and strip.shape[1] > 2 * strip.shape[0]  # the decisive frames side by side
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(clips) and {r["media"] for r in rows} == {"video"}

    md = write_json(tmp_path / "md_video.json", md_video_results(clips))
    out = tmp_path / "det"
    run_files(demo_predictor, RunOptions(inputs=[root], out_dir=out, progress=False, heatmaps=out / "heat",
                                         detections=DetectionOptions(md)), log=lambda _: None)
    records = _verdicts(out)
    right = sum(bool(records[c.name]["top_k"]) and records[c.name]["top_k"][0]["index"] == c.truth for c in creatures)
    assert right / len(creatures) >= 0.95, right
    for clip in clips:
        if clip.truth is None:  # an empty clip: blank, no class, nothing decoded
            assert records[clip.name]["top_k"] == [] and records[clip.name]["frames"] == []
    classified = [d for d in records[creatures[0].name]["detections"] if "classifications" in d]
    assert classified and all("frame_number" in d for d in classified)
    _validate(out / "results.json")


def test_per_frame_rows_and_sampling_options(tiny_predictor, tmp_path):
    write_clip(tmp_path / "in" / "a.mp4", None, 0, frames=40)
    out = tmp_path / "out"
    options = RunOptions(inputs=[tmp_path / "in"], out_dir=out, progress=False, heatmaps=out / "heat",
                         clips=ClipOptions(fps=2, max_frames=5, per_frame=True))
    run_files(tiny_predictor, options, log=lambda _: None)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["file"] for r in rows] == ["a.mp4"] + [f"a.mp4/frame{n:06d}.jpg" for n in (0, 5, 10, 15, 20)]
    assert all(os.path.exists(r["heatmap"]) for r in rows)
    data = json.loads((out / "results.json").read_text())
    assert [d["frame_number"] for d in data["images"][0]["detections"]] == [0, 5, 10, 15, 20]
    _validate(out / "results.json")


def test_resume_refuses_other_clip_sampling(tiny_predictor, tmp_path):
    """A run of clips resumed with another --video-fps / --video-max-frames / --per-frame would mix records
    sampled two ways: refused, as another model or other inputs are. A folder of photos only is not held to
    the clip options."""
    write_clip(tmp_path / "in" / "a.mp4", None, 0, frames=20)
    out = tmp_path / "out"

    def run(clips: ClipOptions, inputs: Path = tmp_path / "in", out_dir: Path = out, resume: bool = True) -> None:
        run_files(tiny_predictor, RunOptions(inputs=[inputs], out_dir=out_dir, progress=False, clips=clips,
                                             resume=resume), log=lambda _: None)

    run(ClipOptions(fps=1), resume=False)
    run(ClipOptions(fps=1))  # the same sampling resumes
    for other in (ClipOptions(fps=2), ClipOptions(fps=1, max_frames=3), ClipOptions(fps=1, per_frame=True)):
        with pytest.raises(PromptCamError, match="holds another run .*clips was"):
            run(other)
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "p.jpg"), np.full((64, 64, 3), 120, np.uint8))
    run(ClipOptions(fps=1), inputs=photos, out_dir=tmp_path / "out_photos", resume=False)
    run(ClipOptions(fps=3), inputs=photos, out_dir=tmp_path / "out_photos")


def _avi_with_declared_frames(data: bytes, count: int) -> bytes:
    """An AVI whose headers (``avih`` total frames, ``strh`` length) declare ``count`` frames."""
    out = bytearray(data)
    at = out.index(b"avih")
    out[at + 24:at + 28] = struct.pack("<I", count)
    at = out.index(b"strh")
    out[at + 40:at + 44] = struct.pack("<I", count)
    return bytes(out)


def test_hostile_clips_are_one_failed_record_each(tiny_predictor, tmp_path):
    inbox = tmp_path / "in"
    write_clip(inbox / "good.mp4", None, 1, frames=30)
    good = (inbox / "good.mp4").read_bytes()
    (inbox / "rotated.mp4").write_bytes(rotate_mp4(good, 90))
    write_clip(tmp_path / "src.avi", None, 2, fourcc="MJPG", frames=30)
    avi = (tmp_path / "src.avi").read_bytes()
    (inbox / "lies_long.avi").write_bytes(_avi_with_declared_frames(avi, 10_000_000))
    (inbox / "lies_short.avi").write_bytes(_avi_with_declared_frames(avi, 1))
    (inbox / "truncated.avi").write_bytes(avi[: len(avi) // 2])
    (inbox / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (inbox / "noise.mkv").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (inbox / "empty.mov").write_bytes(b"")
    writer = cv2.VideoWriter(str(inbox / "zero.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    writer.release()  # a container with no frame at all
    write_clip(inbox / "eight_k.avi", None, 3, fourcc="MJPG", frames=1, size=(7680, 4320))
    write_clip(inbox / "hour.mp4", None, 4, frames=300)  # 30 s at 10 fps standing in for an hour
    os.mkfifo(inbox / "fifo.mp4")  # never opened for reading: a run must not hang on it
    out = tmp_path / "out"
    options = RunOptions(inputs=[inbox], out_dir=out, progress=False, clips=ClipOptions(max_frames=4))
    summary = run_files(tiny_predictor, options, log=lambda _: None)
    records = _verdicts(out)
    assert len(records) == summary.total == 12
    failed = {name for name, r in records.items() if "failure" in r}
    assert {"noise.mkv", "empty.mov", "zero.mp4", "eight_k.avi", "fifo.mp4", "truncated.mp4"} <= failed
    assert str(MAX_VIDEO_PIXELS) in records["eight_k.avi"]["failure"]
    assert {"good.mp4", "rotated.mp4", "lies_long.avi", "lies_short.avi", "hour.mp4"}.isdisjoint(failed)
    assert (records["rotated.mp4"]["width"], records["rotated.mp4"]["height"]) == (240, 320)  # turned upright
    frames = [f["frame_number"] for f in records["lies_short.avi"]["frames"]]
    assert frames == [f["frame_number"] for f in records["lies_long.avi"]["frames"]] == [0, 10, 20]
    assert [f["frame_number"] for f in records["hour.mp4"]["frames"]] == [0, 10, 20, 30]  # the cap, then stop
    if "truncated.avi" not in failed:  # what was read before the cut stands
        assert records["truncated.avi"]["frames"]
    _validate(out / "results.json")


def test_sampling_follows_timestamps_and_bounds_reads(tmp_path):
    write_clip(tmp_path / "a.mp4", None, 0, frames=100)
    info, frames = sample_frames(tmp_path / "a.mp4", fps=0.5, max_frames=3)
    got = [(f.number, f.seconds) for f in frames]
    assert info.frame_rate == FPS and got == [(0, 0.0), (20, 2.0), (40, 4.0)]
    _, frames = sample_frames(tmp_path / "a.mp4", frames=[95, 3, 3, 50])
    assert [f.number for f in frames] == [3, 50, 95]


def test_cli_videos_and_mode_errors(tiny_export, tmp_path):
    write_clip(tmp_path / "in" / "a.avi", None, 0, fourcc="MJPG", frames=20)
    result = run_cli("promptcam", "run", str(tmp_path / "in"), "--model", str(tiny_export), "--out",
                     str(tmp_path / "out"), "--no-progress", "--video-fps", "5", "--video-max-frames", "3")
    assert result.returncode == 0, result.stderr
    assert "1 clip(s)" in result.stdout
    record = json.loads((tmp_path / "out" / "results.jsonl").read_text())
    assert [f["frame_number"] for f in record["frames"]] == [0, 2, 4]
    result = run_cli("promptcam", "run", str(tmp_path / "in"), "--model", str(tiny_export), "--ray", "--video-fps", "2")
    assert result.returncode != 0 and "--video-fps" in result.stderr
