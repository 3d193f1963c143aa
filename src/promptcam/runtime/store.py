"""SQLite results for the field station: one row per image, written in the transaction that marks it done.

WAL mode, so readers (a dashboard, ``promptcam-export-results``) never block the writer, and
``synchronous=FULL``, so a committed row survives a power cut. The row *is* the done-mark: an
image is classified again only if it has no row, so a SIGKILL at any moment loses nothing and
classifies nothing twice.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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
    UNIQUE (source, file, sha256)
);
CREATE INDEX IF NOT EXISTS results_taken ON results (taken_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class ResultRow:
    source: str
    file: str
    sha256: str
    size: int | None = None
    mtime_ns: int | None = None
    taken_at: str | None = None
    status: str = "ok"
    failure: str | None = None
    width: int | None = None
    height: int | None = None
    top1: str | None = None
    top1_probability: float | None = None
    top_k: list[dict[str, Any]] = field(default_factory=list)
    probabilities: list[float] | None = None
    explained_class: str | None = None
    trait_heads: list[int] | None = None
    heatmap: str | None = None
    stored_path: str | None = None
    processed_at: str = field(default_factory=utc_now)


class ResultStore:
    """The results database of one station (one writer process, any number of readers)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # explicit transactions
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        self.db.close()

    def add(self, rows: Iterable[ResultRow]) -> int:
        """Insert a batch in one transaction; rows already present (same source, file, content) are kept."""
        values = [(r.source, r.file, r.sha256, r.size, r.mtime_ns, r.taken_at, r.processed_at, r.status, r.failure,
                   r.width, r.height, r.top1, r.top1_probability, json.dumps(r.top_k),
                   json.dumps(r.probabilities) if r.probabilities is not None else None, r.explained_class,
                   json.dumps(r.trait_heads) if r.trait_heads is not None else None, r.heatmap, r.stored_path)
                  for r in rows]
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            before = self.db.total_changes
            self.db.executemany(
                "INSERT OR IGNORE INTO results (source, file, sha256, size, mtime_ns, taken_at, processed_at, status,"
                " failure, width, height, top1, top1_probability, top_k, probabilities, explained_class, trait_heads,"
                " heatmap, stored_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
            return self.db.total_changes - before

    def known_files(self, source: str) -> set[tuple[str, int, int]]:
        """(file, size, mtime_ns) of every row of a source: files a restart need not even hash again."""
        return {(f, size, mtime) for f, size, mtime in self.db.execute(
            "SELECT file, size, mtime_ns FROM results WHERE source=?", (source,))}

    def pending_moves(self, source: str) -> list[tuple[int, str, str | None]]:
        """Rows committed but whose file was not yet moved away (a kill between commit and move)."""
        return self.db.execute("SELECT id, file, stored_path FROM results WHERE source=? AND moved=0 AND "
                               "stored_path IS NOT NULL", (source,)).fetchall()

    def mark_moved(self, row_id: int) -> None:
        with self.db:
            self.db.execute("UPDATE results SET moved=1 WHERE id=?", (row_id,))

    def rows(self) -> Iterator[dict[str, Any]]:
        cursor = self.db.execute("SELECT * FROM results ORDER BY id")
        names = [d[0] for d in cursor.description]
        for values in cursor:
            row = dict(zip(names, values, strict=True))
            for key in ("top_k", "probabilities", "trait_heads"):
                if row[key] is not None:
                    row[key] = json.loads(row[key])
            yield row
