"""The clips of a folder run: each video through the one clip path (``runtime.clips``), one record each.

Photos go through the chunk pipeline (``batch.run``); clips come after them, one at a time (a clip is
already a batch of frames), and each record goes to the same journal, so ``--resume`` skips a clip
done before exactly as it skips a photo. With ``--detections``, a clip's entry in the detector file
(MegaDetector's video results: detections with a ``frame_number``) says which frames to decode and
which boxes to crop; a clip the detector file does not list is a failure record naming it.
"""

from __future__ import annotations

from collections.abc import Callable

from promptcam.core.errors import BackendUnavailableError, PromptCamError
from promptcam.results.journal import Journal
from promptcam.results.megadetector import mark_left_out, select_clip_crops
from promptcam.runtime.clips import classify_clip
from promptcam.runtime.predictor import Predictor
from promptcam.runtime.records import HeatmapFiles, ImageRecord, heatmap_paths

from .chunks import FATAL_WRITE_ERRORS, base_record, heatmap_files_of
from .detection_run import DetectionPlan
from .inputs import InputFile
from .options import RunOptions


def classify_videos(predictor: Predictor, options: RunOptions, videos: list[InputFile], journal: Journal,
                    heatmap_files: dict[str, HeatmapFiles], plan: DetectionPlan | None,
                    progress_update: Callable[[int], None]) -> None:
    """Classify ``videos`` (those not done yet) and append their records to ``journal``."""
    for item in videos:
        journal.append([_clip_record(predictor, options, item, heatmap_files, plan)])
        journal.checkpoint()  # a clip is minutes of work at most: never redo one after a kill
        progress_update(1)


def _clip_record(predictor: Predictor, options: RunOptions, item: InputFile, heatmap_files: dict[str, HeatmapFiles],
                 plan: DetectionPlan | None) -> ImageRecord:
    record = base_record(item)
    record.media = "video"
    boxes = None
    if plan is not None:
        entry = plan.matching.entries.get(item.key)
        if entry is None:
            record.failure = f"{item.path}: not in the detections file {plan.options.path}"
            return record
        if not plan.run_names:
            record.file = entry["file"]
        detections = entry.get("detections")
        if detections is None:
            record.failure = f"{item.path}: the detector failed on it ({entry.get('failure', 'no detections')})"
            return record
        boxes, left_out = select_clip_crops(detections, plan.categories, plan.options.threshold,
                                            options.clips.max_frames)
        record.detections = mark_left_out(detections, left_out)
    per_frame = None
    if options.heatmaps is not None and options.clips.per_frame:
        root = options.heatmaps

        def per_frame(name: str) -> HeatmapFiles:
            return heatmap_paths(root, name)

    try:
        return classify_clip(predictor, record, str(item.path), options=options.clips, top_k=options.top_k,
                             heatmaps=heatmap_files_of(item, options, heatmap_files), frame_heatmaps=per_frame,
                             boxes=boxes)
    except OSError as exc:
        if exc.errno in FATAL_WRITE_ERRORS:
            raise
        record.failure = f"{item.path}: cannot write heatmap ({exc})"
        return record
    except BackendUnavailableError:
        raise  # a lost server (--server) or engine: the run stops and --resume redoes this clip
    except PromptCamError as exc:
        record.failure = str(exc)
        return record
