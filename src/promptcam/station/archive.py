"""Moving inbox files away after their row is committed, with no loss window.

The order is commit -> durable copy -> verify -> unlink, and every step can be replayed after a
kill: the row in SQLite says where the file goes and what it is (size + sha256), so the replay
checks identity instead of trusting a path. On one file system the copy and the unlink are one
``rename`` (the file is in the inbox or in the archive, never in neither; its data is fsynced
first). A hard link would be cheaper but would leave the archived copy sharing its inode with
the inbox file, so an uploader rewriting that name in place would rewrite the archive too.
Across file systems the bytes are copied to a temp name beside the target, fsynced, verified,
linked (or renamed) into place, and only then is the original unlinked, if it is still the same
content. Nothing is ever overwritten: a taken name gets a ``_N`` suffix, and the move itself never
replaces a file (``rename_noreplace``: ``renameat2(RENAME_NOREPLACE)``, else a hard link; a name
made by someone else between the check and the move is kept). Data from a file (an EXIF date, a
name) never chooses a path outside the archive roots: every destination is resolved and checked
for containment.

The inbox name can change under the archiver at any moment (an uploader renaming a new photo over
it, rewriting it in place, a FIFO or a link put there). Nothing is opened that could block or follow
a link (``O_NOFOLLOW | O_NONBLOCK``, regular files only), what was moved or copied is verified
against the row afterwards, and content that is not the row's goes back to its inbox name (same
file system) or its copy is removed (across file systems): it is read as a new file, never archived
unclassified. The original is unlinked only while it is still the very file (inode, ctime) that
was verified.
"""

from __future__ import annotations

import ctypes
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
_OPEN_SAFE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1
REPLACED = "was replaced by other content before it was archived"
GONE = "is no longer in the inbox before it was archived"


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
    found = _identity_of(path)
    return None if found is None else found[0]


def _identity_of(path: Path) -> tuple[tuple[int, str], os.stat_result] | None:
    """(size, sha256) of a regular file and its stat once read (links not followed, a FIFO never waited on)."""
    try:
        fd = os.open(path, _OPEN_SAFE)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        digest, size = hashlib.sha256(), 0
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
            size += len(chunk)
        return (size, digest.hexdigest()), os.fstat(fd)
    finally:
        os.close(fd)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """The same file, unchanged since ``a`` (an in-place rewrite moves ctime; a rename over the name, the inode)."""
    return (a.st_dev, a.st_ino, a.st_size, a.st_ctime_ns) == (b.st_dev, b.st_ino, b.st_size, b.st_ctime_ns)


