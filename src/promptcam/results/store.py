"""SQLite results for the field station: one row per image, written in the transaction that marks it done.

WAL mode, so readers (a dashboard, ``promptcam-export-results``) never block the writer, and
``synchronous=FULL``, so a committed row survives a power cut. The row *is* the done-mark: an
image is classified again only if it has no row, so a SIGKILL at any moment loses nothing and
classifies nothing twice.

File names are stored losslessly: the ``file`` column holds a readable UTF-8 spelling (bytes that
are not UTF-8 shown as ``\\xNN``), and ``file_raw`` the exact bytes when the two differ. A database
that SQLite cannot open any more (a power cut on a card that lies about flushes) is moved aside as
``<name>.corrupt-<time>`` and a fresh one started, with one clear log line, by ``open_for_writing``.

A row's identity is its content: (source, file, sha256). ``inode`` and ``ctime_ns`` remember which file
on disk a row (or duplicate) was read from, so a station recognises a file it has read without reading
it again (``known_files``): a file whose (name, size, mtime, inode, ctime) is not known is read and
hashed, and content that already has a row from that very version is that row again (``find_seen``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptcam.runtime.records import ImageRecord, db_text, utc_now

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,              -- inbox folder or stream address
    file TEXT NOT NULL,                -- path relative to the inbox (or frame file name)
    sha256 TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    taken_at TEXT,                     -- EXIF DateTimeOriginal, file mtime or frame time (UTC ISO)
    processed_at TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    failure TEXT,
    width INTEGER,
    height INTEGER,
    top1 TEXT,
    top1_probability REAL,
    top_k TEXT,                        -- JSON [{"index", "name", "probability"}]
    probabilities TEXT,                -- JSON [C]
    explained_class TEXT,
    trait_heads TEXT,                  -- JSON [heads]
    heatmap TEXT,
    stored_path TEXT,                  -- where the image went (--move-processed / --failed), if moved
    moved INTEGER NOT NULL DEFAULT 0,
    file_raw BLOB,                     -- the exact name bytes, when they are not UTF-8
    move_error TEXT,                   -- why the file could not be moved (it stays in the inbox)
    detections TEXT,                   -- JSON: the detector's detections, classified (--detections sidecar)
    inode INTEGER,                     -- the file it was read from (with ctime_ns): seen again, not re-read
    ctime_ns INTEGER,
    UNIQUE (source, file, sha256)
);
CREATE INDEX IF NOT EXISTS results_taken ON results (taken_at);
-- after every batch: the moves still to do, and whether an archive name is taken (months of rows)
CREATE INDEX IF NOT EXISTS results_pending ON results (source) WHERE moved=0 AND stored_path IS NOT NULL;
CREATE INDEX IF NOT EXISTS results_stored ON results (stored_path);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- an identical re-upload (same name, same content, new mtime) of a file that already has a row
CREATE TABLE IF NOT EXISTS duplicates (
    id INTEGER PRIMARY KEY,
    result_id INTEGER NOT NULL REFERENCES results (id),
    source TEXT NOT NULL,
    file TEXT NOT NULL,
    file_raw BLOB,
    sha256 TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    seen_at TEXT NOT NULL,
    stored_path TEXT,
    moved INTEGER NOT NULL DEFAULT 0,
    move_error TEXT,
    inode INTEGER,
    ctime_ns INTEGER,
    UNIQUE (source, file, size, mtime_ns)
);
CREATE INDEX IF NOT EXISTS duplicates_stored ON duplicates (stored_path);
-- --events: one row per event, derived from its rows' (refresh_events): a kill before the refresh loses nothing
CREATE TABLE IF NOT EXISTS events (
    source TEXT NOT NULL,
    event_id TEXT NOT NULL,            -- CAMERA@START (results.events)
    camera TEXT NOT NULL,
    start TEXT NOT NULL,               -- first and last capture time of its files
    end TEXT NOT NULL,
    seq_num_frames INTEGER NOT NULL,
    verdict TEXT,                      -- the top class of the mean probabilities (NULL: blank)
    event_confidence REAL,
    top_k TEXT,                        -- JSON [{"index", "name", "probability"}]
    closed INTEGER NOT NULL DEFAULT 0, -- no new file can join it any more
    updated_at TEXT NOT NULL,
    PRIMARY KEY (source, event_id)
);
"""
# columns added after schema version 1 shipped: added to older databases on open
ADDED_COLUMNS = {"file_raw": "BLOB", "move_error": "TEXT", "detections": "TEXT", "inode": "INTEGER",
                 "ctime_ns": "INTEGER", "media": "TEXT", "frame_rate": "REAL", "frames": "TEXT",
                 "decisive_frames": "TEXT", "event_id": "TEXT", "seq_num_frames": "INTEGER", "frame_num": "INTEGER"}
