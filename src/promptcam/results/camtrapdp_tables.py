"""Camtrap DP 1.0 tables as promptcam writes them, and the two files the export reads from its user.

The field names are the standard's, in its order (tdwg/camtrap-dp tag 1.0: ``deployments-table-schema.json``,
``media-table-schema.json``, ``observations-table-schema.json``). The deployments fields carry their types
and constraints too: a ``--deployments`` file is checked against them, so a wrong value is one clear error
naming the file, line and column instead of a package that does not validate.

``--taxa FILE``: CSV ``class,scientificName[,taxonID,taxonRank,vernacularName]`` (a class of the model per line).
``--deployments FILE``: CSV of Camtrap DP deployments fields, keyed by ``folder`` (the camera folder of the
photos) or ``deploymentID`` (the same folder key, when no ``folder`` column renames it).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from promptcam.core.errors import PromptCamError

VERSION = "1.0"
BASE_URL = f"https://raw.githubusercontent.com/tdwg/camtrap-dp/{VERSION}"
PROFILE_URL = f"{BASE_URL}/camtrap-dp-profile.json"
TABLES = ("deployments", "media", "observations")
SCHEMA_URLS = {table: f"{BASE_URL}/{table}-table-schema.json" for table in TABLES}


@dataclass(frozen=True)
class Field:
    name: str
    type: str = "string"  # string, number, integer, boolean, datetime
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] = ()


FEATURE_TYPES = ("roadPaved", "roadDirt", "trailHiking", "trailGame", "roadUnderpass", "roadOverpass", "roadBridge",
                 "culvert", "burrow", "nestSite", "carcass", "waterSource", "fruitingTree")
DEPLOYMENT_FIELDS = (
    Field("deploymentID", required=True), Field("locationID"), Field("locationName"),
    Field("latitude", "number", True, -90, 90), Field("longitude", "number", True, -180, 180),
    Field("coordinateUncertainty", "integer", minimum=1),
    Field("deploymentStart", "datetime", True), Field("deploymentEnd", "datetime", True),
    Field("setupBy"), Field("cameraID"), Field("cameraModel"), Field("cameraDelay", "integer", minimum=0),
    Field("cameraHeight", "number", minimum=0), Field("cameraDepth", "number", minimum=0),
    Field("cameraTilt", "integer", minimum=-90, maximum=90), Field("cameraHeading", "integer", minimum=0, maximum=360),
    Field("detectionDistance", "number", minimum=0), Field("timestampIssues", "boolean"), Field("baitUse", "boolean"),
    Field("featureType", enum=FEATURE_TYPES), Field("habitat"), Field("deploymentGroups"), Field("deploymentTags"),
    Field("deploymentComments"),
)
DEPLOYMENT_COLUMNS = tuple(f.name for f in DEPLOYMENT_FIELDS)
MEDIA_COLUMNS = ("mediaID", "deploymentID", "captureMethod", "timestamp", "filePath", "filePublic", "fileName",
                 "fileMediatype", "exifData", "favorite", "mediaComments")
OBSERVATION_COLUMNS = (
    "observationID", "deploymentID", "mediaID", "eventID", "eventStart", "eventEnd", "observationLevel",
    "observationType", "cameraSetupType", "scientificName", "count", "lifeStage", "sex", "behavior", "individualID",
    "individualPositionRadius", "individualPositionAngle", "individualSpeed", "bboxX", "bboxY", "bboxWidth",
    "bboxHeight", "classificationMethod", "classifiedBy", "classificationTimestamp", "classificationProbability",
    "observationTags", "observationComments")
TAXON_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species", "subspecies")
TAXA_COLUMNS = ("class", "scientificName", "taxonID", "taxonRank", "vernacularName")
FOLDER_KEY = "folder"
TRUE, FALSE = {"true", "1", "yes"}, {"false", "0", "no"}


# -- times ---------------------------------------------------------------------------------------


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 date-time (``Z`` or ``±hh:mm``, or none), or None."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def format_time(when: datetime) -> str:
    """``YYYY-MM-DDThh:mm:ssZ`` (UTC) or ``YYYY-MM-DDThh:mm:ss±hh:mm``: whole seconds, the zone kept."""
    offset = when.utcoffset()
    if not offset:
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    text = when.strftime("%Y-%m-%dT%H:%M:%S%z")
    return text[:-2] + ":" + text[-2:]


def utc_time(text: str | None) -> str | None:
    """A recorded time (``taken_at``, ``processed_at``: UTC, with or without ``Z``) as ``YYYY-MM-DDThh:mm:ssZ``."""
    when = parse_time(text) if text else None
    if when is None:
        return None
    when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    return format_time(when)


def ns_time(ns: int | None) -> str | None:
    return None if ns is None else format_time(datetime.fromtimestamp(ns / 1e9, timezone.utc))


# -- the user's files ----------------------------------------------------------------------------


def _rows(path: Path, what: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, [(line number, row)]) of a CSV file (UTF-8, a spreadsheet's BOM allowed)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in reader.fieldnames or []]
            reader.fieldnames = header
            rows = [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None})
                    for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PromptCamError(f"{what} {path}: unreadable ({exc})") from exc
    return header, rows


@dataclass(frozen=True)
class Taxon:
    scientificName: str
    taxonID: str = ""
    taxonRank: str = ""
    vernacularName: str = ""

    def coverage(self) -> dict[str, Any]:
        """The package's ``taxonomic`` entry (a vernacular name is taken to be English: ``eng``)."""
        entry: dict[str, Any] = {"scientificName": self.scientificName}
        entry.update({k: v for k, v in (("taxonID", self.taxonID), ("taxonRank", self.taxonRank)) if v})
        if self.vernacularName:
            entry["vernacularNames"] = {"eng": self.vernacularName}
        return entry


