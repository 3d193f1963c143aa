"""TensorRT backend: a deserialized ``.plan`` with device buffers and pinned host memory (cuda-python)."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from promptcam.core.errors import BackendUnavailableError
from promptcam.core.iospec import FULL_OUTPUTS, PIXELS
from promptcam.runtime.cuda import check_cuda, gpu_info, import_cudart, import_tensorrt

from .base import Backend, LoadedTensors


def check_engine_compatible(engine_facts: dict[str, Any], trt_version: str, gpu: dict[str, Any]) -> None:
    """Refuse an engine built by another TensorRT version or for another GPU, with a clear error."""
    built = engine_facts.get("tensorrt_version")
    if built and built != trt_version:
        raise BackendUnavailableError(
            f"engine was built with TensorRT {built} but this machine has {trt_version}; "
            "rebuild it here with promptcam-export --engine trt")
    for key in ("gpu_name", "compute_capability"):
        if engine_facts.get(key) and engine_facts[key] != gpu.get(key):
            raise BackendUnavailableError(
                f"engine was built for {key}={engine_facts[key]!r} but this GPU has {gpu.get(key)!r}; "
                "TensorRT engines are specific to the GPU: rebuild it on this machine")


class TensorRTBackend(Backend):
    """Runs a TensorRT engine; batch shapes come from the engine's optimisation profile.

    A context manager: ``close`` (or leaving the ``with``) frees the device and pinned host buffers
    and destroys the CUDA stream.
    """

    def __init__(self, plan_path: Path, engine_facts: dict[str, Any], *, device_id: int = 0) -> None:
        trt = import_tensorrt()
        cudart = import_cudart()
        self._trt, self._cudart = trt, cudart
        check_cuda(cudart.cudaSetDevice(device_id), "cudaSetDevice")
        gpu = gpu_info(device_id)
        check_engine_compatible(engine_facts, trt.__version__, gpu)
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self.engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise BackendUnavailableError(f"{plan_path}: TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        low, _, high = self.engine.get_tensor_profile_shape(PIXELS, 0)
        profile = engine_facts.get("batch_profile", {})
        self.max_batch = int(profile.get("max", high[0]))
        self.min_batch = int(profile.get("min", low[0]))
        self._buffers: dict[str, tuple[int, int, np.ndarray]] = {}  # name -> (device ptr, host ptr, host view)
        self._capacity = 0
        self.stream: Any = check_cuda(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.output_names = tuple(
            name for name in (self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT)
        self.name = "trt"
        self.on_gpu, self.device_id = True, device_id
        self.description = f"TensorRT {trt.__version__} on {gpu['gpu_name']}"

    def _allocate(self, batch: int) -> None:
        """(Re)allocate device buffers and pinned host buffers for ``batch`` images."""
        if batch <= self._capacity:
            return
        self._free()
        trt, cudart = self._trt, self._cudart
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            shape = list(self.engine.get_tensor_shape(name))
            shape[0] = batch
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            device = check_cuda(cudart.cudaMalloc(nbytes), "cudaMalloc")
            host = check_cuda(cudart.cudaMallocHost(nbytes), "cudaMallocHost")
            view = np.ctypeslib.as_array((ctypes.c_byte * nbytes).from_address(int(host))).view(dtype).reshape(shape)
            self._buffers[name] = (int(device), int(host), view)
            self.context.set_tensor_address(name, int(device))
        self._capacity = batch

    def tensors(self) -> LoadedTensors:
        """The engine's IO tensors; dynamic dimensions (-1) as None."""
        found = {}
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name))).name
            found[name] = (dtype, tuple(None if d < 0 else int(d) for d in self.engine.get_tensor_shape(name)))
        return found

    def infer(self, pixels: np.ndarray, outputs: Sequence[str] = FULL_OUTPUTS) -> dict[str, np.ndarray]:
        cudart = self._cudart
        batch = len(pixels)
        if self.stream is None:
            raise BackendUnavailableError("trt: the backend was closed")
        if not self.min_batch <= batch <= self.max_batch:
            raise BackendUnavailableError(f"batch {batch} is outside the engine's profile "
                                          f"{self.min_batch}..{self.max_batch}")
        self._allocate(batch)
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        device, host, view = self._buffers[PIXELS]
        view[:batch] = pixels
        check_cuda(cudart.cudaMemcpyAsync(device, host, pixels.nbytes, h2d, self.stream), "cudaMemcpyAsync")
        self.context.set_input_shape(PIXELS, tuple(pixels.shape))
        if not self.context.execute_async_v3(self.stream):
            raise BackendUnavailableError("TensorRT execution failed")
        results = {}
        for name in outputs:
            device, host, view = self._buffers[name]
            nbytes = view[:batch].nbytes
            check_cuda(cudart.cudaMemcpyAsync(host, device, nbytes, d2h, self.stream), "cudaMemcpyAsync")
        check_cuda(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        for name in outputs:
            results[name] = np.array(self._buffers[name][2][:batch])  # a copy: the pinned buffer is reused
        return results

    def _free(self) -> None:
        for device, host, _ in self._buffers.values():
            self._cudart.cudaFree(device)
            self._cudart.cudaFreeHost(host)
        self._buffers.clear()
        self._capacity = 0

    def close(self) -> None:
        """Free the buffers, destroy the stream and drop the engine (idempotent)."""
        self._free()
        if self.stream is not None:
            self._cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        # the execution context before the engine it came from
        self.context = None
        self.engine = None