JSON_COLUMNS = ("top_k", "probabilities", "trait_heads", "detections", "frames", "decisive_frames")
ADDED_DUPLICATE_COLUMNS = {"inode": "INTEGER", "ctime_ns": "INTEGER"}
MOVE_TABLES = ("results", "duplicates")
FileId = tuple[int, int]  # (st_ino, st_ctime_ns) of the file a row was read from
FileKey = tuple[str, int, int, int | None, int | None]  # (file, size, mtime_ns, inode, ctime_ns)


def name_to_db(name: str) -> tuple[str, bytes | None]:
    """(readable spelling, exact bytes or None) of a file name as ``os`` returned it."""
    text = db_text(name)
    return text, (None if text == name else os.fsencode(name))


def name_from_db(text: str, raw: bytes | None) -> str:
    """The file name as ``os`` spells it, from the two columns ``name_to_db`` wrote."""
    return os.fsdecode(raw) if raw is not None else text


def record_from_row(row: dict[str, Any]) -> ImageRecord:
    """The record of a ``results`` row (as ``ResultStore.rows`` yields it): the one conversion from SQLite."""
    return ImageRecord(
        file=name_from_db(row["file"], row.get("file_raw")), path=row["stored_path"] or row["file"],
        failure=row["failure"], width=row["width"], height=row["height"], top_k=row["top_k"] or [],
        explained_class=row["explained_class"], trait_heads=row["trait_heads"], heatmap=row["heatmap"],
        probabilities=row["probabilities"], source=row["source"], sha256=row["sha256"], size=row["size"],
        mtime_ns=row["mtime_ns"], taken_at=row["taken_at"], stored_path=row["stored_path"],
        processed_at=row["processed_at"], detections=row.get("detections"), media=row.get("media"),
        frame_rate=row.get("frame_rate"), frames=row.get("frames"), decisive_frames=row.get("decisive_frames"),
        event_id=row.get("event_id"), seq_num_frames=row.get("seq_num_frames"), frame_num=row.get("frame_num"))


