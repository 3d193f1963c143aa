"""Backends by name; optional imports (TensorRT, cuda-python) happen only when chosen."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from promptcam.core.errors import BackendUnavailableError, ManifestError, PromptCamError
from promptcam.core.manifest import Manifest
from promptcam.runtime.cuda import has_nvidia_driver

from .base import Backend

ENGINES = ("auto", "ort", "ort-cpu", "ort-cuda", "ort-trt", "trt")


def create_backend(
    model_dir: Path,
    manifest: Manifest,
    engine: str = "auto",
    *,
    threads: int | None = None,
    device_id: int = 0,
    server: str | None = None,
    server_wait: float = 60.0,
) -> Backend:
    """Create the backend named ``engine``.

    ``auto`` tries a TensorRT engine (if the model directory has one), then ORT CUDA, then the CPU,
    and the returned backend's ``description`` says which. ``ort`` is ORT CUDA when available,
    else CPU. A broken model directory (``ManifestError``) is not a reason to try another engine:
    it is raised at once. ``server`` (a ``promptcam serve`` URL) sends the pixels there instead: the
    engine is then the server's, and ``engine`` must stay ``auto``.
    """
    if server is not None:
        if engine != "auto":
            raise BackendUnavailableError(f"--engine {engine} with --server: the engine is the server's "
                                          "(promptcam serve --engine)")
        from .served import TritonClientBackend

        return TritonClientBackend(server, wait=server_wait)
    if engine not in ENGINES:
        raise BackendUnavailableError(f"unknown engine {engine!r}; one of {', '.join(ENGINES)}")
    if engine in ("auto", "ort"):
        candidates = (["trt"] if engine == "auto" and "engine" in manifest.files else [])
        if "CUDAExecutionProvider" in ort.get_available_providers() and has_nvidia_driver():
            candidates.append("ort-cuda")
        candidates.append("ort-cpu")
        reasons = []
        for candidate in candidates:
            try:
                return create_backend(model_dir, manifest, candidate, threads=threads, device_id=device_id)
            except ManifestError:
                raise
            except PromptCamError as exc:
                reasons.append(f"{candidate}: {exc}")
        raise BackendUnavailableError("no engine could start:\n  " + "\n  ".join(reasons))
    if engine == "trt":
        if "engine" not in manifest.files:
            raise BackendUnavailableError(
                f"{model_dir}: no TensorRT engine in this model directory; build one on the GPU machine "
                "with promptcam-export --engine trt")
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(manifest.file(model_dir, "engine"), manifest.engine, device_id=device_id)
    from .onnxruntime import OrtBackend

    return OrtBackend(manifest.file(model_dir, "model"), engine, threads=threads, device_id=device_id,
                      fp16=manifest.precision == "fp16")


__all__ = ["ENGINES", "Backend", "create_backend", "has_nvidia_driver"]
