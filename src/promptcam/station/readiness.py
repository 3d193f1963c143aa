"""Which inbox files are ready to take: the scan, the quiet time, and a detector sidecar's own wait.

A file is taken only once complete: its size and mtime have not changed for ``settle`` seconds (a
close-write event only wakes the scan early: FTP ``APPE`` and SMB writers close after every chunk),
and, with ``--detections sidecar``, its sidecar is there and quiet too, or was waited for long enough.
Only regular files are taken: symlinks, FIFOs and devices are skipped and reported once, never followed.
One scan lists every ready file, so a backlog of N files costs one walk per N / batch files, not per batch.

A file that has its row is recognised by its ``FileKey``: (name, size, mtime, inode, ctime), from one
``lstat``, and not read again. Name, size and mtime alone do not say a file is the same photo (a
reformatted card and a reset camera clock give a new IMG_0001.JPG of the same size and time); a new
inode or ctime (a new file, or one rewritten in place: ``utime`` cannot set ctime back) makes it read
and hashed again, and its content decides (a new row, or its own row recognised: ``Intake.seen_before``).
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptcam.results.store import FileKey
from promptcam.runtime.records import db_text
from promptcam.runtime.video import is_media_path

from .sidecar import find_sidecar, is_sidecar_name

TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".filepart", ".crdownload", ".uploading", "~")

FileVersion = tuple[str, int, int]  # (inbox-relative name, size, mtime_ns): what a row was made from


def file_key(version: FileVersion, st: os.stat_result) -> FileKey:
    """The version with the file's (inode, ctime): what a station recognises a file it has read by."""
    return (*version, st.st_ino, st.st_ctime_ns)


@dataclass
class _Candidate:
    size: int
    mtime_ns: int
    stable_since: float  # the scan clock: when this version (size, mtime) was first seen
    next_try: float = 0.0  # a "not ready" file is read again only after this


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
class ScanResult:
    """One scan: the files ready to take (in walk order), how many wait, and what was skipped (rel -> why)."""

    ready: list[Path] = field(default_factory=list)
    waiting: int = 0
    skipped: dict[str, str] = field(default_factory=dict)


class InboxScanner:
    """Walks the inbox and tracks each file's readiness between scans.

    Args:
        inbox: The resolved inbox folder.
        excluded: Output folders inside the inbox (left out of the walk).
        known: The files that already have a row, by ``FileKey`` (updated by the watcher as it commits).
        sidecar_wait: With ``--detections sidecar``: how long a settled photo waits for its sidecar (None: off).
    """

    def __init__(self, inbox: Path, excluded: set[str], known: set[FileKey], settle: float,
                 sidecar_wait: float | None, log: Callable[[str], None]) -> None:
        self.inbox = inbox
        self.excluded = excluded
        self.known = known
        self.tracker = ReadyTracker(settle)
        self.sidecar_wait = sidecar_wait
        self.sidecar_since: dict[Path, float] = {}  # settled images without a sidecar: since when (scan clock)
        self.log = log
        self._reported: set[tuple[str, str]] = set()

    def scan(self, now: float) -> ScanResult:
        result = ScanResult()
        present: set[Path] = set()

        def walk_error(exc: OSError) -> None:
            self.report(str(exc.filename), f"cannot list folder ({exc.strerror or exc})")

        for root, dirs, files in os.walk(self.inbox, onerror=walk_error):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and os.path.join(root, d) not in self.excluded)
            for name in sorted(files):
                path = Path(root) / name
                why = self._look(path, name, now, present, result)
                if why is not None:
                    result.skipped[path.relative_to(self.inbox).as_posix()] = why
        for gone in set(self.tracker.candidates) - present:
            self.tracker.forget(gone)
        for gone in set(self.sidecar_since) - present:
            del self.sidecar_since[gone]
        return result

    def _look(self, path: Path, name: str, now: float, present: set[Path], result: ScanResult) -> str | None:
        """Track one inbox entry; returns why it is skipped, or None."""
        rel = path.relative_to(self.inbox).as_posix()
        if name.startswith(".") or name.endswith(TEMP_SUFFIXES):
            return "hidden or temporary upload name"
        if self.sidecar_wait is not None and is_sidecar_name(name):
            return None  # read with its image, never an image itself
        if not is_media_path(name):
            return "not a photo or video file name"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None  # gone between listing and looking
        except OSError as exc:
            return self.report(rel, f"cannot stat ({exc.strerror or exc})")
        if stat.S_ISLNK(st.st_mode):
            return self.report(rel, "symbolic link, not followed")
        if not stat.S_ISREG(st.st_mode):
            return self.report(rel, "not a regular file")
        present.add(path)
        if file_key((rel, st.st_size, st.st_mtime_ns), st) in self.known:
            self.tracker.forget(path)
            return None
        settled = self.tracker.observe(path, st.st_size, st.st_mtime_ns, now)
        if self.sidecar_wait is not None:  # the sidecar's quiet time runs beside the image's (also while deferred)
            settled = self._sidecar_settled(path, now, present, image_settled=settled)
        if settled:
            result.ready.append(path)
        else:
            result.waiting += 1
        return None

    def _sidecar_settled(self, image: Path, now: float, present: set[Path], *, image_settled: bool) -> bool:
        """Whether an image can be taken: it is settled, and its sidecar is there and quiet or was waited
        for long enough (the wait starts when the image is settled)."""
        sidecar = find_sidecar(image)
        if sidecar is None:
            if not image_settled:
                return False
            since = self.sidecar_since.setdefault(image, now)
            return now - since >= self.sidecar_wait  # taken: it becomes a "no sidecar" failure
        try:
            st = os.lstat(sidecar)
        except OSError:
            return False  # gone between looking and stating: look again at the next scan
        present.add(sidecar)
        return self.tracker.observe(sidecar, st.st_size, st.st_mtime_ns, now) and image_settled

    def done(self, path: Path, key: FileKey | None, sidecars: tuple[Path, ...] = ()) -> None:
        """A file has its row (or duplicate entry): never taken again while it is this very file (``key``;
        None: a file that vanished while it was read is looked at afresh)."""
        if key is not None:
            self.known.add(key)
        self.tracker.forget(path)
        self.sidecar_since.pop(path, None)
        for sidecar in sidecars:
            self.tracker.forget(sidecar)

    def report(self, rel: str, reason: str) -> str:
        """Log a skipped inbox entry once (per name and reason), not at every scan."""
        if (rel, reason) not in self._reported:
            self._reported.add((rel, reason))
            self.log(f"skipped: {db_text(rel)}: {reason}")
        return reason


def wake_on_events(inbox: Path, wake: threading.Event) -> Any:
    """A watchdog observer that sets ``wake`` on inotify events (None without the 'field' extra).

    Events only wake the scan early; readiness is still decided by the quiet time and the content.
    """
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:
        return None

    class Handler(FileSystemEventHandler):
        def on_closed(self, event: Any) -> None:  # inotify IN_CLOSE_WRITE
            wake.set()

        def on_created(self, event: Any) -> None:
            wake.set()

    observer = Observer()
    observer.schedule(Handler(), str(inbox), recursive=True)
    observer.daemon = True
    observer.start()
    return observer
