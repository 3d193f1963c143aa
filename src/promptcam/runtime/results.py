"""The one result record and the one writer of result files, for every mode.

File runs, ``--ray`` runs, the inbox and streams all produce ``ImageRecord`` s (station fields are
optional), and every result file comes from ``write_outputs``: MegaDetector batch JSON (1.6), CSV,
JSONL and Parquet. The JSONL journal of a file run is append-only and written per input chunk;
it is what ``--resume`` reads. The final files are rebuilt from it in input order, so an
interrupted-and-resumed run writes exactly the files an uninterrupted one does.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from promptcam.core.atomic import atomic_open, atomic_write_text, atomic_write_with
from promptcam.core.errors import PromptCamError

MEGADETECTOR_FORMAT_VERSION = "1.6"
WHOLE_IMAGE_CATEGORY = "1"  # one detection per image: the whole frame, bbox [0, 0, 1, 1]
OUTPUT_NAMES = {"megadetector": "results.json", "csv": "results.csv", "jsonl": "results.jsonl",
                "parquet": "results.parquet"}
DEFAULT_FORMATS = ("megadetector", "csv", "jsonl")


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class ImageRecord:
    """One image's result or failure, from any mode.

    Attributes:
        file: The name reported in result files (relative to its input root, prefixed with the
            root's name when a run has several; the frame file of a stream; the inbox-relative path).
        path: Where the image was read (file runs: the canonical absolute path, the resume key).
        failure: Why the image has no result (None when classified).
        top_k: ``[{"index", "name", "probability"}]``, most probable first.
        explained_class: The class whose attention the heatmap and the trait heads show.
        trait_heads / trait_order: The ranked trait heads kept, and the full greedy order.
        heatmap / traits_image: Files drawn for the explained class.
        probabilities: All class probabilities (inbox and streams keep them in SQLite).
        source, sha256, size, mtime_ns, taken_at, stored_path, processed_at: Station fields:
            inbox folder or stream, content hash, size and mtime when read (file runs key
            ``--resume`` on them too), capture time, where the file was moved, when classified.
        detections: Runs on a detector's output (``--detections``): every detection the detector
            file lists for the image (``category``, ``conf``, ``bbox`` ...), the classified ones with
            ``classifications`` [[class id, probability], ...] added; None in whole-image runs.
    """

    file: str
    path: str | None = None
    failure: str | None = None
    width: int | None = None
    height: int | None = None
    top_k: list[dict[str, Any]] = field(default_factory=list)
    explained_class: str | None = None
    trait_heads: list[int] | None = None
    trait_order: list[int] | None = None
    heatmap: str | None = None
    traits_image: str | None = None
    probabilities: list[float] | None = None
    source: str | None = None
    sha256: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    taken_at: str | None = None
    stored_path: str | None = None
    processed_at: str | None = None
    detections: list[dict[str, Any]] | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def status(self) -> str:
        return "ok" if self.failure is None else "failed"

    @property
    def top1(self) -> str | None:
        return self.top_k[0]["name"] if self.top_k else None

    @property
    def top1_probability(self) -> float | None:
        return self.top_k[0]["probability"] if self.top_k else None

    def to_dict(self) -> dict[str, Any]:
        """The set fields (None left out, so file-run journals stay small)."""
        # vars(), not asdict(): the fields are already JSON values and asdict deep-copies them (slow at GPU rates)
        return {k: v for k, v in vars(self).items() if v is not None}

    def to_json(self) -> str:
        # ensure_ascii (the default) keeps non-UTF-8 file names (surrogate escapes) lossless and writable
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRecord:
        """Raises:
            ValueError: unknown fields or no ``file`` (a damaged or foreign journal line).
        """
        unknown = set(data) - FIELD_NAMES
        if unknown or not isinstance(data.get("file"), str):
            raise ValueError(f"not a result record (unknown fields {sorted(unknown)})" if unknown
                             else "not a result record (no file name)")
        return cls(**data)


FIELD_NAMES = frozenset(f.name for f in fields(ImageRecord))


def round_probability(p: float) -> float:
    return round(float(p), 6)


def class_names_seen(records: Iterable[ImageRecord]) -> list[str]:
    """Class names by index as far as the records' top-k show them (gaps named ``class_NNN``)."""
    names: dict[int, str] = {}
    for record in records:
        names.update({c["index"]: c["name"] for c in record.top_k})
    return [names.get(i, f"class_{i:03d}") for i in range(max(names, default=-1) + 1)]


# -- MegaDetector JSON --------------------------------------------------------------------------


def megadetector_json(records: Sequence[ImageRecord], class_names: Sequence[str], info: dict[str, Any], *,
                      classifier: str = "promptcam", detector: dict[str, Any] | None = None) -> dict[str, Any]:
    """MegaDetector batch-results format 1.6 (Timelapse / AddaxAI), whole-image classifications, or
    with ``detector`` (a ``--detections`` run) the detector's own detections, classified."""
    if detector is not None:
        return _detections_json(records, class_names, info, classifier, detector)
    categories = {str(i): name for i, name in enumerate(class_names)}
    images = []
    for r in records:
        if not r.ok:
            images.append({"file": r.file, "failure": r.failure, "detections": None})
            continue
        entry: dict[str, Any] = {
            "file": r.file,
            "detections": [{
                "category": WHOLE_IMAGE_CATEGORY, "conf": 1.0, "bbox": [0.0, 0.0, 1.0, 1.0],
                "classifications": [[str(c["index"]), round_probability(c["probability"])] for c in r.top_k],
            }],
        }
        extras = {"heatmap": r.heatmap, "traits_image": r.traits_image, "trait_heads": r.trait_heads,
                  "explained_class": r.explained_class}
        entry["promptcam"] = {k: v for k, v in extras.items() if v is not None}
        images.append(entry)
    return {
        "info": {
            "format_version": MEGADETECTOR_FORMAT_VERSION,
            "detector": "none (whole-image classifier)",
            "classifier": classifier,
            "classification_completion_time": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            "classifier_metadata": info,
        },
        "detection_categories": {WHOLE_IMAGE_CATEGORY: "animal"},
        "classification_categories": categories,
        "classification_category_descriptions": dict(categories),
        "images": images,
    }


def _detections_json(records: Sequence[ImageRecord], class_names: Sequence[str], info: dict[str, Any],
                     classifier: str, detector: dict[str, Any]) -> dict[str, Any]:
    """The detector file enriched: every input detection kept, ``classifications`` added to the classified
    ones; a failed image keeps its detector detections under ``promptcam`` (the format wants
    ``detections: null`` beside a ``failure``); detector entries of no input are passed through unchanged.

    ``detector``: ``detection_categories``, ``info`` (the detector file's) and ``unmatched_entries``.
    """
    categories = {str(i): name for i, name in enumerate(class_names)}
    images: list[dict[str, Any]] = []
    for r in records:
        extras: dict[str, Any] = {"heatmap": r.heatmap} if r.heatmap else {}
        if r.ok:
            entry: dict[str, Any] = {"file": r.file, "detections": r.detections or []}
        else:
            entry = {"file": r.file, "failure": r.failure, "detections": None}
            if r.detections:
                extras["detector_detections"] = r.detections
        if extras:
            entry["promptcam"] = extras
        images.append(entry)
    images += detector.get("unmatched_entries", [])
    source_info = dict(detector.get("info") or {})
    source_info.update({
        "format_version": MEGADETECTOR_FORMAT_VERSION,
        "classifier": classifier,
        "classification_completion_time": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "classifier_metadata": info,
    })
    return {
        "info": source_info,
        "detection_categories": dict(detector["detection_categories"]),
        "classification_categories": categories,
        "classification_category_descriptions": dict(categories),
        "images": images,
    }


def write_json(path: Path, data: Any) -> Path:
    # no indent: json's C encoder only runs without one (5x faster on 10,000-image batches)
    return atomic_write_text(path, json.dumps(data) + "\n")


# -- CSV ----------------------------------------------------------------------------------------

CSV_COLUMNS = ["file", "status", "top1_class", "top1_probability", "top_k", "heatmap", "trait_heads", "failure"]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: str) -> str:
    """A text cell a spreadsheet shows as text: a leading ``'`` before formula starts (OWASP)."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def write_csv(path: Path, records: Iterable[ImageRecord]) -> Path:
    with atomic_open(path, "wb") as raw:
        # backslashreplace: a non-UTF-8 file name (surrogate escapes) is written as \udcXX, the file stays UTF-8
        fh = io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", newline="")
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for r in records:
            top = r.top_k[0] if r.top_k else None
            writer.writerow([
                csv_text(r.file), r.status, csv_text(top["name"]) if top else "",
                f"{top['probability']:.6f}" if top else "",
                csv_text(";".join(f"{c['name']}:{c['probability']:.6f}" for c in r.top_k)), csv_text(r.heatmap or ""),
                " ".join(map(str, r.trait_heads or [])), csv_text(r.failure or ""),
            ])
        fh.flush()
        fh.detach()  # atomic_open closes the file itself
    return path


DETECTION_CSV_COLUMNS = ["file", "status", "detection", "category", "conf", "bbox", "top1_class", "top1_probability",
                         "top_k", "heatmap", "failure"]


def write_detections_csv(path: Path, records: Iterable[ImageRecord], class_names: Sequence[str],
                         detection_categories: dict[str, str]) -> Path:
    """One row per detection (``detection``: its index in the image's list; unclassified ones have no
    class); an image without detections, or failed, is one row with an empty ``detection``."""
    with atomic_open(path, "wb") as raw:
        fh = io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", newline="")
        writer = csv.writer(fh)
        writer.writerow(DETECTION_CSV_COLUMNS)
        for r in records:
            heat = csv_text(r.heatmap or "")
            if not r.ok or not r.detections:
                blank = [""] * 7  # detection .. top_k
                writer.writerow([csv_text(r.file), r.status, *blank, heat, csv_text(r.failure or "")])
                continue
            for index, det in enumerate(r.detections):
                named = [(class_names[int(cid)], p) for cid, p in det.get("classifications") or []]
                writer.writerow([
                    csv_text(r.file), "classified" if named else "unclassified", index,
                    csv_text(detection_categories.get(det["category"], det["category"])), f"{det['conf']:.6f}",
                    " ".join(f"{v:.6f}" for v in det["bbox"]), csv_text(named[0][0]) if named else "",
                    f"{named[0][1]:.6f}" if named else "", csv_text(";".join(f"{n}:{p:.6f}" for n, p in named)),
                    heat, "",
                ])
        fh.flush()
        fh.detach()
    return path


# -- JSONL and Parquet --------------------------------------------------------------------------


def write_jsonl(path: Path, records: Iterable[ImageRecord]) -> Path:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.writelines(r.to_json() + "\n" for r in records)
    return path


def _utf8(value: Any) -> Any:
    # Arrow strings must be valid UTF-8: surrogate-escaped bytes become \udcXX text
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def write_parquet(path: Path, records: Iterable[ImageRecord]) -> Path:
    """Results as a Parquet table (one row per image; needs pyarrow, which Ray Data brings)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise PromptCamError(f"Parquet output needs pyarrow ({exc})") from exc
    columns = [f.name for f in fields(ImageRecord)]
    rows = [{k: _utf8(v) for k, v in vars(r).items()} | {"top_k": json.dumps(r.top_k)}
            | ({"detections": json.dumps(r.detections)} if r.detections is not None else {}) for r in records]
    table = pa.Table.from_pylist(rows) if rows else pa.table({k: pa.array([], pa.string()) for k in columns})
    return atomic_write_with(path, lambda tmp: pq.write_table(table, tmp))


