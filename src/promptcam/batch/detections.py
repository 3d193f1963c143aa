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

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptcam.batch.inputs import InputFile, canonical_path
from promptcam.core.atomic import file_sha256
from promptcam.core.errors import PromptCamError
from promptcam.core.untrusted import loads_untrusted
from promptcam.results.megadetector import (
    DetectorFile,
    check_batch,
    check_batch_header,
    normalise_name,
    sound_entries,
)

MAX_DETECTOR_BYTES = 2 * 1024**3  # a batch file of millions of images is ~1 GB


def load_detector_file(path: Path, *, skip_bad_entries: bool = False) -> DetectorFile:
    """Read and check a MegaDetector batch-results file (format 1.x).

    Args:
        path: The file.
        skip_bad_entries: Leave out malformed entries (each named in ``DetectorFile.skipped``) instead
            of refusing the file (training does; a run refuses).

    Raises:
        PromptCamError: unreadable, not JSON, another format version, or (unless ``skip_bad_entries``)
            an entry or detection that is malformed (named by its index and file).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_DETECTOR_BYTES:
            raise PromptCamError(f"{path}: detector file is {size / 2**20:.0f} MiB, above the "
                                 f"{MAX_DETECTOR_BYTES / 2**20:.0f} MiB limit")
        data = loads_untrusted(path.read_bytes().decode("utf-8"), f"{path}: detector file")
    except OSError as exc:
        raise PromptCamError(f"{path}: cannot read detector file ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # UntrustedJSONError: malformed, too deep or too large
        raise PromptCamError(f"{path}: not a JSON detector file ({exc})") from exc
    if skip_bad_entries:
        categories, info = check_batch_header(path, data)
        entries, skipped = sound_entries(path, data["images"], categories)
        return DetectorFile(path, file_sha256(path), categories, info, entries, tuple(skipped))
    categories, info = check_batch(path, data)
    return DetectorFile(path, file_sha256(path), categories, info, data["images"])


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
