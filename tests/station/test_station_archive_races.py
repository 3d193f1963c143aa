"""Issue 28, item 16: what changes under the archiver between its identity check and the move.

(a) Content swapped in at the inbox name after the check was moved into the archive, unclassified
    (and gone from the inbox); ``os.rename`` overwrote a destination file made in that window.
(b) The fsync before the rename opened the inbox name without ``O_NOFOLLOW | O_NONBLOCK``: a FIFO swapped
    in hung the station for ever (and the copy across file systems opened it the same way).

Each test runs one ``Archiver.finish`` in-process on a real SQLite row, with the window opened by a hook
on ``makedirs_durable`` (the step right before the move, after the check), and a thread with a timeout
so a hang fails in seconds instead of hanging the suite.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from watch_helpers import db_rows, jpeg, sha

from promptcam.results.store import ResultStore
from promptcam.runtime.records import ImageRecord
from promptcam.station import archive as archive_module
from promptcam.station.archive import Archiver

SHM = Path("/dev/shm")
HANG = 5.0  # seconds: a finish() still running after this is hung


@pytest.fixture(params=["same-fs", "cross-fs"])
def archive_root(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "same-fs":
        yield tmp_path / "archive"
        return
    if not SHM.is_dir() or not os.access(SHM, os.W_OK) or SHM.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second writable file system (/dev/shm) on this machine")
    other = SHM / f"promptcam-race-{uuid.uuid4().hex[:8]}"
    try:
        yield other
    finally:
        shutil.rmtree(other, ignore_errors=True)


def _pending(tmp_path: Path, inbox: Path, archive_root: Path, data: bytes) -> tuple[Path, Path, Path]:
    """A committed row of ``inbox/cam/IMG_0001.JPG`` (``data``) whose move is still to do: (db, src, dst)."""
    src = inbox / "cam" / "IMG_0001.JPG"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    dst = archive_root / "2024-05-01" / "cam" / "IMG_0001.JPG"
    store = ResultStore(tmp_path / "results.sqlite")
    store.add([ImageRecord(source=str(inbox), file="cam/IMG_0001.JPG", sha256=sha(data), size=len(data),
                           mtime_ns=src.stat().st_mtime_ns, stored_path=str(dst))])
    store.close()
    return tmp_path / "results.sqlite", src, dst


def _finish_with_hook(monkeypatch: pytest.MonkeyPatch, db: Path, inbox: Path, archive_root: Path,
                      in_window: Callable[[], None], logs: list[str]) -> tuple[bool, BaseException | None]:
    """Run ``finish`` (in a thread, with its own connection) with ``in_window`` called right before the move;
    (finished in time, error raised)."""
    original = archive_module.makedirs_durable

    def hooked(folder: Path) -> None:
        original(folder)
        in_window()

    monkeypatch.setattr(archive_module, "makedirs_durable", hooked)
    errors: list[BaseException] = []

    def run() -> None:
        store = ResultStore(db)
        try:
            [move] = store.pending_moves(str(inbox))
            Archiver(inbox, [archive_root], store, logs.append).finish(move)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)
        finally:
            store.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG)
    return not thread.is_alive(), errors[0] if errors else None


def _row(db: Path) -> dict:
    [row] = db_rows(db)
    return row


def _archived(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha(p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def _swap_replace(src: Path, data: bytes) -> None:  # a new file renamed over the name (rsync, most uploaders)
    tmp = src.with_name(".upload.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, src)


def _swap_in_place(src: Path, data: bytes) -> None:  # the same inode rewritten (FTP STOR over the name)
    with open(src, "r+b") as fh:
        fh.truncate(0)
        fh.write(data)


def _swap_grow(src: Path, data: bytes) -> None:  # an append (FTP APPE, a resumed upload)
    with open(src, "ab") as fh:
        fh.write(data[:997])


SWAPS = {"replaced": _swap_replace, "rewritten_in_place": _swap_in_place, "grown": _swap_grow}
SHAPES = {"small_jpeg": (40, 56), "larger_jpeg": (480, 640)}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("swap", SWAPS)
def test_content_swapped_in_before_the_move_stays_in_the_inbox(monkeypatch, tmp_path: Path, archive_root: Path,
                                                              swap: str, shape: str) -> None:
    """Before the fix the new content went to the archive under the row's name (same file system: renamed
    away from the inbox; across file systems: a copy left in the archive) and the row kept a move error."""
    inbox = tmp_path / "inbox"
    first = jpeg(tmp_path / "first.jpg", 1, size=SHAPES[shape])
    other = jpeg(tmp_path / "other.jpg", 2, size=SHAPES[shape])
    db, src, dst = _pending(tmp_path, inbox, archive_root, first)
    logs: list[str] = []
    done, error = _finish_with_hook(monkeypatch, db, inbox, archive_root,
                                    lambda: SWAPS[swap](src, other), logs)
    assert done and error is None, error
    now = src.read_bytes()
    assert sha(now) != sha(first), "the swapped-in content is still at its inbox name"
    archived = _archived(archive_root) if archive_root.exists() else {}
    assert sha(now) not in archived.values(), ("unclassified content was archived", archived)
    assert archived == {}, archived
    row = _row(db)
    assert row["moved"] == 1 and "replaced by other content" in (row["move_error"] or ""), row
    assert any("replaced by other content" in line for line in logs), logs


def test_a_destination_made_in_the_window_is_never_overwritten(monkeypatch, tmp_path: Path,
                                                               archive_root: Path) -> None:
    """Before the fix (same file system) ``os.rename`` replaced the other file: its content was lost."""
    inbox = tmp_path / "inbox"
    first = jpeg(tmp_path / "first.jpg", 1)
    theirs = b"someone else's file, made in the window"
    db, src, dst = _pending(tmp_path, inbox, archive_root, first)
    logs: list[str] = []
    done, error = _finish_with_hook(monkeypatch, db, inbox, archive_root, lambda: dst.write_bytes(theirs),
                                    logs)
    assert done and error is None, error
    assert dst.read_bytes() == theirs, "the file made in the window was overwritten"
    row = _row(db)
    assert row["moved"] == 1 and row["move_error"] is None, row
    assert row["stored_path"] != str(dst) and Path(row["stored_path"]).read_bytes() == first
    assert not src.exists()
    assert sorted(_archived(archive_root).values()) == sorted([sha(theirs), sha(first)])


def _swap_fifo(src: Path) -> None:
    src.unlink()
    os.mkfifo(src)


def _swap_symlink_to_fifo(src: Path) -> None:
    fifo = src.with_name("elsewhere.fifo")
    os.mkfifo(fifo)
    src.unlink()
    src.symlink_to(fifo.name)


@pytest.mark.parametrize("swap", [_swap_fifo, _swap_symlink_to_fifo], ids=["fifo", "symlink_to_fifo"])
def test_a_fifo_swapped_in_does_not_hang_the_station(monkeypatch, tmp_path: Path, archive_root: Path,
                                                     swap: Callable[[Path], None]) -> None:
    """Before the fix ``finish`` blocked for ever in ``open`` (same file system: the fsync before the rename;
    across file systems: the copy): the watcher hung with its batch half done."""
    inbox = tmp_path / "inbox"
    first = jpeg(tmp_path / "first.jpg", 1)
    db, src, dst = _pending(tmp_path, inbox, archive_root, first)
    logs: list[str] = []
    done, error = _finish_with_hook(monkeypatch, db, inbox, archive_root, lambda: swap(src), logs)
    if not done:  # release the hung open() (a writer arrives), then fail
        fd = os.open(src, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    assert done, f"Archiver.finish hung on a FIFO for more than {HANG} s"
    assert error is None, error
    assert os.path.lexists(src) and not stat.S_ISREG(os.lstat(src).st_mode), "the FIFO stays where it is"
    assert not [p for p in archive_root.rglob("*") if not p.is_dir()], "nothing is archived"
    row = _row(db)
    assert row["moved"] == 1 and "replaced by other content" in (row["move_error"] or ""), row


@pytest.mark.parametrize("how", ["renameat2", "link_fallback"])
def test_rename_noreplace_never_replaces(monkeypatch, tmp_path: Path, how: str) -> None:
    if how == "link_fallback":  # a file system that refuses RENAME_NOREPLACE (NFS, some FUSE)
        monkeypatch.setattr(archive_module, "_RENAMEAT2", None)
    elif archive_module._RENAMEAT2 is None:
        pytest.skip("no renameat2 in this C library")
    src, dst = tmp_path / "a.jpg", tmp_path / "b.jpg"
    src.write_bytes(b"mine")
    dst.write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        archive_module.rename_noreplace(src, dst)
    assert src.read_bytes() == b"mine" and dst.read_bytes() == b"theirs"
    dst.unlink()
    archive_module.rename_noreplace(src, dst)
    assert not src.exists() and dst.read_bytes() == b"mine" and os.stat(dst).st_nlink == 1


def test_content_that_cannot_go_back_is_not_left_under_the_rows_name(monkeypatch, tmp_path: Path) -> None:
    """The swapped-in content is found in the archive after the rename, and its inbox name was taken again
    (a third upload) before it could go back: it is kept under a free name the row does not claim."""
    inbox, archive_root = tmp_path / "inbox", tmp_path / "archive"
    first, other, third = (jpeg(tmp_path / f"{n}.jpg", n) for n in (1, 2, 3))
    db, src, dst = _pending(tmp_path, inbox, archive_root, first)
    original = archive_module.fault_point

    def third_upload(step: str) -> None:
        if step == "copy":  # right after the rename, before the check of what was moved
            src.write_bytes(third)
        original(step)

    monkeypatch.setattr(archive_module, "fault_point", third_upload)
    logs: list[str] = []
    done, error = _finish_with_hook(monkeypatch, db, inbox, archive_root, lambda: _swap_replace(src, other), logs)
    assert done and error is None, error
    assert src.read_bytes() == third
    assert not dst.exists() and sorted(_archived(archive_root).values()) == [sha(other)]
    row = _row(db)
    assert row["moved"] == 1 and row["stored_path"] is None and "replaced by other content" in row["move_error"]


def _sidecar_move(archive_root: Path, tmp_path: Path, in_window: Callable[[Path, Path], None],
                  monkeypatch: pytest.MonkeyPatch) -> tuple[bool, BaseException | None, Path, Path]:
    """``move_beside`` of ``inbox/IMG.JPG.json`` with ``in_window(sidecar, target)`` run right before the move."""
    from promptcam.station import sidecar as sidecar_module

    sidecar = tmp_path / "inbox" / "IMG.JPG.json"
    sidecar.parent.mkdir(parents=True)
    sidecar.write_text('{"detections": []}')
    archived = archive_root / "2024-05-01" / "IMG.JPG"
    target = archived.with_name("IMG.JPG.json")
    original = sidecar_module.makedirs_durable

    def hooked(folder: Path) -> None:
        original(folder)
        in_window(sidecar, target)

    monkeypatch.setattr(sidecar_module, "makedirs_durable", hooked)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            sidecar_module.move_beside(sidecar, "IMG.JPG", archived)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG)
    if thread.is_alive():
        os.close(os.open(sidecar, os.O_WRONLY | os.O_NONBLOCK))  # release the hung open()
    return not thread.is_alive(), errors[0] if errors else None, sidecar, target


def test_a_sidecar_move_never_overwrites_nor_hangs(monkeypatch, tmp_path: Path, archive_root: Path) -> None:
    """Before the fix: the same-file-system rename replaced a file made at the target meanwhile, and across
    file systems ``read_bytes`` blocked for ever on a FIFO put at the sidecar's name."""
    theirs = b"made meanwhile"
    done, error, sidecar, target = _sidecar_move(archive_root, tmp_path / "a",
                                                 lambda _, t: t.write_bytes(theirs), monkeypatch)
    assert done and error is None, error
    assert target.read_bytes() == theirs and not sidecar.exists()
    assert [p.read_text() for p in target.parent.glob("IMG*.json") if p != target] == ['{"detections": []}']

    def fifo(path: Path, _: Path) -> None:
        path.unlink()
        os.mkfifo(path)

    done, error, sidecar, target = _sidecar_move(archive_root / "b", tmp_path / "b", fifo, monkeypatch)
    assert done, f"moving a sidecar hung on a FIFO for more than {HANG} s"
    if archive_root.is_relative_to(tmp_path):  # same file system: a FIFO is renamed like any entry, never opened
        return
    assert isinstance(error, OSError) and "not a regular file" in str(error), error
    assert stat.S_ISFIFO(os.lstat(sidecar).st_mode) and not target.exists()
