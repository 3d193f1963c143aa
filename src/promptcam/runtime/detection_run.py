"""``promptcam-run --detections``: classify the crops of a detector's boxes instead of whole frames.

The run is the file run of ``pipeline`` (same chunks, journal, resume and writer thread); this
module supplies its three per-chunk steps for detections: load (decode each photo once, at the
largest JPEG reduction its smallest crop allows, and cut every crop from that one decode), predict
(all crops of a chunk, in backend batches) and records (the detector's detections with
``classifications`` added, one heatmap per photo covering all of its boxes). Crop rule: ``crops``;
path matching: ``detections``.

A photo with no qualifying detection is not decoded at all (most camera-trap frames are empty): its
record keeps its detections unclassified. An input the detector file does not list is a failure
record naming the detector file; a detector entry of no input is passed through to ``results.json``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from promptcam.core.config import ModelConfig
from promptcam.core.errors import ImageError, PromptCamError

from .crops import (
    CROP_MARGIN,
    BoxHeat,
    CropSquare,
    clip_box,
    crop_reduction,
    crop_square,
    cut_square,
    overlay_boxes,
)
from .detections import (
    DEFAULT_CATEGORIES,
    DEFAULT_THRESHOLD,
    DetectorFile,
    Matching,
    category_ids,
    load_detector_file,
    match_inputs,
    qualifies,
)
from .heatmap import write_image
from .images import (
    DECODE_BUDGET,
    check_dimensions,
    decode_image,
    full_size_of,
    is_jpeg,
    read_file_bytes,
    reduced_size,
    resize_for_model,
)
from .inputs import InputFile, heatmap_paths
from .pipeline import (
    FATAL_WRITE_ERRORS,
    HEATMAP_PREVIEW_SIDE,
    LoadedImage,
    RunOptions,
    base_record,
    explained_index,
    heatmap_original,
)
from .predictor import Prediction, Predictor
from .results import ImageRecord, round_probability


@dataclass
class DetectionOptions:
    """What ``--detections`` classifies.

    Attributes:
        path: The detector's batch-results file (MegaDetector format 1.x).
        threshold: Detections at or above this confidence are classified.
        categories: Detection categories classified, by name or id.
        root: The folder the detector file's relative paths are relative to (default: each input folder).
    """

    path: Path
    threshold: float = DEFAULT_THRESHOLD
    categories: Sequence[str] = DEFAULT_CATEGORIES
    root: Path | None = None


class DetectionPlan:
    """One ``--detections`` run: the detector file, its match to the inputs, and the per-chunk steps."""

    def __init__(self, options: DetectionOptions, files: Sequence[InputFile]) -> None:
        if not 0 <= options.threshold <= 1:
            raise PromptCamError(f"--det-threshold {options.threshold} is outside [0, 1]")
        self.options = options
        self.detector: DetectorFile = load_detector_file(options.path)
        self.categories = category_ids(self.detector, options.categories)
        self.matching: Matching = match_inputs(files, self.detector, options.root)

    def identity(self) -> dict[str, Any]:
        """What ``run.json`` adds for this run (``--resume`` refuses another detector file or selection)."""
        return {"detections_sha256": self.detector.sha256, "det_threshold": self.options.threshold,
                "det_categories": sorted(self.categories),
                "detections_root": str(Path(self.options.root).resolve()) if self.options.root else None}

    def info(self) -> dict[str, Any]:
        """The ``classifier_metadata`` entries of results.json: the detector file, the selection, the mismatches."""
        return {"detections_file": str(self.options.path), "detections_sha256": self.detector.sha256,
                "det_threshold": self.options.threshold,
                "det_categories": {c: self.detector.detection_categories[c] for c in sorted(self.categories)},
                "crop_margin": CROP_MARGIN, "images_not_in_detections_file": len(self.matching.inputs_missing),
                "detections_entries_not_in_inputs": len(self.matching.entries_unmatched)}

    def detector_facts(self) -> dict[str, Any]:
        return {"detection_categories": self.detector.detection_categories, "info": self.detector.info,
                "unmatched_entries": self.matching.entries_unmatched}

    def for_chunk(self, chunk: Sequence[InputFile]) -> DetectionPlan:
        """A copy that knows only ``chunk``'s detector entries (small enough to travel with a Ray task)."""
        part = copy.copy(self)
        part.detector = dataclasses.replace(self.detector, entries=[])
        part.matching = Matching(entries={f.key: self.matching.entries[f.key] for f in chunk
                                          if f.key in self.matching.entries})
        return part

    def selected(self, item: InputFile) -> list[int]:
        """Indices of the detections of ``item`` that are classified."""
        entry = self.matching.entries.get(item.key)
        detections = (entry or {}).get("detections") or []
        return [i for i, d in enumerate(detections) if qualifies(d, self.categories, self.options.threshold)]

    # -- the three per-chunk steps ------------------------------------------------------------

    def load_item(self, item: InputFile, config: ModelConfig, keep_original: bool, *,
                  reduce: bool = True) -> LoadedImage:
        """Decode one photo once and cut all its crops (in a worker thread); trouble becomes a failure."""
        entry = self.matching.entries.get(item.key)
        if entry is None:
            return LoadedImage(item, failure=f"{item.path}: not in the detections file {self.options.path}")
        if entry.get("detections") is None:
            return LoadedImage(item, failure=f"{item.path}: the detector failed on it "
                                             f"({entry.get('failure', 'no detections')})")
        boxes = [entry["detections"][i]["bbox"] for i in self.selected(item)]
        size = config.img_size
        if not boxes:
            return LoadedImage(item, np.empty((0, size, size, 3), np.uint8), squares=[])
        name = str(item.path)
        try:
            photo = decode_crops(read_file_bytes(item.path), name, boxes, config, keep_original=keep_original,
                                 reduce=reduce)
        except ImageError as exc:
            return LoadedImage(item, failure=str(exc))
        except (OSError, cv2.error, MemoryError, ValueError) as exc:
            return LoadedImage(item, failure=f"{name}: cannot decode image ({type(exc).__name__}: {exc})")
        return LoadedImage(item, photo.crops, photo.full, photo.original, squares=photo.squares)

    def predict(self, predictor: Predictor, loaded: list[LoadedImage], options: RunOptions,
                batch: np.ndarray | None = None) -> dict[int, list[Prediction]]:
        """All crops of a chunk through the backend, in batches of its size; predictions by ``id(item)``."""
        del batch  # crops have their own buffers
        good = [item for item in loaded if item.failure is None and item.pixels is not None and len(item.pixels)]
        if not good:
            return {}
        pixels = np.concatenate([item.pixels for item in good])
        classes = [options.explain_class] if options.explain_class else None
        predictions = predict_crops(predictor, pixels, top_k=options.top_k, classes=classes)
        out: dict[int, list[Prediction]] = {}
        start = 0
        for item in good:
            out[id(item)] = predictions[start:start + len(item.pixels)]
            start += len(item.pixels)
        return out

    def records(self, predictor: Predictor, loaded: list[LoadedImage], predictions: dict[int, list[Prediction]],
                options: RunOptions, executor: Executor | None = None,
                heatmap_files: dict[str, tuple[Path, Path]] | None = None) -> list[ImageRecord]:
        """One record per photo of a chunk; heatmaps drawn in ``executor``'s threads."""

        def record(item: LoadedImage) -> ImageRecord:
            try:
                return self._record(item, predictions.get(id(item), []), predictor, options, heatmap_files or {})
            except ImageError as exc:
                return self._failed(item.item, str(exc))
            except OSError as exc:
                if exc.errno in FATAL_WRITE_ERRORS:
                    raise
                return self._failed(item.item, f"{item.item.path}: cannot write heatmap ({exc})")

        if executor is not None and options.heatmaps is not None:
            return list(executor.map(record, loaded))
        return [record(item) for item in loaded]

    def _failed(self, item: InputFile, failure: str) -> ImageRecord:
        record = base_record(item, failure)
        entry = self.matching.entries.get(item.key)
        if entry is not None:
            record.file = entry["file"]
            record.detections = entry.get("detections")
        return record

    def _record(self, loaded: LoadedImage, predictions: list[Prediction], predictor: Predictor,
                options: RunOptions, heatmap_files: dict[str, tuple[Path, Path]]) -> ImageRecord:
        if loaded.failure is not None:
            return self._failed(loaded.item, loaded.failure)
        entry = self.matching.entries[loaded.item.key]
        record = base_record(loaded.item)
        record.file = entry["file"]  # the detector's spelling: Timelapse finds the photo by it
        if loaded.size is not None:
            record.height, record.width = loaded.size
        record.detections, boxes = classified_detections(entry["detections"], self.selected(loaded.item),
                                                         predictions, loaded.squares or [], predictor)
        if options.heatmaps is not None and loaded.original is not None and boxes and loaded.size is not None:
            heat_path, _ = heatmap_files.get(loaded.item.name) or heatmap_paths(options.heatmaps, loaded.item.name)
            record.heatmap = str(write_image(heat_path, overlay_boxes(loaded.original, loaded.size, boxes)))
        return record


