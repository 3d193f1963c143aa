"""Batch processing of image files: decode in worker threads while the backend runs, never crash
on one bad image, checkpoint to a journal and resume exactly where a killed run stopped."""

from __future__ import annotations

import errno
import functools
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from promptcam.core.config import ModelConfig
from promptcam.core.errors import ImageError, PromptCamError

from .heatmap import contact_sheet, overlay, write_image
from .images import (
    DECODE_BUDGET,
    check_dimensions,
    decode_image,
    frame_reduction,
    full_size_of,
    is_jpeg,
    read_file_bytes,
    reduced_size,
    resize_for_model,
)
from .inputs import InputFile, assign_heatmap_paths, collect_inputs, heatmap_paths
from .predictor import Prediction, Predictor
from .results import DEFAULT_FORMATS, OUTPUT_NAMES, ImageRecord, Journal, round_probability, write_outputs
from .run_state import check_identity, out_dir_lock, run_identity

if TYPE_CHECKING:
    from .detection_run import DetectionOptions, DetectionPlan

JOURNAL_NAME = OUTPUT_NAMES["jsonl"]
MAX_HEATMAP_PIXELS = 50_000_000  # originals kept for heatmaps are shrunk above this (memory of queued chunks)
# heatmaps are drawn on a JPEG decoded at a reduction that keeps its long side at least this (or the full
# photo when smaller): a 12 MP photo's overlay is 2000x1500, not 4000x3000, and costs a quarter of the decode
HEATMAP_PREVIEW_SIDE = 1000
FATAL_WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})  # stop the run, not one image

@dataclass
class RunOptions:
    """Options of one ``promptcam-run`` over files."""

    inputs: Sequence[Path]
    out_dir: Path
    top_k: int = 5
    workers: int = 4
    heatmaps: Path | None = None
    explain_class: str | None = None
    traits: int = 0
    checkpoint_every: int = 256
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    prefetch_chunks: int = 2
    formats: Sequence[str] = DEFAULT_FORMATS
    detections: DetectionOptions | None = None  # classify a detector's boxes instead of whole frames
    reduce_decode: bool = True  # JPEG DCT-domain reduction down to the size the model needs
    decode: str = "cpu"  # "gpu": nvImageCodec batches into GPU memory (gpu_decode), ORT CUDA reads them there
    compare: int = 0  # > 0: a sheet of the top-K classes' maps (and explain_class's) beside each heatmap


@dataclass
class RunSummary:
    total: int = 0
    ok: int = 0
    failed: int = 0
    resumed: int = 0
    skipped_non_images: int = 0
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return (self.ok + self.failed - self.resumed) / self.seconds if self.seconds else 0.0


@dataclass
class LoadedImage:
    """One decoded file of a chunk.

    Attributes:
        pixels: Model-size pixels [S, S, 3] (whole frame) or [N, S, S, 3] (``--detections``: one per crop).
        size: (height, width) of the full-size, EXIF-oriented photo (not of a reduced decode).
        original: The decode heatmaps are drawn on (a reduced preview of a large JPEG).
        squares: ``--detections``: the crop square of each classified detection.
    """

    item: InputFile
    pixels: np.ndarray | None = None
    size: tuple[int, int] | None = None
    original: np.ndarray | None = None
    failure: str | None = None
    squares: list[Any] | None = None
    encoded: np.ndarray | None = None  # --decode gpu: the file's bytes, decoded on the GPU by the chunk


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


def load_item(item: InputFile, config: ModelConfig, keep_original: bool, out: np.ndarray | None = None, *,
              reduce: bool = True) -> LoadedImage:
    """Decode and resize one file (in a worker thread); a bad file becomes a failure, not an exception.

    The header's size is checked before decoding, and the pixels being decoded by all workers
    together stay within ``DECODE_BUDGET``. ``out``: this image's slot of the chunk's batch buffer
    (saves stacking the batch afterwards). ``reduce``: a JPEG is decoded at the largest DCT reduction
    (1/2, 1/4, 1/8) that keeps both sides at or above the model's input size, and with heatmaps the
    long side at or above ``HEATMAP_PREVIEW_SIDE``.
    """
    name = str(item.path)
    try:
        data = read_file_bytes(item.path)
        width, height = check_dimensions(data, name)
        reduction = 1
        if reduce and is_jpeg(data):
            reduction = frame_reduction(width, height, config.img_size,
                                        min_long_side=HEATMAP_PREVIEW_SIDE if keep_original else 0)
        rw, rh = reduced_size(width, height, reduction)
        with DECODE_BUDGET.hold(rw * rh):
            rgb = decode_image(data, name, reduction=reduction)
            del data
            size = full_size_of((width, height), rgb, reduction)
            pixels = resize_for_model(rgb, config, out)
            original = heatmap_original(rgb) if keep_original else None
    except ImageError as exc:
        return LoadedImage(item, failure=str(exc))
    except (OSError, cv2.error, MemoryError, ValueError) as exc:  # one image's trouble, never the run's
        return LoadedImage(item, failure=f"{name}: cannot decode image ({type(exc).__name__}: {exc})")
    return LoadedImage(item, pixels, size, original)


