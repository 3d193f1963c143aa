"""Issue 28, item 8: a new photo with the name, size and mtime of an earlier one is still taken.

The watcher took (name, size, mtime) as a file's identity: a different photo with all three equal to an
earlier row's (a card reformat plus a camera-clock reset gives IMG_0001.JPG again) was never read: no
row, no log line, no count, and it stayed in the inbox across restarts. Content is the identity now
(the sha256 the store keeps); a file the station has seen is recognised by (name, size, mtime, inode,
ctime) without being read again, so an inbox that is never emptied is not re-hashed at every scan.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest
from watch_helpers import Clock, db_rows, jpeg, sha

from promptcam.results.store import ResultStore
from promptcam.runtime.predictor import Predictor
from promptcam.station.inbox import InboxWatcher
from promptcam.station.intake import Intake
from promptcam.station.options import WatchOptions


@pytest.fixture(scope="module")
def predictor(tiny_predictor: Predictor) -> Predictor:
    return tiny_predictor


class Station:
    """Starts a watcher on one inbox and database (a "restart" is a new ``session``), counting file reads."""

    def __init__(self, predictor: Predictor, inbox: Path, db: Path) -> None:
        self.predictor, self.inbox, self.db = predictor, inbox, db
        self.reads: list[str] = []
        self.logs: list[str] = []

    def session(self, scans: int = 4) -> InboxWatcher:
        clock = Clock()
        options = WatchOptions(inbox=self.inbox, db=self.db, settle=0.5, use_events=False, incomplete_wait=0.0)
        watcher = InboxWatcher(self.predictor, options, log=self.logs.append, clock=clock)
        original = Intake.read

        def counting(intake, path, rel):  # noqa: ANN001, ANN202 - counts the real method's calls
            self.reads.append(rel)
            return original(intake, path, rel)

        Intake.read = counting
        try:
            watcher.start()
            for _ in range(scans):
                clock.now += 1.0
                watcher.step()
        finally:
            Intake.read = original
            watcher.close()
        return watcher

    def rows(self) -> list[dict]:
        return db_rows(self.db)


def _png(seed: int, shape: tuple[int, int] = (24, 32)) -> bytes:
    """An uncompressed PNG: its size depends on its dimensions only, whatever the pixels."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 0])
    assert ok
    return data.tobytes()


def _same_size_jpeg(original: bytes, seed: int) -> bytes:
    """Another JPEG of exactly the same length: bytes of its entropy-coded data changed (no 0xFF made)."""
    data = bytearray(original)
    scan = original.index(b"\xff\xda") + 20
    rng = np.random.default_rng(seed)
    for at in rng.integers(scan, len(data) - 4, 12):
        if data[at] != 0xFF and data[at - 1] != 0xFF:
            data[at] = (data[at] + 1 + int(rng.integers(0, 100))) % 0xFF
    assert bytes(data) != original and len(data) == len(original)
    return bytes(data)


def _garbage(seed: int, size: int = 3000) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _replace(path: Path, data: bytes, *, in_place: bool) -> None:
    """Put other content of the same size at ``path`` and give it the old mtime back (a camera's clock)."""
    before = path.stat()
    assert len(data) == before.st_size
    if in_place:  # the same inode, rewritten
        with open(path, "r+b") as fh:
            fh.write(data)
    else:  # a new file under the old name (a reformatted card)
        path.unlink()
        path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def _inbox(root: Path) -> dict[str, bytes]:
    """Photos of several kinds and depths: JPEGs, uncompressed PNGs and undecodable files."""
    made = {}
    for depth, folder in enumerate(("", "cam1", "cam1/2024/day")):
        base = root / folder
        made[f"{folder}/IMG_0001.JPG".lstrip("/")] = jpeg(base / "IMG_0001.JPG", 10 + depth, size=(48, 64))
        png = _png(20 + depth)
        (base / "IMG_0002.PNG").write_bytes(png)
        made[f"{folder}/IMG_0002.PNG".lstrip("/")] = png
        junk = _garbage(30 + depth)
        (base / "IMG_0003.JPG").write_bytes(junk)
        made[f"{folder}/IMG_0003.JPG".lstrip("/")] = junk
    return made


def _other(name: str, data: bytes, seed: int) -> bytes:
    if name.endswith("0001.JPG"):
        return _same_size_jpeg(data, seed)
    if name.endswith("0002.PNG"):
        return _png(seed + 1000)
    return _garbage(seed + 1000, len(data))


