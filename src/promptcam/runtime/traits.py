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

from promptcam.core.traits import HeadRanking, greedy_head_ranking

from .backends.onnxruntime import cuda_provider


class TraitRanker:
    """Greedy head blurring for one image's outputs, using ``trait_head.onnx``.

    Args:
        trait_head_path: The exported ``trait_head.onnx``.
        threads: ORT intra-op threads on the CPU.
        device_id: Run on this GPU through ORT's CUDA provider (the main model runs on a GPU: the
            CPU would make ranking several times the cost of an inference); None: the CPU.
    """

    def __init__(self, trait_head_path: Path, threads: int = 1, device_id: int | None = None) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        providers: list = ["CPUExecutionProvider"]
        if device_id is not None and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, cuda_provider(device_id))
        self.session = ort.InferenceSession(str(trait_head_path), options, providers=providers)
        self.description = self.session.get_providers()[0]

    def blurred_scores(
        self,
        logits: np.ndarray,
        class_context: np.ndarray,
        value_mean: np.ndarray,
        class_index: int,
        blur_sets: Sequence[Sequence[int]],
    ) -> np.ndarray:
        """softmax(logits)[class_index] with each set of heads blurred, for one image.

        Args:
            logits: [C] unblurred logits.
            class_context: [heads, hd] per-head attention output of the class's prompt row
                (``head_context[class_index]`` or ``top_head_context``).
            value_mean: [heads, hd] output of a blurred (uniform) row.
        """
        rows = np.repeat(np.asarray(class_context, dtype=np.float32)[None], len(blur_sets), axis=0)
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
        class_context: np.ndarray,
        value_mean: np.ndarray,
        class_index: int,
        k: int = 4,
    ) -> HeadRanking:
        """Greedy ranking of the heads for one image and class (same algorithm as the PyTorch reference)."""
        num_heads = class_context.shape[0]
        return greedy_head_ranking(
            lambda sets: self.blurred_scores(logits, class_context, value_mean, class_index, sets),
            num_heads, min(k, num_heads))
