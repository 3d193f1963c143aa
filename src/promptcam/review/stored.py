"""Stored results read defensively for the review index: a station database's rows and any record's
JSON, whose damage (too deep, too large, malformed, the wrong shape) makes that one result a failure
that says so, never a crash of the index."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from promptcam.core.errors import PromptCamError
from promptcam.core.untrusted import UntrustedJSONError, loads_untrusted
from promptcam.results.store import record_from_row
from promptcam.runtime.records import ImageRecord

MAX_CLASSES = 100_000  # a class index above this in stored results is damage, not a class
MAX_EVENT_ID = 1000  # characters of an event id (CAMERA@START); longer is damage
MAX_FRAMES = 10_000  # frames of one clip listed (the runtime caps a clip's frames far below this)


class StationRow(NamedTuple):
    id: int  # the row's id in the station database (the item's id in the review too)
    pending: bool  # committed, its photo not yet moved to ``stored_path`` (indexed again once moved)
    record: ImageRecord


class StationReader:
    """One read-only snapshot of a station database (the station may be writing meanwhile)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise PromptCamError(f"{path}: cannot open the results database ({exc})") from exc
        try:
            self.db.execute("BEGIN")  # every query below sees the same rows
            self.extent()
        except sqlite3.Error as exc:
            self.db.close()
            raise PromptCamError(f"{path}: not a promptcam-watch results database ({exc})") from exc

    def __enter__(self) -> StationReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.db.close()

    def extent(self) -> tuple[int, int]:
        """(row count, last row id)."""
        count, last = self.db.execute("SELECT count(*), coalesce(max(id), 0) FROM results").fetchone()
        return count, last

    def has_column(self, name: str) -> bool:
        """Whether the results table has column ``name`` (older stations lack the newer ones)."""
        return any(row[1] == name for row in self.db.execute("PRAGMA table_info(results)"))

    def count_after(self, row_id: int) -> int:
        return self.db.execute("SELECT count(*) FROM results WHERE id > ?", (row_id,)).fetchone()[0]

    def class_names(self) -> list[str] | None:
        """The model's classes as the watcher wrote them (``--detections``), None when absent or unreadable."""
        try:
            hit = self.db.execute("SELECT value FROM meta WHERE key = 'class_names'").fetchone()
            return name_list(decode_json(hit[0], f"{self.path}: meta class_names")) if hit else None
        except (sqlite3.Error, UntrustedJSONError):
            return None  # a database older than its meta table, or a damaged value: the rows' names stand in

    def rows(self, where: str = "1", params: Sequence[Any] = ()) -> Iterator[StationRow]:
        """The rows matching ``where``, in id order, as records (checked: see ``checked_record``)."""
        try:
            cursor = self.db.execute(f"SELECT * FROM results WHERE {where} ORDER BY id", params)
            names = [d[0] for d in cursor.description]
            for values in cursor:
                row = dict(zip(names, values, strict=True))
                problem = _decode_columns(row)
                record = record_from_row(row)
                if problem is not None:
                    record = unreadable(record, problem)
                yield StationRow(row["id"], not row.get("moved", 1) and row["stored_path"] is not None,
                                 checked_record(record))
        except sqlite3.Error as exc:
            raise PromptCamError(f"{self.path}: cannot read the results ({exc})") from exc


JSON_COLUMNS = ("top_k", "trait_heads", "detections")
CLIP_COLUMNS = ("frames", "decisive_frames")  # a clip's details: unreadable ones are left out, the verdict stays


def _decode_columns(row: dict[str, Any]) -> str | None:
    """Decode a row's JSON columns in place (an unreadable one becomes None); the first problem, or None.

    ``probabilities`` (every class's, the largest column) is left out: the review does not show it.
    """
    row["probabilities"] = None
    for key in CLIP_COLUMNS:
        try:
            row[key] = decode_json(row[key], key) if row.get(key) is not None else None
        except UntrustedJSONError:
            row[key] = None
    problem = None
    for key in JSON_COLUMNS:
        if row.get(key) is None:
            continue
        try:
            row[key] = decode_json(row[key], key)
        except UntrustedJSONError as exc:
            row[key] = None
            problem = problem or str(exc)
    return problem


def decode_json(text: Any, where: str) -> Any:
    """JSON from outside (``loads_untrusted``); text that is not even a string is refused the same way.

    Raises:
        UntrustedJSONError: not JSON this program can take.
    """
    if not isinstance(text, str | bytes):
        raise UntrustedJSONError(f"{where}: not JSON text")
    return loads_untrusted(text, where)


# -- the shape of a record: what the review reads from it, checked ----------------------------


def unreadable(record: ImageRecord, problem: str) -> ImageRecord:
    """``record`` as a failure saying what of the stored result could not be read."""
    record.failure = record.failure or f"{record.file}: stored result unreadable ({problem})"
    record.top_k, record.trait_heads, record.detections = [], None, None
    return record


