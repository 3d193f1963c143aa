"""Camera streams: RTSP, USB devices and video files, sampled into the same SQLite results as the inbox.

Live sources are read by a thread that keeps only the latest frame (no stale backlog), reconnects
with exponential backoff and jitter, and is restarted by a watchdog when a read hangs. Video files
are read in order and sampled by their own timestamps.

Live sampling, ``--duration`` and the dead-camera limit run on the monotonic clock, so a wall
clock set backwards (NTP on a station that booted at 1970) neither stops sampling nor the run;
the wall clock only names and dates the frames. Frame files carry a sequence number and never
overwrite each other. Credentials in an address (``user:pass@``, ``?token=``, ``password=`` in
the path, any case of scheme) never reach a log line, the database or a file name:
``redact_source`` is what everything but the capture itself sees.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from promptcam.core.atomic import atomic_write_bytes
from promptcam.core.errors import PromptCamError
from promptcam.results.store import ResultStore
from promptcam.runtime.model_input import frame_input
from promptcam.runtime.prediction import DEFAULT_TOP_K
from promptcam.runtime.predictor import Predictor
from promptcam.runtime.records import ImageRecord, heatmap_paths, record_prediction

from .archive import free_name

LIVE_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# key=value pairs whose key names a secret, in the query or (Dahua, XMEye) in the path
_SECRET_PAIR = re.compile(r"(?i)\b([a-z0-9_.-]*(?:pass|pwd|token|secret|key|auth|sig|user|login|cred|session)"
                          r"[a-z0-9_.-]*)=([^&;?#/]*)")


class Capture(Protocol):
    def isOpened(self) -> bool: ...  # noqa: N802 - OpenCV's name
    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def release(self) -> None: ...


def redact_source(source: str) -> str:
    """``source`` with its credentials replaced by ``***``: the spelling for logs, the database and paths.

    ``RTSP://admin:pw@cam/live?token=t`` -> ``rtsp://***@cam/live?token=***``. The user part ends
    at the last ``@`` before the query, so passwords containing ``@`` or ``/`` are covered too.
    """
    match = _SCHEME.match(source)
    if match is None:
        return _SECRET_PAIR.sub(lambda m: f"{m.group(1)}=***", source)
    rest = source[match.end():]
    head = re.split(r"[?#]", rest, maxsplit=1)[0]
    if "@" in head:
        rest = "***" + rest[head.rindex("@"):]
    return f"{match.group(1).lower()}://" + _SECRET_PAIR.sub(lambda m: f"{m.group(1)}=***", rest)


def _is_network(source: str) -> bool:
    return source.lower().startswith(LIVE_PREFIXES)


def is_live(source: str) -> bool:
    return source.isdigit() or _is_network(source) or source.startswith("/dev/video")


def open_capture(source: str, *, open_timeout_ms: int = 10_000, read_timeout_ms: int = 10_000) -> Capture:
    """An OpenCV capture with open/read timeouts; RTSP over TCP unless the user set FFmpeg options."""
    if source.isdigit():
        return cv2.VideoCapture(int(source))
    if source.lower().startswith(("rtsp://", "rtsps://")):
        # UDP drops packets on field links (smeared frames); TCP is the safe default
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
    if _is_network(source):
        # FFmpeg's own messages can quote the address with its password; ours say what happened
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, open_timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_timeout_ms]
    api = cv2.CAP_FFMPEG if _is_network(source) else cv2.CAP_ANY
    return cv2.VideoCapture(source, api, params)


def parse_every(text: str | None) -> tuple[float | None, int | None]:
    """``5s`` -> (5.0, None); ``10f`` -> (None, 10); ``0.5`` -> (0.5, None); None -> every frame."""
    if not text:
        return None, None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|f|frames?)?\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise PromptCamError(f"--every must look like 5s or 10f, got {text!r}")
    value, unit = float(match.group(1)), (match.group(2) or "s")
    return (None, int(value)) if unit.startswith("f") else (value, None)


class Sampler:
    """Lets a frame through every N seconds (of frame time) or every N frames."""

    def __init__(self, every: str | None) -> None:
        self.seconds, self.frames = parse_every(every)
        self._last_time: float | None = None
        self._count = 0

    def due(self, frame_time: float) -> bool:
        index, self._count = self._count, self._count + 1
        if self.frames:
            return index % self.frames == 0
        if (self.seconds is None or self._last_time is None or frame_time < self._last_time
                or frame_time - self._last_time >= self.seconds - 1e-6):  # time going backwards: start again
            self._last_time = frame_time
            return True
        return False


class MotionGate:
    """Frame differencing on small blurred greyscale frames: passes frames where enough pixels changed."""

    def __init__(self, *, threshold: int = 25, min_fraction: float = 0.01, width: int = 160) -> None:
        self.threshold, self.min_fraction, self.width = threshold, min_fraction, width
        self._previous: np.ndarray | None = None

    def moved(self, frame_bgr: np.ndarray) -> bool:
        h, w = frame_bgr.shape[:2]
        small = cv2.resize(frame_bgr, (self.width, max(1, round(h * self.width / w))), interpolation=cv2.INTER_AREA)
        grey = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), (5, 5), 0)
        previous, self._previous = self._previous, grey
        if previous is None:
            return True  # the first frame is always looked at
        changed = np.count_nonzero(cv2.absdiff(grey, previous) > self.threshold)
        return changed / grey.size >= self.min_fraction


@dataclass
class ReaderStats:
    opens: int = 0
    failed_opens: int = 0
    restarts: int = 0  # watchdog restarts of a hung capture
    frames: int = 0


class LatestFrameReader:
    """Reads a live source in a thread, keeping only the newest frame.

    Args:
        source: Capture address.
        capture_factory: Opens a capture (tests pass a double that fails and hangs).
        backoff_initial / backoff_max: Reconnect delays (doubling, with +-25% jitter).
        stall_timeout: Seconds without a frame after which the watchdog abandons the capture
            and starts a new one (a hung ``read()`` cannot be interrupted, only left behind).
        wall_clock: Gives the time frames are stamped with (tests set a clock that jumps).
    """

    def __init__(self, source: str, *, capture_factory: Callable[[str], Capture] = open_capture,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0, stall_timeout: float = 15.0,
                 log: Callable[[str], None] = print, seed: int | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.source, self.factory, self.log, self.wall_clock = source, capture_factory, log, wall_clock
        self.label = redact_source(source)
        self.backoff_initial, self.backoff_max, self.stall_timeout = backoff_initial, backoff_max, stall_timeout
        self.stats = ReaderStats()
        self._rng = random.Random(seed)
        self._cond = threading.Condition()
        self._frame: tuple[np.ndarray, float, float, int] | None = None  # frame, wall, monotonic, number
        self._returned = 0
        self._generation = 0
        self._last_frame = time.monotonic()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> LatestFrameReader:
        self._spawn()
        watchdog = threading.Thread(target=self._watchdog, name="capture-watchdog", daemon=True)
        watchdog.start()
        self._threads.append(watchdog)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def latest(self, timeout: float) -> tuple[np.ndarray, float, float] | None:
        """The newest frame not returned before (BGR, wall time, monotonic time), or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stop.is_set():
                if self._frame is not None and self._frame[3] > self._returned:
                    frame, wall, mono, seq = self._frame
                    self._returned = seq
                    return frame, wall, mono
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
        return None

    def _spawn(self) -> None:
        with self._cond:
            self._generation += 1
            generation = self._generation
            self._last_frame = time.monotonic()
        thread = threading.Thread(target=self._read_loop, args=(generation,), name=f"capture-{generation}",
                                  daemon=True)
        thread.start()
        self._threads.append(thread)

    def _current(self, generation: int) -> bool:
        return not self._stop.is_set() and generation == self._generation

    def _read_loop(self, generation: int) -> None:
        delay = self.backoff_initial
        while self._current(generation):
            capture = self.factory(self.source)
            if not capture.isOpened():
                capture.release()
                self.stats.failed_opens += 1
                wait = min(delay, self.backoff_max) * self._rng.uniform(0.75, 1.25)
                self.log(f"{self.label}: cannot open; retrying in {wait:.1f}s")
                self._stop.wait(wait)
                delay = min(delay * 2, self.backoff_max)
                continue
            self.stats.opens += 1
            delay = self.backoff_initial
            try:
                while self._current(generation):
                    ok, frame = capture.read()
                    if not self._current(generation):
                        break  # abandoned by the watchdog while blocked in read()
                    if not ok or frame is None:
                        self.log(f"{self.label}: stream ended or read failed; reconnecting")
                        break
                    with self._cond:
                        self.stats.frames += 1
                        self._last_frame = time.monotonic()
                        self._frame = (frame, self.wall_clock(), self._last_frame, self.stats.frames)
                        self._cond.notify_all()
            finally:
                capture.release()

    def _watchdog(self) -> None:
        period = max(0.05, self.stall_timeout / 4)
        while not self._stop.wait(period):
            with self._cond:
                stalled = time.monotonic() - self._last_frame > self.stall_timeout
            if stalled and self.stats.opens:
                self.stats.restarts += 1
                self.log(f"{self.label}: no frame for {self.stall_timeout:.0f}s; restarting the capture")
                self._spawn()


