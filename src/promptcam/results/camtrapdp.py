"""Camtrap DP 1.0 data packages from promptcam results (``promptcam export-results --format camtrap-dp``).

A package is ``datapackage.json`` plus ``deployments.csv``, ``media.csv`` and ``observations.csv``
(docs/camtrap-dp.md has the user's view). The rules this writer follows:

- **Camera = deployment.** A photo's camera is the folder part of its reported name
  (``cam_a/IMG_0001.JPG`` -> ``cam_a``; ``site/cam_1/x.jpg`` -> ``site/cam_1``, or ``site`` with
  ``camera_depth`` 1). A photo with no folder in its name belongs to the folder that holds it (a run's
  input root, a station's inbox). Each camera is one deployment; its start and end are its first and
  last media timestamps unless ``--deployments`` gives them. Coordinates cannot be derived: a camera
  without latitude/longitude in ``--deployments`` is refused (the standard requires them).
- **Media timestamp** (UTC): the record's ``taken_at`` (EXIF DateTimeOriginal, read as UTC as the station
  records it), else the file's mtime when read, else the time it was classified.
- **Observations** are media-level, and with events (``--events``) also event-level (``media_events``): one
  per event with its verdict. Whole-image runs: one per image. Detection runs: one per classified
  detection (its box), one per unclassified detection at or above the run's detection threshold typed by
  the detector's category (person -> human, vehicle -> vehicle, animal -> animal without a taxon), and one
  ``blank`` for an image with neither. ``observationType``: ``animal``; ``unknown`` when the top
  probability is below ``unknown_below``; ``unclassified`` for a failed image (neither a person nor a
  model classified it: the sense tdwg/camtrap-dp#73 gave the value).
- **Taxa**: ``scientificName`` only from the ``--taxa`` map; the model's class name always goes into
  ``observationTags`` as ``class:<name>`` (Camtrap DP 1.0 observations have no vernacular-name field).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import mimetypes
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path, PurePath
from typing import Any

from promptcam.core.atomic import atomic_open, atomic_write_text
from promptcam.core.errors import PromptCamError
from promptcam.runtime.records import ImageRecord, db_text
from promptcam.runtime.verdict import combine_frames

from .camtrapdp_tables import (
    DEPLOYMENT_COLUMNS,
    DEPLOYMENT_FIELDS,
    MEDIA_COLUMNS,
    OBSERVATION_COLUMNS,
    PROFILE_URL,
    SCHEMA_URLS,
    TABLES,
    Taxon,
    ns_time,
    parse_time,
    utc_time,
)
from .events import record_probabilities
from .formats import class_names_seen
from .megadetector import DEFAULT_THRESHOLD

DETECTOR_TYPES = {"animal": "animal", "person": "human", "human": "human", "vehicle": "vehicle"}
UNCLASSIFIED = "unclassified"
CAPTURE_METHOD = "activityDetection"  # camera traps: motion-triggered (the project's captureMethod says so too)
SAMPLING_DESIGN = "opportunistic"  # required by the profile; promptcam cannot know it: edit before publishing
NUMBER_DIGITS = 6


@dataclass
class Provenance:
    """What made the records, as the package names it.

    Attributes:
        class_names: The model's classes by index (detections carry class ids).
        detection_categories: The detector's category id -> name.
        model_sha256: Of the model file (None: unknown, and ``classifiedBy`` says so).
        classified_at: UTC ``...Z``: ``classificationTimestamp`` of records with no ``processed_at``.
        detector: The detector's name (``classifiedBy`` of blank/human/vehicle observations).
        det_threshold: Unclassified detections at or above it are observations of the detector.
        source: What was exported (the package's description names it).
    """

    class_names: Sequence[str] = ()
    detection_categories: dict[str, str] = field(default_factory=dict)
    model_sha256: str | None = None
    classified_at: str | None = None
    detector: str | None = None
    det_threshold: float = DEFAULT_THRESHOLD
    source: str = ""


@dataclass
class CamtrapOptions:
    """``taxa``: class -> taxon (``read_taxa``); ``deployments``: camera folder -> fields (``read_deployments``);
    ``camera_depth``: how many leading folders name a camera (None: all); ``unknown_below``: a top probability
    below it is ``unknown``; ``media_prefix``: put before each ``filePath`` (a folder or URL);
    ``public_media``: ``filePublic``."""

    taxa: dict[str, Taxon] = field(default_factory=dict)
    deployments: dict[str, dict[str, str]] = field(default_factory=dict)
    camera_depth: int | None = None
    unknown_below: float = 0.0
    media_prefix: str = ""
    public_media: bool = False


@dataclass
class PackageSummary:
    deployments: int = 0
    media: int = 0
    observations: Counter[str] = field(default_factory=Counter)  # observationType -> rows
    notes: list[str] = field(default_factory=list)


def promptcam_version() -> str:
    try:
        return metadata.version("promptcam")
    except metadata.PackageNotFoundError:
        return "unknown"


def _parts(name: str) -> list[str]:
    return [p for p in db_text(name).replace("\\", "/").split("/") if p not in ("", ".")]


def camera_folder(record: ImageRecord, depth: int | None = None) -> str:
    """The camera (deployment) key of a photo: see the module's rules."""
    folders = _parts(record.file)[:-1]
    if folders:
        return "/".join(folders[:depth] if depth else folders)
    holder = record.source or (str(PurePath(record.path).parent) if record.path else "")
    return PurePath(db_text(holder)).name or "root"


def media_id(record: ImageRecord) -> str:
    key = "\0".join((db_text(record.source) or "", db_text(record.file) or "", record.sha256 or ""))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def file_path(record: ImageRecord, prefix: str = "") -> str:
    """The reported name as the standard's relative path: no leading ``.``/``/``/``~`` and no ``..``
    (dots and tildes that would break that are percent-encoded)."""
    text = prefix + "/".join(_parts(record.file))
    text = text.replace("..", "%2E%2E")
    return {".": "%2E", "~": "%7E", "/": "%2F"}.get(text[:1], text[:1]) + text[1:]


def media_type(name: str) -> str:
    guess = mimetypes.guess_type(name)[0]
    return guess if guess and guess.split("/")[0] in ("image", "video", "audio") else "image/jpeg"


def media_time(record: ImageRecord) -> str | None:
    return utc_time(record.taken_at) or ns_time(record.mtime_ns) or utc_time(record.processed_at)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{round(value, NUMBER_DIGITS):.{NUMBER_DIGITS}f}".rstrip("0").rstrip(".")
    return str(value)


def _tag(key: str, value: str) -> str:
    return f"{key}:{db_text(value).replace('|', '/')}"


def _bbox(box: Any) -> dict[str, float]:
    """MegaDetector [x, y, w, h] (normalised) clipped to the frame; empty when nothing of it is left."""
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        return {}
    x0, y0 = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
    w, h = round(min(x + w, 1.0) - x0, NUMBER_DIGITS), round(min(y + h, 1.0) - y0, NUMBER_DIGITS)
    if not (w > 0 and h > 0):  # a 1e-6 box is the smallest the 6-digit cells show (the standard's minimum 1e-15)
        return {}
    return {"bboxX": x0, "bboxY": y0, "bboxWidth": w, "bboxHeight": h}


class _Builder:
    """The rows of one package."""

    def __init__(self, provenance: Provenance, options: CamtrapOptions) -> None:
        self.p, self.o = provenance, options
        sha = f"sha256:{provenance.model_sha256}" if provenance.model_sha256 else "sha256 unknown"
        self.promptcam_by = f"promptcam {promptcam_version()} (model {sha})"
        self.detector_by = provenance.detector or "MegaDetector-format detector"

    def observation(self, media: dict[str, str], n: int, kind: str, **values: Any) -> dict[str, str]:
        row = {"observationID": f"{media['mediaID']}-{n}", "deploymentID": media["deploymentID"],
               "mediaID": media["mediaID"], "eventStart": media["timestamp"], "eventEnd": media["timestamp"],
               "observationLevel": "media", "observationType": kind}
        row.update({k: _cell(v) for k, v in values.items() if v is not None and v != ""})
        return row

    def classification(self, record: ImageRecord, media: dict[str, str], n: int, name: str, probability: float,
                       tags: Sequence[str] = (), **values: Any) -> dict[str, str]:
        unknown = probability < self.o.unknown_below
        taxon = None if unknown else self.o.taxa.get(name)
        return self.observation(
            media, n, "unknown" if unknown else "animal", scientificName=taxon.scientificName if taxon else None,
            classificationMethod="machine", classifiedBy=self.promptcam_by,
            classificationTimestamp=utc_time(record.processed_at) or self.p.classified_at,
            classificationProbability=float(probability), observationTags=" | ".join([_tag("class", name), *tags]),
            **values)

    def class_name(self, class_id: Any) -> str:
        try:
            return self.p.class_names[int(class_id)]
        except (ValueError, TypeError, IndexError):
            return f"class_{class_id}"

    def observations(self, record: ImageRecord, media: dict[str, str]) -> list[dict[str, str]]:
        if not record.ok or (record.detections is None and not record.top_k):
            return [self.observation(media, 0, UNCLASSIFIED)]
        if record.detections is None:  # whole-image classification
            top = record.top_k[0]
            return [self.classification(record, media, 0, top["name"], top["probability"])]
        rows = []
        for index, det in enumerate(record.detections):
            box = _bbox(det.get("bbox")) if isinstance(det, dict) else {}
            conf = det.get("conf") if isinstance(det, dict) else None
            conf_tag = [_tag("detectionConf", _cell(float(conf)))] if isinstance(conf, int | float) else []
            if isinstance(det, dict) and det.get("classifications"):
                class_id, probability = det["classifications"][0]
                rows.append(self.classification(record, media, index + 1, self.class_name(class_id), probability,
                                                conf_tag, count=1, **box))
            elif box and isinstance(conf, int | float) and conf >= self.p.det_threshold:
                category = str(det.get("category"))
                category = self.p.detection_categories.get(category, category)
                rows.append(self.observation(
                    media, index + 1, DETECTOR_TYPES.get(category.casefold(), "unknown"), count=1,
                    classificationMethod="machine", classifiedBy=self.detector_by,
                    classificationProbability=float(conf), observationTags=_tag("detectionCategory", category), **box))
        return rows or [self.observation(media, 0, "blank", classificationMethod="machine",
                                         classifiedBy=self.detector_by)]


def media_events(media: list[tuple[dict[str, str], ImageRecord]], builder: _Builder,
                 class_names: Sequence[str]) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The event level: (mediaID -> eventID, event-level observations) of records that carry an ``event_id``
    (``--events``).

    One observation per event, ``observationLevel`` ``event``, no ``mediaID``, ``eventStart``/``eventEnd`` its
    first and last media: the event's verdict by the one rule of clips and events (``runtime.verdict``: the mean
    of its media's probabilities), ``classificationProbability`` the ``event_confidence``; ``blank`` when no
    medium of it has a class.
    """
    groups: dict[str, list[tuple[dict[str, str], ImageRecord]]] = {}
    for row, record in media:
        if record.event_id:
            groups.setdefault(db_text(record.event_id) or "", []).append((row, record))
    event_of = {row["mediaID"]: eid for eid, members in groups.items() for row, _ in members}
    observations = []
    for eid, members in sorted(groups.items()):
        times = sorted(row["timestamp"] for row, _ in members)
        verdict = combine_frames([record_probabilities(r, len(class_names)) for _, r in members],
                                 detector=any(r.detections is not None for _, r in members))
        first = {"mediaID": "", "deploymentID": members[0][0]["deploymentID"], "timestamp": times[0]}
        if verdict.blank:
            row = builder.observation(first, 0, "blank", classificationMethod="machine",
                                      classifiedBy=builder.promptcam_by)
        else:
            row = builder.classification(members[0][1], first, 0, class_names[verdict.top_class], verdict.confidence)
        row.update({"observationID": f"event-{hashlib.sha256(eid.encode()).hexdigest()[:16]}", "mediaID": "",
                    "eventID": eid, "eventStart": times[0], "eventEnd": times[-1], "observationLevel": "event"})
        observations.append(row)
    return event_of, observations


def _deployments(folders: dict[str, list[str]], options: CamtrapOptions,
                 notes: list[str]) -> tuple[list[dict[str, str]], dict[str, str]]:
    """(deployments rows, folder -> deploymentID) of the cameras that have media (their timestamps given)."""
    rows, ids, missing = [], {}, []
    for folder, times in sorted(folders.items()):
        row = {"deploymentID": folder, "deploymentStart": min(times), "deploymentEnd": max(times)}
        row |= options.deployments.get(folder, {})
        absent = [f.name for f in DEPLOYMENT_FIELDS if f.required and not row.get(f.name)]
        if absent:
            missing.append(f"{folder} ({', '.join(absent)})")
            continue
        start, end = parse_time(row["deploymentStart"]), parse_time(row["deploymentEnd"])
        if start is not None and end is not None and start > end:
            raise PromptCamError(f"deployment {row['deploymentID']!r}: deploymentStart {row['deploymentStart']} is "
                                 f"after deploymentEnd {row['deploymentEnd']} (--deployments)")
        rows.append(row)
        ids[folder] = row["deploymentID"]
    if missing:
        raise PromptCamError(
            f"Camtrap DP requires a latitude and longitude for every deployment, which photos cannot tell: give "
            f"them in --deployments FILE.csv (columns folder or deploymentID, latitude, longitude, ...) for "
            f"{len(missing)} camera folder(s): " + "; ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
    repeated = [i for i, n in Counter(ids.values()).items() if n > 1]
    if repeated:
        raise PromptCamError(f"--deployments gives several camera folders the deploymentID {repeated[0]!r}")
    unused = sorted(set(options.deployments) - set(folders))
    if unused:
        notes.append(f"--deployments rows with no photos, left out: {', '.join(unused[:20])}")
    return rows, ids


def _spatial(deployments: list[dict[str, str]]) -> dict[str, Any]:
    """GeoJSON of the deployments: their point, or the box around them (as the standard's example)."""
    points = sorted({(float(d["longitude"]), float(d["latitude"])) for d in deployments})
    if len(points) == 1:
        return {"type": "Point", "coordinates": list(points[0])}
    (x0, x1), (y0, y1) = ((min(v), max(v)) for v in zip(*points, strict=True))
    return {"type": "Polygon", "bbox": [x0, y0, x1, y1],
            "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def _temporal(deployments: list[dict[str, str]]) -> dict[str, str]:
    starts = [parse_time(d["deploymentStart"]) for d in deployments]
    ends = [parse_time(d["deploymentEnd"]) for d in deployments]
    return {"start": min(t for t in starts if t).date().isoformat(),
            "end": max(t for t in ends if t).date().isoformat()}


def datapackage(name: str, deployments: list[dict[str, str]], taxa: list[dict[str, Any]], levels: list[str],
                provenance: Provenance) -> dict[str, Any]:
    """The package descriptor: what the Camtrap DP 1.0 profile requires, minimal where promptcam cannot know."""
    version = promptcam_version()
    return {
        "resources": [{"name": t, "path": f"{t}.csv", "profile": "tabular-data-resource", "format": "csv",
                       "mediatype": "text/csv", "encoding": "utf-8", "schema": SCHEMA_URLS[t]} for t in TABLES],
        "profile": PROFILE_URL,
        "name": name,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "title": f"promptcam classifications: {name}",
        "description": f"Machine classifications by promptcam {version} of {provenance.source or 'camera-trap photos'}"
                       ". Project, contributors and licenses are placeholders to complete before publishing.",
        "contributors": [{"title": "promptcam (automatic export)", "role": "contributor"}],
        "sources": [{"title": "promptcam", "version": version}],
        "project": {"title": name, "samplingDesign": SAMPLING_DESIGN, "captureMethod": [CAPTURE_METHOD],
                    "individualAnimals": False, "observationLevel": levels},
        "spatial": _spatial(deployments),
        "temporal": _temporal(deployments),
        "taxonomic": taxa,
    }


def package_name(out_dir: Path) -> str:
    """The Data Package ``name`` (lower-case letters, digits, ``-._``) from the output folder's name."""
    text = "".join(c if c.isascii() and (c.isalnum() or c in "-._") else "-" for c in out_dir.resolve().name.lower())
    return text.strip("-") or "promptcam-export"


def _taxa_notes(taxa: dict[str, Taxon], class_names: Sequence[str]) -> list[str]:
    names, notes = set(class_names), []
    if taxa and names:
        if unmapped := sorted(names - set(taxa)):
            notes.append(f"--taxa has no scientificName for {len(unmapped)} class(es): {', '.join(unmapped[:20])}")
        if foreign := sorted(set(taxa) - names):
            notes.append(f"--taxa lists class(es) the model does not have: {', '.join(foreign[:20])}")
    return notes


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, str]]) -> None:
    with atomic_open(path, "wb") as raw:
        # backslashreplace: a non-UTF-8 file name (surrogate escapes) is written as \udcXX, the file stays UTF-8
        fh = io.TextIOWrapper(raw, encoding="utf-8", errors="backslashreplace", newline="")
        writer = csv.DictWriter(fh, columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        fh.flush()
        fh.detach()  # atomic_open closes the file itself


def write_camtrap_dp(out_dir: Path, records: Sequence[ImageRecord], provenance: Provenance,
                     options: CamtrapOptions | None = None) -> PackageSummary:
    """Write the package into ``out_dir`` (created; its four files replaced atomically, datapackage.json last).

    Raises:
        PromptCamError: a camera without the fields the standard requires (nothing is written then).
    """
    options = options or CamtrapOptions()
    prefix = options.media_prefix
    if prefix.startswith(("/", ".", "~")) or ".." in prefix:
        raise PromptCamError(f"--media-prefix {prefix!r}: Camtrap DP file paths are URLs or relative paths "
                             "(no leading /, ., ~ and no ..)")
    summary, builder = PackageSummary(), _Builder(provenance, options)
    timeless: list[str] = []
    media: list[tuple[dict[str, str], ImageRecord]] = []
    folders: dict[str, list[str]] = {}
    seen: Counter[str] = Counter()
    for record in records:
        timestamp = media_time(record)
        if timestamp is None:
            timeless.append(db_text(record.file) or "")
            continue
        folder = camera_folder(record, options.camera_depth)
        mid = media_id(record)
        seen[mid] += 1
        mid += f"-{seen[mid]}" if seen[mid] > 1 else ""
        name = _parts(record.file)[-1] if _parts(record.file) else "_"
        media.append(({"mediaID": mid, "deploymentID": folder, "captureMethod": CAPTURE_METHOD,
                       "timestamp": timestamp, "filePath": file_path(record, prefix),
                       "filePublic": _cell(options.public_media), "fileName": name, "fileMediatype": media_type(name),
                       "mediaComments": db_text(record.failure) or ""}, record))
        folders.setdefault(folder, []).append(timestamp)
    if timeless:
        summary.notes.append(f"{len(timeless)} image(s) with no capture, file or classification time left out: "
                             + ", ".join(timeless[:10]))
    if not media:
        raise PromptCamError("no images to export")
    deployments, ids = _deployments(folders, options, summary.notes)
    for row, _ in media:
        row["deploymentID"] = ids[row["deploymentID"]]
    media.sort(key=lambda m: (m[0]["deploymentID"], m[0]["timestamp"], m[0]["fileName"], m[0]["mediaID"]))
    observations = [obs for row, record in media for obs in builder.observations(record, row)]
    media_rows = [row for row, _ in media]
    event_of, event_rows = media_events(media, builder, provenance.class_names or class_names_seen(
        [record for _, record in media]))
    for obs in observations:
        obs["eventID"] = event_of.get(obs["mediaID"], "")
    observations += event_rows
    used = {obs["scientificName"] for obs in observations if obs.get("scientificName")}
    taxa = list({t.scientificName: t.coverage() for t in options.taxa.values() if t.scientificName in used}.values())
    summary.notes += _taxa_notes(options.taxa, provenance.class_names)
    levels = ["media"] + (["event"] if event_rows else [])
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "deployments.csv", DEPLOYMENT_COLUMNS, deployments)
    _write_csv(out_dir / "media.csv", MEDIA_COLUMNS, media_rows)
    _write_csv(out_dir / "observations.csv", OBSERVATION_COLUMNS, observations)
    descriptor = datapackage(package_name(out_dir), deployments, taxa, levels, provenance)
    atomic_write_text(out_dir / "datapackage.json", json.dumps(descriptor, indent=2) + "\n")
    summary.deployments, summary.media = len(deployments), len(media_rows)
    summary.observations.update(obs["observationType"] for obs in observations)
    return summary
