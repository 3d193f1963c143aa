"""ONNX Runtime backends: CPU, CUDA (IO binding) and ORT's TensorRT execution provider."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from promptcam.core.atomic import file_sha256
from promptcam.core.errors import BackendUnavailableError
from promptcam.core.iospec import FULL_OUTPUTS, PIXELS
from promptcam.runtime.cuda import has_nvidia_driver

from .base import Backend, LoadedTensors
from .checks import ort_metadata, ort_tensors

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


def trt_cache_dir(model_path: Path, cache_root: Path | None = None) -> Path:
    """Where ORT's TensorRT provider keeps its engines for this model file: keyed by the file's sha256.

    ORT names cached engines by graph and tensor names, not by weights: re-exporting another
    checkpoint into the same directory would otherwise silently serve the old weights.
    """
    return (cache_root or model_path.parent / "ort_trt_cache") / file_sha256(model_path)[:16]


def cuda_provider(device_id: int = 0) -> tuple[str, dict[str, int]]:
    """ORT's CUDA provider entry. TF32 off: an fp32 export stays fp32 (and agrees with the CPU);
    fp16 exports are the fast path."""
    return "CUDAExecutionProvider", {"device_id": device_id, "use_tf32": 0}


class OrtBackend(Backend):
    """One ``InferenceSession``; on CUDA, IO binding copies inputs once and outputs straight to host.

    Args:
        model_path: The ONNX file, or its serialized bytes (the exporter validates a graph before
            writing it; ``ort-trt`` then needs ``cache_dir``).
        engine: ``ort-cpu``, ``ort-cuda`` or ``ort-trt``.
        threads: Intra-op threads (default: the cores this process may use).
        device_id: The GPU.
        cache_dir: Root of ORT's TensorRT engine cache (default: ``ort_trt_cache`` beside the model).
        fp16: Let ORT's TensorRT provider build fp16 kernels (fp16 exports).
        cuda_graph: ``ort-cuda`` only (opt-in): capture each (batch size, outputs) once as a CUDA
            graph (``enable_cuda_graph``) and replay it, with inputs and outputs bound to fixed
            device buffers. ORT refuses it unless every node runs on the CUDA provider.
    """

    carries_metadata = True

    def __init__(
        self,
        model_path: Path | bytes,
        engine: str = "ort-cpu",
        *,
        threads: int | None = None,
        device_id: int = 0,
        cache_dir: Path | None = None,
        fp16: bool = False,
        cuda_graph: bool = False,
    ) -> None:
        if engine not in PROVIDERS:
            raise BackendUnavailableError(f"unknown ONNX Runtime engine {engine!r}; one of {sorted(PROVIDERS)}")
        if cuda_graph and engine != "ort-cuda":
            raise BackendUnavailableError(f"{engine}: CUDA graphs (cuda_graph=True) need engine ort-cuda")
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
            if isinstance(model_path, bytes):
                if cache_dir is None:
                    raise BackendUnavailableError("ort-trt on an in-memory model needs a cache_dir")
                cache = str(cache_dir / hashlib.sha256(model_path).hexdigest()[:16])
            else:
                cache = str(trt_cache_dir(model_path, cache_dir))
            providers.append((provider, {"device_id": device_id, "trt_fp16_enable": fp16,
                                         "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                                         "trt_timing_cache_enable": True}))
        if engine in ("ort-trt", "ort-cuda"):
            preload_cuda_libraries()
            cuda_name, cuda_options = cuda_provider(device_id)
            if cuda_graph:
                cuda_options["enable_cuda_graph"] = 1
            providers.append((cuda_name, cuda_options))
        providers.append("CPUExecutionProvider")
        source = model_path if isinstance(model_path, bytes) else str(model_path)
        what = "the in-memory model" if isinstance(model_path, bytes) else str(model_path)
        try:
            self.session: ort.InferenceSession | None = ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for unloadable models
            raise BackendUnavailableError(f"{what}: ONNX Runtime cannot load the model: {exc}") from exc
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
        self.cuda_graph = cuda_graph
        # fixed buffers per (batch, outputs): CUDA graphs replay on the addresses they were captured with
        self._bound: dict[tuple[int, tuple[str, ...]], tuple[ort.IOBinding, ort.OrtValue, dict[str, ort.OrtValue],
                                                              ort.RunOptions]] = {}

    def _session(self) -> ort.InferenceSession:
        if self.session is None:
            raise BackendUnavailableError(f"{self.name}: the backend was closed")
        return self.session

    def infer(self, pixels: np.ndarray, outputs: Sequence[str] = FULL_OUTPUTS) -> dict[str, np.ndarray]:
        session = self._session()
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        if self.cuda_graph:
            return {name: value.numpy() for name, value in self.infer_on_device(pixels, outputs).items()}
        if not self.on_gpu:
            return dict(zip(outputs, session.run(list(outputs), {PIXELS: pixels}), strict=True))
        binding = session.io_binding()
        binding.bind_cpu_input(PIXELS, pixels)
        for name in outputs:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return dict(zip(outputs, binding.copy_outputs_to_cpu(), strict=True))

    def infer_on_device(self, pixels: np.ndarray, outputs: Sequence[str] = FULL_OUTPUTS) -> dict[str, ort.OrtValue]:
        """Run with input and outputs bound to fixed buffers where the engine runs; outputs stay there.

        The returned ``OrtValue``s are overwritten by the next call with the same batch size and
        outputs (``.numpy()`` copies one to the host). On ``ort-cpu`` the buffers are host memory:
        the same code path, for machines without a GPU.
        """
        session = self._session()
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        key = (len(pixels), tuple(outputs))
        if key not in self._bound:
            self._bound[key] = self._bind(*key)
        binding, source, targets, run_options = self._bound[key]
        source.update_inplace(pixels)
        session.run_with_iobinding(binding, run_options)
        return targets

    def _bind(self, batch: int, outputs: tuple[str, ...]) -> tuple[ort.IOBinding, ort.OrtValue,
                                                                    dict[str, ort.OrtValue], ort.RunOptions]:
        session = self._session()
        device = "cuda" if self.on_gpu else "cpu"
        dtypes = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(float16)": np.float16,
                  "tensor(int64)": np.int64}
        declared = {o.name: o for o in (*session.get_inputs(), *session.get_outputs())}
        unknown = [name for name in outputs if name not in declared]
        if unknown:
            raise BackendUnavailableError(f"{self.name}: the model has no outputs {unknown}")

        def buffer(name: str) -> ort.OrtValue:
            tensor = declared[name]
            shape = [batch, *tensor.shape[1:]]
            if not all(isinstance(d, int) for d in shape):
                raise BackendUnavailableError(f"{self.name}: {name} has symbolic dimensions {tensor.shape} beyond "
                                              "the batch; fixed device buffers need fixed shapes")
            return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtypes[tensor.type], device, self.device_id)

        binding = session.io_binding()
        source = buffer(PIXELS)
        binding.bind_ortvalue_input(PIXELS, source)
        targets = {name: buffer(name) for name in outputs}
        for name, value in targets.items():
            binding.bind_ortvalue_output(name, value)
        run_options = ort.RunOptions()
        if self.cuda_graph:  # one captured graph per (batch, outputs); ids count from 1 (0 is ORT's default)
            run_options.add_run_config_entry("gpu_graph_id", str(len(self._bound) + 1))
        return binding, source, targets, run_options

    def tensors(self) -> LoadedTensors:
        return ort_tensors(self._session())

    def metadata(self) -> str | None:
        return ort_metadata(self._session())

    def close(self) -> None:
        # ORT frees the session's memory (and GPU arena) when the last reference goes
        self.session = None
        self._bound.clear()  # the fixed IO buffers (device memory) too
