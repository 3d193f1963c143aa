"""The grid's filters and sorts as SQL over the review database, and the reviewer's verdicts.

Every filter and sort is a column with an index (``index.SCHEMA``); values are always bound
parameters and sort columns come from a fixed table, so no request text ever reaches the SQL.
Neighbours (next / previous image under the current filter and sort) are keyset queries: one
indexed lookup, whatever the position.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from promptcam.runtime.records import utc_now

from .index import connect

SORTS = {  # name -> columns, the last one the tie-breaker that makes the order total
    "id": ("id",),
    "confidence": ("confidence", "id"),
    "class": ("top1", "confidence", "id"),
    "file": ("file", "id"),
    "date": ("day", "id"),
}
EVENT_SORTS = {  # the same sorts over the events table (paging by event)
    "id": ("id",),
    "confidence": ("event_confidence", "id"),
    "class": ("verdict", "event_confidence", "id"),
    "file": ("event_id", "id"),
    "date": ("start", "id"),
}
CHOICES = {
    "by": ("file", "event"),
    "status": ("all", "ok", "failed"),
    "crops": ("all", "yes", "no"),
    "reviewed": ("all", "no", "yes", "confirmed", "corrected"),
    "sort": tuple(SORTS),
    "order": ("asc", "desc"),
}
MAX_PER_PAGE = 500


class BadRequest(ValueError):
    """A request parameter that cannot be used (the message says which and why; answered with 400)."""


@dataclass(frozen=True)
class Filters:
    """What the grid shows: filters, sort and page (all optional; the defaults show everything)."""

    cls: str = ""
    min_conf: float | None = None
    max_conf: float | None = None
    status: str = "all"
    crops: str = "all"
    source: str = ""
    day_from: str = ""
    day_to: str = ""
    reviewed: str = "all"
    sort: str = "id"
    order: str = "asc"
    page: int = 1
    per_page: int = 60
    by: str = "file"  # "event": each page item is an event (--events), its files together
    event: int | None = None  # one event (its page id): its files, or the event alone

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> Filters:
        """Parse and check query parameters (empty values mean 'no filter').

        Raises:
            BadRequest: an unknown choice, a number out of range or a malformed date.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = params.get(f.name, "")
            raw = raw.strip() if isinstance(raw, str) else raw
            if raw == "":
                continue
            if f.name in ("min_conf", "max_conf"):
                values[f.name] = _number(f.name, raw, 0.0, 1.0)
            elif f.name in ("page", "per_page", "event"):
                high = {"page": 10**9, "per_page": MAX_PER_PAGE, "event": 2**62}[f.name]
                values[f.name] = int(_number(f.name, raw, 1, high, whole=True))
            elif f.name in CHOICES:
                if raw not in CHOICES[f.name]:
                    raise BadRequest(f"{f.name} must be one of {', '.join(CHOICES[f.name])} (got {raw[:40]!r})")
                values[f.name] = raw
            elif f.name in ("day_from", "day_to"):
                try:
                    values[f.name] = date.fromisoformat(raw).isoformat()
                except ValueError:
                    raise BadRequest(f"{f.name} must be a date YYYY-MM-DD (got {raw[:40]!r})") from None
            else:
                values[f.name] = raw
        return cls(**values)

    def query_string(self, **changes: Any) -> str:
        """The URL query of these filters (defaults left out), with ``changes`` applied."""
        data = asdict(self) | changes
        default = Filters()
        return urlencode({k: ("" if v is None else v) for k, v in data.items() if v != getattr(default, k)})

    def where(self) -> tuple[str, list[Any]]:
        """SQL condition over ``items`` and its parameters."""
        terms: list[str] = []
        params: list[Any] = []
        if self.cls:
            terms.append("top1 = ?")
            params.append(self.cls)
        if self.min_conf is not None:
            terms.append("confidence >= ?")
            params.append(self.min_conf)
        if self.max_conf is not None:
            terms.append("confidence <= ? AND confidence >= 0")
            params.append(self.max_conf)
        if self.status != "all":
            terms.append("status = ?")
            params.append(self.status)
        if self.crops != "all":
            terms.append("crops > 0" if self.crops == "yes" else "crops = 0")
        if self.source:
            terms.append("source = ?")
            params.append(self.source)
        if self.day_from:
            terms.append("day >= ? AND day != ''")
            params.append(self.day_from)
        if self.day_to:
            terms.append("day <= ? AND day != ''")
            params.append(self.day_to)
        if self.event is not None:
            terms.append("items.event_key = (SELECT key FROM events WHERE id = ?)")
            params.append(self.event)
        if self.reviewed != "all":
            reviewed = "EXISTS (SELECT 1 FROM corrections c WHERE c.key = items.key{})"
            terms.append({"no": "NOT " + reviewed.format(""), "yes": reviewed.format(""),
                          "confirmed": reviewed.format(" AND c.verdict = 'confirmed'"),
                          "corrected": reviewed.format(" AND c.verdict = 'corrected'")}[self.reviewed])
        return (" AND ".join(terms) or "1"), params

    def order_by(self, *, reverse: bool = False) -> str:
        direction = "DESC" if (self.order == "desc") != reverse else "ASC"
        return ", ".join(f"items.{c} {direction}" for c in SORTS[self.sort])

    def event_where(self) -> tuple[str, list[Any]]:
        """SQL condition over ``events``: class and confidence are the event's verdict; camera, day, status,
        crops and reviewed hold when one of its files matches them (reviewed=yes: all its files are reviewed)."""
        terms: list[str] = []
        params: list[Any] = []
        if self.cls:
            terms.append("events.verdict = ?")
            params.append(self.cls)
        if self.min_conf is not None:
            terms.append("events.event_confidence >= ?")
            params.append(self.min_conf)
        if self.max_conf is not None:
            terms.append("events.event_confidence <= ? AND events.event_confidence >= 0")
            params.append(self.max_conf)
        if self.event is not None:
            terms.append("events.id = ?")
            params.append(self.event)
        # the file conditions as one set of event keys (the items' own indexes find the files, not a
        # look into every event): an event is listed when one of its files matches them all
        file_where, file_params = replace(self, cls="", min_conf=None, max_conf=None, reviewed="all",
                                          event=None).where()
        unreviewed = "NOT EXISTS (SELECT 1 FROM corrections c WHERE c.key = items.key)"
        if self.reviewed in ("confirmed", "corrected"):
            terms.append("events.key IN (SELECT items.event_key FROM corrections c JOIN items ON items.key = c.key "
                         f"WHERE c.verdict = ? AND {file_where})")
            params.extend([self.reviewed, *file_params])
        else:
            condition = f"{file_where} AND {unreviewed}" if self.reviewed == "no" else file_where
            if condition != "1":
                terms.append(f"events.key IN (SELECT event_key FROM items WHERE event_key IS NOT NULL AND {condition})")
                params.extend(file_params)
            if self.reviewed == "yes":  # every file of the event reviewed
                terms.append(f"events.key NOT IN (SELECT event_key FROM items WHERE event_key IS NOT NULL AND "
                             f"{unreviewed})")
        return (" AND ".join(terms) or "1"), params

    def event_order_by(self) -> str:
        direction = "DESC" if self.order == "desc" else "ASC"
        return ", ".join(f"events.{c} {direction}" for c in EVENT_SORTS[self.sort])


