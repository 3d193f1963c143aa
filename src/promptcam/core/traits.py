"""Greedy head blurring (trait ranking), independent of how a blurred score is computed.

Torch-free: the PyTorch reference and the runtime share this one algorithm and differ only in the
``evaluate`` callable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# evaluate(blur_sets) -> class score (softmax probability) for each candidate set of blurred heads
BlurEvaluator = Callable[[Sequence[Sequence[int]]], np.ndarray]


@dataclass
class HeadRanking:
    """Result of greedy blurring for one image and class.

    Attributes:
        order: All heads, most important first (reverse order of removal).
        top_heads: The ``k`` heads still unblurred when ``k`` remain: the class's trait heads.
        removal_scores: Class score after each removal, in removal order.
    """

    order: list[int]
    top_heads: list[int]
    removal_scores: list[float]


def greedy_head_ranking(evaluate: BlurEvaluator, num_heads: int, k: int = 4) -> HeadRanking:
    """Rank heads by greedily blurring the one whose loss hurts the class score least.

    blurred = [], remaining = all heads; while more than one head remains, try blurring each
    remaining head on top of ``blurred`` and move the one that keeps the highest score.

    Args:
        evaluate: Scores a batch of blur sets (lists of head indices).
        num_heads: Heads in the last block.
        k: How many heads to report as trait heads.

    Returns:
        The ranking.
    """
    if not 1 <= k <= num_heads:
        raise ValueError(f"k must be in 1..{num_heads}, got {k}")
    blurred: list[int] = []
    remaining = list(range(num_heads))
    removal_scores: list[float] = []
    top_heads: list[int] = list(remaining) if k == num_heads else []
    while len(remaining) > 1:
        scores = np.asarray(evaluate([blurred + [h] for h in remaining]), dtype=np.float64)
        best = int(np.argmax(scores))  # ties: the lowest head index, deterministically
        blurred.append(remaining.pop(best))
        removal_scores.append(float(scores[best]))
        if len(remaining) == k:
            top_heads = list(remaining)
    order = remaining + blurred[::-1]
    return HeadRanking(order=order, top_heads=sorted(top_heads, key=order.index), removal_scores=removal_scores)