def file_frames(
    source: str, capture_factory: Callable[[str], Capture] = open_capture
) -> Iterator[tuple[np.ndarray, float]]:
    """Frames of a video file in order, with their timestamps in seconds."""
    capture = capture_factory(source)
    if not capture.isOpened():
        raise PromptCamError(f"{redact_source(source)}: cannot open video")
    fps = capture.get(cv2.CAP_PROP_FPS) if hasattr(capture, "get") else 0.0
    index = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                return
            yield frame, index / fps if fps and fps > 0 else float(index)
            index += 1
    finally:
        capture.release()


@dataclass
class StreamOptions:
    source: str
    db: Path
    frames_dir: Path
    every: str | None = "5s"
    on_motion: bool = False
    top_k: int = DEFAULT_TOP_K
    traits: int = 0
    heatmaps: Path | None = None
    max_frames: int | None = None  # stop after this many classified frames
    duration: float | None = None  # stop after this many seconds (monotonic), frames or not
    stall_timeout: float = 15.0
    # end a live run with an error when no frame came for this long; None: DEFAULT_GIVE_UP when
    # --max-frames bounds the run (a dead camera must not keep it waiting for ever), else never
    give_up: float | None = None


DEFAULT_GIVE_UP = 120.0


def stream_name(source: str) -> str:
    """A file-system-safe folder name for a source (credentials dropped, not just hidden)."""
    cleaned = _SCHEME.sub("", redact_source(source))
    cleaned = re.sub(r"[A-Za-z0-9_.-]*=\*\*\*", "", cleaned.removeprefix("***@"))
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", cleaned).strip("._-")[:120]
    return name or "camera"


