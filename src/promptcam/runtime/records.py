"""The one record path: a ``Prediction`` becomes an ``ImageRecord``, its heatmap files drawn, in every mode.

The folder run, ``--detections`` crops, Ray, the inbox station and camera streams all call
``record_prediction``; what differs between them is only where the heatmaps go (``heatmap_paths``)
and whether all class probabilities are kept (stations store them in SQLite).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .compare import COMPARE_SUFFIX, write_compare_sheet
from .crops import BoxHeat, CropSquare, overlay_boxes
from .heatmap import contact_sheet, overlay, write_image
from .prediction import Prediction, explained_index

NAME_MAX = 255  # bytes in one file name (ext4, XFS, exFAT, tmpfs)
HEATMAP_SUFFIX, TRAITS_SUFFIX = ".heatmap.jpg", ".traits.jpg"


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
        event_id / seq_num_frames / frame_num: With events (``--events``): the burst the file belongs to, its
            size and the file's place in it from 0 (COCO Camera Traps ``seq_id``, ``seq_num_frames``, ``frame_num``).
        media: ``video`` for a clip (None: a photo). A clip's ``top_k`` is its verdict (``runtime.verdict``),
            its ``heatmap`` the strip of its decisive frames.
        frame_rate / frames / decisive_frames: A clip's frame rate, its sampled frames (``frame_number``,
            ``seconds``, ``evidence``, their ``top_k``; with ``--per-frame`` each frame's ``heatmap``) and the
            frame numbers that decided its verdict.
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
    event_id: str | None = None
    seq_num_frames: int | None = None
    frame_num: int | None = None
    media: str | None = None
    frame_rate: float | None = None
    frames: list[dict[str, Any]] | None = None
    decisive_frames: list[int] | None = None

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



def db_text(text: str | None) -> str | None:
    """``text`` as valid UTF-8 (SQLite, logs): undecodable name bytes (surrogate escapes) become ``\\xNN``."""
    if text is None:
        return None
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# -- where heatmaps go ---------------------------------------------------------------------------


def fit_name(name: str, suffix: str = "", *, reserve: int = 0, readable: bool = False) -> str:
    """``name + suffix`` as one path component of at most ``NAME_MAX - reserve`` bytes.

    A name that does not fit is cut short and given ``~`` and a hash of the full name (so two long
    names stay apart), keeping its own extension when no ``suffix`` is added.

    Args:
        name: One path component, as ``os`` spells it (undecodable bytes as surrogate escapes).
        suffix: Added after the name (``.heatmap.jpg``).
        reserve: Bytes kept free for a suffix added later (``_12`` of a free name).
        readable: Spell undecodable bytes as ``\\xNN`` text (archive folders a person browses).
    """
    text = (db_text(name) or "_") if readable else name
    if len(os.fsencode(text + suffix)) + reserve <= NAME_MAX:
        return text + suffix
    stem, dot, extension = text.rpartition(".")
    if suffix or not dot or len(extension.encode("utf-8", "surrogateescape")) > 16:
        stem, extension = text, ""
    else:
        extension = "." + extension
    tail = f"~{hashlib.sha256(os.fsencode(name)).hexdigest()[:12]}{extension}{suffix}"
    budget = NAME_MAX - reserve - len(os.fsencode(tail))
    while len(os.fsencode(stem)) > max(1, budget):
        stem = stem[:-1]
    return stem + tail


def safe_components(name: str) -> list[str]:
    """Path components of a reported name that stay inside a folder: no root, no ``.``, ``..`` kept
    visible but harmless (``__``), so ``../x.jpg`` and ``x.jpg`` stay distinct."""
    parts = []
    for part in name.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        parts.append("__" if part == ".." else part)
    return parts or ["_"]


class HeatmapFiles(NamedTuple):
    """Where one image's drawings go: the heatmap, the trait-head sheet and the class-comparison sheet."""

    heatmap: Path
    traits: Path

    @property
    def compare(self) -> Path:
        """The class-comparison sheet: ``NAME.compare.jpg`` beside ``NAME.heatmap.jpg``."""
        name = self.heatmap.name  # the suffixes are equally long: a name shortened to fit stays within limits
        stem = name[: -len(HEATMAP_SUFFIX)] if name.endswith(HEATMAP_SUFFIX) else self.heatmap.stem
        return self.heatmap.with_name(stem + COMPARE_SUFFIX)


