"""Events in the review index: one row per event (``--events``) of the results, for paging by event.

An event's files are the items that carry its ``event_key``; its size and first and last capture
times come from them. Its verdict (the class, ``event_confidence`` and top-k the results gave it)
comes from the results' own event table: a run folder's ``events.csv`` or a station database's
``events`` table. Both are outside data, read defensively: a missing or damaged table, row or value
leaves that event without a verdict (shown as unknown), never a crash of the index.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from promptcam.results.events import EVENTS_NAME

from .stored import decode_json

UNKNOWN = -1.0  # event_confidence of an event whose verdict the results do not give
MAX_EVENTS_FILE = 256 * 1024 * 1024  # bytes of events.csv read (a run of millions of photos stays far below)
TOP_K = 5  # verdict classes kept per event


def _probability(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and 0.0 <= number <= 1.0 else None


def _text(value: Any, limit: int = 1000) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def folder_verdicts(folder: Path) -> dict[str, dict[str, Any]]:
    """A run folder's ``events.csv`` as event key -> {camera, start, end, verdict, event_confidence, top_k, closed};
    empty when there is none or it cannot be read. A row that is damaged is left out."""
    path = folder / EVENTS_NAME
    found: dict[str, dict[str, Any]] = {}
    try:
        if path.stat().st_size > MAX_EVENTS_FILE:
            return found
        with path.open(encoding="utf-8", errors="replace", newline="") as fh:
            for row in csv.DictReader(fh):
                key = _text(row.get("event_id"))
                if key is None:
                    continue
                top_k = []
                for part in (row.get("top_k") or "").split(";")[:TOP_K]:
                    name, _, probability = part.rpartition(":")
                    if name and (p := _probability(probability)) is not None:
                        top_k.append({"name": name[:200], "probability": p})
                verdict = _text(row.get("verdict"), 200)
                found[key] = {"camera": _text(row.get("camera")), "start": _text(row.get("start"), 40),
                              "end": _text(row.get("end"), 40), "verdict": None if verdict == "blank" else verdict,
                              "event_confidence": _probability(row.get("event_confidence")), "top_k": top_k,
                              "closed": 1}
    except (OSError, csv.Error):
        pass  # no events.csv (a run without --events), or damaged from here on: the events stay, without verdicts
    return found


def station_verdicts(station: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """A station database's ``events`` table as event key (source NUL event_id) -> verdict fields; empty
    when the database has no such table (a station older than ``--events``) or it cannot be read."""
    found: dict[str, dict[str, Any]] = {}
    try:
        cursor = station.execute("SELECT * FROM events")
        names = [d[0] for d in cursor.description]
        for values in cursor:
            row = dict(zip(names, values, strict=True))
            source, event_id = row.get("source"), row.get("event_id")
            if not isinstance(source, str) or not isinstance(event_id, str):
                continue
            try:
                listed = decode_json(row.get("top_k"), "events top_k") if row.get("top_k") is not None else []
            except ValueError:  # UntrustedJSONError is a ValueError
                listed = []
            top_k = [{"name": c["name"][:200], "probability": p} for c in listed[:TOP_K] if isinstance(listed, list)
                     and isinstance(c, dict) and isinstance(c.get("name"), str)
                     and (p := _probability(c.get("probability"))) is not None] if isinstance(listed, list) else []
            found[f"{source}\x00{event_id}"] = {
                "camera": _text(row.get("camera")), "start": _text(row.get("start"), 40),
                "end": _text(row.get("end"), 40), "verdict": _text(row.get("verdict"), 200),
                "event_confidence": _probability(row.get("event_confidence")), "top_k": top_k,
                "closed": 1 if row.get("closed") in (1, True) else 0}
    except sqlite3.Error:
        return {}
    return found


def refresh_events(db: sqlite3.Connection, verdicts: dict[str, dict[str, Any]], keys: Iterable[str] | None = None,
                   *, closed: bool = False) -> int:
    """Write the review's ``events`` rows of ``keys`` (None: every event, the table rebuilt in start order)
    from their items and ``verdicts``; an event's page id stays the same when it is written again.

    Args:
        closed: Whether every event is final (a run folder's); a station's stay open until it says so.

    Returns:
        The number of events written.
    """
    if keys is None:
        db.execute("DELETE FROM events")
        where, params = "event_key IS NOT NULL", []
    else:
        wanted = sorted(set(keys))
        if not wanted:
            return 0
        # a temporary table, not json_each: a station's event key holds a NUL, which SQL's JSON text cuts short
        db.execute("CREATE TEMP TABLE IF NOT EXISTS wanted_events (key TEXT PRIMARY KEY)")
        db.execute("DELETE FROM wanted_events")
        db.executemany("INSERT OR IGNORE INTO wanted_events VALUES (?)", [(k,) for k in wanted])
        where, params = "event_key IN (SELECT key FROM wanted_events)", []
    groups = db.execute(
        f"SELECT event_key, min(event_id), min(source), count(*), min(taken_at), max(taken_at) FROM items "
        f"WHERE {where} GROUP BY event_key ORDER BY min(taken_at), event_key", params).fetchall()
    rows = []
    for key, event_id, source, files, start, end in groups:
        found = verdicts.get(key, {})
        camera = found.get("camera") or event_id.rpartition("@")[0] or source
        confidence = found.get("event_confidence")
        # the results' times where they give them (a clip or a photo without EXIF: its file time)
        rows.append((key, event_id, camera, found.get("start") or start, found.get("end") or end, files,
                     found.get("verdict"), UNKNOWN if confidence is None else confidence,
                     json.dumps(found.get("top_k", [])), 1 if closed else found.get("closed", 0)))
    rows.sort(key=lambda r: (r[3] is None, r[3] or "", r[0]))  # page ids in start order, unknown times last
    db.executemany(
        "INSERT INTO events (key, event_id, camera, start, end, seq_num_frames, verdict, event_confidence, top_k, "
        "closed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET event_id=excluded.event_id, "
        "camera=excluded.camera, start=excluded.start, end=excluded.end, seq_num_frames=excluded.seq_num_frames, "
        "verdict=excluded.verdict, event_confidence=excluded.event_confidence, top_k=excluded.top_k, "
        "closed=excluded.closed", rows)
    if keys is not None:  # an event whose files are all gone (re-indexed into another event) is gone too
        db.execute("DELETE FROM events WHERE key IN (SELECT key FROM wanted_events) AND NOT EXISTS "
                   "(SELECT 1 FROM items WHERE items.event_key = events.key)")
        db.execute("DELETE FROM wanted_events")
    return len(rows)


def open_event_keys(db: sqlite3.Connection) -> list[str]:
    """Keys of the events not yet closed: their verdict, and their files' places, may still change (a
    station recomputes them as files join), so they are read again on every index."""
    return [k for (k,) in db.execute("SELECT key FROM events WHERE closed = 0")]


def station_event_pairs(keys: Iterable[str]) -> str:
    """Station event keys as JSON [[source, event_id], ...] (to find their rows in the station database)."""
    return json.dumps([key.split("\x00", 1) for key in keys if "\x00" in key])