def heatmap_original(rgb: np.ndarray) -> np.ndarray:
    """The decode a heatmap is drawn on, shrunk above ``MAX_HEATMAP_PIXELS`` (memory of queued chunks)."""
    h, w = rgb.shape[:2]
    if h * w <= MAX_HEATMAP_PIXELS:
        return rgb
    scale = (MAX_HEATMAP_PIXELS / (h * w)) ** 0.5
    return cv2.resize(rgb, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)


def explained_index(prediction: Prediction) -> int:
    """The class a prediction explains (its attention maps are kept for that class only)."""
    return next(iter(prediction.attention))


def explain_fields(prediction: Prediction, predictor: Predictor) -> dict[str, Any]:
    """What every result record says about a prediction: top-k, explained class, trait heads."""
    explained = explained_index(prediction)
    ranking = prediction.traits.get(explained)
    return {
        "top_k": [{"index": c.index, "name": c.name, "probability": round_probability(c.probability)}
                  for c in prediction.top_k],
        "explained_class": predictor.class_names[explained],
        "trait_heads": ranking.top_heads if ranking is not None else None,
        "trait_order": ranking.order if ranking is not None else None,
    }


def write_heatmaps(original: np.ndarray, prediction: Prediction, heat_path: Path,
                   sheet_path: Path) -> tuple[str, str | None]:
    """Heatmap of the explained class and, when ranked, the trait-head contact sheet."""
    explained = explained_index(prediction)
    write_image(heat_path, overlay(original, prediction.attention_mean(explained)))
    ranking = prediction.traits.get(explained)
    if ranking is None:
        return str(heat_path), None
    write_image(sheet_path, contact_sheet(original, prediction.attention[explained], ranking.top_heads))
    return str(heat_path), str(sheet_path)


def fill_row(record: ImageRecord, prediction: Prediction, predictor: Predictor, original: np.ndarray,
             heatmaps: Path | None) -> ImageRecord:
    """Copy a prediction onto a station record (inbox and streams), drawing its heatmap when asked."""
    for key, value in explain_fields(prediction, predictor).items():
        setattr(record, key, value)
    record.probabilities = [round_probability(p) for p in prediction.probabilities]
    if heatmaps is not None:
        record.heatmap, _ = write_heatmaps(original, prediction, *heatmap_paths(heatmaps, record.file))
    return record


def base_record(item: InputFile, failure: str | None = None) -> ImageRecord:
    return ImageRecord(file=item.name, path=item.key, size=item.size, mtime_ns=item.mtime_ns, failure=failure)


def _record(loaded: LoadedImage, prediction: Prediction, predictor: Predictor, options: RunOptions,
            heatmap_files: dict[str, tuple[Path, Path]]) -> ImageRecord:
    record = base_record(loaded.item)
    record.height, record.width = loaded.size if loaded.size else (None, None)
    for key, value in explain_fields(prediction, predictor).items():
        setattr(record, key, value)
    if options.heatmaps is not None and loaded.original is not None:
        paths = heatmap_files.get(loaded.item.name) or heatmap_paths(options.heatmaps, loaded.item.name)
        record.heatmap, record.traits_image = write_heatmaps(loaded.original, prediction, *paths)
        if options.compare:
            from .compare import compare_path, write_compare_sheet

            extra = [predictor.class_index(options.explain_class)] if options.explain_class else []
            write_compare_sheet(compare_path(paths[0]), loaded.original, prediction, predictor.class_names,
                                options.compare, extra)
    return record


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


