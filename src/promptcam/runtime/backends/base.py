"""The backend interface: the Predictor above it knows nothing of ORT or TensorRT.

Tensor names come from ``promptcam.core.iospec``; a backend is a context manager that frees what
it holds (sessions, CUDA streams, device and pinned buffers) on exit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType

import numpy as np

from promptcam.core.iospec import FULL_OUTPUTS, Dim

# name -> (dtype name, shape); a dimension the loaded graph leaves open is its symbolic name or None
LoadedTensors = dict[str, tuple[str, tuple[Dim | None, ...]]]


class Backend(ABC):
    """Runs the exported graph on a uint8 pixel batch [B, H, W, 3].

    Attributes:
        name: Engine name as the user asked for it (``ort-cpu``, ``trt`` ...).
        description: What actually runs (provider list, GPU), for logs and result files.
        max_batch: Largest batch the backend accepts (None: any).
        min_batch: Smallest batch it accepts (a TensorRT profile's minimum; 1 elsewhere).
        output_names: The graph's outputs.
        on_gpu: Whether it runs on an NVIDIA GPU (``device_id``).
        carries_metadata: Whether the loaded file can hold the manifest (ONNX yes, TensorRT plans no).
    """

    name: str = ""
    description: str = ""
    max_batch: int | None = None
    min_batch: int = 1
    output_names: tuple[str, ...] = FULL_OUTPUTS
    on_gpu: bool = False
    device_id: int = 0
    carries_metadata: bool = False

    @abstractmethod
    def infer(self, pixels: np.ndarray, outputs: Sequence[str] = FULL_OUTPUTS) -> dict[str, np.ndarray]:
        """Run one batch; returns host arrays by output name (float32; ``top_class`` integer)."""

    @abstractmethod
    def tensors(self) -> LoadedTensors:
        """The loaded graph's inputs and outputs, to check against ``iospec.model_io`` at load time."""

    def metadata(self) -> str | None:
        """The manifest JSON embedded in the loaded file (ONNX ``metadata_props``); None if it has none."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the backend holds (idempotent)."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
