"""Uploads that are still being written are never taken early (and never moved to --failed).

Three writer styles, each pausing longer than --settle in the middle of a file: a preallocating
writer (SMB/Windows copy, ``fallocate``: the file has its full size from the start, zeros at the
end), a writer that stalls, and a writer that closes the file after every chunk (FTP ``APPE``:
each close is an inotify close-write event). Real ``promptcam-watch`` with inotify events on.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
from watch_helpers import WATCH, db_rows

SETTLE = 0.3
STALL = 4 * SETTLE  # every writer pauses this long at least once, mid-file


def _picture(ext: str, seed: int) -> bytes:
    ok, data = cv2.imencode(ext, np.random.default_rng(seed).integers(0, 256, (180, 240, 3), dtype=np.uint8))
    assert ok
    return data.tobytes()


def _chunks(data: bytes, n: int) -> list[bytes]:
    step = len(data) // n + 1
    return [data[i:i + step] for i in range(0, len(data), step)]


def preallocating_writer(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        try:
            os.posix_fallocate(fd, 0, len(data))
        except OSError:
            os.ftruncate(fd, len(data))
        offset = 0
        for i, chunk in enumerate(_chunks(data, 4)):
            os.pwrite(fd, chunk, offset)
            offset += len(chunk)
            time.sleep(STALL if i == 1 else 0.05)
    finally:
        os.close(fd)


def stalling_writer(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        for chunk in _chunks(data, 3):
            fh.write(chunk)
            fh.flush()
            time.sleep(STALL)


def close_after_each_chunk_writer(path: Path, data: bytes) -> None:
    for chunk in _chunks(data, 4):
        with open(path, "ab") as fh:
            fh.write(chunk)
        time.sleep(STALL)


def test_slow_writers_are_waited_for(tiny_export, tmp_path) -> None:
    inbox, db, failed = tmp_path / "inbox", tmp_path / "db.sqlite", tmp_path / "failed"
    inbox.mkdir()
    uploads = {"prealloc.png": (preallocating_writer, _picture(".png", 1)),
               "stall.jpg": (stalling_writer, _picture(".jpg", 2)),
               "appe.jpg": (close_after_each_chunk_writer, _picture(".jpg", 3))}
    log = open(tmp_path / "watch.log", "w")
    proc = subprocess.Popen([WATCH, str(inbox), "--model", str(tiny_export), "--db", str(db), "--engine", "ort-cpu",
                             "--settle", str(SETTLE), "--poll", "0.05", "--incomplete-wait", "60", "--failed",
                             str(failed)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "watching" not in (tmp_path / "watch.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        writers = [threading.Thread(target=write, args=(inbox / name, data)) for name, (write, data) in uploads.items()]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()
        expected = {name: hashlib.sha256(data).hexdigest() for name, (_, data) in uploads.items()}
        deadline = time.monotonic() + 60
        while len(db_rows(db) if db.exists() else []) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        log.close()
    rows = db_rows(db)
    output = (tmp_path / "watch.log").read_text()
    assert {r["file"]: r["sha256"] for r in rows} == expected, output[-3000:]
    assert len(rows) == len(expected) and all(r["status"] == "ok" for r in rows), "no half-written row"
    assert not failed.exists() or not any(failed.iterdir()), "nothing was moved to --failed"
