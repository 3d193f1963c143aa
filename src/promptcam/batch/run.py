"""Batch processing of image files: decode in worker threads while the backend runs, never crash
on one bad image, checkpoint to a journal and resume exactly where a killed run stopped."""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from promptcam.core.errors import PromptCamError
from promptcam.results.events import EVENTS_NAME, camera_pattern, group_events, write_events_csv
from promptcam.results.export_source import fill_capture_times
from promptcam.results.formats import OUTPUT_NAMES, write_outputs
from promptcam.results.journal import Journal
from promptcam.runtime.predictor import Prediction, Predictor
from promptcam.runtime.records import HeatmapFiles, ImageRecord
from promptcam.runtime.video import is_video_path

from .chunks import LoadedImage, chunk_records, load_item, predict_loaded, predict_on_gpu, read_item
from .detection_run import DetectionPlan, build_plan
from .inputs import InputFile, Inputs, assign_heatmap_paths, collect_inputs
from .options import RunOptions, RunSummary
from .run_state import check_identity, out_dir_lock, run_identity
from .videos import classify_videos

JOURNAL_NAME = OUTPUT_NAMES["jsonl"]


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


def log_refused_links(links: list[Path], log: Callable[[str], None]) -> None:
    """Say which links out of the input folders were not followed (they are in no result file)."""
    if not links:
        return
    log(f"skipping {len(links)} symbolic link(s) that lead out of the input folders (--follow-links reads them):")
    for link in links[:5]:
        log(f"  {link}")
    if len(links) > 5:
        log(f"  ... and {len(links) - 5} more")


def inputs_info(collected: Inputs) -> dict[str, Any]:
    """``classifier_metadata`` entries: the folder each name's first part (its label) stands for, when the
    run has several inputs; the links refused."""
    return ({"input_folders": collected.folders} if collected.folders else {}) | (
        {"links_refused": len(collected.refused_links)} if collected.refused_links else {})


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
                                explain_class=options.explain_class, traits=options.traits, heatmaps=options.heatmaps,
                                follow_links=options.follow_links)
        started = time.perf_counter()
        collected = collect_inputs(options.inputs, follow_links=options.follow_links)
        files, skipped = collected.files, collected.skipped
        log_refused_links(collected.refused_links, log)
        plan: DetectionPlan | None = None
        if options.detections is not None:
            plan = build_plan(options.detections, files, log, run_names=len(options.inputs) > 1)
            identity |= plan.identity()
        photos = [f for f in files if not is_video_path(f.path)]
        if len(photos) < len(files):  # a clip's records depend on how it was sampled
            identity |= {"clips": asdict(options.clips)}
        check_identity(options.out_dir, identity, resume=resume)
        summary = RunSummary(total=len(files), skipped_non_images=len(skipped),
                             refused_links=len(collected.refused_links))
        previous = read_previous(journal, log) if resume else {}
        videos = [f for f in files if is_video_path(f.path) and not is_done(f, previous)]
        todo = list(chunk_files(photos, predictor.batch_size, previous))
        summary.resumed = len(files) - sum(len(c) for c in todo) - len(videos)
        summary.videos = len(files) - len(photos)
        if skipped:
            log(f"skipping {len(skipped)} non-image file(s)")
        if summary.resumed:
            log(f"resuming: {summary.resumed} of {len(files)} images already done")
        heatmap_files = assign_heatmap_paths(files, options.heatmaps) if options.heatmaps is not None else {}
        progress = _progress(len(files), summary.resumed, options.progress)
        try:
            _classify_files(predictor, options, todo, journal, heatmap_files, progress, resume=resume, plan=plan)
            if videos:
                journal.open(truncate=False)
                try:
                    classify_videos(predictor, options, videos, journal, heatmap_files, plan, progress.update)
                finally:
                    journal.close()
        finally:
            progress.close()

        by_path = read_previous(journal, lambda _: None)  # damaged lines were reported above
        records = [by_path[f.key] for f in files if f.key in by_path]
        summary.ok = sum(r.ok for r in records)
        summary.failed = len(records) - summary.ok
        info = {"engine": predictor.engine_description, "model_dir": str(predictor.model_dir),
                "model_sha256": identity["model_sha256"], "precision": predictor.manifest.precision,
                "top_k": options.top_k, "traits": options.traits} | inputs_info(collected)
        info |= plan.info() if plan else {}
        if summary.videos:
            info |= {"video_fps": options.clips.fps, "video_max_frames": options.clips.max_frames}
        events = None
        if options.events is not None:
            fill_capture_times(records)
            events = group_events(records, options.events, len(predictor.class_names),
                                  pattern=camera_pattern(options.camera_from), detector=plan is not None)
            summary.events = len(events)
            info |= {"events_seconds": options.events, "camera_from": options.camera_from}
        summary.outputs = write_outputs(records, options.out_dir, predictor.class_names, options.formats, info,
                                        classifier=f"promptcam {predictor.config.arch}",
                                        detector=plan.detector_facts() if plan else None,
                                        per_frame=options.clips.per_frame)
        if events is not None:
            path = write_events_csv(options.out_dir / EVENTS_NAME, events, records, predictor.class_names)
            summary.outputs["events"] = str(path)
    summary.seconds = time.perf_counter() - started
    return summary


def _classify_files(predictor: Predictor, options: RunOptions, todo: list[list[InputFile]], journal: Journal,
                    heatmap_files: dict[str, HeatmapFiles], progress: Any, *, resume: bool,
                    plan: DetectionPlan | None = None) -> None:
    """Decode in worker threads, infer chunk by chunk, write records and heatmaps in a writer thread.

    ``plan``: a ``--detections`` run's load / predict / records steps instead of the whole-frame ones.
    """
    predict: Callable[..., dict[int, Any]] = plan.predict if plan is not None else predict_loaded
    make_records = plan.records if plan is not None else chunk_records
    gpu = None
    if options.decode == "gpu":
        from promptcam.runtime.gpu_decode import GpuDecoder

        gpu = GpuDecoder(predictor.config.img_size, predictor.config.interpolation,
                         device_id=predictor.backend.device_id)
        predict = functools.partial(predict_on_gpu, gpu)
    keep_preview = options.heatmaps is not None
    journal.open(truncate=not resume)
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
                    pending.append((None, [pool.submit(plan.load_item, item, predictor.config, keep_preview,
                                                       reduce=options.reduce_decode) for item in chunk]))
                    return
                batch = np.empty((len(chunk), size, size, 3), np.uint8)  # workers decode into its slots
                pending.append((batch, [pool.submit(load_item, item, predictor.config, keep_preview, batch[i],
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


class _NoProgress:
    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


def _progress(total: int, initial: int, enabled: bool):  # noqa: ANN202 - tqdm or a stand-in
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", dynamic_ncols=True, smoothing=0.1)
