"""``promptcam export-results --format camtrap-dp``: Camtrap DP 1.0 packages from real run folders and real
station databases, validated offline.

The table schemas below are written here from the Camtrap DP 1.0 field tables (tdwg/camtrap-dp tag 1.0:
``deployments-table-schema.json``, ``media-table-schema.json``, ``observations-table-schema.json``): field
names in order, types, required fields, enumerations, minimum/maximum and patterns, primary and foreign keys.
frictionless checks every CSV against them (and the keys across the three tables); ``datapackage.json``
is checked against the required parts of ``camtrap-dp-profile.json`` 1.0, transcribed as a JSON schema.
Nothing is fetched: the schema URLs the package names are only compared as text.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest
from camera_trap_scenes import build_scene, write_md
from PIL import Image
from watch_helpers import Clock

from helpers import run_cli
from promptcam.core.atomic import file_sha256
from promptcam.core.errors import PromptCamError
from promptcam.core.manifest import read_manifest
from promptcam.results.camtrapdp import (
    CamtrapOptions,
    Provenance,
    camera_folder,
    file_path,
    promptcam_version,
    write_camtrap_dp,
)
from promptcam.results.camtrapdp_tables import read_deployments, read_taxa
from promptcam.runtime.predictor import Predictor
from promptcam.runtime.records import ImageRecord
from promptcam.station.inbox import InboxWatcher
from promptcam.station.options import SidecarOptions, WatchOptions

frictionless = pytest.importorskip("frictionless")
jsonschema = pytest.importorskip("jsonschema")

# -- the standard, version 1.0, as test schemas ---------------------------------------------------

DATETIME = {"type": "datetime", "format": "%Y-%m-%dT%H:%M:%S%z"}


def _f(name: str, kind: str = "string", required: bool = False, **constraints) -> dict:
    spec = dict(DATETIME) if kind == "datetime" else {"type": kind}
    return {"name": name, **spec, "constraints": {"required": required, **constraints}}


DEPLOYMENTS = [
    _f("deploymentID", required=True, unique=True), _f("locationID"), _f("locationName"),
    _f("latitude", "number", True, minimum=-90, maximum=90), _f("longitude", "number", True, minimum=-180, maximum=180),
    _f("coordinateUncertainty", "integer", minimum=1),
    _f("deploymentStart", "datetime", True), _f("deploymentEnd", "datetime", True),
    _f("setupBy"), _f("cameraID"), _f("cameraModel"), _f("cameraDelay", "integer", minimum=0),
    _f("cameraHeight", "number", minimum=0), _f("cameraDepth", "number", minimum=0),
    _f("cameraTilt", "integer", minimum=-90, maximum=90), _f("cameraHeading", "integer", minimum=0, maximum=360),
    _f("detectionDistance", "number", minimum=0), _f("timestampIssues", "boolean"), _f("baitUse", "boolean"),
    _f("featureType", enum=["roadPaved", "roadDirt", "trailHiking", "trailGame", "roadUnderpass", "roadOverpass",
                            "roadBridge", "culvert", "burrow", "nestSite", "carcass", "waterSource", "fruitingTree"]),
    _f("habitat"), _f("deploymentGroups"), _f("deploymentTags"), _f("deploymentComments"),
]
MEDIA = [
    _f("mediaID", required=True, unique=True), _f("deploymentID", required=True),
    _f("captureMethod", enum=["activityDetection", "timeLapse"]), _f("timestamp", "datetime", True),
    _f("filePath", required=True, pattern=r"^(?=^[^./~])(^((?!\.{2}).)*$).*$"), _f("filePublic", "boolean", True),
    _f("fileName"), _f("fileMediatype", required=True, pattern="^(image|video|audio)/.*$"), _f("exifData", "any"),
    _f("favorite", "boolean"), _f("mediaComments"),
]
OBSERVATIONS = [
    _f("observationID", required=True, unique=True), _f("deploymentID", required=True), _f("mediaID"), _f("eventID"),
    _f("eventStart", "datetime", True), _f("eventEnd", "datetime", True),
    _f("observationLevel", required=True, enum=["media", "event"]),
    _f("observationType", required=True, enum=["animal", "human", "vehicle", "blank", "unknown", "unclassified"]),
    _f("cameraSetupType", enum=["setup", "calibration"]), _f("scientificName"), _f("count", "integer", minimum=1),
    _f("lifeStage", enum=["adult", "subadult", "juvenile"]), _f("sex", enum=["female", "male"]), _f("behavior"),
    _f("individualID"), _f("individualPositionRadius", "number", minimum=0),
    _f("individualPositionAngle", "number", minimum=-90, maximum=90), _f("individualSpeed", "number", minimum=0),
    _f("bboxX", "number", minimum=0, maximum=1), _f("bboxY", "number", minimum=0, maximum=1),
    _f("bboxWidth", "number", minimum=1e-15, maximum=1), _f("bboxHeight", "number", minimum=1e-15, maximum=1),
    _f("classificationMethod", enum=["human", "machine"]), _f("classifiedBy"),
    _f("classificationTimestamp", "datetime"), _f("classificationProbability", "number", minimum=0, maximum=1),
    _f("observationTags"), _f("observationComments"),
]


def _key(field: str, resource: str) -> dict:
    return {"fields": [field], "reference": {"resource": resource, "fields": [field]}}


SCHEMAS = {
    "deployments": {"fields": DEPLOYMENTS, "missingValues": [""], "primaryKey": ["deploymentID"]},
    "media": {"fields": MEDIA, "missingValues": [""], "primaryKey": ["mediaID"],
              "foreignKeys": [_key("deploymentID", "deployments")]},
    "observations": {"fields": OBSERVATIONS, "missingValues": [""], "primaryKey": ["observationID"],
                     "foreignKeys": [_key("deploymentID", "deployments"), _key("mediaID", "media")]},
}
URL = "https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0"
# camtrap-dp-profile.json 1.0: its required properties, its resource rule and the enumerations of its parts
PROFILE = {
    "type": "object",
    "required": ["resources", "profile", "created", "contributors", "project", "spatial", "temporal", "taxonomic"],
    "properties": {
        "profile": {"const": f"{URL}/camtrap-dp-profile.json"},
        "name": {"type": "string", "pattern": "^([-a-z0-9._/])+$"},
        "created": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"},
        "resources": {"type": "array", "minItems": 3, "items": {
            "required": ["name", "path", "profile", "schema"],
            "properties": {"name": {"enum": ["deployments", "media", "observations"]},
                           "profile": {"enum": ["tabular-data-resource"]},
                           "schema": {"type": "string", "pattern": r"/1\.0/"}}}},
        "contributors": {"type": "array", "minItems": 1, "items": {
            "required": ["title"], "properties": {"role": {"enum": [
                "contact", "principalInvestigator", "rightsHolder", "publisher", "contributor"]}}}},
        "project": {"type": "object",
                    "required": ["title", "samplingDesign", "captureMethod", "individualAnimals", "observationLevel"],
                    "properties": {
                        "title": {"type": "string"},
                        "samplingDesign": {"enum": ["simpleRandom", "systematicRandom", "clusteredRandom",
                                                    "experimental", "targeted", "opportunistic"]},
                        "captureMethod": {"type": "array", "minItems": 1, "uniqueItems": True,
                                          "items": {"enum": ["activityDetection", "timeLapse"]}},
                        "individualAnimals": {"type": "boolean"},
                        "observationLevel": {"type": "array", "items": {"enum": ["media", "event"]}}}},
        "spatial": {"type": "object", "required": ["type", "coordinates"],
                    "properties": {"type": {"enum": ["Point", "Polygon"]}}},
        "temporal": {"type": "object", "required": ["start", "end"], "properties": {
            "start": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
            "end": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}}},
        "taxonomic": {"type": "array", "items": {"type": "object", "required": ["scientificName"], "properties": {
            "scientificName": {"type": "string"}, "taxonID": {"type": "string"},
            "taxonRank": {"enum": ["kingdom", "phylum", "class", "order", "family", "genus", "species", "subspecies"]},
            "vernacularNames": {"type": "object", "patternProperties": {"^[a-z]{3}$": {"type": "string"}},
                                "additionalProperties": False}}}},
    },
}


def validate_package(folder: Path) -> dict[str, list[dict[str, str]]]:
    """Check a written package offline; returns its three tables as rows."""
    descriptor = json.loads((folder / "datapackage.json").read_text(encoding="utf-8"))
    jsonschema.validate(descriptor, PROFILE)
    assert {r["name"]: r["schema"] for r in descriptor["resources"]} == {
        t: f"{URL}/{t}-table-schema.json" for t in SCHEMAS}
    assert {r["path"] for r in descriptor["resources"]} == {f"{t}.csv" for t in SCHEMAS}
    resources = [frictionless.Resource(path=f"{name}.csv", name=name, basepath=str(folder),
                                       schema=frictionless.Schema.from_descriptor(schema))
                 for name, schema in SCHEMAS.items()]
    report = frictionless.Package(resources=resources, basepath=str(folder)).validate()
    assert report.valid, report.flatten(["rowNumber", "fieldName", "type", "note"])
    tables = {name: list(csv.DictReader((folder / f"{name}.csv").open(encoding="utf-8", newline="")))
              for name in SCHEMAS}
    used = {o["scientificName"] for o in tables["observations"] if o["scientificName"]}
    assert {t["scientificName"] for t in descriptor["taxonomic"]} == used
    return tables


def _export(source: Path, out: Path, *extra: object):
    return run_cli("promptcam", "export-results", source, "--format", "camtrap-dp", "-o", out, *extra)


def _tags(observation: dict[str, str]) -> dict[str, str]:
    return dict(tag.split(":", 1) for tag in observation["observationTags"].split(" | ") if tag)


def _csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def _utc(day: str) -> float:
    return datetime.fromisoformat(day).replace(tzinfo=timezone.utc).timestamp()


def exif_jpeg(path: Path, seed: int, taken: str | None, size: tuple[int, int] = (48, 64)) -> Path:
    """A JPEG whose EXIF DateTimeOriginal is ``taken`` (``YYYY:MM:DD HH:MM:SS``, as cameras write it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    exif = Image.Exif()
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    Image.fromarray(pixels).save(path, exif=exif)
    return path


# -- a run folder of whole-image classifications ----------------------------------------------------

TAKEN = {"cam_a/IMG_0001.jpg": "2024:06:01 08:00:00", "cam_a/IMG_0002.jpg": "2024:06:03 21:15:30",
         "cam_b/day1/IMG_0003.jpg": "2024:06:02 10:00:00", "cam_b/day2/IMG_0004.jpg": "2024:06:05 05:05:05"}
TOP_MTIME = "2024-06-04T12:00:00"  # top.jpg has no EXIF time: its mtime is its timestamp


@pytest.fixture(scope="module")
def run_folder(tiny_export, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("camtrap_run")
    photos = root / "photos"
    for seed, (name, taken) in enumerate(TAKEN.items()):
        exif_jpeg(photos / name, seed, taken)
    top = exif_jpeg(photos / "top.jpg", 9, None)
    broken = photos / "cam_a" / "broken.jpg"
    broken.write_bytes(top.read_bytes()[:200])  # no EXIF time: its mtime is its timestamp
    for path in (top, broken):
        os.utime(path, (_utc(TOP_MTIME), _utc(TOP_MTIME)))
    result = run_cli("promptcam", "run", "--model", tiny_export, photos, "--out", root / "out", "--engine", "ort-cpu",
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    return {"out": root / "out", "photos": photos, "root": root}


def test_run_folder_package_validates_with_times_taxa_and_deployments(run_folder, tiny_export, tmp_path) -> None:
    results = json.loads((run_folder["out"] / "results.json").read_text())
    tops = {im["file"]: results["classification_categories"][im["detections"][0]["classifications"][0][0]]
            for im in results["images"] if im.get("detections")}
    mapped = tops["cam_a/IMG_0001.jpg"]
    taxa = _csv(tmp_path / "taxa.csv", [["class", "scientificName", "taxonID", "taxonRank", "vernacularName"],
                                        [mapped, "Vulpes vulpes", "https://www.checklistbank.org/dataset/COL2023/"
                                         "taxon/5BSG3", "species", "red fox"]])
    deployments = _csv(tmp_path / "deployments.csv", [
        ["folder", "deploymentID", "latitude", "longitude", "deploymentStart", "cameraModel", "baitUse", "featureType"],
        ["cam_a", "CAM-A", "52.70442", "23.84995", "2024-05-31T12:00:00+02:00", "Reconyx-PC800", "FALSE", "trailGame"],
        ["cam_b", "", "52.71", "23.86", "", "", "", ""],
        ["photos", "", "52.69", "23.83", "", "", "", ""],
        ["cam_unused", "", "1", "2", "", "", "", ""]])
    out = tmp_path / "dp"
    result = _export(run_folder["out"], out, "--taxa", taxa, "--deployments", deployments, "--camera-depth", "1")
    assert result.returncode == 0, result.stderr
    assert "cam_unused" in result.stderr and "3 deployment(s), 6 media" in result.stdout
    tables = validate_package(out)

    deps = {d["deploymentID"]: d for d in tables["deployments"]}
    assert sorted(deps) == ["CAM-A", "cam_b", "photos"]
    assert deps["CAM-A"]["deploymentStart"] == "2024-05-31T12:00:00+02:00"  # from --deployments
    assert deps["CAM-A"]["deploymentEnd"] == TOP_MTIME + "Z"  # the last photo: broken.jpg, by its mtime
    assert (deps["CAM-A"]["cameraModel"], deps["CAM-A"]["baitUse"]) == ("Reconyx-PC800", "false")
    assert (deps["cam_b"]["deploymentStart"], deps["cam_b"]["deploymentEnd"]) == (
        "2024-06-02T10:00:00Z", "2024-06-05T05:05:05Z")  # --camera-depth 1: day1 and day2 are one camera
    assert (deps["photos"]["latitude"], deps["photos"]["longitude"]) == ("52.69", "23.83")

    media = {m["filePath"]: m for m in tables["media"]}
    assert sorted(media) == sorted([*TAKEN, "top.jpg", "cam_a/broken.jpg"])
    for name, taken in TAKEN.items():  # the EXIF DateTimeOriginal, as UTC
        assert media[name]["timestamp"] == taken.replace(":", "-", 2).replace(" ", "T") + "Z"
    assert media["top.jpg"]["timestamp"] == media["cam_a/broken.jpg"]["timestamp"] == TOP_MTIME + "Z"
    assert media["top.jpg"]["deploymentID"] == "photos" and media["cam_a/broken.jpg"]["deploymentID"] == "CAM-A"
    assert {m["fileMediatype"] for m in media.values()} == {"image/jpeg"}
    assert {m["filePublic"] for m in media.values()} == {"false"}
    assert media["cam_a/broken.jpg"]["mediaComments"]  # the failure

    sha = results["info"]["classifier_metadata"]["model_sha256"]
    assert sha == file_sha256(read_manifest(tiny_export).file(tiny_export, "model"))
    by_media = {o["mediaID"]: o for o in tables["observations"]}
    assert len(by_media) == len(tables["observations"]) == 6  # one media-level observation per image
    for path, m in media.items():
        obs = by_media[m["mediaID"]]
        assert obs["observationLevel"] == "media" and obs["eventStart"] == obs["eventEnd"] == m["timestamp"]
        assert obs["deploymentID"] == m["deploymentID"] and obs["eventID"] == ""  # events: a later item
        if path == "cam_a/broken.jpg":
            assert obs["observationType"] == "unclassified" and not obs["classifiedBy"]
            continue
        assert obs["observationType"] == "animal" and obs["classificationMethod"] == "machine"
        assert obs["classifiedBy"] == f"promptcam {promptcam_version()} (model sha256:{sha})"
        assert _tags(obs) == {"class": tops[path]}
        assert obs["scientificName"] == ("Vulpes vulpes" if tops[path] == mapped else "")
        assert obs["classificationTimestamp"].endswith("Z") and obs["bboxX"] == ""
        top = next(im for im in results["images"] if im["file"] == path)["detections"][0]["classifications"][0][1]
        assert float(obs["classificationProbability"]) == pytest.approx(top, abs=1e-6)
    descriptor = json.loads((out / "datapackage.json").read_text())
    assert descriptor["taxonomic"] == [{"scientificName": "Vulpes vulpes", "taxonID": "https://www.checklistbank.org"
                                        "/dataset/COL2023/taxon/5BSG3", "taxonRank": "species",
                                        "vernacularNames": {"eng": "red fox"}}]
    assert descriptor["temporal"] == {"start": "2024-05-31", "end": "2024-06-05"}
    assert descriptor["spatial"]["type"] == "Polygon" and descriptor["spatial"]["bbox"] == [23.83, 52.69, 23.86, 52.71]
    assert descriptor["project"]["observationLevel"] == ["media"]


def test_a_camera_without_coordinates_is_refused_and_nothing_written(run_folder, tmp_path) -> None:
    out = tmp_path / "dp"
    result = _export(run_folder["out"], out)
    assert result.returncode == 1
    assert "latitude" in result.stderr and "--deployments" in result.stderr and "cam_a" in result.stderr
    assert not out.exists()
    # default camera rule: every folder is a camera (cam_b/day1 and cam_b/day2 are two)
    partial = _csv(tmp_path / "d.csv", [["deploymentID", "latitude", "longitude"], ["cam_a", "1", "2"],
                                        ["cam_b/day1", "1", "2"], ["photos", "1", "2"]])
    result = _export(run_folder["out"], out, "--deployments", partial)
    assert result.returncode == 1 and "cam_b/day2 (latitude, longitude)" in result.stderr, result.stderr


def test_unknown_below_and_other_formats_from_a_run_folder(run_folder, tmp_path) -> None:
    deployments = _csv(tmp_path / "d.csv", [["folder", "latitude", "longitude"], ["cam_a", "1", "2"],
                                            ["cam_b", "1", "2.5"], ["photos", "1", "3"]])
    out = tmp_path / "dp"
    result = _export(run_folder["out"], out, "--deployments", deployments, "--camera-depth", "1",
                     "--unknown-below", "1", "--media-prefix", "media/", "--public-media")
    assert result.returncode == 0, result.stderr
    tables = validate_package(out)
    types = Counter(o["observationType"] for o in tables["observations"])
    assert types == {"unknown": 5, "unclassified": 1}  # every top probability is below 1
    assert all(o["classificationProbability"] and not o["scientificName"] for o in tables["observations"]
               if o["observationType"] == "unknown")
    assert all(m["filePath"].startswith("media/") and m["filePublic"] == "true" for m in tables["media"])
    # the other formats read run folders too; Camtrap DP options are refused with them
    result = run_cli("promptcam", "export-results", run_folder["out"], "--format", "csv", "-o", tmp_path / "r.csv")
    assert result.returncode == 0, result.stderr
    assert len(list(csv.DictReader((tmp_path / "r.csv").open()))) == 6
    result = run_cli("promptcam", "export-results", run_folder["out"], "--format", "csv", "-o", tmp_path / "x.csv",
                     "--taxa", tmp_path / "d.csv")
    assert result.returncode == 1 and "--taxa: only for --format camtrap-dp" in result.stderr


# -- a run folder of MegaDetector detections -------------------------------------------------------


@pytest.fixture(scope="module")
def detection_run(tiny_export, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("camtrap_det")
    rng = np.random.default_rng(1)
    tiles = [(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), i % 5) for i in range(6)]
    scene = build_scene(root / "photos", tiles, frames=3, large=0)
    for name in ("cam/empty.jpg", "cam/only_low.jpg"):
        cv2.imwrite(str(root / "photos" / name), np.full((300, 400, 3), 120, np.uint8))
    md = scene.md_json()
    md["images"] += [{"file": "cam/empty.jpg", "detections": []},
                     {"file": "cam/only_low.jpg", "detections": [{"category": "1", "conf": 0.1,
                                                                  "bbox": [0.2, 0.2, 0.1, 0.1]}]}]
    write_md(root / "md.json", md)
    for index, path in enumerate(sorted((root / "photos").rglob("*.[jJ][pP]*[gG]"))):
        os.utime(path, (_utc(f"2024-07-0{index + 1}T06:30:00"),) * 2)
    result = run_cli("promptcam", "run", "--model", tiny_export, root / "photos", "--out", root / "out",
                     "--detections", root / "md.json", "--engine", "ort-cpu", "--no-progress")
    assert result.returncode == 0, result.stderr
    return {"out": root / "out", "scene": scene, "root": root}


def test_detection_run_has_one_observation_per_box_and_blank_images(detection_run, tmp_path) -> None:
    deployments = _csv(tmp_path / "d.csv", [["deploymentID", "latitude", "longitude", "deploymentEnd"],
                                            ["cam", "-3.5", "36.8", "2024-07-31T00:00:00Z"]])
    out = tmp_path / "dp"
    result = _export(detection_run["out"], out, "--deployments", deployments)
    assert result.returncode == 0, result.stderr
    tables = validate_package(out)
    results = json.loads((detection_run["out"] / "results.json").read_text())
    entries = {im["file"]: im for im in results["images"]}
    names = results["classification_categories"]
    media = {m["mediaID"]: m for m in tables["media"]}
    by_file: dict[str, list[dict]] = {}
    for obs in tables["observations"]:
        by_file.setdefault(media[obs["mediaID"]]["filePath"], []).append(obs)
    assert sorted(by_file) == sorted(entries) and len(entries) == 5
    assert tables["deployments"][0]["deploymentEnd"] == "2024-07-31T00:00:00Z"
    for name in ("cam/empty.jpg", "cam/only_low.jpg"):  # nothing at or above the run's 0.2
        (blank,) = by_file[name]
        assert blank["observationType"] == "blank" and blank["classifiedBy"] == "md_v5a.0.0.pt"
    for name in detection_run["scene"].detections:
        rows = by_file[name]
        classified = sum("classifications" in d for d in entries[name]["detections"])
        assert classified == (3 if name == "cam/IMG_0001.JPG" else 2)  # frame 1 adds a tiny creature
        assert Counter(o["observationType"] for o in rows) == {"animal": classified, "human": 1}, rows
        for obs in rows:
            index = int(obs["observationID"].rsplit("-", 1)[1]) - 1
            det = entries[name]["detections"][index]
            box = [float(obs[k]) for k in ("bboxX", "bboxY", "bboxWidth", "bboxHeight")]
            assert box == pytest.approx(det["bbox"], abs=1e-6) and obs["count"] == "1"
            if obs["observationType"] == "animal":
                class_id, probability = det["classifications"][0]
                assert _tags(obs) == {"class": names[class_id], "detectionConf": f"{det['conf']:g}"}
                assert float(obs["classificationProbability"]) == pytest.approx(probability, abs=1e-6)
                assert obs["classifiedBy"].startswith(f"promptcam {promptcam_version()} (model sha256:")
                assert obs["scientificName"] == ""  # no --taxa
            else:
                assert det["category"] == "2" and obs["classifiedBy"] == "md_v5a.0.0.pt"
                assert float(obs["classificationProbability"]) == det["conf"]
    assert {m["timestamp"][:10] for m in tables["media"]} == {f"2024-07-0{i}" for i in range(1, 6)}


# -- station databases, written by the watcher ------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(tiny_predictor: Predictor) -> Predictor:
    return tiny_predictor


def _station(predictor: Predictor, folder: Path, *, sidecars: bool) -> Path:
    inbox = folder / "inbox"
    exif_jpeg(inbox / "north/IMG_1.jpg", 1, "2024:08:01 22:10:00", size=(120, 160))
    exif_jpeg(inbox / "north/IMG_2.jpg", 2, "2024:08:02 03:00:00", size=(120, 160))
    exif_jpeg(inbox / "south/IMG_3.jpg", 3, "2024:08:03 12:00:00", size=(120, 160))
    (inbox / "south/zero.jpg").write_bytes(b"")
    if sidecars:
        (inbox / "north/IMG_1.jpg.json").write_text(json.dumps({"detections": [
            {"category": "1", "conf": 0.9, "bbox": [0.1, 0.2, 0.4, 0.5]},
            {"category": "1", "conf": 0.7, "bbox": [0.8, 0.7, 0.4, 0.4]},  # leaves the frame: clipped
            {"category": "3", "conf": 0.6, "bbox": [0.0, 0.5, 0.2, 0.2]}]}))
        (inbox / "north/IMG_2.jpg.json").write_text(json.dumps({"detections": []}))
        (inbox / "south/IMG_3.jpg.json").write_text(json.dumps({"detections": [
            {"category": "1", "conf": 0.05, "bbox": [0.1, 0.1, 0.1, 0.1]}]}))
        (inbox / "south/zero.jpg.json").write_text(json.dumps({"detections": []}))
    db = folder / "results.sqlite"
    options = WatchOptions(inbox=inbox, db=db, settle=0.5, use_events=False, incomplete_wait=0.0,
                           detections=SidecarOptions(wait=5.0) if sidecars else None)
    clock, logs = Clock(), []
    watcher = InboxWatcher(predictor, options, log=logs.append, clock=clock)
    try:
        watcher.start()
        for _ in range(4):
            clock.now += 1.0
            while watcher.step():
                pass
    finally:
        watcher.close()
    return db


STATION_DEPLOYMENTS = [["deploymentID", "latitude", "longitude", "locationName"],
                       ["north", "-3.1", "37.2", "Ridge"], ["south", "-3.2", "37.3", "Pan"]]


def test_station_database_package(predictor, tiny_export, tmp_path) -> None:
    db = _station(predictor, tmp_path, sidecars=False)
    deployments = _csv(tmp_path / "d.csv", STATION_DEPLOYMENTS)
    out = tmp_path / "dp"
    result = _export(db, out, "--deployments", deployments)
    assert result.returncode == 0, result.stderr
    assert "sha256 is not recorded" in result.stderr
    tables = validate_package(out)
    media = {m["filePath"]: m for m in tables["media"]}
    assert sorted(media) == ["north/IMG_1.jpg", "north/IMG_2.jpg", "south/IMG_3.jpg", "south/zero.jpg"]
    assert media["north/IMG_1.jpg"]["timestamp"] == "2024-08-01T22:10:00Z"  # the watcher's taken_at
    assert media["south/IMG_3.jpg"]["timestamp"] == "2024-08-03T12:00:00Z"
    deps = {d["deploymentID"]: d for d in tables["deployments"]}
    assert deps["north"]["deploymentStart"] == "2024-08-01T22:10:00Z"
    assert deps["north"]["deploymentEnd"] == "2024-08-02T03:00:00Z" and deps["north"]["locationName"] == "Ridge"
    observations = {o["mediaID"]: o for o in tables["observations"]}
    assert observations[media["south/zero.jpg"]["mediaID"]]["observationType"] == "unclassified"
    animal = observations[media["north/IMG_1.jpg"]["mediaID"]]
    assert animal["observationType"] == "animal"
    assert animal["classifiedBy"] == f"promptcam {promptcam_version()} (model sha256 unknown)"
    # the station classified at processed_at: classificationTimestamp is that, in whole seconds
    assert datetime.strptime(animal["classificationTimestamp"], "%Y-%m-%dT%H:%M:%S%z").year >= 2025
    # --model names the model the station ran
    result = _export(db, tmp_path / "dp2", "--deployments", deployments, "--model", tiny_export)
    assert result.returncode == 0, result.stderr
    sha = file_sha256(read_manifest(tiny_export).file(tiny_export, "model"))
    rows = validate_package(tmp_path / "dp2")["observations"]
    assert {o["classifiedBy"] for o in rows if o["observationType"] == "animal"} == {
        f"promptcam {promptcam_version()} (model sha256:{sha})"}
    # the other formats still read station databases
    result = run_cli("promptcam", "export-results", db, "-o", tmp_path / "md.json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads((tmp_path / "md.json").read_text())["images"]) == 4


def test_station_database_with_sidecar_detections(predictor, tmp_path) -> None:
    db = _station(predictor, tmp_path, sidecars=True)
    out = tmp_path / "dp"
    result = _export(db, out, "--deployments", _csv(tmp_path / "d.csv", STATION_DEPLOYMENTS))
    assert result.returncode == 0, result.stderr
    tables = validate_package(out)
    media = {m["mediaID"]: m["filePath"] for m in tables["media"]}
    by_file: dict[str, list[dict]] = {}
    for obs in tables["observations"]:
        by_file.setdefault(media[obs["mediaID"]], []).append(obs)
    one = by_file["north/IMG_1.jpg"]
    assert [o["observationType"] for o in one] == ["animal", "animal", "vehicle"]
    assert [o[k] for k in ("bboxX", "bboxY", "bboxWidth", "bboxHeight") for o in one[:2]] == [
        "0.1", "0.8", "0.2", "0.7", "0.4", "0.2", "0.5", "0.3"]  # the second box cut at the frame's edge
    assert one[2]["classifiedBy"] == "MegaDetector-format detector"
    assert [o["observationType"] for o in by_file["north/IMG_2.jpg"]] == ["blank"]
    assert [o["observationType"] for o in by_file["south/IMG_3.jpg"]] == ["blank"]  # 0.05 is below 0.2
    assert [o["observationType"] for o in by_file["south/zero.jpg"]] == ["unclassified"]


# -- the rules, on records ---------------------------------------------------------------------------


def test_camera_rule_and_file_paths() -> None:
    record = ImageRecord(file="site/cam_1/2024-06-01/IMG.JPG", path="/data/photos/site/cam_1/2024-06-01/IMG.JPG")
    assert camera_folder(record) == "site/cam_1/2024-06-01"
    assert camera_folder(record, 2) == "site/cam_1" and camera_folder(record, 1) == "site"
    assert camera_folder(ImageRecord(file="IMG.JPG", path="/data/photos/IMG.JPG")) == "photos"
    assert camera_folder(ImageRecord(file="IMG.JPG", source="/srv/station/inbox")) == "inbox"
    assert camera_folder(ImageRecord(file="IMG.JPG")) == "root"
    assert file_path(ImageRecord(file="a\\b/c.jpg")) == "a/b/c.jpg"
    for name in (".hidden.jpg", "~x.jpg", "__/x..y.jpg", "a/../b.jpg"):
        path = file_path(ImageRecord(file=name))
        assert path[0] not in "./~" and ".." not in path, (name, path)


def test_user_files_are_checked(tmp_path) -> None:
    bad = {"latitude": "95", "deploymentStart": "2024-06-01T08:00:00", "baitUse": "maybe", "featureType": "road"}
    for column, value in bad.items():
        path = _csv(tmp_path / "d.csv", [["deploymentID", column], ["cam", value]])
        with pytest.raises(PromptCamError, match=f"d.csv:2: {column} '{value}'"):
            read_deployments(path)
    with pytest.raises(PromptCamError, match="unknown column.*lat"):
        read_deployments(_csv(tmp_path / "d.csv", [["deploymentID", "lat"], ["cam", "1"]]))
    with pytest.raises(PromptCamError, match="folder or deploymentID"):
        read_deployments(_csv(tmp_path / "d.csv", [["latitude"], ["1"]]))
    with pytest.raises(PromptCamError, match="taxonRank 'sp'"):
        read_taxa(_csv(tmp_path / "t.csv", [["class", "scientificName", "taxonRank"], ["fox", "Vulpes", "sp"]]))
    with pytest.raises(PromptCamError, match="listed twice"):
        read_taxa(_csv(tmp_path / "t.csv", [["class", "scientificName"], ["fox", "V"], ["fox", "W"]]))
    assert read_taxa(_csv(tmp_path / "t.csv", [["class", "scientificName"], ["fox", "Vulpes vulpes"], ["x", ""]])) \
        == {"fox": read_taxa(_csv(tmp_path / "u.csv", [["class", "scientificName"], ["fox", "Vulpes vulpes"]]))["fox"]}


def test_start_after_end_and_empty_sources_are_refused(tmp_path) -> None:
    records = [ImageRecord(file="cam/a.jpg", taken_at="2024-06-01T08:00:00",
                           top_k=[{"index": 0, "name": "fox", "probability": 0.9}])]
    options = CamtrapOptions(deployments={"cam": {"latitude": "1", "longitude": "2",
                                                  "deploymentStart": "2024-07-01T00:00:00Z"}})
    with pytest.raises(PromptCamError, match="deploymentStart .* is after deploymentEnd"):
        write_camtrap_dp(tmp_path / "dp", records, Provenance(class_names=["fox"]), options)
    with pytest.raises(PromptCamError, match="no images"):
        write_camtrap_dp(tmp_path / "dp", [], Provenance())
    with pytest.raises(PromptCamError, match="--media-prefix"):
        write_camtrap_dp(tmp_path / "dp", records, Provenance(), CamtrapOptions(media_prefix="/abs/"))
    assert not (tmp_path / "dp").exists()


def test_the_offline_validation_can_fail(tmp_path) -> None:
    """A package written from records validates; one value against the standard, or a missing required
    property, is caught (the checks above are not vacuous)."""
    records = [ImageRecord(file="cam/a.jpg", taken_at="2024-06-01T08:00:00", processed_at="2024-06-02T00:00:00.5Z",
                           detections=[{"category": "1", "conf": 0.9, "bbox": [0.5, 0.5, 0.7, 0.2],
                                        "classifications": [["0", 0.8]]}]),
               ImageRecord(file="cam/b.jpg", taken_at="2024-06-01T09:00:00", detections=[])]
    options = CamtrapOptions(deployments={"cam": {"latitude": "1", "longitude": "2"}},
                             taxa=read_taxa(_csv(tmp_path / "t.csv", [["class", "scientificName"], ["fox", "Vulpes"]])))
    summary = write_camtrap_dp(tmp_path / "dp", records, Provenance(class_names=["fox"]), options)
    assert summary.observations == {"animal": 1, "blank": 1} and not summary.notes
    tables = validate_package(tmp_path / "dp")
    animal = tables["observations"][0]
    assert (animal["scientificName"], animal["bboxWidth"], animal["classificationTimestamp"]) == (
        "Vulpes", "0.5", "2024-06-02T00:00:00Z")
    for table, column, value in [("observations", "bboxX", "1.5"), ("media", "timestamp", "2024-06-01T08:00:00"),
                                 ("observations", "observationType", "animals"), ("media", "filePath", "../a.jpg"),
                                 ("deployments", "latitude", ""), ("media", "deploymentID", "nope")]:
        copy = tmp_path / f"bad_{table}_{column}"
        shutil.copytree(tmp_path / "dp", copy)
        path = copy / f"{table}.csv"
        rows = list(csv.DictReader(path.open(encoding="utf-8", newline="")))
        rows[0][column] = value
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        with pytest.raises(AssertionError):
            validate_package(copy)
    descriptor = json.loads((tmp_path / "dp/datapackage.json").read_text())
    del descriptor["spatial"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(descriptor, PROFILE)


def test_events_and_clips_give_event_level_observations(tiny_predictor, tmp_path) -> None:
    from camera_trap_scenes import T0, write_shot
    from video_world import write_clip

    from promptcam.batch.run import RunOptions, run_files

    photos = tmp_path / "photos"
    for k, seconds in enumerate((0, 2, 4, 300)):  # a burst of three, then one alone
        write_shot(photos / "cam_a" / f"IMG_{k:04d}.JPG", T0 + timedelta(seconds=seconds), k)
    write_clip(photos / "cam_a" / "CLIP_0001.MP4", None, 5, frames=20)
    stamp = (T0 + timedelta(seconds=6)).replace(tzinfo=timezone.utc).timestamp()
    os.utime(photos / "cam_a" / "CLIP_0001.MP4", (stamp, stamp))  # filmed right after the burst
    run_files(tiny_predictor, RunOptions(inputs=[photos], out_dir=tmp_path / "out", progress=False, events=60),
              log=lambda _: None)
    deployments = _csv(tmp_path / "dep.csv", [["folder", "latitude", "longitude"], ["cam_a", "46.5", "7.9"]])
    result = _export(tmp_path / "out", tmp_path / "pkg", "--deployments", deployments)
    assert result.returncode == 0, result.stderr
    tables = validate_package(tmp_path / "pkg")
    events = [o for o in tables["observations"] if o["observationLevel"] == "event"]
    assert len(events) == 2 and all(o["mediaID"] == "" and o["classificationProbability"] for o in events)
    burst = next(o for o in events if o["eventStart"] != o["eventEnd"])
    assert burst["eventStart"] == "2026-05-01T06:00:00Z" and burst["eventEnd"] == "2026-05-01T06:00:06Z"
    media_level = [o for o in tables["observations"] if o["observationLevel"] == "media"]
    assert {o["eventID"] for o in media_level} == {o["eventID"] for o in events}
    clip = next(m for m in tables["media"] if m["fileName"] == "CLIP_0001.MP4")
    assert clip["fileMediatype"] == "video/mp4"
    assert json.loads((tmp_path / "pkg" / "datapackage.json").read_text())["project"]["observationLevel"] == [
        "media", "event"]
