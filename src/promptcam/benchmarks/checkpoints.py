"""Checkpoints to measure on: random initialisation flatters int8 (tiny logits, nothing to lose);
a real-scale checkpoint has every parameter group away from its default and logits of about ±40,
as trained CUB checkpoints do."""

from __future__ import annotations

import torch

from promptcam.export.passes import synthetic_pixels
from promptcam.models.factory import create_model
from promptcam.models.preprocess import normalize_pixels
from promptcam.models.promptcam import PromptCAM


@torch.no_grad()
def real_scale_model(arch: str = "dino_vitb16", num_classes: int = 200, *, seed: int = 7, logit_scale: float = 40.0,
                     **overrides: object) -> PromptCAM:
    """A Prompt-CAM model at the scale of a trained checkpoint, without training.

    Every parameter is moved away from its initial value (LayerNorm weights not 1, biases not 0,
    LayerScale ~0.5-1 instead of 1e-5), then the shared head is scaled so that the largest
    absolute logit on smooth random images is ``logit_scale``.

    Args:
        arch: Backbone name (``promptcam.models.list_backbones()``).
        num_classes: Number of classes (prompts).
        seed: Random seed.
        logit_scale: Target max |logit|.
        **overrides: Passed to ``create_model`` (for example ``depth``).

    Returns:
        The model in eval mode.
    """
    torch.manual_seed(seed)
    model = create_model(arch, num_classes, **overrides).eval()
    for name, p in model.named_parameters():
        if name.endswith("gamma"):  # LayerScale: make it matter (init 1e-5 would hide the blocks)
            p.copy_(torch.rand_like(p) * 0.5 + 0.5)
        else:
            p.add_(torch.randn_like(p) * (0.2 if p.dim() == 1 else 0.05))
    pixels = synthetic_pixels(2, model.config.img_size, seed)
    logits, _ = model(normalize_pixels(pixels, model.config), return_attention=True)
    factor = logit_scale / float(logits.abs().max())
    model.head.weight.mul_(factor)
    model.head.bias.mul_(factor)
    return model
