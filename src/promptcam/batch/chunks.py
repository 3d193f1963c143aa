"""One chunk of a folder run: its files decoded (in worker threads), classified in one batch, and made records.

Whole frames only; ``--detections`` supplies the same three steps for crops (``detection_run``).
Every file goes through the one image path (``runtime.model_input``) and every prediction through
the one record path (``runtime.records.record_prediction``). A bad file becomes a failure record,
never an exception.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from promptcam.core.config import ModelConfig
from promptcam.core.errors import ImageError
from promptcam.runtime.images import check_dimensions, read_file_bytes
from promptcam.runtime.model_input import model_input
from promptcam.runtime.prediction import Prediction
from promptcam.runtime.predictor import Predictor
from promptcam.runtime.records import HeatmapFiles, ImageRecord, heatmap_paths, record_prediction

from .inputs import InputFile
from .options import RunOptions

FATAL_WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})  # stop the run, not one image


@dataclass
class LoadedImage:
    """One decoded file of a chunk.

    Attributes:
        pixels: Model-size pixels [S, S, 3] (whole frame) or [N, S, S, 3] (``--detections``: one per crop).
        size: (height, width) of the full-size, EXIF-oriented photo (not of a reduced decode).
        preview: The decode heatmaps are drawn on (a reduced preview of a large JPEG).
        squares: ``--detections``: the crop square of each classified detection.
        selected: ``--detections``: the indices of the detections classified, in the order of the crops.
        box_failures: ``--detections``: detections chosen but not classified, by index: why (``crops.box_failure``).
    """

    item: InputFile
    pixels: np.ndarray | None = None
    size: tuple[int, int] | None = None
    preview: np.ndarray | None = None
    failure: str | None = None
    squares: list[Any] | None = None
    encoded: np.ndarray | None = None  # --decode gpu: the file's bytes, decoded on the GPU by the chunk
    selected: list[int] | None = None
    box_failures: dict[int, str] | None = None


def read_item(item: InputFile) -> LoadedImage:
    """``--decode gpu``: read and check one file (in a worker thread); the GPU decodes the chunk's files together."""
    name = str(item.path)
    try:
        data = read_file_bytes(item.path)
        check_dimensions(data, name)
    except ImageError as exc:
        return LoadedImage(item, failure=str(exc))
    return LoadedImage(item, encoded=data)


def predict_on_gpu(decoder: Any, predictor: Predictor, loaded: list[LoadedImage], options: RunOptions,
                   batch: np.ndarray | None = None) -> dict[int, Prediction]:
    """``--decode gpu``: decode and resize a chunk on the GPU (``gpu_decode.GpuDecoder``), infer there."""
    del batch
    good = [item for item in loaded if item.failure is None]
    if not good:
        return {}
    device_batch, results = decoder.decode_resized([item.encoded for item in good], [str(i.item.path) for i in good])
    decoded = []
    for item, result in zip(good, results, strict=True):
        item.encoded = None
        if isinstance(result, ImageError):
            item.failure = str(result)
        else:
            item.size = result
            decoded.append(item)
    if device_batch is None:
        return {}
    classes = [options.explain_class] if options.explain_class else None
    predictions = predictor.predict_pixels(device_batch, [item.size for item in decoded], top_k=options.top_k,
                                           classes=classes, traits=options.traits)
    return {id(item): p for item, p in zip(decoded, predictions, strict=True)}


def load_item(item: InputFile, config: ModelConfig, keep_preview: bool, out: np.ndarray | None = None, *,
              reduce: bool = True) -> LoadedImage:
    """Read one file and take it through the one image path (in a worker thread); trouble becomes a failure.

    ``out``: this image's slot of the chunk's batch buffer (saves stacking the batch afterwards).
    """
    try:
        loaded = model_input(read_file_bytes(item.path), str(item.path), config, keep_preview=keep_preview,
                             reduce=reduce, out=out)
    except ImageError as exc:
        return LoadedImage(item, failure=str(exc))
    return LoadedImage(item, loaded.pixels, loaded.size, loaded.preview)


