"""``promptcam watch``: classify images as they land in an inbox folder, restart-safe.

The station is four small parts, each in its own module:

- ``readiness``: the scan, and when a file (and its sidecar) has been quiet long enough to take;
- ``intake``: reading a ready file (hash, capture time, duplicate check, sidecar, the one image path);
- this module: the loop, and the batch's inference through the one record path;
- ``commit``: one SQLite transaction per batch, the JSONL log, then the moves (``archive``).

Whatever is ready is classified in batches of the predictor's batch size; files are read and decoded
by ``workers`` threads. Output folders inside the inbox (``--move-processed``, ``--failed``,
``--heatmaps``) are left out of the scan; an output folder that *is* the inbox is refused. An identical
re-upload of a file that already has a row is recorded as a duplicate, archived beside the first copy
under a free name, and not classified again. SIGTERM/SIGINT finish the current batch and exit cleanly.

With ``--detections sidecar`` each image waits for its detector sidecar (``sidecar``: where it is
looked for and what it may hold). Each qualifying detection is classified on its crop, the photo
decoded once for all of them; a photo with none is not decoded. The sidecar goes with its image.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2

from promptcam.core.errors import ImageError, PromptCamError, ServerUnavailableError
from promptcam.results.megadetector import MAX_CROPS_PER_PHOTO
from promptcam.results.store import ResultStore
from promptcam.runtime.clips import classify_clip
from promptcam.runtime.predictor import Predictor
from promptcam.runtime.records import CropBoxes, HeatmapFiles, ImageRecord, db_text, heatmap_paths, record_prediction

from .archive import contained
from .commit import Committer
from .events import StationEvents
from .intake import Intake, Taken, file_is_young
from .options import WatchOptions
from .readiness import FileVersion, InboxScanner, wake_on_events
from .sidecar import sidecar_paths
from .status import StationStatus


class InboxWatcher:
    """The watch loop; ``run`` returns when stopped by a signal (or, with ``once``, when idle)."""

    def __init__(self, predictor: Predictor, options: WatchOptions, log: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock``: the monotonic clock of the quiet and sidecar waits (a test drives scans with its own)."""
        options.check()
        if not options.inbox.is_dir():
            raise ImageError(f"{options.inbox}: inbox folder not found")
        self.predictor, self.options, self.log, self.clock = predictor, options, log, clock
        self.inbox = options.inbox.resolve()
        self.source = str(self.inbox)
        self.heatmap_root = options.heatmaps.resolve() if options.heatmaps is not None else None
        archive_root = options.move_processed.resolve() if options.move_processed is not None else None
        failed_root = options.failed_dir.resolve() if options.failed_dir is not None else None
        excluded = self._excluded_folders({"--move-processed": archive_root, "--failed": failed_root,
                                           "--heatmaps": self.heatmap_root})
        self.store = ResultStore.open_for_writing(options.db, log)
        sidecars = options.detections
        self.scanner = InboxScanner(self.inbox, excluded, self.store.known_files(self.source), options.settle,
                                    sidecars.wait if sidecars else None, log)
        self.intake = Intake(self.source, predictor.config, find_row=self.store.find_row,
                             find_seen=self.store.find_seen, sidecars=sidecars,
                             keep_preview=self.heatmap_root is not None, young=self._young, fail=self._failed,
                             categories=self.store.meta_json("detection_categories") if sidecars else None,
                             clip_frames=options.clips.max_frames)
        self.committer = Committer(self.inbox, self.source, self.store, archive_root=archive_root,
                                   failed_root=failed_root, jsonl=options.jsonl, move_sidecars=sidecars is not None,
                                   log=log)
        self.status = StationStatus(options.status_file, options.status_every)
        self.counts = self.status.counts
        self.stopping, self.wake = threading.Event(), threading.Event()
        self.skipped: dict[str, str] = {}  # inbox files not taken (rel -> why), as of the last scan
        self._scan_now = clock()
        if sidecars is not None:  # export-results and review name the classes of crops by it
            self.store.set_meta("class_names", json.dumps(list(predictor.class_names)))
        self._saved_categories = dict(self.intake.categories)
        self.events = None if options.events is None else StationEvents(
            self.store, self.source, options.events, predictor.class_names, camera_from=options.camera_from,
            detector=sidecars is not None)

    def _excluded_folders(self, outputs: dict[str, Path | None]) -> set[str]:
        """Output folders inside the inbox, left out of the scan (an output that is the inbox is refused)."""
        excluded = set()
        for flag, root in outputs.items():
            if root is None:
                continue
            if root == self.inbox:
                raise PromptCamError(f"{flag} {root} is the inbox itself: its files would be found and classified "
                                     "again; give a folder outside the inbox (or a subfolder of it)")
            if root.is_relative_to(self.inbox):
                excluded.add(str(root))
                self.log(f"{flag} {root} is inside the inbox: left out of the scan")
        return excluded

    # -- counters the status file and the CLI report --------------------------------------------

    @property
    def processed(self) -> int:
        return self.counts.processed

    @property
    def failed(self) -> int:
        return self.counts.failed

    @property
    def not_ready(self) -> int:
        return self.counts.not_ready

    @property
    def sidecar_since(self) -> dict[Path, float]:
        return self.scanner.sidecar_since

    # -- lifecycle -------------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.stop)
        observer = wake_on_events(self.inbox, self.wake) if self.options.use_events else None
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
                if self.options.once and not self.scanner.tracker.candidates and idle_scans > 1:
                    break
                self.wake.wait(self.options.poll)
                self.wake.clear()
        finally:
            if observer is not None:
                observer.stop()
            self._write_status("stopped", force=True)
            self.close()
        return 0

    def start(self) -> None:
        """Before the first scan (``run`` calls it): replay what a kill left undone (``Committer.resume``, and
        the summaries of events still open)."""
        self.committer.resume()
        if self.events is not None:
            self.events.start()

    def step(self) -> int:
        """One scan of the inbox, and every file it found ready processed in batches (``run``'s loop body; a
        test drives the watcher with it and its own ``clock``). Returns the number of files taken.

        One walk serves the whole backlog it finds (not one batch), so a backlog of N files costs O(N)."""
        self._scan_now = self.clock()
        scan = self.scanner.scan(self._scan_now)
        self.skipped = scan.skipped
        self.status.queue_depth = len(scan.ready) + scan.waiting
        size = self.predictor.batch_size
        batches = [scan.ready[start:start + size] for start in range(0, len(scan.ready), size)]
        cv_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # the workers are the parallelism (as in the folder run)
        try:
            with ThreadPoolExecutor(max_workers=max(1, self.options.workers)) as pool:
                upcoming = self._decoding(pool, self._reading(pool, batches[0])) if batches else []
                for index, batch in enumerate(batches):
                    reads = self._reading(pool, batches[index + 1]) if index + 1 < len(batches) else []
                    taken = [t for t, decoding in upcoming if decoding is None or decoding.result() is not None]
                    # the next batch decodes while this one is classified and committed
                    upcoming = self._decoding(pool, reads)
                    try:
                        self._process(batch, taken)
                    except ServerUnavailableError as exc:
                        # nothing was committed or moved: the photos stay in the inbox, ready at the next scan
                        self.status.last_error = str(exc)
                        self.log(f"{exc}; {len(scan.ready) - index * size} photos wait in the inbox")
                        self._write_status("waiting-for-server", force=True)
                        return 0
                    self.status.queue_depth = max(0, self.status.queue_depth - size)
                    if self.stopping.is_set():
                        break  # SIGTERM: the batch in flight is done; the rest waits for the next start
        finally:
            cv2.setNumThreads(cv_threads)
        return len(scan.ready)

    def close(self) -> None:
        """Close the results database."""
        self.store.close()

    # -- one batch -------------------------------------------------------------------------------

    def _process(self, paths: list[Path], taken: list[Taken]) -> None:
        """Classify, commit and account one batch of read (and decoded) files."""
        started = time.perf_counter()
        for gone in set(paths) - {t.path for t in taken}:
            self.scanner.tracker.forget(gone)  # removed between scan and read (an operator tidying up)
        for item in taken:
            if item.not_ready is not None:
                self.counts.not_ready += 1
                self.scanner.tracker.defer(item.path, self._scan_now)
        self._classify([t for t in taken if t.photo is not None])
        self._classify_clips([t for t in taken if t.video and t.row is not None and t.row.failure is None])
        rows = [t.row for t in taken if t.row is not None]
        if self.events is not None:
            self.events.assign(rows)
        if self.options.batch_delay:
            self.log(f"batch of {len(taken)} read; committing in {self.options.batch_delay}s (--batch-delay)")
            time.sleep(self.options.batch_delay)
        if self.intake.categories != self._saved_categories:
            # before the rows: a row never names a category the database cannot name
            self.store.set_meta("detection_categories", json.dumps(self.intake.categories, sort_keys=True))
            self._saved_categories = dict(self.intake.categories)
        self.committer.commit(taken)
        if self.committer.last_error is not None:
            self.status.last_error, self.committer.last_error = self.committer.last_error, None
        for item in taken:
            if item.not_ready is None:  # the file the row was made from: a file changed since is read again
                self.scanner.done(item.path, item.key, sidecar_paths(item.path) if self.options.detections else ())
        if self.events is not None:
            self.events.refresh([r.event_id for r in rows])
        failed = sum(r.failure is not None for r in rows)
        self.counts.processed += len(rows) - failed
        self.counts.failed += failed
        self.counts.duplicates += sum(t.duplicate is not None for t in taken)
        if rows or any(t.duplicate is not None for t in taken):
            self.status.batch_done(time.perf_counter() - started, len(rows))
        self._write_status("running", force=True)

    def _reading(self, pool: ThreadPoolExecutor, paths: list[Path]) -> list[Future[tuple[Taken, Any, Any]]]:
        """Start reading and hashing a batch's files in the workers (a file removed since the scan is left out)."""
        return [pool.submit(self.intake.read, p, p.relative_to(self.inbox).as_posix())
                for p in paths if p.exists() or p.is_symlink()]

    def _decoding(self, pool: ThreadPoolExecutor,
                  reads: list[Future[tuple[Taken, Any, Any]]]) -> list[tuple[Taken, Future[Taken] | None]]:
        """The read files, each with its decode started in the workers; the store lookups (SQLite) are made
        here, on the watcher's thread, and a file seen before, a duplicate or a failed read is not decoded."""
        started = []
        for read in reads:
            taken, data, _ = read.result()
            needs_decode = self.intake.needs_decode(taken) and data is not None
            started.append((taken, pool.submit(self.intake.decode, taken, data) if needs_decode else None))
        return started

    def _classify(self, items: list[Taken]) -> None:
        """The batch's images (or crops) through the backend, each prediction through the one record path."""
        whole = [t for t in items if t.row.detections is None]
        if whole:
            import numpy as np

            predictions = self.predictor.predict_pixels(np.stack([t.photo.pixels for t in whole]),
                                                        [t.photo.size for t in whole], top_k=self.options.top_k,
                                                        traits=self.options.traits)
            for item, prediction in zip(whole, predictions, strict=True):
                self._record(item, prediction)
        crops = [t for t in items if t.row.detections is not None]
        if crops:
            import numpy as np

            predictions = self.predictor.predict_batched(np.concatenate([t.photo.pixels for t in crops]),
                                                         top_k=self.options.top_k)
            start = 0
            for item in crops:
                count = len(item.photo.pixels)
                self._record(item, predictions[start:start + count],
                             CropBoxes(item.selected, item.photo.squares or [], item.photo.size))
                start += count

    def _classify_clips(self, items: list[Taken]) -> None:
        """Each clip through the one clip path (its frames sampled, classified, combined, drawn as a strip)."""
        for item in items:
            try:
                classify_clip(self.predictor, item.row, str(item.path), options=self.options.clips,
                              top_k=self.options.top_k, heatmaps=self._heatmaps(item), boxes=item.clip_boxes)
            except (OSError, ImageError, cv2.error) as exc:
                self.status.last_error = f"{db_text(item.rel)}: heatmap not written ({exc})"
                self.log(self.status.last_error)
            if item.row.failure is not None:
                self.status.last_error = item.row.failure
                self.log(f"failed: {db_text(item.row.failure)}")

    def _heatmaps(self, item: Taken) -> HeatmapFiles | None:
        """Where a file's heatmaps go (None: not drawn, or a path that would leave the heatmap folder)."""
        if self.heatmap_root is None:
            return None
        heatmaps = heatmap_paths(self.heatmap_root, item.rel, tag=item.row.sha256[:12], readable=True)
        if not contained(heatmaps.heatmap, self.heatmap_root):
            self.log(f"{db_text(item.rel)}: heatmap path leaves {self.heatmap_root}; not drawn")
            return None
        return heatmaps

    def _record(self, item: Taken, prediction: Any, crops: CropBoxes | None = None) -> None:
        """One row from its prediction; a heatmap that cannot be written is logged, the row stays."""
        heatmaps = self._heatmaps(item)
        try:
            record_prediction(item.row, prediction, self.predictor.class_names, preview=item.photo.preview,
                              heatmaps=heatmaps, crops=crops, keep_probabilities=crops is None)
        except (OSError, ImageError, cv2.error) as exc:
            self.status.last_error = f"{db_text(item.rel)}: heatmap not written ({exc})"
            self.log(self.status.last_error)
        item.photo = None  # the decode is not needed once drawn
        if item.left_out:
            self.log(f"{db_text(item.rel)}: {item.left_out} qualifying detection(s) left unclassified (at most "
                     f"{MAX_CROPS_PER_PHOTO} crops a photo, the most confident; marked in the row's detections)")

    # -- helpers of the parts --------------------------------------------------------------------

    def _young(self, path: Path, mtime: float) -> bool:
        return file_is_young(mtime, self.scanner.tracker.quiet_for(path, self._scan_now), self.options.incomplete_wait)

    def _failed(self, version: FileVersion, sha: str, reason: str, taken: str | None = None) -> ImageRecord:
        rel, size, mtime_ns = version
        self.status.last_error = reason
        self.log(f"failed: {reason}")
        return ImageRecord(source=self.source, file=rel, sha256=sha, size=size, mtime_ns=mtime_ns, taken_at=taken,
                           failure=reason)

    def _write_status(self, state: str, *, force: bool = False) -> None:
        facts = {"inbox": self.source, "engine": self.predictor.engine_description, "skipped": len(self.skipped),
                 "move_errors": self.committer.archiver.errors,
                 "waiting_for_sidecar": len(self.scanner.sidecar_since)}
        self.status.write(state, facts, self.log, force=force)
