"""The one clip path: a video's sampled frames classified, combined into a verdict, drawn as one strip.

``promptcam run`` and ``promptcam watch`` both call ``classify_clip``. Frames come from
``video.sample_frames`` (bounded, by time), go to the model in backend batches (whole frames through
``model_input.frame_input``, or a detector's boxes through the runtime's one crop rule), and each
frame's prediction becomes a frame entry; with ``per_frame_heatmaps`` each frame's heatmap is drawn
by the one record path (``records.record_prediction``). The verdict follows ``verdict.combine_frames``,
and the clip's heatmap is the strip of its decisive frames, each showing the verdict class's map.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .crops import BoxHeat, crop_square, cut_square, overlay_boxes
from .heatmap import caption, overlay, thumbnail, write_image
from .images import resize_for_model
from .model_input import frame_input
from .prediction import Prediction
from .predictor import Predictor
from .records import HeatmapFiles, ImageRecord, record_prediction, round_probability
from .verdict import Verdict, combine_frames
from .video import DEFAULT_VIDEO_FPS, DEFAULT_VIDEO_MAX_FRAMES, VideoError, VideoFrame, open_video, sample_frames

STRIP_TILE_HEIGHT = 240  # pixels of each decisive frame in a clip's strip
FRAME_TOP_K = 3  # classes kept per sampled frame in the record


def frame_name(clip: str, number: int) -> str:
    """A frame's name as MegaDetector's video tools spell it: ``clip.mp4/frame000030.jpg``."""
    return f"{clip}/frame{number:06d}.jpg"


@dataclass
class ClipOptions:
    """How clips are sampled (``--video-fps``, ``--video-max-frames``) and what is kept (``--per-frame``)."""

    fps: float = DEFAULT_VIDEO_FPS
    max_frames: int = DEFAULT_VIDEO_MAX_FRAMES
    per_frame: bool = False


@dataclass
class _Frame:
    frame: VideoFrame  # its full-size pixels dropped once classified (only the preview is kept)
    size: tuple[int, int]  # (height, width) as shown: the rotation applied
    preview: np.ndarray
    pixels: np.ndarray  # [N, S, S, 3]: the whole frame (N = 1) or its crops
    boxes: list[int]  # with a detector: the detection indices of the crops
    squares: list[Any]
    predictions: list[Prediction] | None = None


def classify_clip(predictor: Predictor, record: ImageRecord, path: str, *, options: ClipOptions, top_k: int,
                  heatmaps: HeatmapFiles | None = None,
                  frame_heatmaps: Callable[[str], HeatmapFiles] | None = None,
                  boxes: dict[int, list[int]] | None = None) -> ImageRecord:
    """Classify a clip into ``record`` (file, size and station fields already set); returns it.

    Args:
        heatmaps: Where the strip goes (None: not drawn).
        frame_heatmaps: A frame's name -> its heatmap files (``--per-frame``).
        boxes: A detector's classified boxes, by frame number: indices into ``record.detections`` (whose
            ``bbox`` are normalised to the frame). Only those frames are decoded; none means a blank clip.

    A clip that cannot be read, or yields no frame, becomes ``record.failure``.
    """
    record.media = "video"
    detector = boxes is not None
    try:
        if detector and not boxes:  # the detector saw nothing: the header only (its rate, that it is a clip)
            capture, info = open_video(path)
            capture.release()
            record.frame_rate, record.width, record.height = info.frame_rate, info.width, info.height
            record.frames, record.decisive_frames, record.top_k = [], [], []
            return record
        info, frames = sample_frames(path, fps=options.fps, max_frames=options.max_frames,
                                     frames=list(boxes) if detector else None)
        record.frame_rate = info.frame_rate
        record.width, record.height = info.width, info.height
        seen = _classify_frames(predictor, frames, record, boxes, top_k, heatmaps is not None)
    except VideoError as exc:
        record.failure = str(exc)
        return record
    if seen:  # the rotation applied: the frames' own size
        record.height, record.width = seen[0].size
    verdict = combine_frames([_frame_probabilities(f) for f in seen], detector=detector)
    _fill(record, seen, verdict, predictor.class_names, top_k, detector)
    if frame_heatmaps is not None:
        for entry, frame in zip(record.frames or [], seen, strict=True):
            if not detector and frame.predictions:
                files = frame_heatmaps(frame_name(record.file, frame.frame.number))
                entry["heatmap"] = record_prediction(ImageRecord(file=""), frame.predictions[0], predictor.class_names,
                                                     preview=frame.preview, heatmaps=files).heatmap
    if heatmaps is not None and not verdict.blank:
        record.heatmap = str(write_image(heatmaps.heatmap, _strip(predictor, seen, verdict, record)))
    return record


def prefetched(frames: Iterator[VideoFrame], depth: int) -> Iterator[VideoFrame]:
    """``frames`` decoded in a thread of their own, at most ``depth`` ahead: the clip's decode overlaps the
    model's inference of the frames before (as a folder run's decode workers do). Its errors re-raise here;
    stopping early stops the decoder (and releases the clip)."""
    buffer: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    done = object()

    def decode() -> None:
        try:
            for frame in frames:
                while not stop.is_set():
                    try:
                        buffer.put(frame, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            buffer.put(exc)
            return
        finally:
            close = getattr(frames, "close", None)
            if close is not None and stop.is_set():
                close()
        buffer.put(done)

    thread = threading.Thread(target=decode, name="clip-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                buffer.get(timeout=0.1)  # unblock a decoder waiting to put
            except queue.Empty:
                pass


def _classify_frames(predictor: Predictor, frames: Any, record: ImageRecord, boxes: dict[int, list[int]] | None,
                     top_k: int, keep_preview: bool) -> list[_Frame]:
    """Frames to the model in batches of the backend's size, decoded one batch ahead (``prefetched``)."""
    config = predictor.config
    frames = prefetched(frames, predictor.batch_size)
    seen: list[_Frame] = []
    pending: list[_Frame] = []

    def flush() -> None:
        if not pending:
            return
        pixels = np.concatenate([f.pixels for f in pending])
        predictions = predictor.predict_batched(pixels, top_k=top_k) if len(pixels) else []
        start = 0
        for f in pending:
            f.predictions = predictions[start:start + len(f.pixels)]
            start += len(f.pixels)
        pending.clear()

    for frame in frames:
        height, width = frame.rgb.shape[:2]
        preview = frame.preview if keep_preview else frame.rgb[:1, :1]
        if boxes is None:
            item = _Frame(frame, (height, width), preview, frame_input(frame.rgb, config).pixels[None], [], [])
        else:
            chosen = boxes.get(frame.number, [])
            squares = [crop_square(record.detections[i]["bbox"], width, height) for i in chosen]
            pixels = np.empty((len(chosen), config.img_size, config.img_size, 3), np.uint8)
            for row, square in enumerate(squares):
                resize_for_model(cut_square(frame.rgb, square, 1.0), config, pixels[row])
            item = _Frame(frame, (height, width), preview, pixels, list(chosen), squares)
        frame.rgb = preview  # a clip's memory: one batch of full frames, then previews only
        seen.append(item)
        pending.append(item)
        if sum(len(f.pixels) for f in pending) >= predictor.batch_size:
            flush()
    flush()
    return seen


