"""``promptcam-run --detections``: classify the crops of a detector's boxes instead of whole frames.

The run is the file run of ``batch.run`` (same chunks, journal, resume and writer thread); this
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
from pathlib import Path
from typing import Any

import numpy as np

from promptcam.core.config import ModelConfig
from promptcam.core.errors import ImageError
from promptcam.results.megadetector import (
    CropSelection,
    DetectorFile,
    category_ids,
    check_threshold,
    mark_left_out,
    select_crops,
)
from promptcam.runtime.crops import CROP_MARGIN, box_failure
from promptcam.runtime.images import read_file_bytes
from promptcam.runtime.model_input import model_input
from promptcam.runtime.prediction import Prediction
from promptcam.runtime.predictor import Predictor
from promptcam.runtime.records import CropBoxes, HeatmapFiles, ImageRecord, record_prediction

from .chunks import LoadedImage, base_record, guarded_records, heatmap_files_of
from .detections import Matching, load_detector_file, match_inputs
from .inputs import InputFile
from .options import DetectionOptions, RunOptions


class DetectionPlan:
    """One ``--detections`` run: the detector file, its match to the inputs, and the per-chunk steps."""

    def __init__(self, options: DetectionOptions, files: Sequence[InputFile], *, run_names: bool = False) -> None:
        check_threshold(options.threshold)
        self.options = options
        # several inputs: records keep the run's names (a folder's label first), as every other output does;
        # the detector's spelling ("cam01/IMG_0001.JPG" relative to one of them) would not say which input
        self.run_names = run_names
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
        """Indices of the detections of ``item`` that are classified (at most ``MAX_CROPS_PER_PHOTO``)."""
        return self._selection(item).selected

    def _selection(self, item: InputFile) -> CropSelection:
        entry = self.matching.entries.get(item.key)
        return select_crops((entry or {}).get("detections") or [], self.categories, self.options.threshold)

    # -- the three per-chunk steps ------------------------------------------------------------

    def load_item(self, item: InputFile, config: ModelConfig, keep_preview: bool, *,
                  reduce: bool = True) -> LoadedImage:
        """Decode one photo once and cut all its crops (in a worker thread); trouble becomes a failure.

        A chosen box with no pixels in the photo is not cut (``crops.box_failure``): known from the box
        alone when nothing of it is inside, from the decoded size when less than a pixel is.
        """
        entry = self.matching.entries.get(item.key)
        if entry is None:
            return LoadedImage(item, failure=f"{item.path}: not in the detections file {self.options.path}")
        detections = entry.get("detections")
        if detections is None:
            return LoadedImage(item, failure=f"{item.path}: the detector failed on it "
                                             f"({entry.get('failure', 'no detections')})")
        chosen = self.selected(item)
        failures = {i: reason for i in chosen if (reason := box_failure(detections[i]["bbox"])) is not None}
        kept = [i for i in chosen if i not in failures]
        if not kept:  # nothing to classify: the photo is not even read
            size = config.img_size
            return LoadedImage(item, np.empty((0, size, size, 3), np.uint8), squares=[], selected=[],
                               box_failures=failures)
        try:
            photo = model_input(read_file_bytes(item.path), str(item.path), config,
                                boxes=[detections[i]["bbox"] for i in kept], keep_preview=keep_preview, reduce=reduce)
        except ImageError as exc:
            return LoadedImage(item, failure=str(exc))
        height, width = photo.size
        small = {i: reason for i in kept if (reason := box_failure(detections[i]["bbox"], width, height)) is not None}
        rows = [j for j, i in enumerate(kept) if i not in small]
        pixels, squares = photo.pixels, photo.squares or []
        if small:
            pixels, squares = pixels[rows], [squares[j] for j in rows]
        return LoadedImage(item, pixels, photo.size, photo.preview, squares=squares,
                           selected=[kept[j] for j in rows], box_failures=failures | small)

    def predict(self, predictor: Predictor, loaded: list[LoadedImage], options: RunOptions,
                batch: np.ndarray | None = None) -> dict[int, list[Prediction]]:
        """All crops of a chunk through the backend, in batches of its size; predictions by ``id(item)``."""
        del batch  # crops have their own buffers
        good = [item for item in loaded if item.failure is None and item.pixels is not None and len(item.pixels)]
        if not good:
            return {}
        pixels = np.concatenate([item.pixels for item in good])
        classes = [options.explain_class] if options.explain_class else None
        predictions = predictor.predict_batched(pixels, top_k=options.top_k, classes=classes)
        out: dict[int, list[Prediction]] = {}
        start = 0
        for item in good:
            out[id(item)] = predictions[start:start + len(item.pixels)]
            start += len(item.pixels)
        return out

    def records(self, predictor: Predictor, loaded: list[LoadedImage], predictions: dict[int, list[Prediction]],
                options: RunOptions, executor: Executor | None = None,
                heatmap_files: dict[str, HeatmapFiles] | None = None) -> list[ImageRecord]:
        """One record per photo of a chunk; heatmaps drawn in ``executor``'s threads."""
        return guarded_records(
            loaded, lambda item: self._record(item, predictions.get(id(item), []), predictor, options,
                                              heatmap_files or {}),
            self._failed, executor if options.heatmaps is not None else None)

    def _failed(self, item: InputFile, failure: str) -> ImageRecord:
        record = base_record(item, failure)
        entry = self.matching.entries.get(item.key)
        if entry is not None:
            record.file = item.name if self.run_names else entry["file"]
            record.detections = entry.get("detections")
        return record

    def _record(self, loaded: LoadedImage, predictions: list[Prediction], predictor: Predictor,
                options: RunOptions, heatmap_files: dict[str, HeatmapFiles]) -> ImageRecord:
        entry = self.matching.entries[loaded.item.key]
        record = base_record(loaded.item)
        if not self.run_names:
            record.file = entry["file"]  # the detector's spelling: Timelapse finds the photo by it
        record.detections = mark_left_out(entry["detections"], self._selection(loaded.item).left_out)
        if loaded.size is not None:
            record.height, record.width = loaded.size
        selected = loaded.selected if loaded.selected is not None else self.selected(loaded.item)
        crops = CropBoxes(selected, loaded.squares or [], loaded.size or (0, 0))
        record = record_prediction(record, predictions, predictor.class_names, preview=loaded.preview,
                                   heatmaps=heatmap_files_of(loaded.item, options, heatmap_files), crops=crops)
        # the record's copies, not the detector file's entry; a "failure" is ours only (as mark_left_out's key)
        for det in record.detections or []:
            det.pop("failure", None)
        for index, reason in (loaded.box_failures or {}).items():
            record.detections[index].pop("classifications", None)  # even one the detector file brought
            record.detections[index]["failure"] = reason
        return record


def build_plan(options: DetectionOptions, files: Sequence[InputFile], log: Callable[[str], None], *,
               run_names: bool = False) -> DetectionPlan:
    """Read the detector file, match it to the inputs and say what did not match.

    ``run_names``: name records as the run does (several inputs), not as the detector file spells them.
    """
    plan = DetectionPlan(options, files, run_names=run_names)
    log(plan.matching.summary(options.path))
    for item in plan.matching.inputs_missing[:5]:
        log(f"  not in the detections file: {item.name}")
    for entry in plan.matching.entries_unmatched[:5]:
        log(f"  detections entry of no input: {entry['file']}")
    return plan
