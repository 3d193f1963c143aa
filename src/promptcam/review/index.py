"""The review database: an indexed copy of the results, plus the reviewer's corrections.

The results (a ``promptcam-run`` folder's JSONL journal or a ``promptcam-watch`` SQLite database)
are read through the runtime's own record code into an ``items`` table with one index per filter
and sort the grid offers, so a page of 100,000 results is one indexed query and nothing is held in
memory between requests. Results that change are indexed again: a station database only for its
new rows (and the rows whose photo was still to be moved), a run folder whole. Corrections live in
their own ``corrections`` table, keyed by a stable item key (not the row id), so re-indexing newer
results keeps every review; the results files are never written.

Everything read is outside data: JSON that does not parse (too deep, too large, malformed) or has
the wrong shape makes that one result a failure that says so, never a crash of the index.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from promptcam.core.errors import PromptCamError
from promptcam.core.untrusted import UntrustedJSONError, loads_untrusted
from promptcam.results.formats import OUTPUT_NAMES
from promptcam.results.journal import Journal
from promptcam.results.store import record_from_row
from promptcam.runtime.records import ImageRecord, utc_now

REVIEW_DB_NAME = "review.sqlite"
NO_CONFIDENCE = -1.0  # failures sort below every real probability and never match a confidence range
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,            -- result order (input order of a file run, id order of a station)
    key TEXT NOT NULL UNIQUE,          -- stable identity: canonical path, or source + file + sha256
    file TEXT NOT NULL,                -- the reported name
    image TEXT,                        -- the photo on disk (the only file paths ever served, with the next two)
    heatmap TEXT,
    traits TEXT,
    source TEXT NOT NULL,              -- camera / inbox / stream, or the image's folder in a file run
    day TEXT NOT NULL,                 -- YYYY-MM-DD ('' when unknown)
    taken_at TEXT,
    status TEXT NOT NULL,              -- ok | failed
    failure TEXT,
    top1 TEXT NOT NULL,                -- '' for failures
    confidence REAL NOT NULL,          -- -1 for failures
    top_k TEXT NOT NULL,               -- JSON [{"index", "name", "probability"}]
    explained_class TEXT,
    trait_heads TEXT,                  -- JSON
    detections TEXT,                   -- JSON list of {"bbox": [x, y, w, h] (0..1), ...} (--detections runs)
    crops INTEGER NOT NULL,            -- number of detection boxes (0: whole image)
    width INTEGER,
    height INTEGER
);
CREATE INDEX IF NOT EXISTS items_class ON items (top1, confidence);
CREATE INDEX IF NOT EXISTS items_confidence ON items (confidence);
CREATE INDEX IF NOT EXISTS items_source ON items (source, day);
CREATE INDEX IF NOT EXISTS items_day ON items (day);
CREATE INDEX IF NOT EXISTS items_file ON items (file);
CREATE INDEX IF NOT EXISTS items_status ON items (status);
CREATE INDEX IF NOT EXISTS items_crops ON items (crops);
CREATE TABLE IF NOT EXISTS corrections (
    key TEXT PRIMARY KEY,              -- items.key
    verdict TEXT NOT NULL CHECK (verdict IN ('confirmed', 'corrected')),
    label TEXT NOT NULL,               -- the right class (the prediction itself when confirmed)
    predicted TEXT NOT NULL,
    reviewed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS classes (idx INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
ITEM_COLUMNS = ("key", "file", "image", "heatmap", "traits", "source", "day", "taken_at", "status", "failure", "top1",
                "confidence", "top_k", "explained_class", "trait_heads", "detections", "crops", "width", "height")


@dataclass(frozen=True)
class ResultsSource:
    """Where results come from: a run folder (``journal``) or a station database (``database``)."""

    kind: str  # "folder" | "database"
    path: Path  # the folder, or the database file
    review_db: Path
    cache_dir: Path  # thumbnails and on-demand heatmaps

    def signature(self) -> str:
        """Changes whenever the results do (then the items are indexed again)."""
        files = [self.path / OUTPUT_NAMES["jsonl"]] if self.kind == "folder" else [
            self.path, Path(f"{self.path}-wal")]
        parts = []
        for f in files:
            try:
                st = f.stat()
                parts.append(f"{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                parts.append("-")
        return "|".join(parts)


def locate(results: str | Path) -> ResultsSource:
    """Recognise RESULTS: a ``promptcam-run`` folder (with results.jsonl) or a ``promptcam-watch`` database.

    Raises:
        PromptCamError: it is neither.
    """
    path = Path(results).resolve()
    if path.is_dir():
        if not (path / OUTPUT_NAMES["jsonl"]).is_file():
            raise PromptCamError(f"{path}: no {OUTPUT_NAMES['jsonl']} here; give a promptcam-run output folder "
                                 "or a promptcam-watch SQLite database")
        home = _writable(path, path)
        return ResultsSource("folder", path, home / REVIEW_DB_NAME, home / ".review-cache")
    if path.is_file():
        try:
            with open(path, "rb") as fh:
                is_sqlite = fh.read(16) == b"SQLite format 3\x00"
        except OSError as exc:
            raise PromptCamError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        if not is_sqlite:
            raise PromptCamError(f"{path}: not a SQLite database; give a promptcam-run output folder or a "
                                 "promptcam-watch database")
        home = _writable(path.parent, path)
        return ResultsSource("database", path, home / f"{path.name}.review.sqlite", home / f"{path.name}.review-cache")
    raise PromptCamError(f"{path}: results not found")


def _writable(folder: Path, results: Path) -> Path:
    """``folder`` when the review database can live there, else a per-results folder in the user's cache
    (results on a read-only card or share can still be reviewed)."""
    if os.access(folder, os.W_OK):
        return folder
    digest = hashlib.sha256(os.fsencode(results)).hexdigest()[:16]
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "promptcam-review" / digest
    home.mkdir(parents=True, exist_ok=True)
    return home


# -- reading results through the runtime's record code ------------------------------------------


def folder_records(folder: Path) -> list[ImageRecord]:
    """The records of a run folder's journal, one per image (the last record of a path wins, as ``--resume``)."""
    journal = Journal(folder / OUTPUT_NAMES["jsonl"])
    records = journal.read()
    latest: dict[str, ImageRecord] = {}
    for r in records:
        latest[r.path or r.file] = r
    return list(latest.values())


