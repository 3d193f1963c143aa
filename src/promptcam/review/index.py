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
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from promptcam.core.errors import PromptCamError
from promptcam.core.untrusted import UntrustedJSONError
from promptcam.results.formats import OUTPUT_NAMES
from promptcam.results.journal import Journal
from promptcam.runtime.records import ImageRecord, utc_now

from .events import folder_verdicts, open_event_keys, refresh_events, station_event_pairs, station_verdicts
from .stored import (
    StationReader,
    checked_record,
    class_name,
    decode_json,
    is_whole,
    name_list,
    with_crop_classes,
)

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
    height INTEGER,
    event_key TEXT,                    -- the event (--events): its event_id, within its station source
    event_id TEXT,                     -- CAMERA@START (COCO seq_id)
    seq_num_frames INTEGER,
    frame_num INTEGER,
    media TEXT,                        -- 'video' for a clip (its heatmap: the strip of its decisive frames)
    frame_rate REAL,
    frames TEXT,                       -- JSON [{"frame_number", "seconds", "evidence", "top1", "probability"}]
    decisive_frames TEXT               -- JSON [frame number, ...]
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
    reviewed_at TEXT NOT NULL,
    event_key TEXT                     -- set when the label was given to the file's whole event at once
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,            -- the event's page id (start order when indexed whole)
    key TEXT NOT NULL UNIQUE,          -- items.event_key
    event_id TEXT NOT NULL,
    camera TEXT NOT NULL,
    start TEXT,                        -- first and last capture time of its files
    end TEXT,
    seq_num_frames INTEGER NOT NULL,   -- its files in the results
    verdict TEXT,                      -- the results' event verdict (NULL: blank, or not in the results)
    event_confidence REAL NOT NULL,    -- -1 when unknown
    top_k TEXT NOT NULL,               -- JSON [{"name", "probability"}]
    closed INTEGER NOT NULL            -- no file can join it any more (a run's events always are)
);
CREATE INDEX IF NOT EXISTS events_verdict ON events (verdict, event_confidence);
CREATE INDEX IF NOT EXISTS events_confidence ON events (event_confidence);
CREATE INDEX IF NOT EXISTS events_start ON events (start);
CREATE TABLE IF NOT EXISTS classes (idx INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
ITEM_COLUMNS = ("key", "file", "image", "heatmap", "traits", "source", "day", "taken_at", "status", "failure", "top1",
                "confidence", "top_k", "explained_class", "trait_heads", "detections", "crops", "width", "height",
                "event_key", "event_id", "seq_num_frames", "frame_num", "media", "frame_rate", "frames",
                "decisive_frames")
# columns added after the first review databases shipped: added to older ones on open (then indexed again)
ADDED_COLUMNS = {"items": {c: "TEXT" for c in ITEM_COLUMNS[19:]} | {"seq_num_frames": "INTEGER",
                                                                    "frame_num": "INTEGER", "frame_rate": "REAL"},
                 "corrections": {"event_key": "TEXT"}}
INDEX_VERSION = "2"  # an index written by an older version is indexed again whole (it lacks the newer columns)


@dataclass(frozen=True)
class ResultsSource:
    """Where results come from: a run folder (``journal``) or a station database (``database``)."""

    kind: str  # "folder" | "database"
    path: Path  # the folder, or the database file
    review_db: Path
    cache_dir: Path  # thumbnails and on-demand heatmaps

    def signature(self) -> str:
        """Changes whenever the results do (then the items are indexed again): the files' sizes and
        times, and a station database's row count and last row id (a write within one clock tick)."""
        files = [self.path / OUTPUT_NAMES["jsonl"]] if self.kind == "folder" else [
            self.path, Path(f"{self.path}-wal")]
        parts = []
        for f in files:
            try:
                st = f.stat()
                parts.append(f"{st.st_size}:{st.st_mtime_ns}")
            except OSError:
                parts.append("-")
        if self.kind == "database":
            try:
                with StationReader(self.path) as station:
                    parts.append("{}:{}".format(*station.extent()))
            except PromptCamError:
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
    latest: dict[str, ImageRecord] = {}
    for r in map(checked_record, journal.read()):
        latest[r.path or r.file] = r
    return list(latest.values())


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
    else:
        day = _day_of(record.mtime_ns)
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
            record.width, record.height, *_event_and_clip(record, source))


