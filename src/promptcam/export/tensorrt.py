"""The ``build-trt-engine`` pass: a TensorRT engine (``.plan``) from the exported ONNX.

The network is strongly typed, so the engine keeps the ONNX graph's precisions: an fp16 export
(LayerNorm/softmax/residuals fp32) gives an fp16 engine without TensorRT silently lowering
LayerNorm; a static-int8 (QDQ) export gives an int8 engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptcam.core.errors import ExportError
from promptcam.core.iospec import PIXELS
from promptcam.runtime.cuda import gpu_info, import_tensorrt


@dataclass(frozen=True)
class BatchProfile:
    """Optimisation profile for the dynamic batch dimension."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ExportError(f"batch profile must satisfy 1 <= min <= opt <= max, got {self}")

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """``"1,8,32"`` -> BatchProfile(1, 8, 32)."""
        try:
            low, opt, high = (int(v) for v in text.split(","))
        except ValueError:
            raise ExportError(f"--trt-batch must be MIN,OPT,MAX (e.g. 1,8,32), got {text!r}") from None
        return cls(low, opt, high)

    def shapes(self, img_size: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return tuple((b, img_size, img_size, 3) for b in (self.min, self.opt, self.max))  # type: ignore[return-value]


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    *,
    img_size: int,
    profile: BatchProfile,
    timing_cache: Path | None = None,
    workspace_gib: float = 4.0,
) -> dict[str, Any]:
    """Build and write a serialized engine; returns the facts the runtime checks before loading it."""
    trt = import_tensorrt()
    gpu = gpu_info()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(PIXELS, *profile.shapes(img_size))
    config.add_optimization_profile(opt_profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    plan_path.write_bytes(bytes(serialized))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {
        "file": plan_path.name, "tensorrt_version": trt.__version__, **gpu,
        "batch_profile": {"min": profile.min, "opt": profile.opt, "max": profile.max},
    }