def chunk_records(predictor: Predictor, loaded: list[LoadedImage], predictions: dict[int, Prediction],
                  options: RunOptions, executor: Executor | None = None,
                  heatmap_files: dict[str, tuple[Path, Path]] | None = None) -> list[ImageRecord]:
    """One record per file of a chunk (failures kept). With an ``executor``, heatmaps are drawn and
    encoded in its threads (OpenCV releases the GIL)."""

    def record(item: LoadedImage) -> ImageRecord:
        if item.failure is not None:
            return base_record(item.item, item.failure)
        try:
            return _record(item, predictions[id(item)], predictor, options, heatmap_files or {})
        except ImageError as exc:
            return base_record(item.item, str(exc))
        except OSError as exc:
            if exc.errno in FATAL_WRITE_ERRORS:
                raise  # a full or read-only disk stops the run; every later image would fail the same way
            return base_record(item.item, f"{item.item.path}: cannot write heatmap ({exc})")

    if executor is not None and options.heatmaps is not None:
        return list(executor.map(record, loaded))
    return [record(item) for item in loaded]


def classify_chunk(predictor: Predictor, loaded: list[LoadedImage], options: RunOptions,
                   executor: Executor | None = None) -> list[ImageRecord]:
    """One inference batch: the decoded images of a chunk in, one record per file out (failures kept)."""
    return chunk_records(predictor, loaded, predict_loaded(predictor, loaded, options), options, executor)


def is_done(item: InputFile, previous: dict[str, ImageRecord]) -> bool:
    """Done in an earlier run: a record for the same canonical path, size and mtime."""
    record = previous.get(item.key)
    return record is not None and (record.size, record.mtime_ns) == (item.size, item.mtime_ns)


def chunk_files(files: list[InputFile], size: int, previous: dict[str, ImageRecord]) -> Iterator[list[InputFile]]:
    """The chunks still to classify. Chunk boundaries are fixed in input order and a chunk is redone
    whole when any of its files is not done, so a resumed run infers exactly the batches of an
    uninterrupted one, hence the same numbers."""
    for start in range(0, len(files), size):
        chunk = files[start:start + size]
        if not all(is_done(f, previous) for f in chunk):
            yield chunk


def read_previous(journal: Journal, log: Callable[[str], None]) -> dict[str, ImageRecord]:
    """The records of an earlier run by canonical path (the last one of a path wins)."""
    records = journal.read()
    if journal.bad_lines:
        log(f"{journal.path}: skipped {journal.bad_lines} damaged line(s) (a power cut?); those images are redone")
    return {r.path: r for r in records if r.path is not None}


def run_files(predictor: Predictor, options: RunOptions, log: Callable[[str], None] = print) -> RunSummary:
    """Classify (and explain) every image under ``options.inputs``; write the journal and result files.

    With ``options.detections``, the crops of a detector's boxes are classified instead (``detection_run``).
    """
    for source in options.inputs:
        if not Path(source).exists():
            raise PromptCamError(f"{source}: input not found")
    if options.detections is not None and options.traits:
        raise PromptCamError("--traits is not supported with --detections yet")
    if options.decode == "gpu" and (options.detections is not None or options.heatmaps is not None):
        raise PromptCamError("--decode gpu classifies whole frames without --heatmaps (use --decode cpu for "
                             "--detections or --heatmaps)")
    options.out_dir.mkdir(parents=True, exist_ok=True)
    with out_dir_lock(options.out_dir):
        journal = Journal(options.out_dir / JOURNAL_NAME)
        if journal.path.exists() and not (options.resume or options.overwrite):
            raise PromptCamError(f"{journal.path} exists: pass --resume to continue that run or --overwrite to "
                                 "start over")
        resume = options.resume and not options.overwrite
        # hashing the model file is set-up, like loading it: not part of the run's images per second
        identity = run_identity(predictor.manifest, predictor.model_dir, inputs=options.inputs, top_k=options.top_k,
                                explain_class=options.explain_class, traits=options.traits, heatmaps=options.heatmaps)
        started = time.perf_counter()
        files, skipped = collect_inputs(options.inputs)
        plan: DetectionPlan | None = None
        if options.detections is not None:
            from .detection_run import build_plan  # it builds on this module

            plan = build_plan(options.detections, files, log)
            identity |= plan.identity()
        check_identity(options.out_dir, identity, resume=resume)
        summary = RunSummary(total=len(files), skipped_non_images=len(skipped))
        previous = read_previous(journal, log) if resume else {}
        todo = list(chunk_files(files, predictor.batch_size, previous))
        summary.resumed = len(files) - sum(len(c) for c in todo)
        if skipped:
            log(f"skipping {len(skipped)} non-image file(s)")
        if summary.resumed:
            log(f"resuming: {summary.resumed} of {len(files)} images already done")
        heatmap_files = assign_heatmap_paths(files, options.heatmaps) if options.heatmaps is not None else {}
        _classify_files(predictor, options, todo, journal, heatmap_files, summary.resumed, len(files), resume=resume,
                        plan=plan)

        by_path = read_previous(journal, lambda _: None)  # damaged lines were reported above
        records = [by_path[f.key] for f in files if f.key in by_path]
        summary.ok = sum(r.ok for r in records)
        summary.failed = len(records) - summary.ok
        info = {"engine": predictor.engine_description, "model_dir": str(predictor.model_dir),
                "model_sha256": identity["model_sha256"], "precision": predictor.manifest.precision,
                "top_k": options.top_k, "traits": options.traits} | (plan.info() if plan else {})
        summary.outputs = write_outputs(records, options.out_dir, predictor.class_names, options.formats, info,
                                        classifier=f"promptcam {predictor.config.arch}",
                                        detector=plan.detector_facts() if plan else None)
    summary.seconds = time.perf_counter() - started
    return summary