class ResultStore:
    """The results database of one station (one writer process, any number of readers)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # explicit transactions
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        for table, added in (("results", ADDED_COLUMNS), ("duplicates", ADDED_DUPLICATE_COLUMNS)):
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            for column, kind in added.items():
                if column not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self.db.execute("CREATE INDEX IF NOT EXISTS results_event ON results (source, event_id)")
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    @classmethod
    def open_for_writing(cls, path: str | Path, log: Callable[[str], None] = print) -> ResultStore:
        """Open the station's database, checked; a corrupt one is moved aside and a fresh one started.

        SQLite itself recovers a torn WAL (it drops the frames after the last valid commit). A main
        file that is truncated or overwritten cannot be repaired in place: it is renamed to
        ``<name>.corrupt-<UTC time>`` (with its ``-wal``/``-shm``) so nothing is deleted, and the
        station goes on with an empty database rather than stopping in a crash loop.
        """
        path = Path(path)
        store = None
        try:
            store = cls(path)
            problem = store.db.execute("PRAGMA quick_check").fetchone()[0]
            if problem == "ok":
                return store
        except sqlite3.OperationalError:
            raise  # cannot open, locked, disk full: not corruption, nothing to move aside
        except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
            problem = str(exc)
        if store is not None:
            store.close()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm", "-journal"):
            part = Path(str(path) + suffix)
            if part.exists():
                os.replace(part, Path(str(aside) + suffix))
        log(f"{path}: database is corrupt ({problem}); moved aside to {aside}, starting a fresh one")
        return cls(path)

    def close(self) -> None:
        self.db.close()

    def add(self, rows: Iterable[ImageRecord], log: Callable[[str], None] | None = None,
            file_ids: Sequence[FileId | None] | None = None) -> int:
        """Insert a batch in one transaction; rows already present (same source, file, content) are kept.

        A row SQLite refuses (a value it cannot bind) is stored as a failure row in its place, and
        only if even that is refused is it left out (and logged): one bad row never drops the batch.
        ``file_ids``: the (inode, ctime_ns) each row was read from, in the order of ``rows``.
        """
        sql = ("INSERT OR IGNORE INTO results (source, file, sha256, size, mtime_ns, taken_at, processed_at, status,"
               " failure, width, height, top1, top1_probability, top_k, probabilities, explained_class, trait_heads,"
               " heatmap, stored_path, file_raw, detections, media, frame_rate, frames, decisive_frames, event_id,"
               " inode, ctime_ns)"
               " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
        rows = list(rows)
        ids = list(file_ids) if file_ids is not None else [None] * len(rows)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            before = self.db.total_changes
            for row, file_id in zip(rows, ids, strict=True):
                identity = tuple(file_id) if file_id is not None else (None, None)
                try:
                    self.db.execute(sql, _values(row) + identity)
                except (sqlite3.InterfaceError, sqlite3.IntegrityError, sqlite3.ProgrammingError, ValueError,
                        TypeError, OverflowError) as exc:
                    fallback = ImageRecord(source=row.source, file=row.file, sha256=row.sha256, size=row.size,
                                         mtime_ns=row.mtime_ns, stored_path=row.stored_path,
                                         failure=f"{db_text(row.file)}: result could not be stored ({exc})")
                    try:
                        self.db.execute(sql, _values(fallback) + identity)
                    except (sqlite3.InterfaceError, sqlite3.IntegrityError, sqlite3.ProgrammingError, ValueError,
                            TypeError, OverflowError) as again:
                        if log is not None:
                            log(f"{db_text(row.file)}: row left out, SQLite refused it ({again})")
            return self.db.total_changes - before

    def known_files(self, source: str) -> set[FileKey]:
        """(file, size, mtime_ns, inode, ctime_ns) of every row and duplicate of a source: the files a station
        need not read again while they are these very files (a row of an older database has no inode:
        its file is read once more and recognised, ``find_seen``)."""
        return {(name_from_db(f, raw), size, mtime, inode, ctime)
                for table in MOVE_TABLES for f, raw, size, mtime, inode, ctime in self.db.execute(
                    f"SELECT file, file_raw, size, mtime_ns, inode, ctime_ns FROM {table} WHERE source=?", (source,))}

    def find_seen(self, source: str, file: str, sha256: str, size: int, mtime_ns: int) -> tuple[str, int] | None:
        """(table, id) of the row or duplicate made from this very version of a file (same name, content, size
        and mtime): a file read again (its inode or ctime changed, or unknown to this database) that is
        nothing new."""
        text = db_text(file)
        for table in MOVE_TABLES:
            hit = self.db.execute(f"SELECT id FROM {table} WHERE source=? AND file=? AND sha256=? AND size=? "
                                  "AND mtime_ns=? LIMIT 1", (source, text, sha256, size, mtime_ns)).fetchone()
            if hit:
                return table, hit[0]
        return None

    def set_file_ids(self, found: Iterable[tuple[str, int, FileId]]) -> None:
        """Remember the file (inode, ctime_ns) rows or duplicates were seen as: ``(table, id, file id)``."""
        found = list(found)
        if not found:
            return
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for table, row_id, (inode, ctime_ns) in found:
                if table not in MOVE_TABLES:
                    raise ValueError(f"not a table of rows: {table!r}")
                self.db.execute(f"UPDATE {table} SET inode=?, ctime_ns=? WHERE id=?", (inode, ctime_ns, row_id))

    def find_row(self, source: str, file: str, sha256: str) -> tuple[int, str] | None:
        """(id, status) of the row of this exact file (name and content), if there is one."""
        hit = self.db.execute("SELECT id, status FROM results WHERE source=? AND file=? AND sha256=?",
                              (source, db_text(file), sha256)).fetchone()
        return (hit[0], hit[1]) if hit else None

    def max_id(self, source: str) -> int:
        return self.db.execute("SELECT coalesce(max(id), 0) FROM results WHERE source=?", (source,)).fetchone()[0]

    def _meta(self, key: str) -> str | None:
        hit = self.db.execute("SELECT value FROM meta WHERE key=?", (db_text(key),)).fetchone()
        return hit[0] if hit else None

    def meta_int(self, key: str) -> int | None:
        value = self._meta(key)
        return None if value is None else int(value)

    def meta_json(self, key: str) -> Any:
        """A meta value written as JSON (None when absent)."""
        value = self._meta(key)
        return None if value is None else json.loads(value)

    def set_meta(self, key: str, value: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (db_text(key), value))

    def add_duplicates(self, entries: Iterable[dict[str, Any]]) -> None:
        """Record identical re-uploads (keys: result_id, source, file, sha256, size, mtime_ns, stored_path, and
        optionally inode, ctime_ns: the file it was read from)."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for e in entries:
                text, raw = name_to_db(e["file"])
                self.db.execute("INSERT OR IGNORE INTO duplicates (result_id, source, file, file_raw, sha256, size,"
                                " mtime_ns, seen_at, stored_path, inode, ctime_ns)"
                                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                (e["result_id"], e["source"], text, raw, e["sha256"], e["size"], e["mtime_ns"],
                                 utc_now(), db_text(e["stored_path"]), e.get("inode"), e.get("ctime_ns")))

    def is_claimed(self, stored_path: str) -> bool:
        """Whether a row (moved or still pending) already owns this archive path."""
        return any(self.db.execute(f"SELECT 1 FROM {table} WHERE stored_path=? LIMIT 1", (stored_path,)).fetchone()
                   for table in MOVE_TABLES)

    def pending_moves(self, source: str, *, with_errors: bool = True) -> list[PendingMove]:
        """Rows committed but whose file was not yet moved away (a kill between commit and move)."""
        found = []
        for table in MOVE_TABLES:
            query = (f"SELECT id, file, file_raw, sha256, size, stored_path FROM {table} WHERE source=? AND moved=0 "
                     "AND stored_path IS NOT NULL" + ("" if with_errors else " AND move_error IS NULL"))
            found += [PendingMove(table, i, name_from_db(f, raw), sha, size, stored)
                      for i, f, raw, sha, size, stored in self.db.execute(query, (source,))]
        return found

    def mark_moved(self, move: PendingMove, *, error: str | None = None) -> None:
        """The move is finished (``error``: finished without a move, and why)."""
        with self.db:
            self.db.execute(f"UPDATE {move.table} SET moved=1, move_error=? WHERE id=?", (db_text(error), move.id))

    def set_move_error(self, move: PendingMove, error: str) -> None:
        """The move failed (the file stays in the inbox); retried when the station starts again."""
        with self.db:
            self.db.execute(f"UPDATE {move.table} SET move_error=? WHERE id=?", (db_text(error), move.id))

    def move_outcome(self, move: PendingMove) -> tuple[str | None, bool, str | None]:
        """(stored_path, moved, move_error) of a move's row now (the archiver may have picked a free name)."""
        stored, moved, error = self.db.execute(f"SELECT stored_path, moved, move_error FROM {move.table} WHERE id=?",
                                               (move.id,)).fetchone()
        return stored, bool(moved), error

    def set_stored_path(self, move: PendingMove, stored_path: str | None) -> None:
        with self.db:
            self.db.execute(f"UPDATE {move.table} SET stored_path=? WHERE id=?", (db_text(stored_path), move.id))

    def rows_after(self, source: str, last_id: int) -> Iterator[dict[str, Any]]:
        """The rows of a source with an id above ``last_id``, in id order (to append to a log)."""
        return self.rows(where="source=? AND id>?", params=(source, last_id))

    def records(self, where: str = "1", params: tuple[Any, ...] = ()) -> Iterator[ImageRecord]:
        """The rows as result records, in id order."""
        return map(record_from_row, self.rows(where, params))

    def rows(self, where: str = "1", params: tuple[Any, ...] = ()) -> Iterator[dict[str, Any]]:
        cursor = self.db.execute(f"SELECT * FROM results WHERE {where} ORDER BY id", params)
        names = [d[0] for d in cursor.description]
        for values in cursor:
            row = dict(zip(names, values, strict=True))
            for key in JSON_COLUMNS:
                if row.get(key) is not None:
                    row[key] = json.loads(row[key])
            yield row

    # -- events (--events) ----------------------------------------------------------------------

    def recent_events(self, source: str, camera: str, limit: int = 8) -> list[tuple[str, str, str]]:
        """(event_id, start, end) of a camera's latest events (a file may still join one of them)."""
        return self.db.execute("SELECT event_id, start, end FROM events WHERE source=? AND camera=? "
                               "ORDER BY end DESC LIMIT ?", (source, camera, limit)).fetchall()

    def stale_events(self, source: str) -> list[str]:
        """Event ids of rows whose event row is missing or not closed (to refresh after a restart)."""
        return [e for (e,) in self.db.execute(
            "SELECT DISTINCT r.event_id FROM results r LEFT JOIN events e ON e.source=r.source AND "
            "e.event_id=r.event_id WHERE r.source=? AND r.event_id IS NOT NULL AND (e.event_id IS NULL OR "
            "e.closed=0)", (source,))]

    def save_event(self, source: str, summary: dict[str, Any], members: Sequence[int]) -> None:
        """Write an event's row (``summary``: the ``events`` columns) and its files' places in it (``members``:
        row ids in capture order), in one transaction."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT OR REPLACE INTO events (source, event_id, camera, start, end, seq_num_frames, verdict, "
                "event_confidence, top_k, closed, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "coalesce((SELECT closed FROM events WHERE source=? AND event_id=?), 0), ?)",
                (source, summary["event_id"], summary["camera"], summary["start"], summary["end"], len(members),
                 summary["verdict"], summary["event_confidence"], json.dumps(summary["top_k"]), source,
                 summary["event_id"], utc_now()))
            for position, row_id in enumerate(members):
                self.db.execute("UPDATE results SET frame_num=?, seq_num_frames=? WHERE id=?",
                                (position, len(members), row_id))

    def close_events(self, source: str, camera: str, before: str) -> None:
        """Close a camera's events that ended before ``before`` (a capture time): no file can join them now."""
        with self.db:
            self.db.execute("UPDATE events SET closed=1 WHERE source=? AND camera=? AND closed=0 AND end<?",
                            (source, camera, before))

    def events(self, source: str | None = None) -> list[dict[str, Any]]:
        """Every event row (``top_k`` parsed), by start time."""
        cursor = self.db.execute("SELECT * FROM events" + (" WHERE source=?" if source else "") +
                                 " ORDER BY start, camera", (source,) if source else ())
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, values, strict=True)) for values in cursor]
        for row in rows:
            row["top_k"] = json.loads(row["top_k"]) if row["top_k"] else []
        return rows


@dataclass
class PendingMove:
    """A committed row whose file still has to go to ``stored_path``."""

    table: str  # "results" or "duplicates"
    id: int
    file: str  # as ``os`` spells it (relative to the inbox)
    sha256: str
    size: int | None
    stored_path: str


def _values(r: ImageRecord) -> tuple[Any, ...]:
    text, raw = name_to_db(r.file)
    return (db_text(r.source), text, r.sha256, r.size, r.mtime_ns, db_text(r.taken_at), r.processed_at or utc_now(),
            "ok" if r.failure is None else "failed",
            db_text(r.failure), r.width, r.height, db_text(r.top1), r.top1_probability, json.dumps(r.top_k),
            json.dumps(r.probabilities) if r.probabilities is not None else None, db_text(r.explained_class),
            json.dumps(r.trait_heads) if r.trait_heads is not None else None, db_text(r.heatmap),
            db_text(r.stored_path), raw, json.dumps(r.detections) if r.detections is not None else None,
            r.media, r.frame_rate, json.dumps(r.frames) if r.frames is not None else None,
            json.dumps(r.decisive_frames) if r.decisive_frames is not None else None, db_text(r.event_id))
