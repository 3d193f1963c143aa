"""The export's options, its context (what the passes hand on) and the base of a pass."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from promptcam.core.errors import ExportError
from promptcam.core.manifest import Manifest
from promptcam.models.promptcam import PromptCAM

from .constants import FoldedWeights
from .gates import Int8Gates
from .tensorrt import BatchProfile

PRECISIONS = ("fp32", "fp16", "int8")
ATTENTION_KINDS = ("fused", "onnx")
MODEL_FILE, TRAIT_HEAD_FILE, ENGINE_FILE = "model.onnx", "trait_head.onnx", "model.plan"
MIN_OPSET = 17  # LayerNormalization


@dataclass
class ExportOptions:
    """What ``promptcam-export`` was asked for."""

    ckpt: Path
    out: Path
    classes: Path | None = None
    precision: str = "fp32"
    opset: int = 17
    batch: int | None = None  # None: dynamic batch
    validate: bool = True
    validation_batch: int = 4
    # int8 without --calib: the search and the gates see this many synthetic images (five, as fp32/fp16
    # validate on, let a plan pass that flipped 1 in 8 answers on other images of a real-scale checkpoint)
    int8_synthetic_images: int = 32
    calib: Path | None = None
    calib_limit: int = 64
    int8_mode: str | None = None  # "dynamic" | "static"; default: static when --calib is given
    int8_gates: Int8Gates = field(default_factory=Int8Gates)  # an int8 export below these writes nothing
    force: bool = False  # write an int8 export that misses its gates, recorded in the manifest
    int8_search: bool = True  # keep the most sensitive blocks fp32 until the gates pass
    int8_budget_s: float = 240.0  # no new int8 search trial starts after this
    engine: str | None = None  # None or "trt"
    trt_batch: BatchProfile = field(default_factory=BatchProfile)
    timing_cache: Path | None = None
    triton_repo: Path | None = None
    triton_kind: str = "KIND_GPU"
    # "fused": ORT's MultiHeadAttention in blocks 0..L-2 (ONNX Runtime only; on CUDA it never writes the
    # attention scores to memory); "onnx": standard ops only (TensorRT, int8 quantisation, other runtimes).
    # Default: fused for fp16 without --target trt (the ORT-on-GPU precision), else onnx.
    attention: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ExportError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.opset < MIN_OPSET:
            raise ExportError(f"opset must be >= {MIN_OPSET} (LayerNormalization), got {self.opset}")
        if self.batch is not None and self.batch < 1:
            raise ExportError(f"batch must be >= 1, got {self.batch}")
        if self.int8_synthetic_images < 1:
            raise ExportError(f"int8 synthetic validation images must be >= 1, got {self.int8_synthetic_images}")
        if self.engine not in (None, "trt"):
            raise ExportError(f"engine must be 'trt' or omitted, got {self.engine!r}")
        if self.int8_mode is None:
            self.int8_mode = "static" if self.calib is not None else "dynamic"
        if self.int8_mode not in ("dynamic", "static"):
            raise ExportError(f"int8 mode must be 'dynamic' or 'static', got {self.int8_mode!r}")
        if self.int8_mode == "static" and self.calib is None:
            raise ExportError("static int8 quantisation needs --calib DIR")
        if self.attention is None:
            self.attention = "fused" if self.precision == "fp16" and self.engine is None else "onnx"
        if self.attention not in ATTENTION_KINDS:
            raise ExportError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.attention == "fused" and self.engine == "trt":
            raise ExportError("TensorRT cannot parse ONNX Runtime's fused attention op; "
                              "use --attention onnx with --target trt")
        if self.attention == "fused" and self.precision == "int8":
            raise ExportError("int8 quantisation needs standard ONNX ops; use --attention onnx with --precision int8")
        if self.engine == "trt" and self.precision == "int8" and self.int8_mode != "static":
            raise ExportError("a TensorRT int8 engine needs --calib DIR (static QDQ quantisation)")


@dataclass
class PassRecord:
    name: str
    seconds: float
    output: str


@dataclass
class ExportContext:
    """State handed from pass to pass."""

    options: ExportOptions
    log: Callable[[str], None] = print
    model: PromptCAM | None = None
    folded: FoldedWeights | None = None
    graph: onnx.ModelProto | None = None
    trait_head: onnx.ModelProto | None = None
    int8_mode: str | None = None
    int8_report: dict[str, Any] | None = None  # the int8 search's plan and trials
    calibration: list[np.ndarray] = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=dict)
    manifest: Manifest | None = None
    engine_plan: Path | None = None  # a built TensorRT plan, not yet validated and moved into place
    engine_info: dict[str, Any] | None = None
    engine_validation: dict[str, Any] = field(default_factory=dict)
    records: list[PassRecord] = field(default_factory=list)

    def require(self, attr: str) -> Any:
        """``attr`` of the context, or a clear ``ExportError`` naming the pass that produces it."""
        value = getattr(self, attr)
        if value is None:
            producer = PRODUCED_BY.get(attr)
            raise ExportError(f"pass order: {attr!r} is not available yet"
                              + (f"; run the {producer!r} pass first" if producer else ""))
        return value


# which pass fills which context field (for the pass-order error)
PRODUCED_BY = {"model": "load-checkpoint", "folded": "fold-prompt-constants", "graph": "build-graph",
               "trait_head": "build-graph", "manifest": "write-model-dir", "engine_plan": "build-trt-engine",
               "engine_info": "build-trt-engine"}


class ExportPass(ABC):
    """A named step. ``__call__`` times and logs; ``run`` does the work and describes its output."""

    name: str = "pass"

    def __call__(self, ctx: ExportContext) -> None:
        start = time.perf_counter()
        output = self.run(ctx)
        record = PassRecord(self.name, time.perf_counter() - start, output)
        ctx.records.append(record)
        ctx.log(f"[{record.name:<22}] {record.seconds:7.2f}s  {record.output}")

    @abstractmethod
    def run(self, ctx: ExportContext) -> str: ...
