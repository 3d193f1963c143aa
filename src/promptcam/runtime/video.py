"""Video clips: frames sampled by time through OpenCV's FFmpeg backend, bounded whatever the file claims.

A clip is hostile input like a photo. The container's frame count and frame rate may lie, the
frame rate may vary, the stream may end early or never start, its frames may be 8K. So:

- the frame size is checked from the stream's header before a frame is decoded (``MAX_VIDEO_PIXELS``);
- frames are sampled by their presentation time (``CAP_PROP_POS_MSEC``), not by the declared count
  or rate, so a variable-frame-rate clip is sampled evenly in time;
- at most ``max_frames`` frames are sampled and at most ``grab_limit`` frames are read to find them,
  so an hour-long clip (or one whose timestamps never advance) costs the cap, not the hour;
- the rotation in the container's metadata is applied (``CAP_PROP_ORIENTATION_AUTO``);
- a stream that ends early keeps the frames read so far; one that yields no frame is a ``VideoError``.

Video codecs have no reduced-scale decode (a JPEG's DCT reduction has no H.264 counterpart): every
frame is decoded at full size, but frames that are not sampled are only grabbed (decoded, never
converted to RGB), and a sampled frame is shrunk at once to the model's input and a small preview.
Frame numbers are indices of decoded frames from 0, MegaDetector's ``frame_number``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from promptcam.core.errors import ImageError

from .heatmap import thumbnail
from .images import DECODE_BUDGET, is_image_path

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v"})
DEFAULT_VIDEO_FPS = 1.0  # frames sampled per second of video (MegaDetector's tools sample 1/s for classification)
DEFAULT_VIDEO_MAX_FRAMES = 120  # sampled frames per clip: two minutes at 1/s; an hour-long clip stops there
# 4096x2304 covers UHD and DCI 4K. Every frame of a clip is decoded at full size (no reduced decode), so an
# 8K clip costs 33 MP per frame, sampled or not: a station beside a camera would fall hours behind
MAX_VIDEO_PIXELS = 4096 * 2304
VIDEO_PREVIEW_SIDE = 480  # long side of the frames a clip's heatmap strip is drawn on
FALLBACK_FRAME_RATE = 30.0  # when the container's rate is missing or absurd (timestamps still rule sampling)


class VideoError(ImageError):
    """A clip that cannot be read, or that is refused (one failed record, never a crashed run)."""


def is_video_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def is_media_path(path: str | Path) -> bool:
    """A photo or a clip, by its suffix (what a run or a station takes in)."""
    return is_image_path(path) or is_video_path(path)


@dataclass(frozen=True)
class VideoInfo:
    """What the stream's header says (the frame count may lie: it is reported, never trusted)."""

    width: int
    height: int
    frame_rate: float
    declared_frames: int


@dataclass
class VideoFrame:
    """One sampled frame: its index among decoded frames, its time, and its RGB pixels (full size)."""

    number: int
    seconds: float
    rgb: np.ndarray

    @property
    def preview(self) -> np.ndarray:
        return thumbnail(self.rgb, VIDEO_PREVIEW_SIDE) if max(self.rgb.shape[:2]) > VIDEO_PREVIEW_SIDE else self.rgb


def open_video(path: str | Path) -> tuple[cv2.VideoCapture, VideoInfo]:
    """Open a clip with FFmpeg and check its header.

    Raises:
        VideoError: not a readable video, no frame size, or frames above ``MAX_VIDEO_PIXELS``.
    """
    name = str(path)
    if not Path(path).is_file():
        raise VideoError(f"{name}: not a regular file")
    capture = cv2.VideoCapture(name, cv2.CAP_FFMPEG)
    if not capture.isOpened():
        capture.release()
        raise VideoError(f"{name}: cannot open video (not a video FFmpeg reads, or damaged)")
    capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    rate = capture.get(cv2.CAP_PROP_FPS)
    declared = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    info = VideoInfo(width, height, rate if math.isfinite(rate) and 0 < rate <= 1000 else 0.0,
                     int(declared) if math.isfinite(declared) and declared > 0 else 0)
    if width <= 0 or height <= 0:
        capture.release()
        raise VideoError(f"{name}: video stream has no frame size")
    if width * height > MAX_VIDEO_PIXELS:
        capture.release()
        raise VideoError(f"{name}: {width}x{height} video frames are above the {MAX_VIDEO_PIXELS} pixel limit "
                         "for clips (every frame is decoded at full size)")
    return capture, info