def base_record(item: InputFile, failure: str | None = None) -> ImageRecord:
    return ImageRecord(file=item.name, path=item.key, size=item.size, mtime_ns=item.mtime_ns, failure=failure)


def heatmap_files_of(item: InputFile, options: RunOptions, assigned: dict[str, HeatmapFiles]) -> HeatmapFiles | None:
    """Where a file's heatmaps go (the run's assignment, which keeps names apart), None without ``--heatmaps``."""
    if options.heatmaps is None:
        return None
    return assigned.get(item.name) or heatmap_paths(options.heatmaps, item.name)


def _record(loaded: LoadedImage, prediction: Prediction, predictor: Predictor, options: RunOptions,
            assigned: dict[str, HeatmapFiles]) -> ImageRecord:
    record = base_record(loaded.item)
    record.height, record.width = loaded.size if loaded.size else (None, None)
    extra = [predictor.class_index(options.explain_class)] if options.explain_class else []
    return record_prediction(record, prediction, predictor.class_names, preview=loaded.preview,
                             heatmaps=heatmap_files_of(loaded.item, options, assigned), compare=options.compare,
                             compare_extra=extra)


def predict_loaded(predictor: Predictor, loaded: list[LoadedImage], options: RunOptions,
                   batch: np.ndarray | None = None) -> dict[int, Prediction]:
    """Inference for the decoded images of a chunk, by ``id(item)``. ``batch``: the buffer the
    items were decoded into (used as is when no item failed)."""
    good = [item for item in loaded if item.failure is None]
    if not good:
        return {}
    if batch is not None and len(good) == len(batch):
        pixels = batch
    else:
        pixels = np.stack([item.pixels for item in good])
    classes = [options.explain_class] if options.explain_class else None
    predictions = predictor.predict_pixels(pixels, [item.size for item in good], top_k=options.top_k,
                                           classes=classes, traits=options.traits, compare=options.compare)
    return {id(item): p for item, p in zip(good, predictions, strict=True)}


def guarded_records(loaded: list[LoadedImage], make: Callable[[LoadedImage], ImageRecord],
                    failed: Callable[[InputFile, str], ImageRecord], executor: Executor | None) -> list[ImageRecord]:
    """One record per file of a chunk: ``make`` for each, an image's own trouble (a heatmap that cannot be
    written) as its failure record. A full or read-only disk stops the run: every later image would fail the
    same way. With an ``executor``, heatmaps are drawn and encoded in its threads (OpenCV releases the GIL)."""

    def record(item: LoadedImage) -> ImageRecord:
        if item.failure is not None:
            return failed(item.item, item.failure)
        try:
            return make(item)
        except ImageError as exc:
            return failed(item.item, str(exc))
        except OSError as exc:
            if exc.errno in FATAL_WRITE_ERRORS:
                raise
            return failed(item.item, f"{item.item.path}: cannot write heatmap ({exc})")

    if executor is not None:
        return list(executor.map(record, loaded))
    return [record(item) for item in loaded]


def chunk_records(predictor: Predictor, loaded: list[LoadedImage], predictions: dict[int, Prediction],
                  options: RunOptions, executor: Executor | None = None,
                  heatmap_files: dict[str, HeatmapFiles] | None = None) -> list[ImageRecord]:
    """One record per file of a chunk (failures kept)."""
    return guarded_records(loaded, lambda item: _record(item, predictions[id(item)], predictor, options,
                                                        heatmap_files or {}),
                           base_record, executor if options.heatmaps is not None else None)


def classify_chunk(predictor: Predictor, loaded: list[LoadedImage], options: RunOptions,
                   executor: Executor | None = None) -> list[ImageRecord]:
    """One inference batch: the decoded images of a chunk in, one record per file out (failures kept)."""
    return chunk_records(predictor, loaded, predict_loaded(predictor, loaded, options), options, executor)