@dataclass
class PhotoCrops:
    """One photo decoded once for all of its crops.

    Attributes:
        full: (height, width) of the full-size, EXIF-oriented photo (the boxes' frame).
        squares: The crop square of each box, in full-size pixels.
        crops: The crops at the model's input size, (N, S, S, 3) uint8 RGB.
        original: The heatmap preview of the photo (None when not asked for).
    """

    full: tuple[int, int]
    squares: list[CropSquare]
    crops: np.ndarray
    original: np.ndarray | None


def decode_crops(data: bytes | np.ndarray, name: str, boxes: Sequence[Sequence[float]], config: ModelConfig, *,
                 keep_original: bool, reduce: bool = True) -> PhotoCrops:
    """Decode a photo once, at the largest JPEG reduction its smallest crop allows, and cut every crop.

    Args:
        data: The file's bytes (released as soon as the photo is decoded).
        name: The photo's name, for errors.
        boxes: Normalised ``[x, y, w, h]`` boxes (at least one).
        keep_original: Also keep the heatmap preview.
        reduce: Allow a reduced JPEG decode.

    Raises:
        ImageError: unreadable, too large, or does not decode (OpenCV errors pass through).
    """
    size = config.img_size
    width, height = check_dimensions(data, name)
    reduction = _crop_decode_reduction(data, width, height, boxes, size, keep_original) if reduce else 1
    rw, rh = reduced_size(width, height, reduction)
    with DECODE_BUDGET.hold(rw * rh):
        rgb = decode_image(data, name, reduction=reduction)
        del data
        full = full_size_of((width, height), rgb, reduction)
        scale = rgb.shape[1] / full[1]
        squares = [crop_square(b, full[1], full[0]) for b in boxes]
        crops = np.empty((len(boxes), size, size, 3), np.uint8)
        for i, square in enumerate(squares):
            resize_for_model(cut_square(rgb, square, scale), config, crops[i])
        original = heatmap_original(rgb) if keep_original else None
    return PhotoCrops(full, squares, crops, original)