def _load_renameat2() -> object | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a C library before glibc 2.28
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _load_renameat2()


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` on one file system, never replacing a file at ``dst``.

    ``renameat2(RENAME_NOREPLACE)``; where the file system refuses the flag, a hard link and an unlink
    (the unlink only while ``src`` is still the linked file); without hard links either (FAT, exFAT
    through some drivers) a rename after a check, the one case with a window left.

    Raises:
        FileExistsError: ``dst`` exists.
        OSError: anything else the file system says.
    """
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))  # EEXIST: FileExistsError
    try:
        os.link(src, dst, follow_symlinks=False)  # never replaces
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from exc
        os.rename(src, dst)
        return
    if _same_file(os.lstat(src), os.lstat(dst)):
        os.unlink(src)


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
            self._unlink_if(src, want)
            self.store.mark_moved(move)
            return
        if file_identity(src) != want:
            self._not_there(move, src)
            return
        if os.path.lexists(dst):  # someone else's file: never overwrite it
            dst = self._free(dst, move)
        makedirs_durable(dst.parent)
        # from the check above to the move, the name can be given other content (or a FIFO, or a link):
        # nothing below blocks or follows a link, and what moved is verified before the row says so
        if os.lstat(src).st_dev == os.stat(dst.parent).st_dev:
            if not _fsync_regular(src):  # the uploader may never have flushed it
                self._not_there(move, src)
                return
            dst = self._rename_free(src, dst, move)  # copy and unlink in one atomic step
            fsync_dir(dst.parent)
            fsync_dir(src.parent)
            fault_point("copy")
            if file_identity(dst) != want:  # swapped in after the check: not this row's, back where it was
                self._put_back(dst, src, move)
                return
            fault_point("verify")
        else:
            dst = self._copy_bytes(src, dst, move)
            if dst is None:
                self._not_there(move, src)
                return
            fault_point("copy")
            if file_identity(dst) != want:
                self._unlink(dst)  # our own copy, linked into place a moment ago
                if file_identity(src) != want:  # swapped in after the check: it stays in the inbox
                    self._not_there(move, src)
                    return
                raise MoveError(f"the copy at {dst} did not match the original (size/sha256); removed")
            fault_point("verify")
            self._unlink_if(src, want)  # only the very file that was copied, not a new one at its name
        fault_point("unlink")
        self.store.mark_moved(move)

    def _not_there(self, move: PendingMove, src: Path) -> None:
        """The row's file is not at its inbox name any more: the move is finished, without a move."""
        gone = REPLACED if os.path.lexists(src) else GONE
        self.log(f"{db_text(move.file)}: {gone}; nothing to move")
        self.store.mark_moved(move, error=f"{db_text(move.file)} {gone}")

    def _put_back(self, dst: Path, src: Path, move: PendingMove) -> None:
        """Content renamed into the archive that is not the row's goes back to its inbox name (read there as
        a new file); were that name taken again meanwhile, it goes to a free name beside ``dst`` and the row
        no longer names ``dst`` (it is not the row's file)."""
        try:
            rename_noreplace(dst, src)
            where = "put back in the inbox"
        except FileExistsError:
            spare = self._rename_free(dst, free_name(dst, lambda p: self.store.is_claimed(str(p))), move)
            self.store.set_stored_path(move, None)
            where = f"left at {spare} (its inbox name was taken again)"
        fsync_dir(src.parent)
        fsync_dir(dst.parent)
        self.log(f"{db_text(move.file)}: {REPLACED}; the new content was {where}, not archived")
        self.store.mark_moved(move, error=f"{db_text(move.file)} {REPLACED}")

    def _rename_free(self, src: Path, dst: Path, move: PendingMove) -> Path:
        """``rename_noreplace`` to ``dst``, or to a free name beside it when that is taken meanwhile."""
        while True:
            try:
                rename_noreplace(src, dst)
                return dst
            except FileExistsError:
                dst = self._free(dst, move)

    def _unlink_if(self, src: Path, want: tuple[int | None, str]) -> None:
        """Unlink the inbox file if it is (still) the row's content, and still the very file that was hashed."""
        found = _identity_of(src)
        if found is None or found[0] != want:
            return
        try:
            now = os.lstat(src)
        except FileNotFoundError:
            return
        if _same_file(found[1], now):
            self._unlink(src)

    def _free(self, dst: Path, move: PendingMove) -> Path:
        dst = free_name(dst, lambda p: self.store.is_claimed(str(p)))
        self.store.set_stored_path(move, str(dst))
        return dst

    def _copy_bytes(self, src: Path, dst: Path, move: PendingMove) -> Path | None:
        """A durable copy of ``src`` at ``dst`` (or a free name beside it); returns where it went (None: ``src``
        is not a regular file now)."""
        tmp = dst.with_name(f".promptcam-{move.table[0]}{move.id}.part")  # per row: a replay reuses it
        try:
            fd = os.open(src, _OPEN_SAFE)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO):  # a link, gone, a socket
                return None
            raise
        with os.fdopen(fd, "rb") as fin:
            if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
                return None
            with open(tmp, "wb") as fout:
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


def _fsync_regular(path: Path) -> bool:
    """fsync a regular file's data; False when ``path`` is not one (a link, a FIFO, a device, gone): it is
    opened without following links or waiting for a writer."""
    try:
        fd = os.open(path, _OPEN_SAFE)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        os.fsync(fd)
        return True
    finally:
        os.close(fd)
