"""One verdict from several frames: a clip's sampled frames, or the photos of one event (a burst).

The rule, for clips and events alike:

1. **Evidence.** With a detector, a frame carries evidence when it has a classified animal box; its
   probabilities are those of its most confident box. Without one, a frame carries evidence when
   its top-1 probability is at least ``MIN_CONFIDENCE`` (a frame where the creature is half out of
   view, or absent, says little). When no frame qualifies, every frame counts (and the low
   confidence shows in the verdict's confidence).
2. **Combination.** The verdict's class probabilities are the mean of the evidence frames'
   probabilities; the verdict is their top class and its ``confidence`` that class's mean probability.
   A mean, not a product: one odd frame (motion blur, a leaf) moves it by 1/N, never vetoes it.
3. **Blank.** With a detector and no evidence frame, the verdict is blank: no class at all.
4. **Decisive frames.** The evidence frames with the highest probability of the verdict's class
   (at most ``DECISIVE_FRAMES``), most decisive first: the frames a reviewer sees in the heatmap strip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .prediction import ranked_classes

MIN_CONFIDENCE = 0.5
DECISIVE_FRAMES = 4


@dataclass
class Verdict:
    """Attributes:
    probabilities: Mean class probabilities over the evidence frames (None: blank).
    top_class / confidence: The verdict and its mean probability (None / 0.0: blank).
    evidence: Indices (into the frames given) of the frames that carry evidence.
    decisive: Indices of the decisive frames, most decisive first.
    """

    probabilities: np.ndarray | None
    top_class: int | None
    confidence: float
    evidence: list[int]
    decisive: list[int]

    @property
    def blank(self) -> bool:
        return self.top_class is None

    def top_k(self, k: int) -> list[int]:
        return [] if self.probabilities is None else ranked_classes(self.probabilities, k)


def combine_frames(probabilities: Sequence[np.ndarray | None], *, detector: bool,
                   min_confidence: float = MIN_CONFIDENCE, decisive: int = DECISIVE_FRAMES) -> Verdict:
    """The verdict of frames in time order (module docstring).

    Args:
        probabilities: Per frame, its class probabilities [C]; None for a frame with no classified
            animal box (detector) or that failed.
        detector: Frames come with a detector's boxes: no evidence means blank.
    """
    present = [i for i, p in enumerate(probabilities) if p is not None]
    if detector:
        evidence = present
    else:
        evidence = [i for i in present if float(np.max(probabilities[i])) >= min_confidence] or present
    if not evidence:
        return Verdict(None, None, 0.0, [], [])
    mean = np.mean([probabilities[i] for i in evidence], axis=0)
    top = int(np.argmax(mean))
    ranked = sorted(evidence, key=lambda i: (-float(probabilities[i][top]), i))[:decisive]
    return Verdict(mean, top, float(mean[top]), evidence, ranked)
