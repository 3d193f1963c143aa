"""ONNX Runtime backends: CPU, CUDA (IO binding) and ORT's TensorRT execution provider."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from promptcam.core.errors import BackendUnavailableError
from promptcam.runtime.cuda import has_nvidia_driver

from .base import OUTPUTS, Backend

PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}


def default_threads() -> int:
    """Physical-ish core count: ORT's intra-op threads beyond the cores only add contention."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN from the nvidia-* pip wheels (ORT >= 1.21); without them CUDA EP init fails."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # noqa: BLE001 - best effort: the provider check below reports the real problem
            pass


def cuda_provider(device_id: int = 0) -> tuple[str, dict[str, int]]:
    """ORT's CUDA provider entry. TF32 off: an fp32 export stays fp32 (and agrees with the CPU);
    fp16 exports are the fast path."""
    return "CUDAExecutionProvider", {"device_id": device_id, "use_tf32": 0}


class OrtBackend(Backend):
    """One ``InferenceSession``; on CUDA, IO binding copies inputs once and outputs straight to host."""

    def __init__(
        self,
        model_path: Path,
        engine: str = "ort-cpu",
        *,
        threads: int | None = None,
        device_id: int = 0,
        cache_dir: Path | None = None,
        fp16: bool = False,
    ) -> None:
        if engine not in PROVIDERS:
            raise BackendUnavailableError(f"unknown ONNX Runtime engine {engine!r}; one of {sorted(PROVIDERS)}")
        provider = PROVIDERS[engine]
        if provider not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"{engine}: this onnxruntime build has no {provider} "
                f"(available: {', '.join(ort.get_available_providers())})")
        if engine != "ort-cpu" and not has_nvidia_driver():
            raise BackendUnavailableError(f"{engine}: no NVIDIA driver (libcuda.so.1) on this machine")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or default_threads()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers: list[object] = []
        if engine == "ort-trt":
            cache = str(cache_dir or model_path.parent / "ort_trt_cache")
            providers.append((provider, {"device_id": device_id, "trt_fp16_enable": fp16,
                                         "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                                         "trt_timing_cache_enable": True}))
        if engine in ("ort-trt", "ort-cuda"):
            preload_cuda_libraries()
            providers.append(cuda_provider(device_id))
        providers.append("CPUExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for unloadable models
            raise BackendUnavailableError(f"{model_path}: ONNX Runtime cannot load the model: {exc}") from exc
        active = self.session.get_providers()
        if active[0] != provider:
            # ORT silently falls back to CPU when a GPU provider fails to initialise: refuse instead
            raise BackendUnavailableError(
                f"{engine}: {provider} failed to initialise (active: {', '.join(active)}); "
                "check the CUDA/cuDNN libraries ORT printed above")
        self.name = engine
        self.description = f"onnxruntime {ort.__version__} {', '.join(active)}"
        self.on_gpu = engine != "ort-cpu"
        self.device_id = device_id
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        fixed = self.session.get_inputs()[0].shape[0]
        self.max_batch = fixed if isinstance(fixed, int) else None

    def infer(self, pixels: np.ndarray, outputs: Sequence[str] = OUTPUTS) -> dict[str, np.ndarray]:
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        if not self.on_gpu:
            return dict(zip(outputs, self.session.run(list(outputs), {"pixels": pixels}), strict=True))
        binding = self.session.io_binding()
        binding.bind_cpu_input("pixels", pixels)
        for name in outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return dict(zip(outputs, binding.copy_outputs_to_cpu(), strict=True))
