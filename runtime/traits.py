"""Trait-head ranking through the exported graphs, at a fraction of one inference.

Blurring head h of class c only changes prompt c's row in the last block: that head's attention
output becomes the mean of all values (``value_mean``), everything before is unchanged. So a
blurred score needs only the tiny ``trait_head`` graph (last block's prompt-row tail) on
``head_context`` rows with blurred heads swapped for ``value_mean`` -- not ~68 backbone passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from promptcam.models.traits import HeadRanking, greedy_head_ranking


class TraitRanker:
    """Greedy head blurring for one image's outputs, using ``trait_head.onnx`` on the CPU."""

    def __init__(self, trait_head_path: Path, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(trait_head_path), options, providers=["CPUExecutionProvider"])

    def blurred_scores(
        self,
        logits: np.ndarray,
        head_context: np.ndarray,
        value_mean: np.ndarray,
        class_index: int,
        blur_sets: Sequence[Sequence[int]],
    ) -> np.ndarray:
        """softmax(logits)[class_index] with each set of heads blurred, for one image.

        Args:
            logits: [C] unblurred logits.
            head_context: [C, heads, hd] per-head attention outputs of every prompt row.
            value_mean: [heads, hd] output of a blurred (uniform) row.
        """
        rows = np.repeat(head_context[class_index][None], len(blur_sets), axis=0)
        for row, heads in enumerate(blur_sets):
            rows[row, list(heads)] = value_mean[list(heads)]
        indices = np.full(len(blur_sets), class_index, dtype=np.int64)
        new_logit = self.session.run(None, {"head_context": rows, "class_index": indices})[0].astype(np.float64)
        # only logit c changes: p_c = exp(l_c') / (exp(l_c') + sum_{j != c} exp(l_j)), computed stably
        others = np.delete(logits.astype(np.float64), class_index)
        top = np.maximum(new_logit, others.max() if others.size else -np.inf)
        rest = np.exp(others[None, :] - top[:, None]).sum(axis=1)
        mine = np.exp(new_logit - top)
        return mine / (mine + rest)

    def rank(
        self,
        logits: np.ndarray,
        head_context: np.ndarray,
        value_mean: np.ndarray,
        class_index: int,
        k: int = 4,
    ) -> HeadRanking:
        """Greedy ranking of the heads for one image and class (same algorithm as the PyTorch reference)."""
        num_heads = head_context.shape[1]
        return greedy_head_ranking(
            lambda sets: self.blurred_scores(logits, head_context, value_mean, class_index, sets),
            num_heads, min(k, num_heads))