def _number(name: str, raw: str, low: float, high: float, *, whole: bool = False) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number (got {raw[:40]!r})") from None
    if not math.isfinite(value) or not low <= value <= high or (whole and value != int(value)):
        kind = "a whole number" if whole else "a number"
        raise BadRequest(f"{name} must be {kind} from {low:g} to {high:g} (got {raw[:40]!r})")
    return value


@dataclass
class Page:
    items: list[dict[str, Any]]
    total: int
    filters: Filters

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.filters.per_page))


SELECT_ITEMS = ("SELECT items.*, c.verdict AS verdict, c.label AS label, c.reviewed_at AS reviewed_at "
                "FROM items LEFT JOIN corrections c ON c.key = items.key")


class ReviewStore:
    """Queries and verdicts over one review database (a connection per thread: the server's workers)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    @property
    def db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = connect(self.path)
        return db

    def page(self, filters: Filters) -> Page:
        """One page of the grid (an indexed query, then a count over the same filter)."""
        where, params = filters.where()
        offset = (filters.page - 1) * filters.per_page
        rows = self.db.execute(f"{SELECT_ITEMS} WHERE {where} ORDER BY {filters.order_by()} LIMIT ? OFFSET ?",
                               [*params, filters.per_page, offset]).fetchall()
        total = self.db.execute(f"SELECT count(*) FROM items WHERE {where}", params).fetchone()[0]
        return Page([dict(r) for r in rows], total, filters)

    def item(self, item_id: int) -> dict[str, Any] | None:
        row = self.db.execute(f"{SELECT_ITEMS} WHERE items.id = ?", (item_id,)).fetchone()
        return dict(row) if row is not None else None

    def neighbours(self, item: Mapping[str, Any], filters: Filters) -> tuple[int | None, int | None]:
        """(previous id, next id) of ``item`` in the grid's order under ``filters``."""
        columns = SORTS[filters.sort]
        row_value = f"({', '.join('items.' + c for c in columns)})"
        marks = f"({', '.join('?' * len(columns))})"
        values = [item[c] for c in columns]
        where, params = filters.where()
        found = []
        for reverse in (True, False):
            ahead = (filters.order == "desc") == reverse  # which side of the item comes next in this direction
            sql = (f"SELECT items.id FROM items WHERE {where} AND {row_value} {'>' if ahead else '<'} {marks} "
                   f"ORDER BY {filters.order_by(reverse=reverse)} LIMIT 1")
            hit = self.db.execute(sql, [*params, *values]).fetchone()
            found.append(hit[0] if hit else None)
        return found[0], found[1]

    def event_page(self, filters: Filters) -> Page:
        """One page of events (``filters.by == "event"``): each with its files (``files``, in event order)."""
        where, params = filters.event_where()
        offset = (filters.page - 1) * filters.per_page
        rows = self.db.execute(f"SELECT * FROM events WHERE {where} ORDER BY {filters.event_order_by()} "
                               "LIMIT ? OFFSET ?", [*params, filters.per_page, offset]).fetchall()
        total = self.db.execute(f"SELECT count(*) FROM events WHERE {where}", params).fetchone()[0]
        return Page([self._with_files(dict(r)) for r in rows], total, filters)

    def event(self, event_number: int) -> dict[str, Any] | None:
        """An event by its page id, with its files."""
        row = self.db.execute("SELECT * FROM events WHERE id = ?", (event_number,)).fetchone()
        return self._with_files(dict(row)) if row is not None else None

    def event_of(self, item: Mapping[str, Any]) -> dict[str, Any] | None:
        """The event an item belongs to (without its files), or None."""
        if not item.get("event_key"):
            return None
        row = self.db.execute("SELECT * FROM events WHERE key = ?", (item["event_key"],)).fetchone()
        return dict(row) if row is not None else None

    def _with_files(self, event: dict[str, Any]) -> dict[str, Any]:
        event["files"] = [dict(r) for r in self.db.execute(
            f"{SELECT_ITEMS} WHERE items.event_key = ? ORDER BY items.frame_num, items.id", (event["key"],))]
        labels = {f["label"] for f in event["files"]}
        # the event's review: one label on every file (as one event action gives), else partial or none
        event["label"] = labels.pop() if len(labels) == 1 and None not in labels else None
        event["reviewed"] = sum(f["verdict"] is not None for f in event["files"])
        return event

    def review_event(self, event: Mapping[str, Any], label: str) -> dict[str, Any]:
        """Give every file of an event the right class, in one transaction (each file 'confirmed' when the
        label is its own prediction, else 'corrected'); the event's own verdict the same way.

        Raises:
            BadRequest: a label that is not one of the classes.
        """
        if self.class_index(label) is None:
            raise BadRequest(f"unknown class {label[:80]!r}; pick one of the model's classes")
        now = utc_now()
        rows = [(f["key"], "confirmed" if label == f["top1"] else "corrected", label, f["top1"], now, event["key"])
                for f in event["files"]]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO corrections (key, verdict, label, predicted, reviewed_at, "
                                "event_key) VALUES (?, ?, ?, ?, ?, ?)", rows)
        return {"id": event["id"], "label": label, "files": len(rows),
                "verdict": "confirmed" if label == event["verdict"] else "corrected",
                "corrected": sum(r[1] == "corrected" for r in rows)}

    def unreview_event(self, event: Mapping[str, Any]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM corrections WHERE key = ?", [(f["key"],) for f in event["files"]])

    def classes(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM classes ORDER BY idx")]

    def class_index(self, name: str) -> int | None:
        hit = self.db.execute("SELECT idx FROM classes WHERE name = ?", (name,)).fetchone()
        return hit[0] if hit else None

    def sources(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT source FROM items ORDER BY source")]

    def review(self, item: Mapping[str, Any], label: str) -> str:
        """Record the right class of an item ('confirmed' when it is the prediction, else 'corrected').

        Raises:
            BadRequest: a label that is not one of the classes, or an item without a prediction to confirm.
        """
        if self.class_index(label) is None:
            raise BadRequest(f"unknown class {label[:80]!r}; pick one of the model's classes")
        verdict = "confirmed" if label == item["top1"] else "corrected"
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO corrections (key, verdict, label, predicted, reviewed_at) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (item["key"], verdict, label, item["top1"], utc_now()))
        return verdict

    def unreview(self, item: Mapping[str, Any]) -> None:
        with self.db:
            self.db.execute("DELETE FROM corrections WHERE key = ?", (item["key"],))

    def reviewed_items(self) -> list[dict[str, Any]]:
        """Every reviewed item with its verdict (and its event's verdict, ``event_*``), in result order."""
        rows = self.db.execute(
            "SELECT items.*, c.verdict AS verdict, c.label AS label, c.reviewed_at AS reviewed_at, "
            "c.event_key IS NOT NULL AS labelled_by_event, e.verdict AS event_verdict, "
            "e.event_confidence AS event_confidence FROM items JOIN corrections c ON c.key = items.key "
            "LEFT JOIN events e ON e.key = items.event_key ORDER BY items.id")
        return [dict(r) for r in rows]

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