def _event_and_clip(record: ImageRecord, source: ResultsSource) -> tuple[Any, ...]:
    """The event columns (the key scoped to a station's source: its ``events`` table's key) and a clip's."""
    key = None
    if record.event_id:
        key = record.event_id if source.kind == "folder" else f"{record.source}\x00{record.event_id}"
    return (key, record.event_id, record.seq_num_frames, record.frame_num, record.media, record.frame_rate,
            json.dumps(record.frames) if record.frames is not None else None,
            json.dumps(record.decisive_frames) if record.decisive_frames is not None else None)


def _day_of(mtime_ns: Any) -> str:
    """YYYY-MM-DD of a file time in nanoseconds ('' when there is none, or not a time)."""
    if not is_whole(mtime_ns) or not mtime_ns:
        return ""
    try:
        return datetime.fromtimestamp(mtime_ns / 1e9, timezone.utc).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError):
        return ""


# -- the index ----------------------------------------------------------------------------------


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    for table, columns in ADDED_COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
    db.execute("CREATE INDEX IF NOT EXISTS items_event ON items (event_key, frame_num)")
    db.row_factory = sqlite3.Row
    return db


def insert_items(db: sqlite3.Connection, rows: Iterable[Sequence[Any]], chunk: int = 5000, *,
                 with_id: bool = False) -> int:
    """Insert ``items`` rows (``ITEM_COLUMNS`` order, the item id first when ``with_id``) in chunks; how many."""
    columns = ("id", *ITEM_COLUMNS) if with_id else ITEM_COLUMNS
    sql = f"INSERT OR REPLACE INTO items ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
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


def folder_class_names(folder: Path) -> list[str] | None:
    """results.json's ``classification_categories`` (None while a run has not written it, or unreadable)."""
    path = folder / OUTPUT_NAMES["megadetector"]
    try:
        data = decode_json(path.read_bytes(), str(path))
        categories = data["classification_categories"]
        return name_list([categories[str(i)] for i in range(len(categories))])
    except (OSError, UntrustedJSONError, KeyError, TypeError):
        return None  # an interrupted run has no results.json yet: the journal's top-k names stand in


def seen_class_names(seen: dict[int, str]) -> list[str]:
    """The classes the top-k lists showed (index -> name), gaps named ``class_NNN`` as ``class_names_seen`` does."""
    return [seen.get(i) or class_name([], i) for i in range(max(seen, default=-1) + 1)]


def _meta(db: sqlite3.Connection, key: str) -> str | None:
    hit = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return hit[0] if hit else None


def _index_rows(db: sqlite3.Connection, source: ResultsSource, numbered: Iterable[tuple[int, ImageRecord]],
                names: Sequence[str] | None, seen: dict[int, str], events: set[str] | None = None) -> int:
    """Insert (item id, record) pairs; the classes they show are added to ``seen``, their events to ``events``."""
    event_column = ITEM_COLUMNS.index("event_key")

    def rows() -> Iterator[tuple[Any, ...]]:  # streamed from the results into the index
        for item_id, record in numbered:
            record = with_crop_classes(record, names or ())
            seen.update({c["index"]: c["name"] for c in record.top_k})
            row = item_row(record, source)
            if events is not None and row[event_column] is not None:
                events.add(row[event_column])
            yield (item_id, *row)

    return insert_items(db, rows(), with_id=True)


def _index_folder(db: sqlite3.Connection, source: ResultsSource, class_names: Sequence[str] | None) -> int:
    """Every result of a run folder (its journal is read whole); item ids in result order."""
    names = list(class_names) if class_names else folder_class_names(source.path)
    seen: dict[int, str] = {}
    db.execute("DELETE FROM items")
    count = _index_rows(db, source, enumerate(folder_records(source.path), 1), names, seen)
    set_classes(db, names or seen_class_names(seen))
    refresh_events(db, folder_verdicts(source.path), closed=True)
    return count