def checked_record(record: ImageRecord) -> ImageRecord:
    """``record`` with the fields the review uses in the shapes it expects: top-k and trait heads whole
    or the record a failure; detections reduced to their category, confidence, box and classes."""
    if not isinstance(record.file, str):
        record.file = str(record.file)
    if not isinstance(record.top_k, list) or not all(_is_class_score(c) for c in record.top_k):
        return unreadable(record, "top_k is not a list of classes")
    if record.trait_heads is not None and not (
            isinstance(record.trait_heads, list) and all(is_whole(h) for h in record.trait_heads)):
        return unreadable(record, "trait_heads is not a list of head numbers")
    if record.detections is not None and not isinstance(record.detections, list):
        return unreadable(record, "detections is not a list")
    if record.detections is not None:
        record.detections = [_clean_detection(d) for d in record.detections if isinstance(d, dict)]
    for name in ("path", "heatmap", "traits_image", "stored_path", "source", "taken_at", "explained_class",
                 "failure", "event_id", "media"):
        if getattr(record, name) is not None and not isinstance(getattr(record, name), str):
            setattr(record, name, str(getattr(record, name)))
    return _checked_clip(_checked_event(record))


def _checked_event(record: ImageRecord) -> ImageRecord:
    """The event fields whole or left out (an event id of damaged text is cut to a sane length)."""
    if record.event_id is not None:
        record.event_id = record.event_id[:MAX_EVENT_ID] or None
    for name in ("seq_num_frames", "frame_num"):
        value = getattr(record, name)
        if value is not None and not (is_whole(value) and 0 <= value < 2**31):
            setattr(record, name, None)
    return record


def _checked_clip(record: ImageRecord) -> ImageRecord:
    """A clip's frame rate, frames and decisive frames in the shapes the page shows, else left out.

    Frames are reduced to what the page lists (number, seconds, evidence, top class), so a clip of
    many frames costs the index little.
    """
    if record.frame_rate is not None and not (_is_number(record.frame_rate) and record.frame_rate > 0):
        record.frame_rate = None
    if record.decisive_frames is not None and not (
            isinstance(record.decisive_frames, list) and all(is_whole(n) for n in record.decisive_frames)):
        record.decisive_frames = None
    if record.frames is not None:
        record.frames = ([_clean_frame(f) for f in record.frames[:MAX_FRAMES] if isinstance(f, dict)]
                         if isinstance(record.frames, list) else None)
    return record


def _clean_frame(frame: dict[str, Any]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    if is_whole(frame.get("frame_number")):
        clean["frame_number"] = frame["frame_number"]
    if _is_number(frame.get("seconds")):
        clean["seconds"] = frame["seconds"]
    clean["evidence"] = frame.get("evidence") is True
    top_k = frame.get("top_k")
    if isinstance(top_k, list) and top_k and _is_class_score(top_k[0]):
        clean["top1"], clean["probability"] = top_k[0]["name"][:200], top_k[0]["probability"]
    return clean


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_class_score(value: Any) -> bool:
    return (isinstance(value, dict) and is_whole(value.get("index")) and 0 <= value["index"] < MAX_CLASSES
            and isinstance(value.get("name"), str) and _is_number(value.get("probability")))


def _class_id(value: Any) -> int | None:
    """A classification's class id (text as the MegaDetector format writes it, or a number)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10:
        value = int(value)
    return value if is_whole(value) and 0 <= value < MAX_CLASSES else None


def _clean_detection(detection: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of a detection: category, confidence, box ([x, y, w, h] in 0..1) and classes."""
    clean: dict[str, Any] = {}
    category = detection.get("category")
    if isinstance(category, str | int) and not isinstance(category, bool):
        clean["category"] = str(category)[:40]
    if _is_number(detection.get("conf")):
        clean["conf"] = detection["conf"]
    bbox = detection.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox):
        clean["bbox"] = bbox
    found = detection.get("classifications")
    classes = [[str(_class_id(c[0])), c[1]] for c in found if isinstance(c, list) and len(c) == 2
               and _class_id(c[0]) is not None and _is_number(c[1])] if isinstance(found, list) else []
    if classes:
        clean["classifications"] = classes
    return clean


def name_list(value: Any) -> list[str] | None:
    return list(value) if isinstance(value, list) and value and all(isinstance(n, str) for n in value) else None


def with_crop_classes(record: ImageRecord, class_names: Sequence[str]) -> ImageRecord:
    """A ``--detections`` result has no whole-image top-k: its classes are those of the classified
    detection the detector is surest of (so the grid's class, confidence and corrections apply)."""
    if not record.ok or record.top_k or not record.detections:
        return record
    classified = [d for d in record.detections if d.get("classifications")]
    if not classified:
        return record
    best = max(classified, key=lambda d: d.get("conf", 0.0))
    record.top_k = [{"index": int(i), "name": class_name(class_names, int(i)), "probability": p}
                    for i, p in best["classifications"]]
    return record


def class_name(class_names: Sequence[str], index: int) -> str:
    """The name of class ``index`` (``class_NNN`` beyond the names known, as ``class_names_seen`` does)."""
    return class_names[index] if 0 <= index < len(class_names) else f"class_{index:03d}"
