"""``promptcam-review export``: the reviewer's verdicts as a CSV and as an ImageFolder tree for retraining.

An event labelled in one action has one row per file (each under the event's label), with the event's
id and the results' verdict of it, so a burst's correction is as usable per file as per event.

The tree is ``OUT/images/<NNN>.<class>/<id>_<file name>`` (NNN: the class index): every reviewed
image under its right class (confirmed ones under the prediction, corrected ones under the
correction), hard-linked where the file system allows and copied otherwise, so
``promptcam-train --data OUT/images --val-split 0.1`` trains on it directly. Class and file names
are user data: each becomes one safe path component.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from promptcam.core.atomic import atomic_open
from promptcam.core.errors import PromptCamError
from promptcam.results.formats import csv_text
from promptcam.runtime.records import fit_name

from .query import ReviewStore

CSV_NAME = "corrections.csv"
MARKER = ".promptcam-review-export"
CSV_COLUMNS = ["id", "file", "image", "predicted", "confidence", "verdict", "label", "reviewed_at", "exported_as",
               # with events (--events): the file's event, the results' verdict of it, and whether the label
               # was given to the whole event at once ('event') or to this file ('file')
               "event_id", "event_verdict", "event_confidence", "labelled_by"]


@dataclass
class ExportSummary:
    reviewed: int = 0
    corrected: int = 0
    linked: int = 0
    copied: int = 0
    missing: list[str] = field(default_factory=list)
    csv: Path | None = None
    tree: Path | None = None


def safe_component(name: str) -> str:
    """One path component that stays inside its folder and is not hidden ('/', NUL and leading dots replaced)."""
    text = "".join("_" if ch in "/\\\x00" or ord(ch) < 32 else ch for ch in name).strip()
    text = text.lstrip(".") or "_"
    if text != name.strip():
        text += "~" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]  # distinct after cleaning
    return fit_name(text, "")


def class_folder(index: int | None, label: str) -> str:
    """``NNN.<class>``: folders sort in the model's class order, and promptcam-train's ``clean_class_name``
    turns the folder back into the class name."""
    return safe_component(f"{index:03d}.{label}" if index is not None else label)


def place(source: Path, target: Path) -> str:
    """Hard-link ``source`` at ``target`` (a copy when linking is impossible); returns 'linked' or 'copied'."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return "linked"
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)
        return "copied"


def export_reviews(store: ReviewStore, out: Path, log: Callable[[str], None] = print) -> ExportSummary:
    """Write ``OUT/corrections.csv`` and the ``OUT/images/<class>/`` tree of every reviewed item.

    A reviewed image that is gone from disk is listed in the CSV (``exported_as`` empty) and reported,
    never a crash of the export.
    """
    items = store.reviewed_items()
    summary = ExportSummary(reviewed=len(items), csv=out / CSV_NAME, tree=out / "images")
    marker = summary.tree / MARKER
    if summary.tree.exists():
        if not marker.is_file():
            raise PromptCamError(f"{summary.tree} exists and was not written by promptcam-review export; "
                                 "choose another --out")
        shutil.rmtree(summary.tree)  # our own earlier export: verdicts may have changed since
    summary.tree.mkdir(parents=True)
    marker.write_text("written by promptcam-review export; the whole folder is replaced on the next export\n")
    with atomic_open(out / CSV_NAME, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for item in items:
            summary.corrected += item["verdict"] == "corrected"
            image = Path(item["image"]) if item["image"] else None
            exported = ""
            if image is not None and image.is_file():
                target = summary.tree / class_folder(store.class_index(item["label"]), item["label"]) / safe_component(
                    f"{item['id']}_{Path(item['file']).name}")
                try:
                    how = place(image, target)
                except OSError as exc:
                    raise PromptCamError(f"{target}: cannot write the exported image ({exc})") from exc
                summary.linked += how == "linked"
                summary.copied += how == "copied"
                exported = str(target.relative_to(out))
            else:
                summary.missing.append(item["file"])
                log(f"{item['file']}: photo not found on disk ({item['image']}); listed in the CSV, not exported")
            confidence = f"{item['confidence']:.6f}" if item["confidence"] >= 0 else ""
            known = item["event_confidence"] is not None and item["event_confidence"] >= 0
            writer.writerow([item["id"], csv_text(item["file"]), csv_text(item["image"] or ""),
                             csv_text(item["top1"]), confidence,
                             item["verdict"], csv_text(item["label"]), item["reviewed_at"], csv_text(exported),
                             csv_text(item["event_id"] or ""), csv_text(item["event_verdict"] or ""),
                             f"{item['event_confidence']:.6f}" if known else "",
                             "event" if item["labelled_by_event"] else "file"])
    return summary