def _classify_files(predictor: Predictor, options: RunOptions, todo: list[list[InputFile]], journal: Journal,
                    heatmap_files: dict[str, tuple[Path, Path]], resumed: int, total: int, *, resume: bool,
                    plan: DetectionPlan | None = None) -> None:
    """Decode in worker threads, infer chunk by chunk, write records and heatmaps in a writer thread.

    ``plan``: a ``--detections`` run's load / predict / records steps instead of the whole-frame ones.
    """
    predict: Callable[..., dict[int, Any]] = plan.predict if plan is not None else predict_loaded
    make_records = plan.records if plan is not None else chunk_records
    gpu = None
    if options.decode == "gpu":
        from .gpu_decode import GpuDecoder  # the optional 'gpu-decode' extra

        gpu = GpuDecoder(predictor.config.img_size, predictor.config.interpolation,
                         device_id=predictor.backend.device_id)
        predict = functools.partial(predict_on_gpu, gpu)
    keep_original = options.heatmaps is not None
    journal.open(truncate=not resume)
    progress = _progress(total, resumed, options.progress)
    since_checkpoint = 0

    def finish_chunk(loaded: list[LoadedImage], predictions: dict[int, Prediction], pool: Executor) -> None:
        # in the writer thread: records, heatmaps and the journal overlap the next chunk's inference
        nonlocal since_checkpoint
        records = make_records(predictor, loaded, predictions, options, pool, heatmap_files)
        journal.append(records)
        since_checkpoint += len(records)
        if since_checkpoint >= options.checkpoint_every:
            journal.checkpoint()
            since_checkpoint = 0
        progress.update(len(records))

    size = predictor.config.img_size
    # the workers are the parallelism: OpenCV's own threads inside each decode/resize only contend
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1 if options.workers > 1 else cv_threads)
    try:
        with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool, \
                ThreadPoolExecutor(max_workers=1) as writer:
            pending: deque[tuple[np.ndarray | None, list[Future[LoadedImage]]]] = deque()
            writing: deque[Future[None]] = deque()
            chunks = iter(todo)

            def submit_next() -> None:
                chunk = next(chunks, None)
                if chunk is None:
                    return
                if gpu is not None:
                    pending.append((None, [pool.submit(read_item, item) for item in chunk]))
                    return
                if plan is not None:  # crops: each photo's own buffer (how many is known after matching)
                    pending.append((None, [pool.submit(plan.load_item, item, predictor.config, keep_original,
                                                       reduce=options.reduce_decode) for item in chunk]))
                    return
                batch = np.empty((len(chunk), size, size, 3), np.uint8)  # workers decode into its slots
                pending.append((batch, [pool.submit(load_item, item, predictor.config, keep_original, batch[i],
                                                    reduce=options.reduce_decode) for i, item in enumerate(chunk)]))

            for _ in range(options.prefetch_chunks):
                submit_next()
            while pending:
                batch, futures = pending.popleft()
                loaded = [f.result() for f in futures]
                submit_next()
                predictions = predict(predictor, loaded, options, batch)
                writing.append(writer.submit(finish_chunk, loaded, predictions, pool))
                while len(writing) > 1 or (writing and writing[0].done()):
                    writing.popleft().result()  # at most one chunk behind; raises a writer error here
            while writing:
                writing.popleft().result()
    finally:
        cv2.setNumThreads(cv_threads)
        journal.close()
        progress.close()


class _NoProgress:
    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


def _progress(total: int, initial: int, enabled: bool):  # noqa: ANN202 - tqdm or a stand-in
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", dynamic_ncols=True, smoothing=0.1)
