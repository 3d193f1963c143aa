"""Training on the crops of a detector's boxes (``promptcam train --detections md.json``).

A classifier that runs on MegaDetector crops should be trained on the crops it will see. Each training
sample is one detection of an ImageFolder photo, labelled with the photo's class folder, and cut by the
run's own crop path (``runtime.model_input`` with ``runtime.crops``): the same detections are chosen
(``results.megadetector.select_crops``: category, threshold, the 100-crop cap), the photo is decoded at
the JPEG reduction the run would use for all of its crops, and the crop is the run's square. At zero
jitter a training crop is the run's crop byte for byte. Training adds random context jitter: the
margin around the box is drawn from a range instead of the run's fixed 10 %, and the square's centre is
shifted off the box's centre (``CropJitter``), so the model does not learn one exact framing.

The detector file is read defensively: a malformed entry is skipped and counted, a photo the file does
not list or lists without a usable box is left out and counted, a box outside the photo (or under one
pixel of it) is left out and counted. ``CropCounts`` reports all of it; none of it stops training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from promptcam.batch.detections import load_detector_file, match_inputs
from promptcam.batch.inputs import InputFile, canonical_path
from promptcam.batch.options import DetectionOptions
from promptcam.core.config import ModelConfig
from promptcam.core.errors import ConfigError, ImageError
from promptcam.models.preprocess import normalize_pixels
from promptcam.results.megadetector import category_ids, check_threshold, select_crops
from promptcam.runtime.crops import RUN_CONTEXT, CropContext, box_failure
from promptcam.runtime.images import check_dimensions, read_file_bytes
from promptcam.runtime.model_input import model_input

MAX_MARGIN = 1.0  # of the box's longer side, each side: a crop three times the box
MAX_SHIFT = 0.5  # of the box's longer side, each axis: the box's centre stays inside the crop


@dataclass(frozen=True)
class CropJitter:
    """Random context of a training crop: margin drawn uniformly from ``[margin_min, margin_max]`` (of the
    box's longer side, each side; the run uses 0.1), the square's centre shifted by up to ``shift`` of the
    box's longer side on each axis (uniform). ``NO_JITTER`` cuts the run's crop."""

    margin_min: float = 0.0
    margin_max: float = 0.3
    shift: float = 0.05

    def __post_init__(self) -> None:
        if not (0 <= self.margin_min <= self.margin_max <= MAX_MARGIN):
            raise ConfigError(f"crop margin jitter must satisfy 0 <= min <= max <= {MAX_MARGIN}, "
                              f"got {self.margin_min}..{self.margin_max}")
        if not 0 <= self.shift <= MAX_SHIFT:
            raise ConfigError(f"crop shift jitter must be in [0, {MAX_SHIFT}], got {self.shift}")

    def draw(self, generator: torch.Generator | None = None) -> CropContext:
        """One crop's context (torch's random stream: seeded per epoch and worker by the training loop)."""
        if self.is_none:
            return RUN_CONTEXT
        u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
        margin = self.margin_min + (self.margin_max - self.margin_min) * u[0]
        return CropContext(margin, (2 * u[1] - 1) * self.shift, (2 * u[2] - 1) * self.shift)

    @property
    def is_none(self) -> bool:
        return self.margin_min == self.margin_max == RUN_CONTEXT.margin and self.shift == 0


NO_JITTER = CropJitter(RUN_CONTEXT.margin, RUN_CONTEXT.margin, 0.0)


@dataclass(frozen=True)
class CropSample:
    """One training crop: a detection of a photo, labelled with the photo's class.

    Attributes:
        path: The photo.
        label: Its class index (its ImageFolder folder).
        box: The detection's normalised ``[x, y, w, h]``.
        photo_boxes: The boxes the run would cut from this photo (they set its JPEG reduction).
    """

    path: Path
    label: int
    box: tuple[float, float, float, float]
    photo_boxes: tuple[tuple[float, float, float, float], ...]


@dataclass
class CropCounts:
    """What the detector file gave, and what was left out and why (nothing of it stops training)."""

    photos: int = 0  # ImageFolder photos offered
    crops: int = 0
    photos_with_crops: int = 0
    entries_skipped: list[str] = field(default_factory=list)  # malformed detector entries (why)
    photos_not_in_file: int = 0
    photos_detector_failed: int = 0  # listed with "failure" / detections null
    photos_without_boxes: int = 0  # no detection qualifies (empty frames, other categories, below threshold)
    photos_unreadable: list[str] = field(default_factory=list)  # header unreadable or refused (why)
    boxes_outside: int = 0  # chosen boxes with no pixel (or under one pixel) inside the photo
    entries_not_in_data: int = 0

    def summary(self) -> str:
        return (f"{self.crops} crop(s) from {self.photos_with_crops} of {self.photos} photo(s); left out: "
                f"{len(self.entries_skipped)} malformed detector entr(ies), {self.photos_not_in_file} photo(s) not "
                f"in the detector file, {self.photos_detector_failed} the detector failed on, "
                f"{self.photos_without_boxes} without a qualifying box, {len(self.photos_unreadable)} unreadable, "
                f"{self.boxes_outside} box(es) outside the photo; {self.entries_not_in_data} detector entr(ies) "
                f"of no photo of the data")

    def details(self, limit: int = 5) -> list[str]:
        """The first reasons of each kind, for the log."""
        return ([f"  skipped: {r}" for r in self.entries_skipped[:limit]]
                + [f"  unreadable: {r}" for r in self.photos_unreadable[:limit]])


def crop_samples(photos: Sequence[tuple[Path, int]], data_root: Path,
                 options: DetectionOptions) -> tuple[list[CropSample], CropCounts]:
    """The training crops of ``photos`` ((path, label) pairs) from the detector file ``options.path``.

    File names are matched as ``promptcam run --detections`` matches them (``batch.detections``), relative
    to ``options.root`` (default: ``data_root``). Each photo's header is read once here, for its size.

    Raises:
        PromptCamError: the detector file is unreadable, not JSON, not format 1.x, or a category is unknown;
            a threshold outside [0, 1].
    """
    check_threshold(options.threshold)
    detector = load_detector_file(Path(options.path), skip_bad_entries=True)
    categories = category_ids(detector, options.categories)
    counts = CropCounts(photos=len(photos), entries_skipped=list(detector.skipped))
    files = [InputFile(_relative(path, data_root), Path(path), canonical_path(path), None, None) for path, _ in photos]
    matching = match_inputs(files, detector, Path(options.root) if options.root else Path(data_root))
    counts.photos_not_in_file = len(matching.inputs_missing)
    counts.entries_not_in_data = len(matching.entries_unmatched)
    samples: list[CropSample] = []
    for item, (_, label) in zip(files, photos, strict=True):
        entry = matching.entries.get(item.key)
        if entry is None:
            continue
        detections = entry.get("detections")
        if detections is None:
            counts.photos_detector_failed += 1
            continue
        chosen = [detections[i]["bbox"] for i in select_crops(detections, categories, options.threshold).selected]
        kept = [_box(b) for b in chosen if box_failure(b) is None]  # the run cuts these (and decodes for them)
        counts.boxes_outside += len(chosen) - len(kept)
        if not kept:
            counts.photos_without_boxes += 1 if not chosen else 0
            continue
        try:
            width, height = check_dimensions(read_file_bytes(item.path), str(item.path))
        except ImageError as exc:
            counts.photos_unreadable.append(str(exc))
            continue
        usable = [b for b in kept if box_failure(b, width, height) is None]
        counts.boxes_outside += len(kept) - len(usable)
        samples += [CropSample(item.path, label, b, tuple(kept)) for b in usable]
        counts.photos_with_crops += bool(usable)
    counts.crops = len(samples)
    return samples, counts


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _box(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in bbox)
    return x, y, w, h


def cut_training_crop(sample: CropSample, config: ModelConfig, context: CropContext = RUN_CONTEXT) -> np.ndarray:
    """One crop at model size (uint8 RGB), by the run's crop path; ``RUN_CONTEXT`` gives the run's crop.

    Raises:
        ImageError: the photo does not decode.
    """
    photo = model_input(read_file_bytes(sample.path), str(sample.path), config, boxes=[sample.box],
                        context=[context], reduction_boxes=sample.photo_boxes)
    return photo.pixels[0]


class DetectionCropData(Dataset):
    """Crops and labels; ``jitter`` draws each crop's context at random (training), ``NO_JITTER`` cuts the run's.

    A photo whose header read but whose pixels do not decode is replaced, for that draw, by the next crop
    of the list (a damaged photo costs its crops, not the epoch); ``failed`` names the photos seen so (per
    data-loading process).

    Args:
        samples: From ``crop_samples``.
        config: Model config (size, mean/std, interpolation).
        jitter: Random context of each crop.
        flip: Mirror half the crops left-right (training).
    """

    def __init__(self, samples: list[CropSample], config: ModelConfig, *, jitter: CropJitter = NO_JITTER,
                 flip: bool = False) -> None:
        if not samples:
            raise ConfigError("no training crops: no photo of the data has a qualifying detection")
        self.samples = samples
        self.config = config
        self.jitter = jitter
        self.flip = flip
        self.failed: set[Path] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def crop(self, index: int) -> tuple[np.ndarray, int]:
        """uint8 RGB at model size (jittered and flipped when training) and its label."""
        for step in range(min(len(self.samples), 64)):
            sample = self.samples[(index + step) % len(self.samples)]
            try:
                rgb = cut_training_crop(sample, self.config, self.jitter.draw())
            except ImageError:
                self.failed.add(sample.path)
                continue
            if self.flip and torch.rand(()) < 0.5:
                rgb = rgb[:, ::-1]
            return np.ascontiguousarray(rgb), sample.label
        raise ImageError(f"{self.samples[index].path}: it and the next crops' photos do not decode")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rgb, label = self.crop(index)
        return normalize_pixels(rgb, self.config)[0], label


def margin_range(text: str) -> tuple[float, float]:
    """``"0,0.25"`` -> (0.0, 0.25); one number is a fixed margin."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--crop-margin {text!r}: expected MIN,MAX (fractions of the box's longer side)") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--crop-margin {text!r}: expected MIN,MAX (fractions of the box's longer side)")
    return values[0], values[1]
