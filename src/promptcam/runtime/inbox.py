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

With ``detections="sidecar"`` each image waits for its detector sidecar (``sidecar.py``: where it is
looked for and what it may hold), which must itself be quiet for ``settle`` seconds and be complete
JSON. An image whose sidecar has not come ``sidecar_wait`` seconds after the image was ready (by
the watcher's own clock: photos copied with old mtimes still wait) becomes one failed record. Each
qualifying detection is classified on its crop, the photo decoded once for all of them
(``detection_run.decode_crops``); a photo with none is not decoded. The sidecar goes with its image
when the image is moved (``--move-processed``/``--failed``), beside it under the same naming form.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from promptcam.core.atomic import atomic_write_text, fsync_dir
from promptcam.core.errors import ImageError, PromptCamError

from .archive import Archiver, contained, fault_point, fit_name, free_name, valid_taken_at
from .crops import BoxHeat, overlay_boxes
from .detection_run import PhotoCrops, classified_detections, decode_crops, predict_crops
from .detections import DEFAULT_CATEGORIES, DEFAULT_THRESHOLD, category_ids, qualifies
from .exif import exif_datetime
from .heatmap import write_image
from .images import MAX_FILE_BYTES, check_dimensions, decode_image, is_image_path, resize_for_model
from .pipeline import fill_row, write_heatmaps
from .predictor import Predictor
from .results import ImageRecord
from .sidecar import (
    DETECTION_MODES,
    Sidecar,
    SidecarIncomplete,
    find_sidecar,
    is_sidecar_name,
    move_beside,
    parse_sidecar,
    sidecar_paths,
)
from .store import PendingMove, ResultStore, db_text, utc_now

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
    detections: str | None = None  # "sidecar": classify the crops of each image's detector sidecar
    det_threshold: float = DEFAULT_THRESHOLD
    det_categories: tuple[str, ...] = DEFAULT_CATEGORIES
    sidecar_wait: float = 120.0  # how long a ready image waits for its sidecar before it is a failure


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
    photo: PhotoCrops | None = None  # --detections: the crops of the qualifying detections
    selected: list[int] = field(default_factory=list)  # --detections: their indices in row.detections


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

    def __init__(self, predictor: Predictor, options: WatchOptions, log=print,  # noqa: ANN001
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: the monotonic clock of the quiet and sidecar waits (a test drives scans with its own)."""
        self.predictor = predictor
        self.options = options
        self.log = log
        self.clock = clock
        self.detecting = check_detection_options(options)
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
        self.sidecar_since: dict[Path, float] = {}  # ready images without a sidecar: since when (clock)
        self.det_categories: dict[str, str] = {}
        if self.detecting:  # the database's one category map (export-results names the categories by it)
            self.det_categories = self.store.meta_json("detection_categories") or {}
            self.store.set_meta("class_names", json.dumps(list(predictor.class_names)))
        self._saved_categories = dict(self.det_categories)

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
            self.start()
            self.log(f"watching {self.inbox} ({'inotify events + ' if observer else ''}polling every "
                     f"{self.options.poll}s, settle {self.options.settle}s); results in {self.options.db}")
            idle_scans = 0
            while not self.stopping.is_set():
                if self.step():
                    idle_scans = 0
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
            self.close()
        return 0

    def step(self) -> int:
        """One scan of the inbox and one batch of what is ready processed (``run``'s loop body; a test
        drives the watcher with it and its own ``clock``). Returns the number of files taken."""
        ready = self._scan()[: self.predictor.batch_size]
        if ready:
            self._process(ready)
        return len(ready)

    def close(self) -> None:
        """Close the results database."""
        self.store.close()

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

    def start(self) -> None:
        """Before the first scan (``run`` calls it): finish the moves and the JSONL lines a kill left
        undone (moves that failed before are retried once per start), and start a new JSONL log here."""
        for move in self.store.pending_moves(self.source):
            self._finish_move(move)
        self._sync_jsonl()

    # -- discovery -------------------------------------------------------------------------------

    def _scan(self) -> list[Path]:
        now = self.clock()
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
                if self.detecting and is_sidecar_name(name):
                    continue  # read with its image, never an image itself
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
                settled = self.tracker.observe(path, st.st_size, st.st_mtime_ns, now)
                if self.detecting:  # the sidecar's quiet time runs beside the image's (also while it is deferred)
                    settled = self._sidecar_settled(path, now, present, image_settled=settled)
                if settled:
                    ready.append(path)
                else:
                    waiting += 1
        for gone in set(self.tracker.candidates) - present:
            self.tracker.forget(gone)
        for gone in set(self.sidecar_since) - present:
            del self.sidecar_since[gone]
        self.skipped = skipped
        self.queue_depth = len(ready) + waiting
        return ready

    def _sidecar_settled(self, image: Path, now: float, present: set[Path], *, image_settled: bool) -> bool:
        """Whether an image can be taken: it is settled, and its sidecar is there and quiet or was waited
        for long enough (the wait starts when the image is settled)."""
        sidecar = find_sidecar(image)
        if sidecar is None:
            if not image_settled:
                return False
            since = self.sidecar_since.setdefault(image, now)
            return now - since >= self.options.sidecar_wait  # taken: it becomes a "no sidecar" failure
        try:
            st = os.lstat(sidecar)
        except OSError:
            return False  # gone between looking and stating: look again at the next scan
        present.add(sidecar)
        return self.tracker.observe(sidecar, st.st_size, st.st_mtime_ns, now) and image_settled

    def _report(self, rel: str, reason: str) -> str:
        """Log a skipped inbox entry once (per name and reason), not at every scan."""
        if (rel, reason) not in self._reported:
            self._reported.add((rel, reason))
            self.log(f"skipped: {db_text(rel)}: {reason}")
        return reason

    # -- processing ------------------------------------------------------------------------------

    def _process(self, paths: list[Path]) -> None:
        started, now = time.perf_counter(), self.clock()
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
        self._classify_crops([t for t in taken if t.photo is not None])
        if self.options.batch_delay:
            self.log(f"batch of {len(taken)} read; committing in {self.options.batch_delay}s (--batch-delay)")
            time.sleep(self.options.batch_delay)
        claimed: set[str] = set()
        rows = [t.row for t in taken if t.row is not None]
        for item in taken:
            if item.row is not None and not item.extra.get("unreadable"):
                item.row.stored_path = self._destination(item.rel, item.row.failure is None, item.row.taken_at,
                                                         claimed)
        if self.detecting and self.det_categories != self._saved_categories:
            # before the rows: a row never names a category the database cannot name
            self.store.set_meta("detection_categories", json.dumps(self.det_categories, sort_keys=True))
            self._saved_categories = dict(self.det_categories)
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
                self.sidecar_since.pop(item.path, None)
                for sidecar in sidecar_paths(item.path) if self.detecting else ():
                    self.tracker.forget(sidecar)
        for move in self.store.pending_moves(self.source, with_errors=False):
            self._finish_move(move)
        n_failed = sum(r.failure is not None for r in rows)
        self.processed += len(rows) - n_failed
        self.failed += n_failed
        self.duplicates += len(duplicates)
        if rows or duplicates:
            self.recent.append((time.perf_counter() - started, len(rows)))
        self._write_status("running", force=True)

    def _young(self, path: Path, st: os.stat_result, now: float) -> bool:
        """Whether a file may still be being written: changed (or first seen quiet) less than
        ``incomplete_wait`` ago. A file that looks half-written is waited for while it is young."""
        return max(time.time() - st.st_mtime, self.tracker.quiet_for(path, now)) < self.options.incomplete_wait

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
        young = self._young(path, st, now)
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
        if self.detecting:
            return self._load_detections(path, rel, data, st, sha, taken, young, now)
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

    def _load_detections(self, path: Path, rel: str, data: bytes, st: os.stat_result, sha: str, taken: str,
                         young: bool, now: float) -> _Taken:
        """An image of ``--detections sidecar``: its sidecar read and checked, its qualifying crops cut
        from one decode (no decode when none qualifies); never raises for a bad image or sidecar."""
        shown = db_text(str(path))
        version = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

        def failed(reason: str) -> _Taken:
            return _Taken(path, rel, row=self._failed(rel, sha, st.st_size, st.st_mtime_ns, reason, taken),
                          extra=version)

        sidecar_path = find_sidecar(path)
        if sidecar_path is None:
            looked = " or ".join(db_text(p.name) for p in sidecar_paths(path))
            return failed(f"{shown}: no detection sidecar ({looked}) within --sidecar-wait "
                          f"{self.options.sidecar_wait:g} s")
        try:
            raw, sst = _read_regular(sidecar_path)
            try:
                sidecar = parse_sidecar(sidecar_path, raw, path.name)
            except SidecarIncomplete as exc:
                if self._young(sidecar_path, sst, now):
                    return _Taken(path, rel, not_ready=str(exc), extra=version)
                raise
            wanted = category_ids(sidecar.detector, self.options.det_categories)
            self._merge_categories(sidecar)
        except PromptCamError as exc:  # malformed sidecar (or not a regular file): the record names it
            return failed(db_text(str(exc)))
        except OSError as exc:
            return failed(f"{db_text(str(sidecar_path))}: cannot read detection sidecar ({exc.strerror or exc})")
        if sidecar.detections is None:
            return failed(f"{shown}: the detector failed on it ({sidecar.failure or 'no detections'}; "
                          f"{db_text(str(sidecar_path))})")
        detections = [dict(d) for d in sidecar.detections]
        selected = [i for i, d in enumerate(detections) if qualifies(d, wanted, self.options.det_threshold)]
        photo = None
        try:
            if selected:
                photo = decode_crops(data, shown, [detections[i]["bbox"] for i in selected], self.predictor.config,
                                     keep_original=self.heatmap_root is not None)
                height, width = photo.full
            else:  # nothing to classify: the header gives the size, the photo is not decoded
                width, height = check_dimensions(data, shown)
        except ImageError as exc:
            if young:
                return _Taken(path, rel, not_ready=str(exc), extra=version)
            return failed(str(exc))
        except (cv2.error, MemoryError, ValueError) as exc:  # a decoder fault on hostile data: that file only
            return failed(f"{shown}: cannot decode image ({type(exc).__name__}: {str(exc).strip()[:200]})")
        row = ImageRecord(source=self.source, file=rel, sha256=sha, size=st.st_size, mtime_ns=st.st_mtime_ns,
                          taken_at=taken, width=width, height=height, detections=detections)
        return _Taken(path, rel, row=row, extra=version, photo=photo, selected=selected)

    def _merge_categories(self, sidecar: Sidecar) -> None:
        """Add a sidecar's categories to the station's one map; a clash (an id named otherwise) is refused."""
        for cid, name in sidecar.detector.detection_categories.items():
            known = self.det_categories.get(cid)
            if known is not None and known != name:
                raise PromptCamError(f"{sidecar.detector.path}: detection category {cid} is {name!r} here but "
                                     f"{known!r} in this station's earlier sidecars")
        self.det_categories.update(sidecar.detector.detection_categories)

    def _classify_crops(self, items: list[_Taken]) -> None:
        """All crops of a batch through the backend; classifications written into each row's detections."""
        if not items:
            return
        crops = np.concatenate([t.photo.crops for t in items])
        predictions = predict_crops(self.predictor, crops, top_k=self.options.top_k)
        start = 0
        for item in items:
            count = len(item.photo.crops)
            item.row.detections, boxes = classified_detections(
                item.row.detections, item.selected, predictions[start:start + count], item.photo.squares,
                self.predictor)
            start += count
            self._draw_overlay(item, boxes)

    def _failed(self, rel: str, sha: str, size: int | None, mtime_ns: int | None, reason: str,
                taken: str | None = None) -> ImageRecord:
        self.last_error = reason
        self.log(f"failed: {reason}")
        return ImageRecord(source=self.source, file=rel, sha256=sha, size=size, mtime_ns=mtime_ns, taken_at=taken,
                         failure=reason)

    def _heatmap_paths(self, item: _Taken) -> tuple[Path, Path] | None:
        """Heatmap files named by the inbox path and the content hash (a re-drop never overwrites one),
        shortened to fit the file-system limit; None without ``--heatmaps`` or when a path would leave it."""
        if self.heatmap_root is None:
            return None
        *folders, name = item.rel.split("/")
        stem = name.rpartition(".")[0] or name
        base = self.heatmap_root.joinpath(*(fit_name(f) for f in folders))
        heat = base / fit_name(f"{stem}.{item.row.sha256[:12]}.heatmap.jpg", reserve=16)  # + a temp suffix
        sheet = base / fit_name(f"{stem}.{item.row.sha256[:12]}.traits.jpg", reserve=16)
        if not contained(heat, self.heatmap_root):
            self.log(f"{db_text(item.rel)}: heatmap path leaves {self.heatmap_root}; not drawn")
            return None
        return heat, sheet

    def _draw_heatmap(self, item: _Taken, prediction: Any) -> None:
        """The whole-image heatmap (and trait sheet); a failure to write one is logged, the row stays."""
        paths = self._heatmap_paths(item)
        if paths is None:
            return
        try:
            item.row.heatmap, _ = write_heatmaps(item.image, prediction, *paths)
        except (OSError, ImageError, cv2.error) as exc:
            self.last_error = f"{db_text(item.rel)}: heatmap not written ({exc})"
            self.log(self.last_error)

    def _draw_overlay(self, item: _Taken, boxes: list[BoxHeat]) -> None:
        """One overlay per photo covering all of its classified boxes (as ``promptcam-run --detections``)."""
        paths = self._heatmap_paths(item) if boxes and item.photo.original is not None else None
        if paths is None:
            return
        try:
            item.row.heatmap = str(write_image(paths[0], overlay_boxes(item.photo.original, item.photo.full, boxes)))
        except (OSError, ImageError, cv2.error) as exc:
            self.last_error = f"{db_text(item.rel)}: heatmap not written ({exc})"
            self.log(self.last_error)

    # -- after the commit ------------------------------------------------------------------------

    def _finish_move(self, move: PendingMove) -> None:
        """Move a committed file away, then its detection sidecar beside it (``--detections``)."""
        self.archiver.finish(move)
        if not self.detecting:
            return
        stored, moved, error = self.store.move_outcome(move)
        if not moved or error is not None or stored is None:
            return  # not moved: the sidecar stays with its image
        image = self.inbox / move.file
        sidecar = find_sidecar(image)
        if sidecar is None or not os.path.isfile(sidecar) or os.path.islink(sidecar):
            return
        try:
            move_beside(sidecar, image.name, Path(stored))
        except OSError as exc:
            self.last_error = f"{db_text(str(sidecar))}: detection sidecar not moved ({exc}); it stays in the inbox"
            self.log(self.last_error)

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
            "move_errors": self.archiver.errors, "waiting_for_sidecar": len(self.sidecar_since),
            "images_per_second": sum(n for _, n in self.recent) / seconds if seconds else 0.0,
            "last_error": db_text(self.last_error), "updated_at": utc_now(),
        }
        try:
            atomic_write_text(path, json.dumps(status, indent=1), durable=False)
        except OSError as exc:  # a full or read-only disk must not stop the classification
            self.log(f"{path}: status not written ({exc})")


def check_detection_options(options: WatchOptions) -> bool:
    """Whether the watcher classifies detections; refuses a mode or a setting it cannot honour."""
    if options.detections is None:
        return False
    if options.detections not in DETECTION_MODES:
        raise PromptCamError(f"--detections {options.detections!r} is not a mode of promptcam-watch (known: "
                             f"{', '.join(DETECTION_MODES)}: a per-image JSON beside each photo); a detector file "
                             "is read by promptcam-run --detections FILE")
    if not 0 <= options.det_threshold <= 1:
        raise PromptCamError(f"--det-threshold {options.det_threshold} is outside [0, 1]")
    if options.traits:
        raise PromptCamError("--traits cannot be used with --detections (each crop has its heatmap, not a trait sheet)")
    return True


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