def heatmap_paths(heatmap_dir: Path, file: str, tag: str | None = None, *, readable: bool = False) -> HeatmapFiles:
    """The heatmap files of a reported name, always inside ``heatmap_dir``.

    The image's own extension is kept (``cam.jpg.heatmap.jpg``), so ``cam.jpg`` and ``cam.png`` never
    share a heatmap; ``tag`` (a station's content hash) goes before the suffix, so a new photo under
    an old name never overwrites the first one's heatmap. Names near the 255-byte limit are
    shortened with a hash; ``readable`` spells undecodable name bytes as ``\\xNN`` (a station stores the
    path as text in SQLite, and the file must be found by it).
    """
    *folders, base = safe_components(file)
    folder = heatmap_dir.joinpath(*(fit_name(f, readable=readable) for f in folders))
    stem = f"{base}.{tag}" if tag else base
    return HeatmapFiles(folder / fit_name(stem, HEATMAP_SUFFIX, readable=readable),
                        folder / fit_name(stem, TRAITS_SUFFIX, readable=readable))


# -- the record of a prediction ------------------------------------------------------------------


@dataclass
class CropBoxes:
    """``--detections``: which of a photo's detections were classified, from which squares, in its frame."""

    selected: Sequence[int]
    squares: Sequence[CropSquare]
    full_size: tuple[int, int]  # (height, width) of the photo the boxes are normalised to


def record_prediction(record: ImageRecord, prediction: Prediction | Sequence[Prediction],
                      class_names: Sequence[str], *, preview: np.ndarray | None = None,
                      heatmaps: HeatmapFiles | None = None, crops: CropBoxes | None = None,
                      keep_probabilities: bool = False, compare: int = 0,
                      compare_extra: Sequence[int] = ()) -> ImageRecord:
    """Write what a prediction says into ``record`` and draw its heatmap files; returns ``record``.

    Args:
        record: The image's record (file, size, station fields already set).
        prediction: The whole image's prediction, or with ``crops`` one per classified detection.
        class_names: The model's classes.
        preview: The decode heatmaps are drawn on (None: no drawing).
        heatmaps: Where to draw (None: no drawing).
        crops: ``--detections``: ``record.detections`` get their ``classifications`` and the one
            heatmap of the photo shows every classified box.
        keep_probabilities: Also keep every class's probability (stations).
        compare: > 0: also the sheet of the ``compare`` most probable classes (and ``compare_extra``).

    The fields are set before anything is drawn: a heatmap that cannot be written (``OSError``,
    ``ImageError``) leaves a complete record for the caller to keep or fail.
    """
    draw = heatmaps is not None and preview is not None
    if crops is not None:
        predictions = list(prediction) if isinstance(prediction, Sequence) else [prediction]
        record.detections, boxes = classified_detections(record.detections or [], crops.selected, predictions,
                                                         crops.squares, class_names)
        if draw and boxes:
            record.heatmap = str(write_image(heatmaps.heatmap, overlay_boxes(preview, crops.full_size, boxes)))
        return record
    assert isinstance(prediction, Prediction)
    explained = explained_index(prediction)
    ranking = prediction.traits.get(explained)
    record.top_k = [{"index": c.index, "name": c.name, "probability": round_probability(c.probability)}
                    for c in prediction.top_k]
    record.explained_class = class_names[explained]
    record.trait_heads = ranking.top_heads if ranking is not None else None
    record.trait_order = ranking.order if ranking is not None else None
    if keep_probabilities:
        record.probabilities = [round_probability(p) for p in prediction.probabilities]
    if not draw:
        return record
    record.heatmap = str(write_image(heatmaps.heatmap, overlay(preview, prediction.attention_mean(explained))))
    if ranking is not None:
        sheet = contact_sheet(preview, prediction.attention[explained], ranking.top_heads)
        record.traits_image = str(write_image(heatmaps.traits, sheet))
    if compare:
        write_compare_sheet(heatmaps.compare, preview, prediction, class_names, compare, compare_extra)
    return record


def classified_detections(detections: Sequence[dict[str, Any]], selected: Sequence[int],
                          predictions: Sequence[Prediction], squares: Sequence[CropSquare],
                          class_names: Sequence[str]) -> tuple[list[dict[str, Any]], list[BoxHeat]]:
    """A photo's detections with ``classifications`` added to the ``selected`` ones, and their boxes to draw.

    Args:
        detections: Every detection of the photo (not modified).
        selected: Indices of the classified detections, in the order of ``predictions`` and ``squares``.
    """
    out = [dict(d) for d in detections]
    boxes: list[BoxHeat] = []
    for index, prediction, square in zip(selected, predictions, squares, strict=True):
        out[index]["classifications"] = [[str(c.index), round_probability(c.probability)] for c in prediction.top_k]
        boxes.append(BoxHeat(out[index]["bbox"], square, prediction.attention_mean(explained_index(prediction)),
                             class_names[prediction.top1.index]))
    return out, boxes