def _crop_decode_reduction(data: bytes | np.ndarray, width: int, height: int, boxes: Sequence[Sequence[float]],
                           size: int, keep_original: bool) -> int:
    """The JPEG reduction for a photo's crops: its smallest crop stays at or above the model's size
    (the crop side is bounded below with the photo's shorter side, whatever its EXIF orientation),
    and with heatmaps the preview's long side at or above ``HEATMAP_PREVIEW_SIDE``."""
    if not is_jpeg(data):
        return 1
    smallest = min(max(clip_box(b)[2:]) for b in boxes) * min(width, height) * (1 + 2 * CROP_MARGIN)
    reduction = crop_reduction(smallest, size)
    long_side = max(width, height)
    while keep_original and reduction > 1 and long_side / reduction < min(HEATMAP_PREVIEW_SIDE, long_side):
        reduction //= 2
    return reduction


def predict_crops(predictor: Predictor, crops: np.ndarray, *, top_k: int,
                  classes: Sequence[str] | None = None) -> list[Prediction]:
    """Crops at the model's size, (N, S, S, 3) uint8, through the backend in batches of its size."""
    size = predictor.config.img_size
    predictions: list[Prediction] = []
    for start in range(0, len(crops), predictor.batch_size):
        part = crops[start:start + predictor.batch_size]
        predictions += predictor.predict_pixels(part, [(size, size)] * len(part), top_k=top_k, classes=classes)
    return predictions


def classified_detections(detections: Sequence[dict[str, Any]], selected: Sequence[int],
                          predictions: Sequence[Prediction], squares: Sequence[CropSquare],
                          predictor: Predictor) -> tuple[list[dict[str, Any]], list[BoxHeat]]:
    """A photo's detections with ``classifications`` added to the ``selected`` ones, and their boxes to draw.

    Args:
        detections: Every detection of the photo (not modified).
        selected: Indices of the classified detections, in the order of ``predictions`` and ``squares``.
    """
    out = [dict(d) for d in detections]
    boxes: list[BoxHeat] = []
    for index, prediction, square in zip(selected, predictions, squares, strict=True):
        out[index]["classifications"] = [[str(c.index), round_probability(c.probability)] for c in prediction.top_k]
        explained = explained_index(prediction)
        boxes.append(BoxHeat(out[index]["bbox"], square, prediction.attention_mean(explained),
                             predictor.class_names[prediction.top1.index]))
    return out, boxes


def build_plan(options: DetectionOptions, files: Sequence[InputFile], log: Callable[[str], None]) -> DetectionPlan:
    """Read the detector file, match it to the inputs and say what did not match."""
    plan = DetectionPlan(options, files)
    log(plan.matching.summary(options.path))
    for item in plan.matching.inputs_missing[:5]:
        log(f"  not in the detections file: {item.name}")
    for entry in plan.matching.entries_unmatched[:5]:
        log(f"  detections entry of no input: {entry['file']}")
    return plan