def run_stream(predictor: Predictor, options: StreamOptions, log: Callable[[str], None] = print,
               capture_factory: Callable[[str], Capture] = open_capture,
               wall_clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Sample, classify and store frames until the source ends, a limit is hit, or SIGTERM/SIGINT.

    Raises:
        PromptCamError: a live source gave no frame for ``give_up`` seconds (see ``StreamOptions``).
    """
    label = redact_source(options.source)
    store = ResultStore.open_for_writing(options.db, log)
    sampler, gate = Sampler(options.every), MotionGate() if options.on_motion else None
    name = stream_name(options.source)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)} \
        if threading.current_thread() is threading.main_thread() else {}
    live = is_live(options.source)
    reader = LatestFrameReader(options.source, capture_factory=capture_factory, stall_timeout=options.stall_timeout,
                               log=log, wall_clock=wall_clock).start() if live else None
    started = time.monotonic()
    deadline = started + options.duration if options.duration else None
    give_up = options.give_up if options.give_up is not None else (DEFAULT_GIVE_UP if options.max_frames else None)
    if reader is not None:
        frames = _live_frames(reader, stop, deadline, give_up)
    else:
        frames = ((frame, None, t) for frame, t in file_frames(options.source, capture_factory))
    numbers = itertools.count(1)
    classified = seen = 0
    try:
        for frame, wall, clock in frames:
            seen += 1
            if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                break
            # live frames are sampled on the monotonic clock: a wall clock set back must not stop sampling
            if not sampler.due(clock) or (gate is not None and not gate.moved(frame)):
                continue
            row = _classify_frame(predictor, options, name, label, frame, wall, clock, next(numbers))
            store.add([row], log=log)
            classified += 1
            if options.max_frames and classified >= options.max_frames:
                break
    finally:
        if reader is not None:
            reader.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        store.close()
    stats = reader.stats.__dict__ if reader else {}
    return {"frames_seen": seen, "frames_classified": classified, **stats}


def _live_frames(reader: LatestFrameReader, stop: threading.Event, deadline: float | None,
                 give_up: float | None) -> Iterator[tuple[np.ndarray, float, float]]:
    """Frames as they come; returns at the deadline even when the camera sends nothing."""
    last_frame = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        if give_up is not None and now - last_frame >= give_up:
            raise PromptCamError(f"{reader.label}: no frame for {give_up:.0f}s (camera dead or unreachable, "
                                 f"{reader.stats.failed_opens} failed opens); giving up")
        limits = [1.0] + [t - now for t in (deadline, last_frame + give_up if give_up is not None else None)
                          if t is not None]
        item = reader.latest(timeout=max(0.01, min(limits)))
        if item is not None:
            last_frame = time.monotonic()
            yield item


def _classify_frame(predictor: Predictor, options: StreamOptions, name: str, label: str, frame_bgr: np.ndarray,
                    wall: float | None, clock: float, number: int) -> ImageRecord:
    if wall is not None:  # live: named and dated by the wall clock, numbered so names never collide
        taken = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1000):03d}Z"
        base = f"{taken.replace(':', '-')}_{number:06d}"
    else:
        taken = None
        base = f"t{clock:010.3f}_{number:06d}"
    ok, encoded = cv2.imencode(".jpg", frame_bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise PromptCamError(f"{label}: cannot encode a frame")
    data = encoded.tobytes()
    folder = options.frames_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    path = free_name(folder / f"{base}.jpg", lambda _: False)  # a restart after a clock jump: never overwrite
    atomic_write_bytes(path, data)
    rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
    frame = frame_input(rgb, predictor.config, keep_preview=options.heatmaps is not None)
    prediction = predictor.predict_pixels(frame.pixels[None], [frame.size], top_k=options.top_k,
                                          traits=options.traits)[0]
    row = ImageRecord(source=label, file=f"{name}/{path.name}", sha256=hashlib.sha256(data).hexdigest(),
                      size=len(data), taken_at=taken, width=frame.size[1], height=frame.size[0])
    heatmaps = heatmap_paths(options.heatmaps, row.file) if options.heatmaps is not None else None
    return record_prediction(row, prediction, predictor.class_names, preview=frame.preview, heatmaps=heatmaps,
                             keep_probabilities=True)
