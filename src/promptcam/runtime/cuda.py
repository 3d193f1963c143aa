"""Optional CUDA/TensorRT imports and GPU facts, shared by the exporter and the runtime.

Imports are lazy: a CPU-only field station never loads them.
"""

from __future__ import annotations

import ctypes
from typing import Any

from promptcam.core.errors import BackendUnavailableError

TRT_INSTALL_HINT = "install the 'trt' extra (pip install 'promptcam[trt]') on a machine with an NVIDIA GPU"


def has_nvidia_driver() -> bool:
    """Whether the NVIDIA driver library loads: without it no GPU engine can start."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"TensorRT is not installed ({exc}); {TRT_INSTALL_HINT}") from exc
    return trt


def import_cudart() -> Any:
    """cuda-python's runtime bindings (module layout changed between releases)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise BackendUnavailableError(f"cuda-python is not installed ({exc}); {TRT_INSTALL_HINT}") from exc
    return cudart


def check_cuda(result: tuple[Any, ...] | Any, what: str) -> Any:
    """Unwrap a cuda-python call result ``(err, value...)``, raising on error."""
    cudart = import_cudart()
    if isinstance(result, tuple):
        err, *values = result
    else:
        err, values = result, []
    if int(err) != int(cudart.cudaError_t.cudaSuccess):
        raise BackendUnavailableError(f"CUDA call {what} failed: {err}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def gpu_info(device: int = 0) -> dict[str, Any]:
    """Name and compute capability of a GPU; ``BackendUnavailableError`` when there is none."""
    cudart = import_cudart()
    count = check_cuda(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if not count:
        raise BackendUnavailableError("no CUDA GPU found")
    props = check_cuda(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return {"gpu_name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}
