"""Timing and memory measurement, side by side in one process."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Timing:
    backend: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    images_per_second: float
    iterations: int
    peak_rss_mib: float


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class GpuMemory:
    """Device memory through torch (already loaded by the benchmark): device-wide use, and the
    caching allocator's peak for the torch backends."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        torch.cuda.init()
        torch.cuda.mem_get_info()  # create the context now, so no backend is charged for it

    def used_mib(self) -> float:
        free, total = self.torch.cuda.mem_get_info()
        return (total - free) / 2**20

    def reset_torch_peak(self) -> None:
        self.torch.cuda.reset_peak_memory_stats()

    def torch_peak_mib(self) -> float:
        return self.torch.cuda.max_memory_allocated() / 2**20


def time_backend(name: str, run, pixels: np.ndarray, *, warmup: int, iters: int, seconds: float | None) -> Timing:  # noqa: ANN001
    """Warm up, then time ``iters`` calls (or as many as fit in ``seconds``, at least 3)."""
    for _ in range(warmup):
        run(pixels)
    times, peak = [], rss_mib()
    deadline = time.perf_counter() + seconds if seconds else None
    while True:
        start = time.perf_counter()
        run(pixels)
        times.append(time.perf_counter() - start)
        peak = max(peak, rss_mib())
        if deadline is None and len(times) >= iters:
            break
        if deadline is not None and time.perf_counter() > deadline and len(times) >= 3:
            break
    t = np.asarray(times) * 1000
    return Timing(name, len(pixels), float(np.percentile(t, 50)), float(np.percentile(t, 90)),
                  float(np.percentile(t, 99)), len(pixels) / (float(np.median(t)) / 1000), len(times), peak)


def machine_info() -> dict[str, object]:
    import onnxruntime as ort
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": ort.__version__, "platform": platform.platform()}
