"""``promptcam-watch``: classify images as they land in an inbox folder, restart-safe.

A file is taken only once complete: its size and mtime unchanged for ``settle`` seconds (or a
close-write event seen, when watchdog/inotify is available, and a short quiet time after it).
Whatever is ready is batched; the batch's rows are committed in one SQLite transaction, and only
then are files moved away, so a SIGKILL at any moment loses nothing and classifies nothing twice.
SIGTERM/SIGINT finish the current batch and exit cleanly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from promptcam.core.errors import ImageError

from .exif import exif_datetime
from .images import decode_image, is_image_path, read_file_bytes, resize_for_model
from .pipeline import fill_row
from .predictor import Predictor
from .store import ResultRow, ResultStore, utc_now

TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".filepart", ".crdownload", ".uploading", "~")


@dataclass
class WatchOptions:
    inbox: Path
    db: Path
    top_k: int = 5
    traits: int = 0
    settle: float = 2.0
    poll: float = 1.0
    heatmaps: Path | None = None
    move_processed: Path | None = None
    failed_dir: Path | None = None
    jsonl: Path | None = None
    status_file: Path | None = None
    status_every: float = 5.0
    use_events: bool = True
    once: bool = False  # process what is (or becomes) ready, then exit
    batch_delay: float = 0.0  # test hook: widen the window between inference and commit


@dataclass
class _Candidate:
    size: int
    mtime_ns: int
    stable_since: float
    closed: bool = False


class ReadyTracker:
    """Decides when a file in the inbox is complete."""

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self.candidates: dict[Path, _Candidate] = {}
        self._closed: set[Path] = set()
        self._lock = threading.Lock()

    def mark_closed(self, path: Path) -> None:
        with self._lock:
            self._closed.add(path)

    def observe(self, path: Path, size: int, mtime_ns: int, now: float) -> bool:
        """Record a scan of ``path``; returns whether it is ready to take."""
        with self._lock:
            closed = path in self._closed
            self._closed.discard(path)
        seen = self.candidates.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (size, mtime_ns):
            self.candidates[path] = _Candidate(size, mtime_ns, now, closed)
            return False
        seen.closed |= closed
        quiet = now - seen.stable_since
        # a writer that closes after every chunk is still caught by the quiet time after close
        return size > 0 and quiet >= (self.settle / 4 if seen.closed else self.settle) or quiet >= self.settle

    def forget(self, path: Path) -> None:
        self.candidates.pop(path, None)


class InboxWatcher:
    """The watch loop; ``run`` returns when stopped by a signal (or, with ``once``, when idle)."""

    def __init__(self, predictor: Predictor, options: WatchOptions, log=print) -> None:  # noqa: ANN001
        self.predictor = predictor
        self.options = options
        self.log = log
        self.inbox = options.inbox.resolve()
        self.source = str(self.inbox)
        self.store = ResultStore(options.db)
        self.tracker = ReadyTracker(options.settle)
        self.known = self.store.known_files(self.source)
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.processed = self.failed = 0
        self.last_error: str | None = None
        self.recent: deque[tuple[float, int]] = deque(maxlen=50)
        self.queue_depth = 0
        self._last_status = 0.0

    # -- lifecycle -------------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self) -> int:
        if not self.inbox.is_dir():
            raise ImageError(f"{self.inbox}: inbox folder not found")
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        observer = self._start_events() if self.options.use_events else None
        self._finish_pending_moves()
        self.log(f"watching {self.inbox} ({'inotify events + ' if observer else ''}polling every "
                 f"{self.options.poll}s, settle {self.options.settle}s); results in {self.options.db}")
        try:
            idle_scans = 0
            while not self.stopping.is_set():
                ready = self._scan()
                if ready:
                    idle_scans = 0
                    self._process(ready[: self.predictor.batch_size])
                    continue
                idle_scans += 1
                self._write_status("running")
                if self.options.once and not self.tracker.candidates and idle_scans > 1:
                    break
                self.wake.wait(self.options.poll)
                self.wake.clear()
        finally:
            if observer is not None:
                observer.stop()
            self._write_status("stopped", force=True)
            self.store.close()
        return 0

    def _start_events(self):  # noqa: ANN202 - watchdog observer or None
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            return None
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_closed(self, event) -> None:  # noqa: ANN001 - inotify IN_CLOSE_WRITE
                watcher.tracker.mark_closed(Path(os.fsdecode(event.src_path)))
                watcher.wake.set()

            def on_created(self, event) -> None:  # noqa: ANN001
                watcher.wake.set()

        observer = Observer()
        observer.schedule(Handler(), str(self.inbox), recursive=True)
        observer.daemon = True
        observer.start()
        return observer

    # -- discovery -------------------------------------------------------------------------------

    def _scan(self) -> list[Path]:
        now = time.monotonic()
        ready, waiting = [], 0
        present = set()
        for root, dirs, files in os.walk(self.inbox):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or name.endswith(TEMP_SUFFIXES) or not is_image_path(name):
                    continue
                path = Path(root) / name
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                rel = path.relative_to(self.inbox).as_posix()
                present.add(path)
                if (rel, st.st_size, st.st_mtime_ns) in self.known:
                    self.tracker.forget(path)
                    continue
                if self.tracker.observe(path, st.st_size, st.st_mtime_ns, now):
                    ready.append(path)
                else:
                    waiting += 1
        for gone in set(self.tracker.candidates) - present:
            self.tracker.forget(gone)
        self.queue_depth = len(ready) + waiting
        return ready

    # -- processing ------------------------------------------------------------------------------

    def _process(self, paths: list[Path]) -> None:
        started = time.perf_counter()
        rows, good, pixels, originals = [], [], [], []
        for path in list(paths):
            if not path.exists():  # removed between scan and read (an operator tidying up): nothing to record
                self.tracker.forget(path)
                paths.remove(path)
                continue
            row, image = self._load(path)
            rows.append(row)
            if image is not None:
                good.append(row)
                pixels.append(resize_for_model(image, self.predictor.config))
                originals.append(image)
        if good:
            predictions = self.predictor.predict_pixels(np.stack(pixels), [o.shape[:2] for o in originals],
                                                        top_k=self.options.top_k, traits=self.options.traits)
            for row, prediction, original in zip(good, predictions, originals, strict=True):
                fill_row(row, prediction, self.predictor, original, self.options.heatmaps)
        if self.options.batch_delay:
            time.sleep(self.options.batch_delay)
        for row in rows:
            row.stored_path = self._destination(row)
        self.store.add(rows)  # one transaction: these images are now done
        self._append_jsonl(rows)
        for row, path in zip(rows, paths, strict=True):
            # the size and mtime the row was classified at: a file changed since then is new content
            self.known.add((row.file, row.size, row.mtime_ns))
            self.tracker.forget(path)
        self._finish_pending_moves()
        n_failed = sum(r.status == "failed" for r in rows)
        self.processed += len(rows) - n_failed
        self.failed += n_failed
        self.recent.append((time.perf_counter() - started, len(rows)))
        self._write_status("running", force=True)

    def _load(self, path: Path) -> tuple[ResultRow, np.ndarray | None]:
        rel = path.relative_to(self.inbox).as_posix()
        try:
            st = path.stat()
        except OSError as exc:
            return self._failed(rel, hashlib.sha256(f"unreadable:{rel}".encode()).hexdigest(), None, None,
                                f"{path}: cannot read file ({exc})"), None
        try:
            data = read_file_bytes(path)
        except (ImageError, OSError) as exc:
            # size and mtime go in the row so the next scan knows this file is done and does not retry it;
            # unreadable files have no content hash, their row is keyed on the path instead
            digest = hashlib.sha256(b"" if st.st_size == 0 else f"unreadable:{rel}".encode()).hexdigest()
            return self._failed(rel, digest, st.st_size, st.st_mtime_ns, str(exc)), None
        raw = data.tobytes()
        sha = hashlib.sha256(raw).hexdigest()
        taken = exif_datetime(raw) or time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(st.st_mtime))
        try:
            image = decode_image(data, str(path))
        except ImageError as exc:
            return self._failed(rel, sha, st.st_size, st.st_mtime_ns, str(exc), taken), None
        row = ResultRow(source=self.source, file=rel, sha256=sha, size=st.st_size, mtime_ns=st.st_mtime_ns,
                        taken_at=taken, width=image.shape[1], height=image.shape[0])
        return row, image

    def _failed(self, rel: str, sha: str, size: int | None, mtime_ns: int | None, reason: str,
                taken: str | None = None) -> ResultRow:
        self.last_error = reason
        self.log(f"failed: {reason}")
        return ResultRow(source=self.source, file=rel, sha256=sha, size=size, mtime_ns=mtime_ns, taken_at=taken,
                         status="failed", failure=reason)

    # -- after the commit ------------------------------------------------------------------------

    def _destination(self, row: ResultRow) -> str | None:
        """Where the file goes once its row is committed (decided before the commit)."""
        if row.status == "ok" and self.options.move_processed is not None:
            day = (row.taken_at or utc_now())[:10]
            target = self.options.move_processed / day / row.file
        elif row.status == "failed" and self.options.failed_dir is not None:
            target = self.options.failed_dir / row.file
        else:
            return None
        candidate, n = target, 1
        while candidate.exists():
            candidate = target.with_name(f"{target.stem}_{n}{target.suffix}")
            n += 1
        return str(candidate)

    def _finish_pending_moves(self) -> None:
        for row_id, rel, stored in self.store.pending_moves(self.source):
            src, dst = self.inbox / rel, Path(stored)
            if src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(src), str(dst))
            self.store.mark_moved(row_id)

    def _append_jsonl(self, rows: list[ResultRow]) -> None:
        if self.options.jsonl is None:
            return
        with open(self.options.jsonl, "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row.__dict__, sort_keys=True) + "\n")

    def _write_status(self, state: str, *, force: bool = False) -> None:
        path = self.options.status_file
        now = time.monotonic()
        if path is None or (not force and now - self._last_status < self.options.status_every):
            return
        self._last_status = now
        seconds = sum(t for t, _ in self.recent)
        status = {
            "state": state, "pid": os.getpid(), "inbox": self.source, "engine": self.predictor.engine_description,
            "queue_depth": self.queue_depth, "processed": self.processed, "failed": self.failed,
            "images_per_second": sum(n for _, n in self.recent) / seconds if seconds else 0.0,
            "last_error": self.last_error, "updated_at": utc_now(),
        }
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(status, indent=1))
        tmp.replace(path)

