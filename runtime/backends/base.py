"""The backend interface: the Predictor above it knows nothing of ORT or TensorRT."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

OUTPUTS = ("logits", "attention", "head_context", "value_mean")


class Backend(ABC):
    """Runs the exported graph on a uint8 pixel batch [B, H, W, 3].

    Attributes:
        name: Engine name as the user asked for it (``ort-cpu``, ``trt`` ...).
        description: What actually runs (provider list, GPU), for logs and result files.
        max_batch: Largest batch the backend accepts (None: any).
    """

    name: str = ""
    description: str = ""
    max_batch: int | None = None

    @abstractmethod
    def infer(self, pixels: np.ndarray, outputs: Sequence[str] = OUTPUTS) -> dict[str, np.ndarray]:
        """Run one batch; returns float32 host arrays by output name."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device memory."""
