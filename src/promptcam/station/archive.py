"""Moving inbox files away after their row is committed, with no loss window.

The order is commit -> durable copy -> verify -> unlink, and every step can be replayed after a
kill: the row in SQLite says where the file goes and what it is (size + sha256), so the replay
checks identity instead of trusting a path. On one file system the copy and the unlink are one
``rename`` (the file is in the inbox or in the archive, never in neither; its data is fsynced
first). A hard link would be cheaper but would leave the archived copy sharing its inode with
the inbox file, so an uploader rewriting that name in place would rewrite the archive too.
Across file systems the bytes are copied to a temp name beside the target, fsynced, verified,
linked (or renamed) into place, and only then is the original unlinked, if it is still the same
content. Nothing is ever overwritten: a taken name gets a ``_N`` suffix. Data from a file (an
EXIF date, a name) never chooses a path outside the archive roots: every destination is
resolved and checked for containment.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from promptcam.core.atomic import fsync_dir
from promptcam.results.store import PendingMove, ResultStore
from promptcam.runtime.records import db_text

FAULT_ENV = "PROMPTCAM_FAULT_AT"  # test hook: ``os._exit(FAULT_EXIT)`` right after the named step
FAULT_EXIT = 86
MOVE_STEPS = ("commit", "copy", "verify", "unlink")
EARLIEST_YEAR = 1990  # camera-trap dates before this are a reset clock, not a date
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


class MoveError(OSError):
    """A file could not be archived; it stays in the inbox and its row says why."""


def fault_point(step: str) -> None:
    """Die here, as a SIGKILL or a power cut would, when the test hook names this step."""
    if os.environ.get(FAULT_ENV) == step:
        os._exit(FAULT_EXIT)


def valid_taken_at(exif_value: str | None, mtime: float) -> str:
    """The capture time to file a picture under: its EXIF time when that is a real date, else its mtime.

    A camera writes ``YYYY:MM:DD HH:MM:SS``; anything else (a path, ``..``, month 13, 30 February,
    a reset clock in 1980 or a date past next year) is not trusted.
    """
    if exif_value and _DATE.fullmatch(exif_value):
        try:
            when = datetime.strptime(exif_value, "%Y-%m-%dT%H:%M:%S")
        except ValueError:
            when = None
        if when is not None and EARLIEST_YEAR <= when.year <= datetime.now(timezone.utc).year + 1:
            return exif_value
    return datetime.fromtimestamp(max(0.0, mtime), timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def contained(path: Path, root: Path) -> bool:
    """Whether ``path`` (resolved, links followed) lies inside ``root``."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a symlink loop on the way
        return False


def file_identity(path: Path) -> tuple[int, str] | None:
    """(size, sha256) of a regular file (links not followed), or None when there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        digest, size = hashlib.sha256(), 0
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.hexdigest()
    finally:
        os.close(fd)


def makedirs_durable(folder: Path) -> None:
    """``mkdir -p``, with every new folder's entry fsynced into its parent."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:
            pass
        fsync_dir(new.parent)


def free_name(target: Path, taken: Callable[[Path], bool]) -> Path:
    """``target``, or ``stem_N.suffix`` for the first N where neither the disk nor ``taken`` has it."""
    candidate, n = target, 1
    while candidate.exists() or candidate.is_symlink() or taken(candidate):
        candidate = target.with_name(f"{target.stem}_{n}{target.suffix}")
        n += 1
    return candidate


class Archiver:
    """Finishes the moves of committed rows: the first run after the commit, or the replay after a kill."""

    def __init__(self, inbox: Path, roots: list[Path], store: ResultStore, log: Callable[[str], None]) -> None:
        self.inbox, self.roots, self.store, self.log = inbox, roots, store, log
        self.errors = 0

    def finish(self, move: PendingMove) -> None:
        """Move one file; a failure is recorded on its row and logged, never raised."""
        try:
            self._finish(move)
        except OSError as exc:
            self.errors += 1
            reason = f"{db_text(move.file)}: cannot move to {move.stored_path} ({exc}); it stays in the inbox"
            self.log(reason)
            self.store.set_move_error(move, reason)

    def _finish(self, move: PendingMove) -> None:
        src, dst = self.inbox / move.file, Path(move.stored_path)
        if not any(contained(dst, root) for root in self.roots):
            # written by an older version, or the roots changed since: never follow such a path
            self.store.mark_moved(move, error=f"{move.stored_path}: destination outside the archive roots; "
                                              "the file was left in the inbox")
            self.log(f"{db_text(move.file)}: recorded destination {move.stored_path} is outside the archive roots; "
                     "left in the inbox")
            return
        want = (move.size, move.sha256)
        if file_identity(dst) == want:  # a kill after the copy: finish from where it stopped
            if file_identity(src) == want:
                self._unlink(src)
            self.store.mark_moved(move)
            return
        if file_identity(src) != want:
            gone = "is no longer in the inbox" if not src.exists() else "was replaced by other content"
            self.log(f"{db_text(move.file)}: {gone} before it was archived; nothing to move")
            self.store.mark_moved(move, error=f"{db_text(move.file)} {gone} before it was archived")
            return
        if dst.exists() or dst.is_symlink():  # someone else's file: never overwrite it
            dst = self._free(dst, move)
        makedirs_durable(dst.parent)
        if os.stat(src).st_dev == os.stat(dst.parent).st_dev:
            _fsync_file(src)  # the uploader may never have flushed it
            os.rename(src, dst)  # copy and unlink in one atomic step
            fsync_dir(dst.parent)
            fsync_dir(src.parent)
            fault_point("copy")
            if file_identity(dst) != want:
                raise MoveError(f"{dst} does not match its row (size/sha256) after the rename")
            fault_point("verify")
        else:
            dst = self._copy_bytes(src, dst, move)
            fault_point("copy")
            if file_identity(dst) != want:
                raise MoveError(f"the copy at {dst} does not match the original (size/sha256)")
            fault_point("verify")
            if file_identity(src) == want:  # not rewritten in place since it was copied
                self._unlink(src)
        fault_point("unlink")
        self.store.mark_moved(move)

    def _free(self, dst: Path, move: PendingMove) -> Path:
        dst = free_name(dst, lambda p: self.store.is_claimed(str(p)))
        self.store.set_stored_path(move, str(dst))
        return dst

    def _copy_bytes(self, src: Path, dst: Path, move: PendingMove) -> Path:
        """A durable copy of ``src`` at ``dst`` (or a free name beside it); returns where it went."""
        tmp = dst.with_name(f".promptcam-{move.table[0]}{move.id}.part")  # per row: a replay reuses it
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        try:
            while True:
                try:
                    os.link(tmp, dst)  # never overwrites
                    break
                except FileExistsError:
                    dst = self._free(dst, move)
                except OSError as exc:
                    if exc.errno not in _NO_LINK:
                        raise
                    if dst.exists():  # no hard links here (FAT, exFAT): a checked rename instead
                        dst = self._free(dst, move)
                    os.rename(tmp, dst)
                    break
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(dst.parent)
        return dst

    @staticmethod
    def _unlink(src: Path) -> None:
        src.unlink()
        fsync_dir(src.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
