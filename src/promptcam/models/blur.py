"""PyTorch reference of trait ranking: each candidate blur set is a full forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from promptcam.core.traits import HeadRanking, greedy_head_ranking

from .promptcam import PromptCAM


@torch.no_grad()
def blurred_class_scores(
    model: PromptCAM, image: torch.Tensor, class_index: int, blur_sets: Sequence[Sequence[int]]
) -> np.ndarray:
    """softmax(logits)[class_index] for one image [3, H, W] under each blur set (batched)."""
    heads, c = model.config.num_heads, model.num_classes
    mask = torch.zeros(len(blur_sets), c, heads, dtype=torch.bool)
    for row, heads_to_blur in enumerate(blur_sets):
        mask[row, class_index, list(heads_to_blur)] = True
    images = image.unsqueeze(0).expand(len(blur_sets), -1, -1, -1)
    logits, _ = model(images, blur_mask=mask)
    return logits.softmax(dim=-1)[:, class_index].double().numpy()


def rank_trait_heads(model: PromptCAM, image: torch.Tensor, class_index: int, k: int = 4) -> HeadRanking:
    """Greedy head blurring for one normalised image [3, H, W] and class, as in the published method."""
    model.eval()
    return greedy_head_ranking(
        lambda sets: blurred_class_scores(model, image, class_index, sets), model.config.num_heads, k
    )