def _index_station(db: sqlite3.Connection, source: ResultsSource, station: StationReader,
                   class_names: Sequence[str] | None, after: tuple[int, list[int]] | None = None) -> int:
    """A station database's rows (item id = row id): all of them, or ``after`` (last id, pending ids) only
    the rows added since and those whose photo was still to be moved."""
    names = list(class_names) if class_names else station.class_names()
    if after is None:
        db.execute("DELETE FROM items")
        seen: dict[int, str] = {}
        rows = station.rows()
    else:
        seen = {i: n for i, n in db.execute("SELECT idx, name FROM classes")}
        where, params = "id > ? OR id IN (SELECT value FROM json_each(?))", [after[0], json.dumps(after[1])]
        if (opened := open_event_keys(db)) and station.has_column("event_id"):
            # the rows of open events too: the station renumbers their files' places as files join
            where += (" OR (source, event_id) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') "
                      "FROM json_each(?))")
            params.append(station_event_pairs(opened))
        rows = station.rows(where, params)
    pending: list[int] = []

    def numbered() -> Iterator[tuple[int, ImageRecord]]:
        for row in rows:
            if row.pending:
                pending.append(row.id)
            yield row.id, row.record

    touched: set[str] = set()
    count = _index_rows(db, source, numbered(), names, seen, touched)
    set_classes(db, names or seen_class_names(seen))
    # the station writes an event's verdict after its rows: the open events are looked at again every time
    refresh_events(db, station_verdicts(station.db),
                   None if after is None else [*touched, *open_event_keys(db)])
    db.execute("INSERT OR REPLACE INTO meta VALUES ('station_extent', ?)", ("{}:{}".format(*station.extent()),))
    db.execute("INSERT OR REPLACE INTO meta VALUES ('station_pending', ?)", (json.dumps(pending),))
    return count


def _station_growth(db: sqlite3.Connection, station: StationReader) -> tuple[int, list[int]] | None:
    """(last id indexed, ids indexed while pending) when the station only gained rows since it was
    indexed; None when it must be indexed whole (never indexed, rows gone, another database)."""
    try:
        count, last = (int(v) for v in (_meta(db, "station_extent") or "").split(":"))
        pending = [int(i) for i in json.loads(_meta(db, "station_pending") or "[]")]
    except (ValueError, TypeError):
        return None
    now, _ = station.extent()
    return (last, pending) if now - count == station.count_after(last) else None


def build_index(source: ResultsSource, *, class_names: Sequence[str] | None = None, force: bool = False,
                log: Any = None) -> Path:
    """Index the results into the review database (again only when they changed, or ``force``).

    A station database that only gained rows since it was last indexed has just those rows indexed
    (and the rows whose photo was still being moved); anything else is indexed whole.

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
        meta = {"signature": source.signature(), "model_classes": json.dumps(list(class_names or [])),
                "results": str(source.path), "indexed_at": utc_now(), "index_version": INDEX_VERSION}
        same_model = (_meta(db, "model_classes") == meta["model_classes"]
                      and _meta(db, "index_version") == INDEX_VERSION)
        if not force and same_model and _meta(db, "signature") == meta["signature"]:
            return source.review_db
        with db:
            db.execute("BEGIN IMMEDIATE")
            if source.kind == "folder":
                count, whole = _index_folder(db, source, class_names), True
            else:
                with StationReader(source.path) as station:
                    growth = _station_growth(db, station) if same_model and not force else None
                    count, whole = _index_station(db, source, station, class_names, growth), growth is None
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))
        if whole:
            db.execute("ANALYZE")  # the planner picks the filter's index, not a scan
        if log is not None:
            log(f"{'indexed' if whole else 'added'} {count} result(s) from {source.path} into {source.review_db}")
    finally:
        db.close()
    return source.review_db