@pytest.mark.parametrize("in_place", [False, True], ids=["new_file", "rewritten_in_place"])
def test_a_different_photo_with_the_same_name_size_and_mtime_gets_its_own_row(predictor, tmp_path: Path,
                                                                              in_place: bool) -> None:
    """Before the fix: none of the 9 replaced files was read again: 9 rows, not 18."""
    inbox = tmp_path / "inbox"
    first = _inbox(inbox)
    station = Station(predictor, inbox, tmp_path / "results.sqlite")
    station.session()
    assert sorted(r["file"] for r in station.rows()) == sorted(first)
    assert sorted(station.reads) == sorted(first)

    second = {name: _other(name, data, seed) for seed, (name, data) in enumerate(first.items())}
    for name, data in second.items():
        _replace(inbox / name, data, in_place=in_place)
    station.reads.clear()
    watcher = station.session()
    rows = station.rows()
    by_content = {(r["file"], r["sha256"]) for r in rows}
    assert by_content == {(n, sha(d)) for n, d in first.items()} | {(n, sha(d)) for n, d in second.items()}, (
        len(rows), len(first) + len(second))
    assert sorted(station.reads) == sorted(second)
    assert watcher.processed + watcher.failed == len(second)
    assert not db_rows(station.db, "duplicates")

    # and then: never read again, in this session or after a restart
    station.reads.clear()
    station.session()
    assert station.reads == [] and len(station.rows()) == len(first) + len(second)


def test_an_untouched_inbox_is_not_read_again(predictor, tmp_path: Path) -> None:
    """A station that never empties its inbox reads each file once: not at the next scan, not after a restart."""
    inbox = tmp_path / "inbox"
    first = _inbox(inbox)
    station = Station(predictor, inbox, tmp_path / "results.sqlite")
    station.session(scans=6)
    assert sorted(station.reads) == sorted(first), "a file was read twice in one session"
    for _ in range(2):
        station.reads.clear()
        station.session(scans=4)
        assert station.reads == []
    assert len(station.rows()) == len(first)


def test_a_database_without_inodes_recognises_its_files_once(predictor, tmp_path: Path) -> None:
    """Rows of an older database (no inode/ctime) or of files copied back (a new inode): each file is read
    once, recognised as its own row (no new row, no duplicate), and not read after that."""
    inbox = tmp_path / "inbox"
    first = _inbox(inbox)
    station = Station(predictor, inbox, tmp_path / "results.sqlite")
    station.session()
    con = sqlite3.connect(station.db)
    with con:
        con.execute("UPDATE results SET inode=NULL, ctime_ns=NULL")
    con.close()
    touched = "cam1/IMG_0002.PNG"  # a copy put back under its name: same bytes, size and mtime, a new inode
    data, st = (inbox / touched).read_bytes(), (inbox / touched).stat()
    (inbox / touched).unlink()
    (inbox / touched).write_bytes(data)
    os.utime(inbox / touched, ns=(st.st_atime_ns, st.st_mtime_ns))

    station.reads.clear()
    watcher = station.session()
    assert sorted(station.reads) == sorted(first)
    assert len(station.rows()) == len(first) and not db_rows(station.db, "duplicates")
    assert watcher.processed == watcher.failed == 0
    station.reads.clear()
    station.session()
    assert station.reads == []


def test_an_older_database_gains_the_identity_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE results (id INTEGER PRIMARY KEY, source TEXT NOT NULL, file TEXT NOT NULL,
            sha256 TEXT NOT NULL, size INTEGER, mtime_ns INTEGER, taken_at TEXT, processed_at TEXT NOT NULL,
            status TEXT NOT NULL, failure TEXT, width INTEGER, height INTEGER, top1 TEXT, top1_probability REAL,
            top_k TEXT, probabilities TEXT, explained_class TEXT, trait_heads TEXT, heatmap TEXT,
            stored_path TEXT, moved INTEGER NOT NULL DEFAULT 0, UNIQUE (source, file, sha256));
        CREATE TABLE duplicates (id INTEGER PRIMARY KEY, result_id INTEGER NOT NULL, source TEXT NOT NULL,
            file TEXT NOT NULL, file_raw BLOB, sha256 TEXT NOT NULL, size INTEGER, mtime_ns INTEGER,
            seen_at TEXT NOT NULL, stored_path TEXT, moved INTEGER NOT NULL DEFAULT 0, move_error TEXT,
            UNIQUE (source, file, size, mtime_ns));
        INSERT INTO results (source, file, sha256, size, mtime_ns, processed_at, status)
            VALUES ('/in', 'a.jpg', 'abc', 5, 7, 'now', 'ok');
    """)
    con.close()
    store = ResultStore(db)
    try:
        assert store.known_files("/in") == {("a.jpg", 5, 7, None, None)}
    finally:
        store.close()
    for table in ("results", "duplicates"):
        con = sqlite3.connect(db)
        have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
        con.close()
        assert {"inode", "ctime_ns"} <= have, table