def read_taxa(path: Path) -> dict[str, Taxon]:
    """``--taxa``: class name -> taxon. A class with an empty scientificName stays unmapped.

    Raises:
        PromptCamError: a missing or unknown column, a repeated class, a taxonRank outside the standard's list.
    """
    header, rows = _rows(path, "--taxa")
    unknown = [h for h in header if h not in TAXA_COLUMNS]
    if "class" not in header or "scientificName" not in header or unknown:
        raise PromptCamError(f"--taxa {path}: the header must be class,scientificName[,taxonID,taxonRank,"
                             f"vernacularName] (found {','.join(header) or 'nothing'})")
    taxa: dict[str, Taxon] = {}
    for line, row in rows:
        name = row["class"]
        if name in taxa:
            raise PromptCamError(f"--taxa {path}:{line}: class {name!r} is listed twice")
        rank = row.get("taxonRank", "")
        if rank and rank not in TAXON_RANKS:
            raise PromptCamError(f"--taxa {path}:{line}: taxonRank {rank!r} is not one of {', '.join(TAXON_RANKS)}")
        if row["scientificName"]:
            taxa[name] = Taxon(row["scientificName"], row.get("taxonID", ""), rank, row.get("vernacularName", ""))
    return taxa


def check_value(spec: Field, text: str, where: str) -> str:
    """A deployments value as written to the package (numbers as given, booleans ``true``/``false``,
    date-times normalised), checked against the field's type and constraints."""
    problem = None
    if spec.type in ("number", "integer"):
        try:
            value = int(text) if spec.type == "integer" else float(text)
        except ValueError:
            value, problem = None, f"is not {'an integer' if spec.type == 'integer' else 'a number'}"
        if value is not None and not math.isfinite(value):
            problem = "is not a finite number"
        elif value is not None and ((spec.minimum is not None and value < spec.minimum)
                                    or (spec.maximum is not None and value > spec.maximum)):
            problem = f"is outside [{spec.minimum}, {spec.maximum}]"
    elif spec.type == "boolean":
        if text.lower() in TRUE | FALSE:
            return "true" if text.lower() in TRUE else "false"
        problem = "is not true or false"
    elif spec.type == "datetime":
        when = parse_time(text)
        if when is not None and when.tzinfo is not None:
            return format_time(when)
        problem = "is not an ISO 8601 date-time with a time zone (2024-06-01T08:00:00Z or ...+02:00)"
    elif spec.enum and text not in spec.enum:
        problem = f"is not one of {', '.join(spec.enum)}"
    if problem:
        raise PromptCamError(f"{where}: {spec.name} {text!r} {problem}")
    return text


def read_deployments(path: Path) -> dict[str, dict[str, str]]:
    """``--deployments``: camera folder -> its deployments fields (non-empty values only, checked).

    The key is the ``folder`` column when there is one (a ``deploymentID`` column then names the
    deployment), else ``deploymentID`` (the folder key itself).

    Raises:
        PromptCamError: no key column, an unknown column, a repeated or empty key, a value of the wrong type.
    """
    header, rows = _rows(path, "--deployments")
    key = FOLDER_KEY if FOLDER_KEY in header else "deploymentID"
    unknown = [h for h in header if h not in DEPLOYMENT_COLUMNS and h != FOLDER_KEY]
    if key not in header or unknown:
        raise PromptCamError(f"--deployments {path}: " + (
            f"unknown column(s) {', '.join(unknown)}; the columns are Camtrap DP deployments fields "
            f"({', '.join(DEPLOYMENT_COLUMNS)}) and {FOLDER_KEY}" if unknown
            else f"needs a {FOLDER_KEY} or deploymentID column to join the photos' camera folders on"))
    specs = {f.name: f for f in DEPLOYMENT_FIELDS}
    table: dict[str, dict[str, str]] = {}
    for line, row in rows:
        where = f"--deployments {path}:{line}"
        folder = row.get(key, "")
        if not folder:
            raise PromptCamError(f"{where}: empty {key}")
        if folder in table:
            raise PromptCamError(f"{where}: {key} {folder!r} is listed twice")
        table[folder] = {name: check_value(specs[name], value, where)
                         for name, value in row.items() if name in specs and value}
    return table
