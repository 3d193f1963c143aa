"""The MegaDetector batch-results format (1.x) as promptcam reads it: the detector's categories, the
checks of a parsed file or entry, and which detections are classified (``qualifies``, ``select_crops``).

Used by ``promptcam run --detections FILE`` (``batch.detections``) and by the station's per-image
sidecars (``station.sidecar``). The writer of the format is ``formats.megadetector_json``.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptcam.core.errors import PromptCamError

DEFAULT_CATEGORIES = ("animal",)
MEGADETECTOR_CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}  # MegaDetector v5/v1000
DEFAULT_THRESHOLD = 0.2  # the common classifier default (SpeciesNet, AddaxAI use 0.1-0.2)
# at most this many detections of one photo are classified (its most confident qualifying ones): a herd
# is a few dozen boxes; a hostile or broken detector output of 20,000 boxes would be 20,000 crops (6 GB
# at 224 px). The qualifying detections left out carry ``LEFT_OUT_KEY`` (see ``select_crops``).
MAX_CROPS_PER_PHOTO = 100
LEFT_OUT_KEY = "not_classified"
LEFT_OUT_REASON = "max_crops_per_photo"


@dataclass(frozen=True)
class DetectorFile:
    """A MegaDetector batch-results file, checked.

    Attributes:
        path: Where it was read.
        sha256: Of its bytes (part of a run's identity: ``--resume`` refuses another detector file).
        detection_categories: Category id -> name, as in the file.
        info: The file's ``info`` block.
        entries: The file's ``images`` list (dicts with ``file`` and ``detections``).
        skipped: Why each malformed entry was left out (read with ``skip_bad_entries``; else empty).
    """

    path: Path
    sha256: str
    detection_categories: dict[str, str]
    info: dict[str, Any]
    entries: list[dict[str, Any]]
    skipped: tuple[str, ...] = ()


def check_batch(path: Path, data: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """Check parsed batch-results JSON (``load_detector_file``, and the watcher's per-image sidecars).

    Returns:
        (detection_categories, info) of the file.

    Raises:
        PromptCamError: not a batch file, another format version, or a malformed entry or detection.
    """
    categories, info = check_batch_header(path, data)
    for index, entry in enumerate(data["images"]):
        check_entry(path, index, entry, categories)
    return categories, info


def check_batch_header(path: Path, data: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """The file-level checks of ``check_batch`` (an ``images`` list, format 1.x, the categories), not its entries.

    Raises:
        PromptCamError: not a batch file, another format version, or malformed ``detection_categories``.
    """
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise PromptCamError(f"{path}: not a MegaDetector batch file (no 'images' list)")
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    version = str(info.get("format_version", "1.0"))
    if not version.startswith("1."):
        raise PromptCamError(f"{path}: format_version {version!r} is not 1.x")
    categories = data.get("detection_categories")
    if not isinstance(categories, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in categories.items()):
        raise PromptCamError(f"{path}: 'detection_categories' must map category ids to names")
    return dict(categories), info


def sound_entries(path: Path, entries: Sequence[Any], categories: dict[str, str]) -> tuple[list[dict], list[str]]:
    """The entries that pass ``check_entry``, and one reason per entry that does not (skipped, not fatal).

    Training (``promptcam train --detections``) reads a detector file so: one bad entry costs that photo,
    not the run. ``promptcam run --detections`` refuses the whole file instead (``check_batch``).
    """
    sound, skipped = [], []
    for index, entry in enumerate(entries):
        try:
            check_entry(path, index, entry, categories)
        except PromptCamError as exc:
            skipped.append(str(exc))
            continue
        sound.append(entry)
    return sound, skipped


def check_entry(path: Path, index: int, entry: Any, categories: dict[str, str]) -> None:
    """Check one ``images`` entry (a file name, and a list of well-formed detections or a ``failure``).

    Raises:
        PromptCamError: naming ``path``, the entry's index and file, and the detection at fault.
    """
    where = f"{path}: images[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"]:
        raise PromptCamError(f"{where}: no 'file' name")
    detections = entry.get("detections")
    if detections is None:
        if "failure" not in entry:
            raise PromptCamError(f"{where} ({entry['file']}): 'detections' is null without a 'failure'")
        return
    if not isinstance(detections, list):
        raise PromptCamError(f"{where} ({entry['file']}): 'detections' is not a list")
    for j, det in enumerate(detections):
        bad = _detection_problem(det, categories)
        if bad:
            raise PromptCamError(f"{where} ({entry['file']}) detection {j}: {bad}")


def _detection_problem(det: Any, categories: dict[str, str]) -> str | None:
    if not isinstance(det, dict):
        return "not an object"
    if det.get("category") not in categories:
        return f"category {det.get('category')!r} is not in detection_categories"
    conf = det.get("conf")
    if not _is_number(conf) or not 0 <= conf <= 1:
        return f"conf {conf!r} is not a number in [0, 1]"
    bbox = det.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return f"bbox {bbox!r} is not [x_min, y_min, width, height]"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def category_ids(detector: DetectorFile, wanted: Sequence[str]) -> frozenset[str]:
    """Category ids from names (``animal``) or ids (``1``) as the detector file declares them.

    Raises:
        PromptCamError: a category the file does not declare.
    """
    by_name = {name.casefold(): cid for cid, name in detector.detection_categories.items()}
    ids = set()
    for item in wanted:
        if item in detector.detection_categories:
            ids.add(item)
        elif item.casefold() in by_name:
            ids.add(by_name[item.casefold()])
        else:
            known = ", ".join(f"{k}={v}" for k, v in detector.detection_categories.items())
            raise PromptCamError(f"{detector.path}: no detection category {item!r} (the file has {known})")
    return frozenset(ids)


def qualifies(detection: dict[str, Any], categories: frozenset[str], threshold: float) -> bool:
    """Whether a detection is classified: a chosen category at or above the confidence threshold,
    with a box of non-zero size."""
    _, _, w, h = detection["bbox"]
    return detection["category"] in categories and detection["conf"] >= threshold and w > 0 and h > 0


@dataclass(frozen=True)
class CropSelection:
    """Which detections of one photo are classified.

    Attributes:
        selected: Indices of the classified detections, most confident first (ties: list order).
        left_out: Indices of the qualifying detections beyond ``MAX_CROPS_PER_PHOTO`` (not classified).
    """

    selected: list[int]
    left_out: list[int]


def select_crops(detections: Sequence[dict[str, Any]], categories: frozenset[str], threshold: float,
                 limit: int = MAX_CROPS_PER_PHOTO) -> CropSelection:
    """The detections of one photo to classify: those that ``qualify``, most confident first, the first
    ``limit`` of them (``promptcam run --detections`` and the station's sidecars choose alike).

    A reader of the results tells the three kinds of detection apart so: a classified one has
    ``classifications``; a qualifying one left out by the limit has no ``classifications`` and
    ``LEFT_OUT_KEY: LEFT_OUT_REASON`` (``mark_left_out``); any other (another category, below the
    threshold, an empty box) has neither. ``left_out_count`` counts the second kind.
    """
    qualifying = [i for i, d in enumerate(detections) if qualifies(d, categories, threshold)]
    qualifying.sort(key=lambda i: -detections[i]["conf"])  # stable: equal confidences keep the list order
    return CropSelection(qualifying[:limit], sorted(qualifying[limit:]))


def select_clip_crops(detections: Sequence[dict[str, Any]], categories: frozenset[str], threshold: float,
                      max_frames: int) -> tuple[dict[int, list[int]], list[int]]:
    """A clip's detections to classify (MegaDetector's video results: each detection has a ``frame_number``):
    by frame, those that ``qualify``, at most ``MAX_CROPS_PER_PHOTO`` per frame and ``max_frames`` frames (the
    first ones). Returns (frame number -> detection indices, the qualifying ones left out: no frame number,
    or beyond the limits)."""
    by_frame: dict[int, list[int]] = {}
    left_out = []
    for index, det in enumerate(detections):
        if not qualifies(det, categories, threshold):
            continue
        number = det.get("frame_number")
        if isinstance(number, int) and not isinstance(number, bool) and 0 <= number < 2**31:
            by_frame.setdefault(number, []).append(index)
        else:
            left_out.append(index)
    chosen: dict[int, list[int]] = {}
    for number in sorted(by_frame)[:max_frames]:
        frame = select_crops([detections[i] for i in by_frame[number]], categories, threshold)
        chosen[number] = [by_frame[number][j] for j in frame.selected]
        left_out += [by_frame[number][j] for j in frame.left_out]
    left_out += [i for number in sorted(by_frame)[max_frames:] for i in by_frame[number]]
    return chosen, sorted(left_out)


def mark_left_out(detections: Sequence[dict[str, Any]], left_out: Sequence[int]) -> list[dict[str, Any]]:
    """A copy of a photo's detections in which each of ``left_out`` says it was not classified (and has no
    ``classifications``, even if the detector file brought some); no other detection carries the mark
    (one the detector file brought is dropped)."""
    out = [dict(d) for d in detections]
    for det in out:
        det.pop(LEFT_OUT_KEY, None)
    for index in left_out:
        out[index].pop("classifications", None)
        out[index][LEFT_OUT_KEY] = LEFT_OUT_REASON
    return out


def left_out_count(detections: Sequence[dict[str, Any]] | None) -> int:
    """How many of a result's detections were left unclassified by ``MAX_CROPS_PER_PHOTO``."""
    return sum(1 for d in detections or () if isinstance(d, dict) and d.get(LEFT_OUT_KEY) == LEFT_OUT_REASON)


def normalise_name(name: str) -> str:
    """A detector file name as a comparable POSIX path (Windows separators, ``./`` and ``//`` dropped)."""
    text = name.replace("\\", "/")
    absolute = text.startswith("/")
    norm = posixpath.normpath(text)
    if norm == ".":
        return ""
    return ("/" + norm.lstrip("/")) if absolute else norm


def check_threshold(threshold: float) -> None:
    """Raises:
        PromptCamError: a ``--det-threshold`` outside [0, 1].
    """
    if not 0 <= threshold <= 1:
        raise PromptCamError(f"--det-threshold {threshold} is outside [0, 1]")
