"""``promptcam-watch``: classify images as they land in an inbox folder, restart-safe.

A file is taken only once complete:

- its size and mtime have not changed for ``settle`` seconds. A close-write event (watchdog/inotify)
  only wakes the scan early: FTP ``APPE`` and SMB writers close after every chunk, so the full quiet
  time is still required after it;
- and it does not look like an upload in progress. An empty file, a JPEG without its end marker or
  a PNG without ``IEND`` (a preallocating writer leaves a zero tail that OpenCV decodes as a grey
  picture), or a file that does not decode, is "not ready" while it is younger than
  ``incomplete_wait`` seconds, and looked at again after another ``settle``; older than that it is
  taken as it is (a failure record when it does not decode).

Only regular files are taken: symlinks, FIFOs and devices are skipped and counted, never followed.
Output folders inside the inbox (``--move-processed``, ``--failed``, ``--heatmaps``) are left out of
the scan; an output folder that *is* the inbox is refused.

Whatever is ready is batched; the batch's rows are committed in one SQLite transaction, then the
``--jsonl`` log is brought up to date from the database, and only then are files moved away
(durable copy or hard link, verify size + sha256, unlink: ``archive.py``). A SIGKILL at any moment
loses nothing and classifies nothing twice: a restart replays unfinished moves and JSONL lines.
An identical re-upload of a file that already has a row (same name and content, new mtime) is
recorded as a duplicate, archived beside the first copy under a free name, and not classified again.
SIGTERM/SIGINT finish the current batch and exit cleanly.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from promptcam.core.atomic import atomic_write_text, fsync_dir
from promptcam.core.errors import ImageError, PromptCamError

from .archive import Archiver, contained, fault_point, fit_name, free_name, valid_taken_at
from .exif import exif_datetime
from .images import MAX_FILE_BYTES, decode_image, is_image_path, resize_for_model
from .pipeline import fill_row, write_heatmaps
from .predictor import Predictor
from .results import ImageRecord
from .store import ResultStore, db_text, utc_now

TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".filepart", ".crdownload", ".uploading", "~")
PNG_END = b"IEND\xaeB`\x82"


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
    incomplete_wait: float = 120.0  # how long a file that looks half-written is waited for


@dataclass
class _Candidate:
    size: int
    mtime_ns: int
    stable_since: float  # monotonic: when this version (size, mtime) was first seen
    next_try: float = 0.0  # monotonic: a "not ready" file is read again only after this


class ReadyTracker:
    """Decides when a file in the inbox has been quiet long enough to read."""

    def __init__(self, settle: float) -> None:
        self.settle = settle
        self.candidates: dict[Path, _Candidate] = {}

    def observe(self, path: Path, size: int, mtime_ns: int, now: float) -> bool:
        """Record a scan of ``path``; returns whether it is ready to take."""
        seen = self.candidates.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (size, mtime_ns):
            self.candidates[path] = _Candidate(size, mtime_ns, now)
            return False
        return now - seen.stable_since >= self.settle and now >= seen.next_try

    def defer(self, path: Path, now: float) -> None:
        """``path`` looked half-written: try it again after another quiet time."""
        if path in self.candidates:
            self.candidates[path].next_try = now + max(self.settle, 0.2)

    def quiet_for(self, path: Path, now: float) -> float:
        seen = self.candidates.get(path)
        return now - seen.stable_since if seen is not None else 0.0

    def forget(self, path: Path) -> None:
        self.candidates.pop(path, None)


@dataclass
class _Taken:
    """What reading one ready file gave: a row (with its image when decoded), a duplicate, or "not ready"."""

    path: Path
    rel: str
    row: ImageRecord | None = None
    image: np.ndarray | None = None
    duplicate: dict[str, Any] | None = None
    not_ready: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def upload_incomplete(data: bytes) -> str | None:
    """Why ``data`` looks like a file still being written (JPEG/PNG end markers), or None."""
    if not data:
        return "empty"
    body = data.rstrip(b"\x00")  # a preallocated file: the part not yet written is zeros
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in body[-32:]:
        return "no JPEG end marker yet"
    if data[:8] == b"\x89PNG\r\n\x1a\n" and PNG_END not in body[-32:]:
        return "no PNG end chunk yet"
    return None


def _read_regular(path: Path) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file (links not followed, FIFOs never opened for a blocking read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{db_text(str(path))}: not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise ImageError(f"{db_text(str(path))}: file is {st.st_size / 2**20:.0f} MiB, above the "
                             f"{MAX_FILE_BYTES / 2**20:.0f} MiB limit")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


class InboxWatcher:
    """The watch loop; ``run`` returns when stopped by a signal (or, with ``once``, when idle)."""

    def __init__(self, predictor: Predictor, options: WatchOptions, log=print) -> None:  # noqa: ANN001
        self.predictor = predictor
        self.options = options
        self.log = log
        if not options.inbox.is_dir():
            raise ImageError(f"{options.inbox}: inbox folder not found")
        self.inbox = options.inbox.resolve()
        self.source = str(self.inbox)
        self.archive_root = options.move_processed.resolve() if options.move_processed is not None else None
        self.failed_root = options.failed_dir.resolve() if options.failed_dir is not None else None
        self.heatmap_root = options.heatmaps.resolve() if options.heatmaps is not None else None
        self.excluded = self._excluded_folders()
        self.store = ResultStore.open_for_writing(options.db, log)
        roots = [r for r in (self.archive_root, self.failed_root) if r is not None]
        self.archiver = Archiver(self.inbox, roots, self.store, log)
        self.tracker = ReadyTracker(options.settle)
        self.known = self.store.known_files(self.source)
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.processed = self.failed = self.duplicates = self.not_ready = 0
        self.skipped: dict[str, str] = {}  # inbox files not taken (rel -> why), as of the last scan
        self._reported: set[tuple[str, str]] = set()
        self.last_error: str | None = None
        self.recent: deque[tuple[float, int]] = deque(maxlen=50)
        self.queue_depth = 0
        self._last_status = 0.0

    def _excluded_folders(self) -> set[str]:
        """Output folders inside the inbox, left out of the scan (an output that is the inbox is refused)."""
        excluded = set()
        for flag, root in (("--move-processed", self.archive_root), ("--failed", self.failed_root),
                           ("--heatmaps", self.heatmap_root)):
            if root is None:
                continue
            if root == self.inbox:
                raise PromptCamError(f"{flag} {root} is the inbox itself: its files would be found and classified "
                                     "again; give a folder outside the inbox (or a subfolder of it)")
            if root.is_relative_to(self.inbox):
                excluded.add(str(root))
                self.log(f"{flag} {root} is inside the inbox: left out of the scan")
        return excluded

    # -- lifecycle -------------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        observer = self._start_events() if self.options.use_events else None
        try:
            self._replay()
            self.log(f"watching {self.inbox} ({'inotify events + ' if observer else ''}polling every "
                     f"{self.options.poll}s, settle {self.options.settle}s); results in {self.options.db}")
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
            # events only wake the scan; readiness is decided by the quiet time and the content
            def on_closed(self, event) -> None:  # noqa: ANN001 - inotify IN_CLOSE_WRITE
                watcher.wake.set()

            def on_created(self, event) -> None:  # noqa: ANN001
                watcher.wake.set()

        observer = Observer()
        observer.schedule(Handler(), str(self.inbox), recursive=True)
        observer.daemon = True
        observer.start()
        return observer

    def _replay(self) -> None:
        """After a restart: finish the moves and the JSONL lines a kill left undone (moves that failed
        before are retried once per start)."""
        for move in self.store.pending_moves(self.source):
            self.archiver.finish(move)
        self._sync_jsonl()

    # -- discovery -------------------------------------------------------------------------------

    def _scan(self) -> list[Path]:
        now = time.monotonic()
        ready, waiting = [], 0
        present, skipped = set(), {}

        def walk_error(exc: OSError) -> None:
            self._report(str(exc.filename), f"cannot list folder ({exc.strerror or exc})")

        for root, dirs, files in os.walk(self.inbox, onerror=walk_error):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and os.path.join(root, d) not in self.excluded)
            for name in sorted(files):
                path = Path(root) / name
                rel = path.relative_to(self.inbox).as_posix()
                if name.startswith(".") or name.endswith(TEMP_SUFFIXES):
                    skipped[rel] = "hidden or temporary upload name"
                    continue
                if not is_image_path(name):
                    skipped[rel] = "not an image file name"
                    continue
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue  # gone between listing and looking
                except OSError as exc:
                    skipped[rel] = self._report(rel, f"cannot stat ({exc.strerror or exc})")
                    continue
                if stat.S_ISLNK(st.st_mode):
                    skipped[rel] = self._report(rel, "symbolic link, not followed")
                    continue
                if not stat.S_ISREG(st.st_mode):
                    skipped[rel] = self._report(rel, "not a regular file")
                    continue
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
        self.skipped = skipped
        self.queue_depth = len(ready) + waiting
        return ready

    def _report(self, rel: str, reason: str) -> str:
        """Log a skipped inbox entry once (per name and reason), not at every scan."""
        if (rel, reason) not in self._reported:
            self._reported.add((rel, reason))
            self.log(f"skipped: {db_text(rel)}: {reason}")
        return reason

    # -- processing ------------------------------------------------------------------------------

    def _process(self, paths: list[Path]) -> None:
        started, now = time.perf_counter(), time.monotonic()
        taken = [self._load(path, now) for path in paths if path.exists() or path.is_symlink()]
        for gone in set(paths) - {t.path for t in taken}:
            self.tracker.forget(gone)  # removed between scan and read (an operator tidying up)
        for item in taken:
            if item.not_ready is not None:
                self.not_ready += 1
                self.tracker.defer(item.path, now)
        good = [t for t in taken if t.image is not None]
        if good:
            pixels = np.stack([resize_for_model(t.image, self.predictor.config) for t in good])
            predictions = self.predictor.predict_pixels(pixels, [t.image.shape[:2] for t in good],
                                                        top_k=self.options.top_k, traits=self.options.traits)
            for item, prediction in zip(good, predictions, strict=True):
                fill_row(item.row, prediction, self.predictor, item.image, None)
                self._draw_heatmap(item, prediction)
        if self.options.batch_delay:
            self.log(f"batch of {len(taken)} read; committing in {self.options.batch_delay}s (--batch-delay)")
            time.sleep(self.options.batch_delay)
        claimed: set[str] = set()
        rows = [t.row for t in taken if t.row is not None]
        for item in taken:
            if item.row is not None and not item.extra.get("unreadable"):
                item.row.stored_path = self._destination(item.rel, item.row.failure is None, item.row.taken_at,
                                                         claimed)
        self.store.add(rows, log=self.log)  # one transaction: these images are now done
        fault_point("commit")
        self._sync_jsonl()
        duplicates = [t for t in taken if t.duplicate is not None]
        for item in duplicates:
            dup = item.duplicate
            dup["stored_path"] = self._destination(item.rel, dup.pop("ok"), dup.pop("taken_at"), claimed)
        if duplicates:
            self.store.add_duplicates([t.duplicate for t in duplicates])
            self.log(f"{len(duplicates)} identical re-upload(s) recorded as duplicates, not classified again")
        for item in taken:
            if item.not_ready is None:
                # the size and mtime the row was made at: a file changed since then is new content
                self.known.add((item.rel, item.extra.get("size"), item.extra.get("mtime_ns")))
                self.tracker.forget(item.path)
        for move in self.store.pending_moves(self.source, with_errors=False):
            self.archiver.finish(move)
        n_failed = sum(r.failure is not None for r in rows)
        self.processed += len(rows) - n_failed
        self.failed += n_failed
        self.duplicates += len(duplicates)
        if rows or duplicates:
            self.recent.append((time.perf_counter() - started, len(rows)))
        self._write_status("running", force=True)

    def _load(self, path: Path, now: float) -> _Taken:
        """Read and decode one ready file; never raises for a bad file."""
        rel = path.relative_to(self.inbox).as_posix()
        shown = db_text(str(path))
        try:
            data, st = _read_regular(path)
        except (ImageError, OSError) as exc:
            reason = str(exc) if isinstance(exc, ImageError) else f"{shown}: cannot read file ({exc.strerror or exc})"
            try:
                st = os.lstat(path)
            except OSError:
                return _Taken(path, rel, not_ready="vanished")
            # unreadable files have no content hash: their row is keyed on the path, and they are not
            # moved (the move checks content, which cannot be read)
            row = self._failed(rel, hashlib.sha256(f"unreadable:{rel}".encode("utf-8", "surrogateescape")).hexdigest(),
                               st.st_size, st.st_mtime_ns, reason)
            return _Taken(path, rel, row=row, extra={"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                                     "unreadable": True})
        version = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        age = max(time.time() - st.st_mtime, self.tracker.quiet_for(path, now))
        young = age < self.options.incomplete_wait
        incomplete = upload_incomplete(data)
        if incomplete is not None and young:
            return _Taken(path, rel, not_ready=incomplete, extra=version)
        sha = hashlib.sha256(data).hexdigest()
        if not data:
            return _Taken(path, rel, row=self._failed(rel, sha, st.st_size, st.st_mtime_ns, f"{shown}: zero-byte file"),
                          extra=version)
        taken = valid_taken_at(exif_datetime(data), st.st_mtime)
        original = self.store.find_row(self.source, rel, sha)
        if original is not None:
            result_id, status = original
            return _Taken(path, rel, extra=version, duplicate={
                "result_id": result_id, "source": self.source, "file": rel, "sha256": sha, "size": st.st_size,
                "mtime_ns": st.st_mtime_ns, "ok": status == "ok", "taken_at": taken})
        try:
            image = decode_image(data, shown)
        except ImageError as exc:
            if young:
                return _Taken(path, rel, not_ready=str(exc), extra=version)
            return _Taken(path, rel, row=self._failed(rel, sha, st.st_size, st.st_mtime_ns, str(exc), taken),
                          extra=version)
        except (cv2.error, MemoryError, ValueError) as exc:  # a decoder fault on hostile data: that file only
            reason = f"{shown}: cannot decode image ({type(exc).__name__}: {str(exc).strip()[:200]})"
            return _Taken(path, rel, row=self._failed(rel, sha, st.st_size, st.st_mtime_ns, reason, taken),
                          extra=version)
        row = ImageRecord(source=self.source, file=rel, sha256=sha, size=st.st_size, mtime_ns=st.st_mtime_ns,
                        taken_at=taken, width=image.shape[1], height=image.shape[0])
        return _Taken(path, rel, row=row, image=image, extra=version)

    def _failed(self, rel: str, sha: str, size: int | None, mtime_ns: int | None, reason: str,
                taken: str | None = None) -> ImageRecord:
        self.last_error = reason
        self.log(f"failed: {reason}")
        return ImageRecord(source=self.source, file=rel, sha256=sha, size=size, mtime_ns=mtime_ns, taken_at=taken,
                         failure=reason)

    def _draw_heatmap(self, item: _Taken, prediction: Any) -> None:
        """Heatmap files named by the inbox path and the content hash (a re-drop never overwrites one),
        shortened to fit the file-system limit; a failure to write one is logged, the row stays."""
        if self.heatmap_root is None:
            return
        *folders, name = item.rel.split("/")
        stem = name.rpartition(".")[0] or name
        base = self.heatmap_root.joinpath(*(fit_name(f) for f in folders))
        heat = base / fit_name(f"{stem}.{item.row.sha256[:12]}.heatmap.jpg", reserve=16)  # + a temp suffix
        sheet = base / fit_name(f"{stem}.{item.row.sha256[:12]}.traits.jpg", reserve=16)
        if not contained(heat, self.heatmap_root):
            self.log(f"{db_text(item.rel)}: heatmap path leaves {self.heatmap_root}; not drawn")
            return
        try:
            item.row.heatmap, _ = write_heatmaps(item.image, prediction, heat, sheet)
        except (OSError, ImageError, cv2.error) as exc:
            self.last_error = f"{db_text(item.rel)}: heatmap not written ({exc})"
            self.log(self.last_error)

    # -- after the commit ------------------------------------------------------------------------

    def _destination(self, rel: str, ok: bool, taken_at: str | None, claimed: set[str]) -> str | None:
        """Where a file goes once its row is committed (decided before the commit, never outside the roots)."""
        if ok and self.archive_root is not None:
            root, parts = self.archive_root, [(taken_at or utc_now())[:10], *rel.split("/")]
        elif not ok and self.failed_root is not None:
            root, parts = self.failed_root, rel.split("/")
        else:
            return None
        target = root.joinpath(*(fit_name(p, reserve=8) for p in parts))
        if not contained(target, root):
            self.log(f"{db_text(rel)}: archive path {target} leaves {root}; the file stays in the inbox")
            return None
        target = free_name(target, lambda p: str(p) in claimed or self.store.is_claimed(str(p)))
        claimed.add(str(target))
        return str(target)

    def _sync_jsonl(self) -> None:
        """Append to ``--jsonl`` every row of this inbox it does not have yet (the log's last id says which)."""
        path = self.options.jsonl
        if path is None:
            return
        last = _last_logged_id(path)
        if last is None:  # a new log: it starts with the rows of this session
            key = f"jsonl_from:{path.resolve()}"
            last = self.store.meta_int(key)
            if last is None:
                last = self.store.max_id(self.source)
                self.store.set_meta(key, str(last))
        lines = [_jsonl_line(row) for row in self.store.rows_after(self.source, last)]
        if not lines:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(path.parent)

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
            "duplicates": self.duplicates, "skipped": len(self.skipped), "not_ready": self.not_ready,
            "move_errors": self.archiver.errors,
            "images_per_second": sum(n for _, n in self.recent) / seconds if seconds else 0.0,
            "last_error": db_text(self.last_error), "updated_at": utc_now(),
        }
        try:
            atomic_write_text(path, json.dumps(status, indent=1), durable=False)
        except OSError as exc:  # a full or read-only disk must not stop the classification
            self.log(f"{path}: status not written ({exc})")


def _jsonl_line(row: dict[str, Any]) -> str:
    raw = row.pop("file_raw", None)
    if raw is not None:
        row["file_raw_hex"] = bytes(raw).hex()
    return json.dumps(row, sort_keys=True) + "\n"


def _last_logged_id(path: Path) -> int | None:
    """The id of the last complete line of a JSONL log; a torn last line (a kill mid-write) is cut off."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    window = 1 << 16
    while True:
        start = max(0, size - window)
        with open(path, "rb") as fh:
            fh.seek(start)
            tail = fh.read()
        end = tail.rfind(b"\n")
        if end < 0 and start > 0:
            window *= 4
            continue
        if end + 1 < len(tail):  # torn tail: drop it so the next line starts on its own
            with open(path, "r+b") as fh:
                fh.truncate(start + end + 1)
        for line in reversed(tail[:end + 1].splitlines()):
            try:
                value = json.loads(line).get("id")
            except (ValueError, AttributeError):
                continue
            if isinstance(value, int):
                return value
        if start == 0:
            return None
        window *= 4