def grab_limit(max_frames: int, fps: float, frame_rate: float) -> int:
    """Frames read at most to sample ``max_frames`` at ``fps``: twice the frames they span, plus a second."""
    rate = frame_rate or FALLBACK_FRAME_RATE
    return int(2 * max_frames * max(1.0, rate / fps) + rate) + 1


def sample_frames(path: str | Path, *, fps: float = DEFAULT_VIDEO_FPS, max_frames: int = DEFAULT_VIDEO_MAX_FRAMES,
                  frames: Collection[int] | None = None) -> tuple[VideoInfo, Iterator[VideoFrame]]:
    """The clip's header facts and an iterator over its sampled frames (read lazily, one at a time).

    Args:
        fps: Frames per second of video time: a frame is sampled when its timestamp reaches the next
            multiple of ``1 / fps`` (the first frame always).
        max_frames: Sampled frames at most.
        frames: Sample exactly these frame numbers instead (a detector's video results); the cap holds.

    Raises:
        VideoError: from ``open_video``; the iterator raises it when no frame decodes at all.
    """
    if fps <= 0 or max_frames <= 0:
        raise ValueError("fps and max_frames must be positive")
    capture, info = open_video(path)
    wanted = sorted(set(frames))[:max_frames] if frames is not None else None
    return info, _frames(capture, info, str(path), fps, max_frames, wanted)


def _frames(capture: cv2.VideoCapture, info: VideoInfo, name: str, fps: float, max_frames: int,
            wanted: list[int] | None) -> Iterator[VideoFrame]:
    rate = info.frame_rate or FALLBACK_FRAME_RATE
    limit = grab_limit(max_frames, fps, info.frame_rate)
    if wanted is not None:
        limit = min(limit, (wanted[-1] + 1) if wanted else 0)
    wanted_set = set(wanted or ())
    step = 1.0 / fps
    next_time = 0.0
    sampled = grabbed = 0
    last_seconds = -1.0
    try:
        while grabbed < limit and sampled < (len(wanted_set) if wanted is not None else max_frames):
            if not capture.grab():
                break  # the end, or a truncated stream: what was read so far stands
            number = grabbed
            grabbed += 1
            milliseconds = capture.get(cv2.CAP_PROP_POS_MSEC)
            seconds = milliseconds / 1000 if math.isfinite(milliseconds) and milliseconds >= 0 else -1.0
            if seconds <= last_seconds and number > 0:  # missing or stuck timestamps: count frames instead
                seconds = max(number / rate, last_seconds + 1e-6)
            last_seconds = seconds
            if wanted is not None:
                take = number in wanted_set
            else:
                take = number == 0 or seconds + 1e-6 >= next_time
            if not take:
                continue
            with DECODE_BUDGET.hold(info.width * info.height):
                ok, bgr = capture.retrieve()
                if not ok or bgr is None or bgr.ndim != 3:
                    continue  # a frame that does not convert: skip it, keep the clip
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            sampled += 1
            next_time = (math.floor(seconds / step + 1e-9) + 1) * step
            yield VideoFrame(number, round(seconds, 3), rgb)
    except cv2.error as exc:  # a decoder fault on hostile data: this clip only
        raise VideoError(f"{name}: cannot decode video ({str(exc).strip()[:200]})") from exc
    finally:
        capture.release()
    if sampled == 0:
        raise VideoError(f"{name}: no frame could be decoded" + (" (none of the detector's frames)"
                                                                   if wanted is not None and grabbed else ""))