def database_records(path: Path) -> Iterator[ImageRecord]:
    """A station database's rows as records, read-only (the station may be writing)."""
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)
        cursor = db.execute("SELECT * FROM results ORDER BY id")
    except sqlite3.DatabaseError as exc:
        raise PromptCamError(f"{path}: not a promptcam-watch results database ({exc})") from exc
    names = [d[0] for d in cursor.description]
    try:
        for values in cursor:
            row = dict(zip(names, values, strict=True))
            for key in ("top_k", "probabilities", "trait_heads"):
                if row.get(key) is not None:
                    row[key] = json.loads(row[key])
            yield record_from_row(row)
    finally:
        db.close()


def first_existing(candidates: Iterable[Path | None]) -> str | None:
    """The first candidate that is a file (absolute), else the first candidate at all (shown as missing)."""
    listed = [c for c in candidates if c is not None]
    for c in listed:
        if c.is_file():
            return str(c.absolute())
    return str(listed[0].absolute()) if listed else None


def _relative_candidates(name: str | None, bases: Sequence[Path]) -> list[Path | None]:
    if not name:
        return []
    p = Path(name)
    return [p] if p.is_absolute() else [base / p for base in bases]


def item_row(record: ImageRecord, source: ResultsSource) -> tuple[Any, ...]:
    """The ``items`` row of a record: where its files are, its filter and sort columns."""
    bases = [Path.cwd(), source.path if source.kind == "folder" else source.path.parent,
             (source.path if source.kind == "folder" else source.path).parent]
    if source.kind == "folder":
        key = record.path or record.file
        image = first_existing([Path(record.path)] if record.path else _relative_candidates(record.file, bases))
        camera = os.path.dirname(record.file) or "."
    else:
        key = f"{record.source}\x00{record.file}\x00{record.sha256}"
        station_dir = source.path.parent
        candidates: list[Path | None] = [Path(record.stored_path)] if record.stored_path else []
        if record.source and Path(record.source).is_absolute():
            candidates.append(Path(record.source) / record.file)  # the inbox (not moved)
        candidates += [station_dir / "frames" / record.file, station_dir / record.file]  # stream frames
        image = first_existing(candidates)
        camera = record.source or "."
    taken = record.taken_at
    if taken:
        day = taken[:10]
    elif record.mtime_ns:
        day = datetime.fromtimestamp(record.mtime_ns / 1e9, timezone.utc).strftime("%Y-%m-%d")
    else:
        day = ""
    detections = record.detections  # --detections runs: the detector's boxes (None in whole-image runs)
    boxes = [d for d in detections or [] if isinstance(d, dict) and d.get("bbox") not in (None, [0, 0, 1, 1])]
    top = record.top_k[0] if record.top_k else None
    return (key, record.file, image,
            first_existing(_relative_candidates(record.heatmap, bases)),
            first_existing(_relative_candidates(record.traits_image, bases)),
            camera, day, taken, record.status, record.failure,
            top["name"] if top and record.ok else "",
            float(top["probability"]) if top and record.ok else NO_CONFIDENCE,
            json.dumps(record.top_k), record.explained_class,
            json.dumps(record.trait_heads) if record.trait_heads is not None else None,
            json.dumps(detections) if detections is not None else None, len(boxes),
            record.width, record.height)


