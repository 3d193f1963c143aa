"""Batch processing of image files: decode in worker threads while the backend runs, never crash
on one bad image, checkpoint to a journal and resume exactly where a killed run stopped."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from promptcam.core.config import ModelConfig
from promptcam.core.errors import ImageError, PromptCamError

from .heatmap import contact_sheet, overlay, write_image
from .images import iter_image_files, read_image, resize_for_model
from .predictor import Prediction, Predictor
from .results import ImageRecord, Journal, megadetector_json, round_probability, write_csv, write_json
from .store import ResultRow

JOURNAL_NAME, MEGADETECTOR_NAME, CSV_NAME = "results.jsonl", "results.json", "results.csv"


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
    file: str
    path: Path
    pixels: np.ndarray | None = None
    size: tuple[int, int] | None = None
    original: np.ndarray | None = None
    failure: str | None = None


def collect_inputs(inputs: Sequence[Path]) -> tuple[list[tuple[str, Path]], list[Path]]:
    """(reported name, path) per image in input order, and the non-image files skipped."""
    skipped: list[Path] = []
    files: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    for source in inputs:
        root = Path(source)
        if not root.exists():
            raise PromptCamError(f"{root}: input not found")
        is_folder = root.is_dir()
        for path in iter_image_files([root], skipped):
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            name = path.relative_to(root).as_posix() if is_folder else path.as_posix()
            files.append((name, path))
    return files, skipped


def load_item(file: str, path: Path, config: ModelConfig, keep_original: bool,
              out: np.ndarray | None = None) -> LoadedImage:
    """Decode and resize one file (in a worker thread); a bad file becomes a failure, not an exception.
    ``out``: this image's slot of the chunk's batch buffer (saves stacking the batch afterwards)."""
    try:
        rgb = read_image(path)
        pixels = resize_for_model(rgb, config, out)
    except ImageError as exc:
        return LoadedImage(file, path, failure=str(exc))
    return LoadedImage(file, path, pixels, (rgb.shape[0], rgb.shape[1]), rgb if keep_original else None)


def heatmap_paths(heatmap_dir: Path, file: str) -> tuple[Path, Path]:
    stem = Path(file.lstrip("/"))
    return heatmap_dir / stem.with_suffix(".heatmap.jpg"), heatmap_dir / stem.with_suffix(".traits.jpg")


def explain_fields(prediction: Prediction, predictor: Predictor) -> dict[str, Any]:
    """What every result row says about a prediction: top-k, explained class, trait heads."""
    explained = next(iter(prediction.attention))
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
    explained = next(iter(prediction.attention))
    write_image(heat_path, overlay(original, prediction.attention_mean(explained)))
    ranking = prediction.traits.get(explained)
    if ranking is None:
        return str(heat_path), None
    write_image(sheet_path, contact_sheet(original, prediction.attention[explained], ranking.top_heads))
    return str(heat_path), str(sheet_path)


def fill_row(row: ResultRow, prediction: Prediction, predictor: Predictor, original: np.ndarray,
             heatmaps: Path | None) -> ResultRow:
    """Copy a prediction onto a SQLite result row (inbox and streams), drawing its heatmap when asked."""
    fields = explain_fields(prediction, predictor)
    row.top_k, row.explained_class, row.trait_heads = fields["top_k"], fields["explained_class"], fields["trait_heads"]
    row.top1, row.top1_probability = row.top_k[0]["name"], row.top_k[0]["probability"]
    row.probabilities = [round_probability(p) for p in prediction.probabilities]
    if heatmaps is not None:
        row.heatmap, _ = write_heatmaps(original, prediction, *heatmap_paths(heatmaps, row.file))
    return row


def _record(item: LoadedImage, prediction: Prediction, predictor: Predictor, options: RunOptions) -> ImageRecord:
    record = ImageRecord(file=item.file, path=str(item.path), height=item.size[0] if item.size else None,
                         width=item.size[1] if item.size else None, **explain_fields(prediction, predictor))
    if options.heatmaps is not None and item.original is not None:
        record.heatmap, record.traits_image = write_heatmaps(item.original, prediction,
                                                             *heatmap_paths(options.heatmaps, item.file))
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
                                           classes=classes, traits=options.traits)
    return {id(item): p for item, p in zip(good, predictions, strict=True)}


def chunk_records(predictor: Predictor, loaded: list[LoadedImage], predictions: dict[int, Prediction],
                  options: RunOptions, executor: Executor | None = None) -> list[ImageRecord]:
    """One record per file of a chunk (failures kept). With an ``executor``, heatmaps are drawn and
    encoded in its threads (OpenCV releases the GIL)."""

    def record(item: LoadedImage) -> ImageRecord:
        if item.failure is not None:
            return ImageRecord(file=item.file, path=str(item.path), failure=item.failure)
        try:
            return _record(item, predictions[id(item)], predictor, options)
        except ImageError as exc:
            return ImageRecord(file=item.file, path=str(item.path), failure=str(exc))

    if executor is not None and options.heatmaps is not None:
        return list(executor.map(record, loaded))
    return [record(item) for item in loaded]


def classify_chunk(predictor: Predictor, loaded: list[LoadedImage], options: RunOptions,
                   executor: Executor | None = None) -> list[ImageRecord]:
    """One inference batch: the decoded images of a chunk in, one record per file out (failures kept)."""
    return chunk_records(predictor, loaded, predict_loaded(predictor, loaded, options), options, executor)


def chunk_files(
    files: list[tuple[str, Path]], size: int, done: set[str]
) -> Iterator[list[tuple[str, Path]]]:
    # fixed chunk boundaries in input order: a resumed run sees the same batches, hence the same numbers
    for start in range(0, len(files), size):
        todo = [f for f in files[start:start + size] if str(f[1]) not in done]
        if todo:
            yield todo


def run_files(predictor: Predictor, options: RunOptions, log: Callable[[str], None] = print) -> RunSummary:
    """Classify (and explain) every image under ``options.inputs``; write journal, JSON and CSV."""
    started = time.perf_counter()
    files, skipped = collect_inputs(options.inputs)
    summary = RunSummary(total=len(files), skipped_non_images=len(skipped))
    options.out_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(options.out_dir / JOURNAL_NAME)
    previous: list[ImageRecord] = []
    if options.resume:
        previous = journal.read()
    elif journal.path.exists() and not options.overwrite:
        raise PromptCamError(f"{journal.path} exists: pass --resume to continue that run or --overwrite to start over")
    done = {r.path for r in previous}
    summary.resumed = sum(1 for _, p in files if str(p) in done)
    if skipped:
        log(f"skipping {len(skipped)} non-image file(s)")
    if summary.resumed:
        log(f"resuming: {summary.resumed} of {len(files)} images already done")

    keep_original = options.heatmaps is not None
    journal.open(truncate=not options.resume)
    progress = _progress(len(files), summary.resumed, options.progress)
    since_checkpoint = 0

    def finish_chunk(loaded: list[LoadedImage], predictions: dict[int, Prediction], pool: Executor) -> None:
        # in the writer thread: records, heatmaps and the journal overlap the next chunk's inference
        nonlocal since_checkpoint
        records = chunk_records(predictor, loaded, predictions, options, pool)
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
            pending: deque[tuple[np.ndarray, list[Future[LoadedImage]]]] = deque()
            writing: deque[Future[None]] = deque()
            chunks = chunk_files(files, predictor.batch_size, done)

            def submit_next() -> None:
                chunk = next(chunks, None)
                if chunk is not None:
                    batch = np.empty((len(chunk), size, size, 3), np.uint8)  # workers decode into its slots
                    pending.append((batch, [pool.submit(load_item, name, path, predictor.config, keep_original,
                                                        batch[i]) for i, (name, path) in enumerate(chunk)]))

            for _ in range(options.prefetch_chunks):
                submit_next()
            while pending:
                batch, futures = pending.popleft()
                loaded = [f.result() for f in futures]
                submit_next()
                predictions = predict_loaded(predictor, loaded, options, batch)
                writing.append(writer.submit(finish_chunk, loaded, predictions, pool))
                while len(writing) > 1 or (writing and writing[0].done()):
                    writing.popleft().result()  # at most one chunk behind; raises a writer error here
            while writing:
                writing.popleft().result()
    finally:
        cv2.setNumThreads(cv_threads)
        journal.close()
        progress.close()

    by_path = {r.path: r for r in journal.read()}
    records = [by_path[str(p)] for _, p in files if str(p) in by_path]
    summary.ok = sum(r.ok for r in records)
    summary.failed = len(records) - summary.ok
    info = {"engine": predictor.engine_description, "model_dir": str(predictor.model_dir),
            "precision": predictor.manifest.precision, "top_k": options.top_k, "traits": options.traits}
    json_path, csv_path = options.out_dir / MEGADETECTOR_NAME, options.out_dir / CSV_NAME
    write_json(json_path, megadetector_json(records, predictor.config, info))
    write_csv(csv_path, records)
    summary.outputs = {"megadetector": str(json_path), "csv": str(csv_path), "jsonl": str(journal.path)}
    summary.seconds = time.perf_counter() - started
    return summary


class _NoProgress:
    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


def _progress(total: int, initial: int, enabled: bool):  # noqa: ANN202 - tqdm or a stand-in
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", dynamic_ncols=True, smoothing=0.1)
