"""A served model under faults: the server is killed under load, comes back, and is stopped with SIGTERM.

Clients get a clear error; a ``watch --server`` station keeps its photos in the inbox while the server is
gone and classifies each exactly once when it is back; SIGTERM lets the requests in flight finish.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from serve_helpers import ServedModel, needs_triton
from watch_helpers import Clock, db_rows, jpeg

pytestmark = needs_triton


def _load(model: Path, url: str, images: list[np.ndarray], expected: list[int], stop: threading.Event,
          done: list[int], errors: list[str]) -> None:
    """One client classifying in a loop (bounded) until it fails or ``stop``; each answer checked."""
    from promptcam.core.errors import ServerUnavailableError
    from promptcam.runtime.predictor import Predictor

    try:
        with Predictor(model, batch_size=2, server=url, server_wait=1.0) as remote:
            for i in range(2000):
                if stop.is_set():
                    return
                k = i % (len(images) - 1)
                got = [p.top1.index for p in remote.predict(images[k:k + 2])]
                if got != expected[k:k + 2]:
                    errors.append(f"wrong answer {got} != {expected[k:k + 2]}")
                    return
                done.append(1)
    except ServerUnavailableError as exc:
        errors.append(f"lost: {exc}")
    except Exception as exc:  # noqa: BLE001 - anything else is a failure the test reports
        errors.append(f"unexpected: {exc!r}")


def _clients(model: Path, served: ServedModel, images: list[np.ndarray], expected: list[int],
             count: int = 4) -> tuple[list[threading.Thread], threading.Event, list[int], list[str]]:
    stop, done, errors = threading.Event(), [], []
    threads = [threading.Thread(target=_load, args=(model, served.grpc if k % 2 else served.http, images, expected,
                                                    stop, done, errors)) for k in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(done) < 10 * count and time.monotonic() < deadline and not errors:
        time.sleep(0.01)
    return threads, stop, done, errors


def test_killed_server_station_keeps_photos_and_catches_up_then_sigterm_drains(
        tiny_export: Path, tiny_predictor, tmp_path: Path) -> None:
    from promptcam.runtime.predictor import Predictor
    from promptcam.station.inbox import InboxWatcher
    from promptcam.station.options import WatchOptions

    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (48, 40 + 3 * i, 3), dtype=np.uint8) for i in range(6)]
    expected = [p.top1.index for p in tiny_predictor.predict(images)]
    inbox, archive, db = tmp_path / "inbox", tmp_path / "archive", tmp_path / "results.sqlite"
    inbox.mkdir()
    for i in range(6):
        jpeg(inbox / f"cam_{i}.jpg", seed=i)
    local = {p.name: tiny_predictor.predict([p])[0].top1.name for p in sorted(inbox.iterdir())}

    served = ServedModel(tiny_export, "--threads", 1, "--drain-seconds", 10).start()
    try:
        station = Predictor(tiny_export, batch_size=4, server=served.http, server_wait=0.5)
        # 1. killed mid-load: every client ends with the clear error, none with a wrong or broken answer
        threads, _, done, errors = _clients(tiny_export, served, images, expected)
        assert len(done) >= 40 and errors == [], errors
        served.kill()
        for t in threads:
            t.join(60)
        assert len(errors) == 4, errors
        assert all(e.startswith("lost: ") and "did not answer for 1 s" in e for e in errors), errors

        # 2. the station while the server is down: no row, nothing moved, the error in its log and status
        logs: list[str] = []
        clock = Clock()
        options = WatchOptions(inbox=inbox, db=db, settle=0.5, use_events=False, incomplete_wait=0.0,
                               move_processed=archive, status_file=tmp_path / "status.json")
        watcher = InboxWatcher(station, options, log=logs.append, clock=clock)
        watcher.start()
        for _ in range(3):
            clock.now += 1.0
            watcher.step()
        assert db_rows(db) == []
        assert sorted(p.name for p in inbox.iterdir()) == [f"cam_{i}.jpg" for i in range(6)]
        assert any("6 photos wait in the inbox" in line for line in logs), logs
        assert "did not answer" in (tmp_path / "status.json").read_text()

        # 3. the server is back (same ports): each photo classified once, as locally, and archived
        served = ServedModel(tiny_export, "--threads", 1, "--drain-seconds", 10, ports=served.ports).start()
        for _ in range(3):
            clock.now += 1.0
            watcher.step()
        watcher.close()
        rows = db_rows(db)
        assert sorted(r["file"] for r in rows) == [f"cam_{i}.jpg" for i in range(6)]
        assert {r["file"]: r["top1"] for r in rows} == local
        assert list(inbox.iterdir()) == []

        # 4. SIGTERM under load: the requests in flight finish, new ones are refused (clients retry, then give up
        # with the clear error), no answer is wrong or cut, and the server exits 0
        threads, stop, done, errors = _clients(tiny_export, served, images, expected)
        assert errors == [], errors
        assert served.stop() == 0, served.log()
        stop.set()
        for t in threads:
            t.join(60)
        assert all(e.startswith("lost: ") for e in errors), errors
        assert "SIGTERM: draining the requests in flight" in served.log()
        assert "drained and stopped" in served.log()
        station.close()
    finally:
        served.kill()
