"""uint8 RGB pixels -> normalised model input, exactly as the exported graph does it."""

from __future__ import annotations

import numpy as np
import torch

from promptcam.core.config import ModelConfig


def normalize_pixels(pixels: np.ndarray | torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """uint8 [B, H, W, 3] (or [H, W, 3]) RGB -> float32 [B, 3, H, W] with the config's mean/std."""
    x = torch.as_tensor(pixels)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    x = x.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    mean = torch.tensor(config.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(config.std, dtype=torch.float32)[:, None, None]
    return (x - mean) / std