# -- the index ----------------------------------------------------------------------------------


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    db.row_factory = sqlite3.Row
    return db


def insert_items(db: sqlite3.Connection, rows: Iterable[Sequence[Any]], chunk: int = 5000) -> int:
    """Insert ``items`` rows (``ITEM_COLUMNS`` order) in chunks; returns how many."""
    sql = f"INSERT OR REPLACE INTO items ({', '.join(ITEM_COLUMNS)}) VALUES ({', '.join('?' * len(ITEM_COLUMNS))})"
    count = 0
    batch: list[Sequence[Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= chunk:
            db.executemany(sql, batch)
            count += len(batch)
            batch = []
    db.executemany(sql, batch)
    return count + len(batch)


def set_classes(db: sqlite3.Connection, names: Sequence[str]) -> None:
    db.execute("DELETE FROM classes")
    db.executemany("INSERT INTO classes VALUES (?, ?)", list(enumerate(names)))


def results_class_names(source: ResultsSource, seen: dict[int, str]) -> list[str]:
    """Every class name: results.json's ``classification_categories`` when readable, else those the top-k
    lists showed (``seen``: index -> name; gaps named ``class_NNN`` as ``class_names_seen`` does)."""
    if source.kind == "folder":
        try:
            data = json.loads((source.path / OUTPUT_NAMES["megadetector"]).read_text(encoding="utf-8"))
            categories = data["classification_categories"]
            return [categories[str(i)] for i in range(len(categories))]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # an interrupted run has no results.json yet: the journal's top-k names stand in
    return [seen.get(i, f"class_{i:03d}") for i in range(max(seen, default=-1) + 1)]


def build_index(source: ResultsSource, *, class_names: Sequence[str] | None = None, force: bool = False,
                log: Any = None) -> Path:
    """Index the results into the review database (again only when they changed, or ``force``).

    Args:
        source: From ``locate``.
        class_names: The model's classes (``--model``); default: the classes the results name.
        force: Index even if the results look unchanged.
        log: Called with one line per step (optional).

    Returns:
        The review database path.
    """
    db = connect(source.review_db)
    try:
        # the model's classes (--model) are part of what was indexed: another model means indexing again
        signature = source.signature() + ("|" + json.dumps(list(class_names)) if class_names else "")
        have = db.execute("SELECT value FROM meta WHERE key='signature'").fetchone()
        if not force and have is not None and have[0] == signature:
            return source.review_db
        records = folder_records(source.path) if source.kind == "folder" else database_records(source.path)
        seen: dict[int, str] = {}

        def rows() -> Iterator[tuple[Any, ...]]:  # a station's rows stream from its database into the index
            for r in records:
                seen.update({c["index"]: c["name"] for c in r.top_k})
                yield item_row(r, source)

        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM items")
            count = insert_items(db, rows())
            set_classes(db, list(class_names) if class_names else results_class_names(source, seen))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('signature', ?)", (signature,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('results', ?)", (str(source.path),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('indexed_at', ?)", (utc_now(),))
        db.execute("ANALYZE")  # the planner picks the filter's index, not a scan
        if log is not None:
            log(f"indexed {count} result(s) from {source.path} into {source.review_db}")
    finally:
        db.close()
    return source.review_db
