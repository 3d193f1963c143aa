"""The options of a field station (``promptcam watch``; the Python API's ``InboxWatcher``), declared once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from promptcam.core.errors import PromptCamError
from promptcam.results.megadetector import DEFAULT_CATEGORIES, DEFAULT_THRESHOLD, check_threshold
from promptcam.runtime.clips import ClipOptions
from promptcam.runtime.prediction import DEFAULT_TOP_K


@dataclass(frozen=True)
class SidecarOptions:
    """``--detections sidecar``: classify the crops of the detections in a JSON beside each photo.

    Attributes:
        threshold / categories: Which detections are classified (as ``promptcam run --detections``).
        wait: Seconds a ready photo waits for its sidecar before it is recorded as failed.
    """

    threshold: float = DEFAULT_THRESHOLD
    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    wait: float = 120.0


@dataclass
class WatchOptions:
    """One station: its inbox, its database and what it does with each photo."""

    inbox: Path
    db: Path
    top_k: int = DEFAULT_TOP_K
    traits: int = 0
    settle: float = 2.0
    poll: float = 1.0
    heatmaps: Path | None = None
    move_processed: Path | None = None
    failed_dir: Path | None = None
    jsonl: Path | None = None
    status_file: Path | None = None
    status_every: float = 5.0
    use_events: bool = True
    once: bool = False  # process what is (or becomes) ready, then exit
    batch_delay: float = 0.0  # test hook: widen the window between inference and commit
    incomplete_wait: float = 120.0  # how long a file that looks half-written is waited for
    detections: SidecarOptions | None = None  # classify the crops of each image's detector sidecar
    workers: int = 4  # threads reading, hashing and decoding a batch's files
    clips: ClipOptions = field(default_factory=ClipOptions)  # how video clips are sampled (--video-fps ...)
    events: float | None = None  # group each camera's files into events: seconds between shots (--events)
    camera_from: str | None = None  # a regular expression whose first group names a file's camera

    def check(self) -> None:
        """Refuse a setting the station cannot honour (before the model loads: one line, at once)."""
        if self.events is not None:
            from promptcam.results.events import camera_pattern

            camera_pattern(self.camera_from)
        if self.detections is None:
            return
        check_threshold(self.detections.threshold)
        if self.traits:
            raise PromptCamError("--traits cannot be used with --detections (each crop has its heatmap, not a "
                                 "trait sheet)")
