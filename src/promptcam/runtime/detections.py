"""MegaDetector batch results (format 1.x) as the input of a per-detection run.

``promptcam-run --detections md_results.json`` classifies crops of the detections a detector
already found (MegaDetector v5/v1000, or any tool writing its batch format). This module reads and
checks that file, picks the detections to classify, and matches the file's image paths to the
run's inputs.

Matching rule (``match_inputs``). Each detector entry's ``file`` is normalised (``\\`` -> ``/``,
``./`` and repeated ``/`` dropped). An input image matches the first entry whose normalised name
equals one of, in order:

1. its path relative to ``--detections-root`` (lexical, then with symlinks resolved), when given;
2. its reported name (relative to its input folder, the folder's label first when a run has several);
3. its absolute path, then its canonical path (MegaDetector can write absolute paths).

Where no name matches exactly, a case-insensitive match is used only when exactly one entry has
that folded name (cards formatted FAT/exFAT, detectors run on Windows): case is never guessed
between two entries. Inputs without an entry and entries without an input are both counted,
logged and written to ``results.json`` (the former as failures, the latter passed through
unchanged), never dropped.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptcam.core.errors import PromptCamError

from .inputs import InputFile, canonical_path
from .run_state import file_sha256

DEFAULT_CATEGORIES = ("animal",)
MEGADETECTOR_CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}  # MegaDetector v5/v1000
DEFAULT_THRESHOLD = 0.2  # the common classifier default (SpeciesNet, AddaxAI use 0.1-0.2)
MAX_DETECTOR_BYTES = 2 * 1024**3  # a batch file of millions of images is ~1 GB


@dataclass(frozen=True)
class DetectorFile:
    """A MegaDetector batch-results file, checked.

    Attributes:
        path: Where it was read.
        sha256: Of its bytes (part of a run's identity: ``--resume`` refuses another detector file).
        detection_categories: Category id -> name, as in the file.
        info: The file's ``info`` block.
        entries: The file's ``images`` list (dicts with ``file`` and ``detections``).
    """

    path: Path
    sha256: str
    detection_categories: dict[str, str]
    info: dict[str, Any]
    entries: list[dict[str, Any]]


def load_detector_file(path: Path) -> DetectorFile:
    """Read and check a MegaDetector batch-results file (format 1.x).

    Raises:
        PromptCamError: unreadable, not JSON, another format version, or an entry or detection
            that is malformed (named by its index and file).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_DETECTOR_BYTES:
            raise PromptCamError(f"{path}: detector file is {size / 2**20:.0f} MiB, above the "
                                 f"{MAX_DETECTOR_BYTES / 2**20:.0f} MiB limit")
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise PromptCamError(f"{path}: cannot read detector file ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise PromptCamError(f"{path}: not a JSON detector file ({exc})") from exc
    categories, info = check_batch(path, data)
    return DetectorFile(path, file_sha256(path), categories, info, data["images"])


def check_batch(path: Path, data: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """Check parsed batch-results JSON (``load_detector_file``, and the watcher's per-image sidecars).

    Returns:
        (detection_categories, info) of the file.

    Raises:
        PromptCamError: not a batch file, another format version, or a malformed entry or detection.
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
    for index, entry in enumerate(data["images"]):
        check_entry(path, index, entry, categories)
    return dict(categories), info


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


def normalise_name(name: str) -> str:
    """A detector file name as a comparable POSIX path (Windows separators, ``./`` and ``//`` dropped)."""
    text = name.replace("\\", "/")
    absolute = text.startswith("/")
    norm = posixpath.normpath(text)
    if norm == ".":
        return ""
    return ("/" + norm.lstrip("/")) if absolute else norm


@dataclass
class Matching:
    """Inputs matched to detector entries, and what did not match either way."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # InputFile.key -> detector entry
    inputs_missing: list[InputFile] = field(default_factory=list)  # inputs the detector file does not list
    entries_unmatched: list[dict[str, Any]] = field(default_factory=list)  # entries of no input
    case_folded: int = 0  # matches made ignoring case

    def summary(self, detector_path: Path) -> str:
        return (f"{detector_path}: {len(self.entries)} image(s) matched; {len(self.inputs_missing)} input image(s) "
                f"not in the detector file; {len(self.entries_unmatched)} detector entr(ies) not among the inputs"
                + (f"; {self.case_folded} matched ignoring case" if self.case_folded else ""))


def input_names(item: InputFile, root: Path | None) -> list[str]:
    """The names an input may have in a detector file, most specific first (see the module docstring)."""
    names = []
    if root is not None:
        for path, base in ((os.path.abspath(item.path), os.path.abspath(root)),
                           (item.key, canonical_path(root))):
            rel = os.path.relpath(path, base)
            if not rel.startswith(".."):
                names.append(rel)
    names += [item.name, os.path.abspath(item.path), item.key]
    out: list[str] = []
    for name in names:
        norm = normalise_name(name)
        if norm and norm not in out:
            out.append(norm)
    return out


def match_inputs(files: Sequence[InputFile], detector: DetectorFile, root: Path | None = None) -> Matching:
    """Match a run's inputs to the detector file's entries (rule in the module docstring)."""
    exact: dict[str, int] = {}
    folded: dict[str, list[int]] = {}
    for index, entry in enumerate(detector.entries):
        norm = normalise_name(entry["file"])
        exact.setdefault(norm, index)  # a name listed twice: the first wins, the other stays unmatched
        folded.setdefault(norm.casefold(), []).append(index)
    matching = Matching()
    taken: set[int] = set()
    for item in files:
        names = input_names(item, root)
        found = next((exact[n] for n in names if n in exact and exact[n] not in taken), None)
        if found is None:
            for name in names:
                candidates = folded.get(name.casefold(), [])
                if len(candidates) == 1 and candidates[0] not in taken:
                    found = candidates[0]
                    matching.case_folded += 1
                    break
        if found is None:
            matching.inputs_missing.append(item)
        else:
            taken.add(found)
            matching.entries[item.key] = detector.entries[found]
    matching.entries_unmatched = [e for i, e in enumerate(detector.entries) if i not in taken]
    return matching
