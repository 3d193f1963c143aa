"""What the runtime says about one image: ``Prediction`` (classes, maps, trait heads) and the class ranking."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from promptcam.core.traits import HeadRanking

DEFAULT_TOP_K = 5  # classes listed per image, in every verb and the Python API


@dataclass
class ClassScore:
    index: int
    name: str
    probability: float


@dataclass
class Prediction:
    """Everything the runtime knows about one image.

    Attributes:
        logits / probabilities: [C].
        top_k: Best classes, most probable first.
        attention: class index -> per-head maps [heads, grid, grid] (softmax attention of that
            class's prompt over the patches).
        image_size: (height, width) of the original image, to map heatmaps back.
        traits: class index -> greedy head ranking (when asked for).
    """

    logits: np.ndarray
    probabilities: np.ndarray
    top_k: list[ClassScore]
    attention: dict[int, np.ndarray]
    image_size: tuple[int, int]
    traits: dict[int, HeadRanking] = field(default_factory=dict)

    @property
    def top1(self) -> ClassScore:
        return self.top_k[0]

    def attention_mean(self, class_index: int) -> np.ndarray:
        """Head-mean attention map [grid, grid]."""
        return self.attention[class_index].mean(axis=0)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def ranked_classes(probabilities: np.ndarray, k: int) -> list[int]:
    """The ``k`` most probable class indices, most probable first (ties by index: a stable order)."""
    return np.argsort(-np.asarray(probabilities), kind="stable")[:k].tolist()


def explained_index(prediction: Prediction) -> int:
    """The class a prediction explains (the first class whose attention it holds)."""
    return next(iter(prediction.attention))
