"""Test helpers: random checkpoints with every parameter group perturbed away from its default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from promptcam.models import create_model
from promptcam.models.checkpoint import save_checkpoint
from promptcam.models.promptcam import PromptCAM

TINY = {
    # dino layout: no LayerScale; dinov2 layout: LayerScale, patch 14
    "dino": dict(arch="vit_micro_patch8", num_classes=5),
    "dinov2": dict(arch="vit_micro_patch14_ls", num_classes=4),
}


def perturbed_model(arch: str, num_classes: int, seed: int = 0, **overrides: object) -> PromptCAM:
    """A model whose every parameter differs from its init (LayerNorm weights not 1, biases not 0, ...)."""
    torch.manual_seed(seed)
    model = create_model(arch, num_classes, **overrides).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):  # LayerScale: make it matter (init 1e-5 would hide the blocks)
                p.copy_(torch.rand_like(p) * 0.5 + 0.5)
            else:
                p.add_(torch.randn_like(p) * (0.2 if p.dim() == 1 else 0.05))
    return model


def official_checkpoint(model: PromptCAM, path: Path) -> Path:
    """Write a model as the official repository does: {"model_state_dict": sd}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": model.state_dict()}, path)
    return path


def project_checkpoint(model: PromptCAM, path: Path) -> Path:
    return save_checkpoint(model, path)


def random_pixels(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)


def run_cli(command: str, *args: object, env: dict[str, str] | None = None, timeout: float = 600):
    """Run an installed console script (the real entry point) and capture its output."""
    import os
    import subprocess
    import sys

    exe = Path(sys.executable).parent / command
    merged = {**os.environ, **(env or {})}
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=merged, timeout=timeout)
