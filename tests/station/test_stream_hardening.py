"""Camera streams: dead cameras end bounded runs, a wall clock set back does not stop sampling,
frame names never collide, and credentials never reach logs, the database or file names."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from watch_helpers import db_rows

from helpers import run_cli
from promptcam.core.errors import PromptCamError
from promptcam.runtime.predictor import Predictor
from promptcam.station.stream import StreamOptions, redact_source, run_stream, stream_name

SECRETS = ("s3cret", "tok123", "hunter2")
CAMERA = "RTSP://admin:s3cret@cam.local/live?token=tok123&channel=2"




def _no_secret_under(root: Path, *texts: str) -> None:
    for text in texts:
        assert not any(s in text for s in SECRETS), text[-2000:]
    for path in root.rglob("*"):
        assert not any(s in str(path) for s in SECRETS), path
        if path.is_file():
            assert not any(s.encode() in path.read_bytes() for s in SECRETS), path


class _Camera:
    """A capture double: numbered frames at ~100 fps, or never opens (a dead camera)."""

    def __init__(self, *, alive: bool = True) -> None:
        self.alive, self.count = alive, 0

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.alive

    def read(self):
        time.sleep(0.01)
        self.count += 1
        frame = np.full((24, 32, 3), self.count % 251, np.uint8)
        frame[0, 0] = (self.count >> 16, self.count >> 8 & 255, self.count & 255)
        return True, frame

    def release(self) -> None:
        pass


@pytest.fixture(scope="module")
def predictor(tiny_export) -> Predictor:
    return Predictor(tiny_export, "ort-cpu")


@pytest.mark.parametrize(("source", "redacted"), [
    ("rtsp://user:secret@10.0.0.5:554/stream1", "rtsp://***@10.0.0.5:554/stream1"),
    ("RTSP://admin:p@ss/w0rd@cam/live?token=abc&channel=2", "rtsp://***@cam/live?token=***&channel=2"),
    ("http://cam/video.cgi?User=admin&PWD=xyz", "http://cam/video.cgi?User=***&PWD=***"),
    ("rtsp://10.0.0.9/user=admin&password=hunter2&channel=1", "rtsp://10.0.0.9/user=***&password=***&channel=1"),
    ("https://cam/x?X-Amz-Signature=zz&access_token=q", "https://cam/x?X-Amz-Signature=***&access_token=***"),
    ("/data/clip.avi", "/data/clip.avi"),
    ("0", "0"),
])
def test_redact_source(source: str, redacted: str) -> None:
    assert redact_source(source) == redacted
    name = stream_name(source)
    assert "/" not in name and not name.startswith(".") and not any(s in name for s in ("secret", "abc", "xyz",
                                                                                          "hunter2", "zz", "p@ss"))


def test_dead_camera_with_duration_ends_and_leaks_nothing(tiny_export, tmp_path) -> None:
    # a real OpenCV/FFmpeg capture of a port where nothing listens: it never opens
    source = "RTSP://admin:s3cret@127.0.0.1:9/live?token=tok123"
    result = run_cli("promptcam-run", "--model", tiny_export, "--source", source, "--duration", "2", "--out",
                     tmp_path / "out", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "0 frames classified" in result.stdout
    assert "rtsp://***@127.0.0.1:9/live?token=***: cannot open" in result.stderr
    _no_secret_under(tmp_path, result.stdout, result.stderr)


def test_dead_camera_gives_up_a_run_bounded_by_max_frames(predictor, tmp_path) -> None:
    logs: list[str] = []
    options = StreamOptions(source=CAMERA, db=tmp_path / "db.sqlite", frames_dir=tmp_path / "frames", max_frames=5,
                            give_up=1.0)
    with pytest.raises(PromptCamError, match=r"rtsp://\*\*\*@cam.local/live\?token=\*\*\*&channel=2: no frame"):
        run_stream(predictor, options, log=logs.append, capture_factory=lambda _: _Camera(alive=False))
    _no_secret_under(tmp_path, *logs)


def test_clock_set_back_keeps_sampling_and_names_never_collide(predictor, tmp_path) -> None:
    jump_at = time.monotonic() + 0.6
    lock = threading.Lock()

    def wall_clock() -> float:  # NTP sets the clock two hours back in the middle of the run
        with lock:
            return time.time() - (7200 if time.monotonic() > jump_at else 0)

    logs: list[str] = []
    options = StreamOptions(source=CAMERA, db=tmp_path / "db.sqlite", frames_dir=tmp_path / "frames", every="0.1s",
                            duration=1.6)
    first = run_stream(predictor, options, log=logs.append, capture_factory=lambda _: _Camera(),
                       wall_clock=wall_clock)
    rows = db_rows(tmp_path / "db.sqlite")
    started = time.time() - 60
    before = [r for r in rows if r["taken_at"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started))]
    after = [r for r in rows if r not in before]
    assert before and len(after) >= 2, "sampling goes on after the clock jumped back"
    assert first["frames_classified"] == len(rows)

    # a second run with a frozen clock: every frame has the same time stamp, and the first run's names exist
    frozen = StreamOptions(source=CAMERA, db=tmp_path / "db.sqlite", frames_dir=tmp_path / "frames", every="1f",
                           max_frames=4)
    run_stream(predictor, frozen, log=logs.append, capture_factory=lambda _: _Camera(), wall_clock=lambda: 1.7e9)
    run_stream(predictor, frozen, log=logs.append, capture_factory=lambda _: _Camera(), wall_clock=lambda: 1.7e9)
    rows = db_rows(tmp_path / "db.sqlite")
    assert len(rows) == first["frames_classified"] + 8
    assert len({r["file"] for r in rows}) == len(rows), "no two frames share a file name"
    for row in rows:
        assert row["source"] == "rtsp://***@cam.local/live?token=***&channel=2"
        frame = tmp_path / "frames" / row["file"]
        assert hashlib.sha256(frame.read_bytes()).hexdigest() == row["sha256"], "no frame file was overwritten"
    assert len(list((tmp_path / "frames").rglob("*.jpg"))) == len(rows)
    _no_secret_under(tmp_path, *logs)