# -- the one writer -----------------------------------------------------------------------------


def write_output(fmt: str, path: Path, records: Sequence[ImageRecord], class_names: Sequence[str],
                 info: dict[str, Any] | None = None, *, classifier: str = "promptcam",
                 detector: dict[str, Any] | None = None) -> Path:
    """Write one result file of format ``fmt`` (megadetector, csv, jsonl, parquet) to ``path``, atomically.

    ``detector``: a ``--detections`` run's detector facts (see ``megadetector_json``); the CSV then has
    one row per detection.
    """
    writers: dict[str, Callable[[], Path]] = {
        "megadetector": lambda: write_json(path, megadetector_json(records, class_names, info or {},
                                                                   classifier=classifier, detector=detector)),
        "csv": lambda: (write_csv(path, records) if detector is None else
                        write_detections_csv(path, records, class_names, detector["detection_categories"])),
        "jsonl": lambda: write_jsonl(path, records),
        "parquet": lambda: write_parquet(path, records),
    }
    if fmt not in writers:
        raise PromptCamError(f"unknown result format {fmt!r} (known: {', '.join(writers)})")
    return writers[fmt]()


def write_outputs(records: Sequence[ImageRecord], out_dir: Path, class_names: Sequence[str],
                  formats: Iterable[str] = DEFAULT_FORMATS, info: dict[str, Any] | None = None, *,
                  classifier: str = "promptcam", detector: dict[str, Any] | None = None) -> dict[str, str]:
    """Write every result file of ``formats`` into ``out_dir`` (``results.<ext>``), for every mode.

    Returns:
        Format -> path written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    return {fmt: str(write_output(fmt, out_dir / OUTPUT_NAMES[fmt], records, class_names, info,
                                  classifier=classifier, detector=detector)) for fmt in formats}


# -- the journal of a file run ------------------------------------------------------------------


class Journal:
    """Append-only JSONL of records, fsynced at checkpoints.

    Reading tolerates what a kill or a power cut leaves: a torn last line, a garbage or
    zero-filled line anywhere. Bad lines are skipped and counted (their images are redone).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None
        self.bad_lines = 0

    def read(self) -> list[ImageRecord]:
        self.bad_lines = 0
        if not self.path.is_file():
            return []
        records = []
        with open(self.path, "rb") as fh:
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # torn write from a killed run: that chunk is redone
                if not raw.strip():
                    continue
                try:
                    data = json.loads(raw.decode("utf-8"))
                    records.append(ImageRecord.from_dict(data))
                except (ValueError, TypeError, AttributeError):
                    self.bad_lines += 1  # garbage or zeros from a power cut (or a foreign line)
        return records

    def open(self, *, truncate: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not truncate and self.path.is_file():
            self._drop_torn_tail()
        self._fh = open(self.path, "w" if truncate else "a", encoding="utf-8")

    def _drop_torn_tail(self) -> None:
        with open(self.path, "r+b") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)
                os.fsync(fh.fileno())

    def append(self, records: Iterable[ImageRecord]) -> None:
        if self._fh is None:
            raise PromptCamError(f"{self.path}: journal is not open")
        # one write per chunk: a kill leaves whole chunks or a torn tail, never a half chunk silently
        self._fh.write("".join(r.to_json() + "\n" for r in records))
        self._fh.flush()

    def checkpoint(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self.checkpoint()
            self._fh.close()
            self._fh = None
