"""Helpers of the promptcam-watch tests: real processes, real files, real SQLite."""

from __future__ import annotations

import hashlib
import os
import resource
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from promptcam.station.archive import FAULT_ENV

WATCH = str(Path(sys.executable).parent / "promptcam-watch")
MEMORY_LIMIT = 2 * 2**30  # address space of the watcher (its RSS on the corpus is ~150 MB; a decoded bomb is GBs)


class Clock:
    """A monotonic clock a test moves by hand (the watcher's quiet and sidecar waits run on it)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def jpeg(path: Path, seed: int, size: tuple[int, int] = (40, 56)) -> bytes:
    ok, data = cv2.imencode(".jpg", np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())
    return data.tobytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def db_rows(db: Path, table: str = "results", order: str = "id") -> list[dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(f"SELECT * FROM {table} ORDER BY {order}")]
    finally:
        con.close()


def watch_in_process(predictor, inbox: Path, db: Path, **options) -> None:  # noqa: ANN001 - a Predictor
    """One station session in this process: start, a scan to see the files, one (after their quiet time) to take
    them. ``options``: more ``WatchOptions`` fields."""
    from promptcam.station.inbox import InboxWatcher
    from promptcam.station.options import WatchOptions

    clock = Clock()
    watcher = InboxWatcher(predictor, WatchOptions(inbox=inbox, db=db, settle=1.0, use_events=False, **options),
                           log=lambda _: None, clock=clock)
    try:
        watcher.start()
        watcher.step()
        clock.now += 5
        watcher.step()
    finally:
        watcher.close()


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def watch(model: Path, inbox: Path, db: Path, *extra: object, fault: str | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess:
    """One ``promptcam-watch --once`` run, under an address-space limit."""
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault is not None:
        env[FAULT_ENV] = fault
    return subprocess.run([WATCH, str(inbox), "--model", str(model), "--db", str(db), "--engine", "ort-cpu",
                           "--settle", "0.05", "--poll", "0.05", "--no-events", "--once", *map(str, extra)],
                          capture_output=True, text=True, env=env, timeout=timeout, preexec_fn=_limit_memory)
