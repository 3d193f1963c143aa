"""The backend interface: the Predictor above it knows nothing of ORT or TensorRT."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

OUTPUTS = ("logits", "attention", "head_context", "value_mean")
# the predicted class's slices (models exported since they were added): all promptcam-run needs by default
TOP_OUTPUTS = ("top_class", "top_attention", "top_head_context")


class Backend(ABC):
    """Runs the exported graph on a uint8 pixel batch [B, H, W, 3].

    Attributes:
        name: Engine name as the user asked for it (``ort-cpu``, ``trt`` ...).
        description: What actually runs (provider list, GPU), for logs and result files.
        max_batch: Largest batch the backend accepts (None: any).
        output_names: The graph's outputs.
        on_gpu: Whether it runs on an NVIDIA GPU (``device_id``).
    """

    name: str = ""
    description: str = ""
    max_batch: int | None = None
    output_names: tuple[str, ...] = OUTPUTS
    on_gpu: bool = False
    device_id: int = 0

    @abstractmethod
    def infer(self, pixels: np.ndarray, outputs: Sequence[str] = OUTPUTS) -> dict[str, np.ndarray]:
        """Run one batch; returns host arrays by output name (float32; ``top_class`` integer)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device memory."""
