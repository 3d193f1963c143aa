"""The options and the summary of one folder run (``promptcam run`` over files; the Python API's ``run_files``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from promptcam.results.formats import DEFAULT_FORMATS
from promptcam.results.megadetector import DEFAULT_CATEGORIES, DEFAULT_THRESHOLD
from promptcam.runtime.clips import ClipOptions
from promptcam.runtime.prediction import DEFAULT_TOP_K


@dataclass
class DetectionOptions:
    """What ``--detections`` classifies.

    Attributes:
        path: The detector's batch-results file (MegaDetector format 1.x).
        threshold: Detections at or above this confidence are classified.
        categories: Detection categories classified, by name or id.
        root: The folder the detector file's relative paths are relative to (default: each input folder).
    """

    path: Path
    threshold: float = DEFAULT_THRESHOLD
    categories: Sequence[str] = DEFAULT_CATEGORIES
    root: Path | None = None


@dataclass
class RunOptions:
    """Options of one ``promptcam-run`` over files."""

    inputs: Sequence[Path]
    out_dir: Path
    top_k: int = DEFAULT_TOP_K
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
    follow_links: bool = False  # follow symlinks in the input folders that lead out of them (refused otherwise)
    clips: ClipOptions = field(default_factory=ClipOptions)  # how video clips are sampled (--video-fps ...)
    events: float | None = None  # group each camera's files into events: seconds between shots (--events)
    camera_from: str | None = None  # a regular expression whose first group names a file's camera (--camera-from)


@dataclass
class RunSummary:
    total: int = 0
    ok: int = 0
    failed: int = 0
    resumed: int = 0
    skipped_non_images: int = 0
    videos: int = 0
    events: int = 0
    refused_links: int = 0  # symlinks in the input folders leading out of them, not followed
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        return (self.ok + self.failed - self.resumed) / self.seconds if self.seconds else 0.0
