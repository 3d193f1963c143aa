"""What ``promptcam export-results`` reads: a station's SQLite database or a ``promptcam run`` results folder.

Both become one ``ExportSource``: the records and what is known of the model and the detector that made them.
A run folder holds ``results.jsonl`` (the records), ``results.json`` (MegaDetector batch file: the class list,
``info.classifier_metadata.model_sha256``, the detector's categories and threshold) and ``run.json`` (the run's
identity, also with the model's sha256). A station database holds the records and, in its ``meta`` table, the
detector's categories and the class list (``promptcam-watch --detections``); it has no model hash.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from promptcam.core.errors import PromptCamError
from promptcam.core.untrusted import loads_untrusted
from promptcam.runtime.exif import exif_datetime
from promptcam.runtime.records import ImageRecord

from .formats import OUTPUT_NAMES
from .journal import Journal

RUN_JSON = "run.json"
MODEL_SHA_META = "model_sha256"  # a station database's meta key for the model file's hash
EXIF_READ_BYTES = 1 << 20  # the APP1 Exif segment comes first or second in a camera's JPEG
EARLIEST_YEAR = 1990  # camera clocks before this were reset, not set (as the station files photos)


@dataclass
class ExportSource:
    """Records and their provenance.

    Attributes:
        kind: ``run`` (a results folder) or ``database`` (a station's SQLite).
        class_names: The model's classes by index (None: not recorded; name them from the records).
        detection_categories: The detector's category id -> name (detection runs).
        model_sha256: Of the model file that classified (None: the source does not say).
        classifier: ``promptcam <arch>`` as results.json names it.
        detector: The detector's own name (``info.detector`` of the detector file), if recorded.
        det_threshold: The confidence at which the run classified detections (None: not recorded).
        completed_at: When the run finished (UTC, ``YYYY-MM-DDTHH:MM:SSZ``), if recorded.
    """

    kind: str
    path: Path
    records: list[ImageRecord]
    class_names: list[str] | None = None
    detection_categories: dict[str, str] | None = None
    model_sha256: str | None = None
    classifier: str = "promptcam"
    detector: str | None = None
    det_threshold: float | None = None
    completed_at: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def load_source(path: Path) -> ExportSource:
    """A run folder (a directory) or a station database (a file).

    Raises:
        PromptCamError: neither, or unreadable.
    """
    if path.is_dir():
        return load_run_folder(path)
    if path.is_file():
        return load_database(path)
    raise PromptCamError(f"{path}: no results database or run folder there")


def load_database(db: Path) -> ExportSource:
    from .store import ResultStore

    try:
        store = ResultStore(db)
        try:
            records = list(store.records())
            # written by promptcam-watch --detections: the detector's categories, the model's classes
            categories, names = store.meta_json("detection_categories"), store.meta_json("class_names")
            # no station writes the model's hash today: read it if one does, else it is unknown
            sha = store._meta(MODEL_SHA_META)
        finally:
            store.close()
    except sqlite3.DatabaseError as exc:  # not a database, or damaged: one clear line, not a traceback
        raise PromptCamError(f"{db}: cannot read the results database ({exc})") from exc
    return ExportSource("database", db, records, class_names=names, detection_categories=categories,
                        model_sha256=sha.strip('"') if sha else None, info={"database": str(db)})


def _json_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = loads_untrusted(path.read_bytes(), str(path))
    except (OSError, ValueError) as exc:
        raise PromptCamError(f"{path}: unreadable ({exc})") from exc
    return data if isinstance(data, dict) else {}


def load_run_folder(folder: Path) -> ExportSource:
    """The records of ``results.jsonl`` (the last record of an image wins, as ``--resume`` reads it) and the
    facts of ``results.json`` / ``run.json``."""
    journal = Journal(folder / OUTPUT_NAMES["jsonl"])
    if not journal.path.is_file():
        raise PromptCamError(f"{folder}: not a promptcam run folder (no {journal.path.name})")
    by_key: dict[str, ImageRecord] = {}
    for record in journal.read():
        by_key[record.path or record.file] = record
    results, run = _json_file(folder / OUTPUT_NAMES["megadetector"]), _json_file(folder / RUN_JSON)
    info = results.get("info") if isinstance(results.get("info"), dict) else {}
    meta = info.get("classifier_metadata") if isinstance(info.get("classifier_metadata"), dict) else {}
    categories = results.get("classification_categories")
    names = None
    if isinstance(categories, dict) and all(str(k).isdigit() for k in categories):
        count = max(map(int, categories), default=-1) + 1
        names = [str(categories.get(str(i), f"class_{i:03d}")) for i in range(count)]
    sha = meta.get("model_sha256") or run.get("model_sha256")
    threshold = meta.get("det_threshold", run.get("det_threshold"))
    detections = "detections_file" in meta
    return ExportSource(
        "run", folder, list(by_key.values()), class_names=names,
        detection_categories=results.get("detection_categories") if detections else None,
        model_sha256=sha if isinstance(sha, str) else None, classifier=str(info.get("classifier") or "promptcam"),
        detector=str(info["detector"]) if detections and info.get("detector") else None,
        det_threshold=float(threshold) if isinstance(threshold, int | float) else None,
        completed_at=_utc(info.get("classification_completion_time")), info={"run_folder": str(folder)})


def _utc(text: Any) -> str | None:
    """``YYYY-MM-DD HH:MM:SS`` (UTC, as results.json writes it) as ``YYYY-MM-DDTHH:MM:SSZ``."""
    try:
        return datetime.strptime(str(text), "%Y-%m-%d %H:%M:%S").strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None


def fill_capture_times(records: list[ImageRecord]) -> int:
    """Set ``taken_at`` of records that lack it (file runs) from the photo's EXIF DateTimeOriginal, as the
    station does (a date before 1990 or after next year is a camera clock never set: not used). Photos that
    are gone or have no EXIF time keep ``taken_at`` None (the writer falls back to the recorded mtime).

    Returns:
        How many records got a time.
    """
    filled = 0
    latest = datetime.now(timezone.utc).year + 1
    for record in records:
        if record.taken_at is not None or not record.path or not record.ok:
            continue
        try:  # O_NONBLOCK: a FIFO put where a photo was never blocks the export
            fd = os.open(record.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            with os.fdopen(fd, "rb") as fh:
                head = fh.read(EXIF_READ_BYTES) if stat.S_ISREG(os.fstat(fh.fileno()).st_mode) else b""
        except OSError:
            continue
        stamp = exif_datetime(head)
        if stamp is not None and EARLIEST_YEAR <= int(stamp[:4]) <= latest:
            record.taken_at, filled = stamp, filled + 1
    return filled