def _frame_probabilities(frame: _Frame) -> np.ndarray | None:
    """The frame's probabilities: its whole-frame prediction's, or its most confident box's (None: no box)."""
    if not frame.predictions:
        return None
    return max(frame.predictions, key=lambda p: p.top1.probability).probabilities


def _fill(record: ImageRecord, seen: Sequence[_Frame], verdict: Verdict, class_names: Sequence[str], top_k: int,
          detector: bool) -> None:
    evidence = set(verdict.evidence)
    record.frames = []
    for index, frame in enumerate(seen):
        entry: dict[str, Any] = {"frame_number": frame.frame.number, "seconds": frame.frame.seconds,
                                 "evidence": index in evidence}
        best = max(frame.predictions or [], key=lambda p: p.top1.probability, default=None)
        if best is not None:
            entry["top_k"] = [{"index": c.index, "name": c.name, "probability": round_probability(c.probability)}
                              for c in best.top_k[:FRAME_TOP_K]]
        record.frames.append(entry)
        if detector:
            for det_index, prediction in zip(frame.boxes, frame.predictions or [], strict=True):
                record.detections[det_index]["classifications"] = [
                    [str(c.index), round_probability(c.probability)] for c in prediction.top_k]
    record.decisive_frames = [seen[i].frame.number for i in verdict.decisive]
    if verdict.blank:
        record.top_k = []
        return
    record.top_k = [{"index": c, "name": class_names[c], "probability": round_probability(verdict.probabilities[c])}
                    for c in verdict.top_k(top_k)]
    record.explained_class = class_names[verdict.top_class]


def _strip(predictor: Predictor, seen: Sequence[_Frame], verdict: Verdict, record: ImageRecord) -> np.ndarray:
    """The decisive frames side by side, each with the verdict class's map (over its boxes, with a detector)."""
    target = verdict.top_class
    tiles = []
    for index in sorted(verdict.decisive):  # in time order
        frame = seen[index]
        predictions = frame.predictions or []
        if any(target not in p.attention for p in predictions):  # explained another class: ask for the verdict's
            predictions = predictor.predict_batched(frame.pixels, top_k=1, classes=[target])
        probability = max(float(p.probabilities[target]) for p in predictions)
        if frame.boxes:
            boxes = [BoxHeat(record.detections[d]["bbox"], s, p.attention_mean(target), predictor.class_names[target])
                     for d, s, p in zip(frame.boxes, frame.squares, predictions, strict=True)]
            bgr = overlay_boxes(frame.preview, frame.size, boxes)
        else:
            bgr = overlay(frame.preview, predictions[0].attention_mean(target))
        tile = cv2.cvtColor(thumbnail(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), _tile_side(bgr)), cv2.COLOR_RGB2BGR)
        tiles.append(caption(tile, [f"frame {frame.frame.number}  {frame.frame.seconds:.1f}s", f"p={probability:.2f}"]))
    height = max(t.shape[0] for t in tiles)
    padded = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
    return np.concatenate(padded, axis=1)


def _tile_side(image: np.ndarray) -> int:
    """The long side that gives a tile ``STRIP_TILE_HEIGHT`` pixels high."""
    h, w = image.shape[:2]
    return max(1, round(STRIP_TILE_HEIGHT * max(h, w) / h))
