"""Learning-rate schedule of the published recipe: linear warmup, then cosine to a floor."""

from __future__ import annotations

import math


def lr_at(step: int, *, total_steps: int, warmup_steps: int, base_lr: float, warmup_lr: float = 1e-6,
          min_lr: float = 1e-6) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    if warmup_steps and step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))
