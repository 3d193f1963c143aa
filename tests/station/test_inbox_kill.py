"""promptcam-watch killed between each pair of steps of a move (commit, copy, verify, unlink), on one
file system (rename) and across file systems (copy + fsync + verify + unlink), with the same name
dropped again while it was down: nothing lost, nothing twice, nothing left half-done.

The kill is the ``PROMPTCAM_FAULT_AT`` hook: ``os._exit`` right after the named step, which is
what a SIGKILL or a power cut at that moment leaves behind (SQLite commits are fsynced).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

import pytest
from watch_helpers import db_rows, jpeg, watch

from promptcam.station.archive import FAULT_EXIT, MOVE_STEPS

SHM = Path("/dev/shm")


def _other_filesystem(tmp_path: Path) -> Path | None:
    if not SHM.is_dir() or not os.access(SHM, os.W_OK) or SHM.stat().st_dev == tmp_path.stat().st_dev:
        return None
    return SHM / f"promptcam-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["same-fs", "cross-fs"])
def archive_root(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "same-fs":
        yield tmp_path / "archive"
        return
    other = _other_filesystem(tmp_path)
    if other is None:
        pytest.skip("no second writable file system (/dev/shm) on this machine")
    try:
        yield other
    finally:
        shutil.rmtree(other, ignore_errors=True)


@pytest.mark.parametrize("step", MOVE_STEPS)
def test_kill_at_each_move_step_loses_nothing(tiny_export, tmp_path, archive_root: Path, step: str) -> None:
    inbox, db, failed = tmp_path / "inbox", tmp_path / "db.sqlite", tmp_path / "failed"
    dropped = {("cam/a.jpg", hashlib.sha256(jpeg(inbox / "cam" / "a.jpg", 1)).hexdigest())}
    args = ("--move-processed", archive_root, "--failed", failed, "--incomplete-wait", "0")

    killed = watch(tiny_export, inbox, db, *args, fault=step)
    assert killed.returncode == FAULT_EXIT, killed.stderr[-2000:]
    # while the station is down: more files, and (once the first is safe in the archive, from the
    # copy step on) the same name dropped again, written in place, with new content
    dropped.add(("cam/b.jpg", hashlib.sha256(jpeg(inbox / "cam" / "b.jpg", 2)).hexdigest()))
    (inbox / "broken.jpg").write_bytes(b"\xff\xd8 not a picture \xff\xd9")
    if step != "commit":
        dropped.add(("cam/a.jpg", hashlib.sha256(jpeg(inbox / "cam" / "a.jpg", 3)).hexdigest()))

    result = watch(tiny_export, inbox, db, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = db_rows(db)
    assert len(rows) == len({(r["file"], r["sha256"]) for r in rows}), "no row twice"
    assert {(r["file"], r["sha256"]) for r in rows if r["status"] == "ok"} == dropped
    assert [r["file"] for r in rows if r["status"] == "failed"] == ["broken.jpg"]
    for row in rows:
        assert row["moved"] == 1 and row["move_error"] is None, row
        stored = Path(row["stored_path"])
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == row["sha256"], "the archived file is the row's"
    # the archive holds exactly the rows' files: no temp file, no extra or overwritten copy
    archived = {str(p) for p in archive_root.rglob("*") if p.is_file()} | {str(p) for p in failed.rglob("*")}
    assert archived == {r["stored_path"] for r in rows}
    assert not [p for p in inbox.rglob("*") if p.is_file()], "everything left the inbox"
