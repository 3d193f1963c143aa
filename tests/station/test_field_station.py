"""Field station: watched inbox (real processes, SIGKILL/SIGTERM, real SQLite) and camera streams."""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers import run_cli
from promptcam.runtime.exif import exif_datetime
from promptcam.station.stream import LatestFrameReader, MotionGate, Sampler, parse_every, stream_name

WATCH = str(Path(sys.executable).parent / "promptcam-watch")


def _jpeg(path: Path, seed: int, size=(48, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    ok, data = cv2.imencode(".jpg", rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())
    return data.tobytes()


def _rows(db: Path) -> list[dict]:
    if not db.exists():
        return []
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM results ORDER BY id")]
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def _start(model: Path, inbox: Path, db: Path, *extra: str, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "w") if log is not None else subprocess.PIPE  # noqa: SIM115 - the child owns it
    return subprocess.Popen([WATCH, str(inbox), "--model", str(model), "--db", str(db), "--engine", "ort-cpu",
                             "--poll", "0.1", *extra], stdout=out, stderr=out, text=True)


def _wait_for(predicate, timeout: float = 30.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def test_slow_chunked_upload_is_taken_only_when_complete(tiny_export, tmp_path) -> None:
    inbox, db = tmp_path / "inbox", tmp_path / "results.sqlite"
    inbox.mkdir()
    data = _jpeg(tmp_path / "source.jpg", 1, size=(200, 260))
    proc = _start(tiny_export, inbox, db, "--settle", "1.0", "--status-file", str(tmp_path / "status.json"))
    try:
        with open(inbox / "upload.jpg", "wb") as fh:  # an FTP-style upload: one open, slow chunks
            for start in range(0, len(data), len(data) // 6 + 1):
                fh.write(data[start:start + len(data) // 6 + 1])
                fh.flush()
                time.sleep(0.4)  # pauses shorter than the settle time
                assert _rows(db) == [], "a half-written file was classified"
        assert _wait_for(lambda: len(_rows(db)) == 1)
        (row,) = _rows(db)
        assert row["status"] == "ok" and row["sha256"] == hashlib.sha256(data).hexdigest()
        assert row["size"] == len(data) and row["width"] == 260 and row["height"] == 200
        assert json.loads(row["top_k"])[0]["name"] == row["top1"]
        assert _wait_for(lambda: (tmp_path / "status.json").exists())
        status = json.loads((tmp_path / "status.json").read_text())
        assert status["state"] == "running" and status["processed"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "stopped"


def test_sigkill_five_times_loses_nothing_and_repeats_nothing(tiny_export, tmp_path) -> None:
    inbox, db, done = tmp_path / "inbox", tmp_path / "results.sqlite", tmp_path / "done"
    names = [f"cam{i % 3}/img_{i:03d}.jpg" for i in range(30)]
    hashes = {name: hashlib.sha256(_jpeg(inbox / name, i)).hexdigest() for i, name in enumerate(names)}
    args = ("--settle", "0.05", "--batch-size", "2", "--batch-delay", "0.15", "--move-processed", str(done),
            "--no-events")
    kills = 0
    for attempt in range(5):
        before = len(_rows(db))
        proc = _start(tiny_export, inbox, db, *args)
        # let it get into a batch (rows appear), then kill it mid-way at an uneven moment
        _wait_for(lambda b=before: len(_rows(db)) > b, timeout=20)
        time.sleep(0.05 + 0.07 * attempt)
        proc.kill()
        proc.wait(timeout=10)
        kills += 1
        if len(_rows(db)) == len(names):
            break
    assert kills >= 3, "the inbox was finished before the watcher could be killed several times"
    final = _start(tiny_export, inbox, db, *args, "--once")
    assert final.wait(timeout=60) == 0, final.stderr.read()
    rows = _rows(db)
    assert sorted(r["file"] for r in rows) == sorted(names), "every image exactly one row"
    assert {r["file"]: r["sha256"] for r in rows} == hashes
    assert all(r["status"] == "ok" and r["moved"] == 1 for r in rows)
    assert not list(inbox.rglob("*.jpg")), "every classified file was moved out of the inbox"
    for row in rows:
        stored = Path(row["stored_path"])
        assert stored.is_file() and hashlib.sha256(stored.read_bytes()).hexdigest() == row["sha256"]
        assert stored.relative_to(done).parts[0] == row["taken_at"][:10]


def test_sigterm_drains_the_current_batch(tiny_export, tmp_path) -> None:
    inbox, db = tmp_path / "inbox", tmp_path / "results.sqlite"
    for i in range(6):
        _jpeg(inbox / f"{i}.jpg", i)
    log = tmp_path / "watch.log"
    proc = _start(tiny_export, inbox, db, "--settle", "0.05", "--batch-size", "2", "--batch-delay", "3",
                  "--no-events", log=log)
    # the watcher says when a batch is read and waiting for its commit: signal it then
    assert _wait_for(lambda: "committing in" in log.read_text(), timeout=60), log.read_text()
    assert _rows(db) == []
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()
    rows = _rows(db)
    assert len(rows) == 2, "the batch in flight is finished and committed, no new batch is started"
    again = _start(tiny_export, inbox, db, "--settle", "0.05", "--once", "--no-events")
    assert again.wait(timeout=60) == 0
    assert sorted(r["file"] for r in _rows(db)) == [f"{i}.jpg" for i in range(6)]


def test_bad_files_become_failure_rows(tiny_export, tmp_path) -> None:
    inbox, db, failed = tmp_path / "inbox", tmp_path / "results.sqlite", tmp_path / "failed"
    good = _jpeg(inbox / "good.jpg", 0)
    (inbox / "zero.jpg").write_bytes(b"")
    (inbox / "truncated.jpg").write_bytes(good[:100])
    (inbox / "upload.jpg.part").write_bytes(good[:50])  # temp upload names are never taken
    heat = tmp_path / "heat"
    # --incomplete-wait 0: a file that looks half-written is failed at once (no writer is coming back)
    result = run_cli("promptcam-watch", inbox, "--model", tiny_export, "--db", db, "--engine", "ort-cpu", "--settle",
                     "0.05", "--poll", "0.1", "--once", "--failed", failed, "--heatmaps", heat, "--jsonl",
                     tmp_path / "log.jsonl", "--incomplete-wait", "0")
    assert result.returncode == 0, result.stderr
    rows = {r["file"]: r for r in _rows(db)}
    assert set(rows) == {"good.jpg", "zero.jpg", "truncated.jpg"}
    assert rows["good.jpg"]["status"] == "ok" and Path(rows["good.jpg"]["heatmap"]).is_file()
    assert "zero-byte" in rows["zero.jpg"]["failure"] and "truncated.jpg" in rows["truncated.jpg"]["failure"]
    assert (failed / "zero.jpg").exists() and (failed / "truncated.jpg").exists() and (inbox / "good.jpg").exists()
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 3

    # restart: nothing is classified twice, even though good.jpg is still in the inbox
    (inbox / "empty.jpg").write_bytes(b"")
    again = run_cli("promptcam-watch", inbox, "--model", tiny_export, "--db", db, "--engine", "ort-cpu", "--settle",
                    "0.05", "--poll", "0.1", "--once", "--jsonl", tmp_path / "log2.jsonl", "--incomplete-wait", "0")
    assert again.returncode == 0 and len(_rows(db)) == 4
    # a zero-byte file left in the inbox is recorded once, then known: later scans do not retry it
    assert again.stderr.count("empty.jpg: zero-byte file") == 1
    assert len((tmp_path / "log2.jsonl").read_text().splitlines()) == 1

    out = run_cli("promptcam-export-results", db, "--format", "megadetector", "-o", tmp_path / "md.json",
                  "--model", tiny_export)
    assert out.returncode == 0, out.stderr
    md = json.loads((tmp_path / "md.json").read_text())
    assert md["info"]["format_version"] == "1.6" and len(md["images"]) == 4
    assert sum(im["detections"] is None for im in md["images"]) == 3
    out = run_cli("promptcam-export-results", db, "--format", "csv", "-o", tmp_path / "r.csv")
    assert out.returncode == 0 and (tmp_path / "r.csv").read_text().count("\n") == 5


def test_exif_datetime(tmp_path) -> None:
    exif = Image.Exif()
    exif[0x0132] = "2024:01:01 00:00:00"
    exif.get_ifd(0x8769)[0x9003] = "2025:06:07 05:43:21"
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg", exif=exif)
    assert exif_datetime((tmp_path / "a.jpg").read_bytes()) == "2025-06-07T05:43:21"
    Image.new("RGB", (8, 8)).save(tmp_path / "b.jpg")
    assert exif_datetime((tmp_path / "b.jpg").read_bytes()) is None
    assert exif_datetime(b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00garbage") is None


# ---- streams ------------------------------------------------------------------------------------

def _clip(path: Path, frames: int = 30, fps: float = 10.0, moving: range = range(0, 30)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full((48, 64, 3), 90, np.uint8)
        x = 4 + (i if i in moving else moving.start) * 1
        cv2.rectangle(frame, (x, 10), (x + 12, 30), (0, 200, 255), -1)
        writer.write(frame)
    writer.release()
    return path


@pytest.mark.parametrize(("every", "expected"), [("10f", 3), ("1s", 3), ("0.5s", 6)])
def test_video_file_source(tiny_export, tmp_path, every: str, expected: int) -> None:
    clip = _clip(tmp_path / "clip.avi")
    result = run_cli("promptcam-run", "--model", tiny_export, "--source", clip, "--every", every, "--out",
                     tmp_path / "out", "--heatmaps", tmp_path / "heat")
    assert result.returncode == 0, result.stderr
    rows = _rows(tmp_path / "out" / "results.sqlite")
    assert len(rows) == expected
    assert all(r["status"] == "ok" and r["source"] == str(clip) for r in rows)
    for row in rows:
        assert cv2.imread(str(tmp_path / "out" / "frames" / row["file"])).shape[:2] == (48, 64)
        assert cv2.imread(row["heatmap"]).shape[:2] == (48, 64)


def test_motion_gate_on_video(tiny_export, tmp_path) -> None:
    clip = _clip(tmp_path / "clip.avi", moving=range(12, 16))
    result = run_cli("promptcam-run", "--model", tiny_export, "--source", clip, "--every", "1f", "--on-motion",
                     "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    files = [r["file"] for r in _rows(tmp_path / "out" / "results.sqlite")]
    # the first frame, then only frames where the box moved
    assert 1 <= len(files) - 1 <= 5 and len(files) < 30


def test_sampler_and_parsing() -> None:
    assert parse_every("5s") == (5.0, None) and parse_every("10f") == (None, 10) and parse_every("0.5") == (0.5, None)
    with pytest.raises(Exception, match="--every"):
        parse_every("fast")
    sampler = Sampler("2s")
    assert [sampler.due(t * 0.5) for t in range(9)] == [True, False, False, False, True, False, False, False, True]
    gate = MotionGate()
    still = np.zeros((48, 64, 3), np.uint8)
    assert gate.moved(still) and not gate.moved(still)
    moved = still.copy()
    moved[10:30, 10:30] = 255
    assert gate.moved(moved)
    assert stream_name("rtsp://user:secret@10.0.0.5:554/stream1") == "10.0.0.5_554_stream1"


class _FakeCapture:
    """A capture double: may fail to open; yields frames; may hang in read() until released."""

    def __init__(self, opened: bool, frames: int, tag: int, hang: threading.Event | None = None) -> None:
        self.opened, self.frames, self.tag, self.hang = opened, frames, tag, hang
        self.released = False
        self.reads = 0  # frames handed out, also written into each frame

    def isOpened(self) -> bool:  # noqa: N802
        return self.opened

    def read(self):
        if self.frames <= 0:
            if self.hang is not None:
                self.hang.wait(30)  # hangs like a dead RTSP socket
            return False, None
        self.frames -= 1
        time.sleep(0.01)
        self.reads += 1
        frame = np.full((8, 8, 3), self.tag, np.uint8)
        frame[1, 0] = (self.reads >> 16, self.reads >> 8 & 255, self.reads & 255)
        return True, frame

    def release(self) -> None:
        self.released = True


def test_reconnect_backoff_and_watchdog() -> None:
    hang = threading.Event()
    made: list[_FakeCapture] = []

    def factory(_source: str) -> _FakeCapture:
        n = len(made)
        capture = (_FakeCapture(False, 0, 0) if n < 2 else
                   _FakeCapture(True, 5, 1, hang=hang) if n == 2 else
                   _FakeCapture(True, 10_000, 2))
        made.append(capture)
        return capture

    reader = LatestFrameReader("rtsp://camera", capture_factory=factory, backoff_initial=0.05, stall_timeout=0.4,
                               log=lambda _: None, seed=0).start()
    try:
        started = time.monotonic()
        tags = set()
        while time.monotonic() - started < 10 and 2 not in tags:
            item = reader.latest(timeout=0.5)
            if item is not None:
                tags.add(int(item[0][0, 0, 0]))
        assert tags >= {1, 2}, "frames before the hang and after the watchdog restart"
        assert reader.stats.failed_opens == 2 and reader.stats.restarts >= 1
        assert time.monotonic() - started < 10
        # latest-frame semantics: a slow consumer (away for ~30 frames) gets the newest frame, not the
        # oldest one it has not seen; the reader may be one frame behind the capture, never more
        time.sleep(0.3)
        live = made[-1]
        newest = live.reads
        frame = reader.latest(timeout=1)[0]
        number = int(frame[1, 0, 0]) << 16 | int(frame[1, 0, 1]) << 8 | int(frame[1, 0, 2])
        assert int(frame[0, 0, 0]) == live.tag and number >= newest - 1, (number, newest)
    finally:
        reader.stop()
        hang.set()
    assert made[1].released and made[0].released


def test_stream_unopenable_file_is_a_clear_error(tiny_export, tmp_path) -> None:
    result = run_cli("promptcam-run", "--model", tiny_export, "--source", tmp_path / "missing.mp4", "--out",
                     tmp_path / "out")
    assert result.returncode == 1 and "cannot open video" in result.stderr
