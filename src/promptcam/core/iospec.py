"""The one declaration of the exported graphs' tensors (names, dtypes, shapes), derived from the config.

The graph builder, the manifest, Triton configs, validation and every runtime backend read their
tensor names from here; the runtime checks that the files it loads match it. Renaming a tensor
changes one line.

``model.onnx``:
    pixels            uint8   [B, H, W, 3]       RGB, already resized to the model size (NHWC)
    logits            float32 [B, C]
    attention         float32 [B, C, heads, N]   last block, prompt c -> patches (not renormalised)
    head_context      float32 [B, C, heads, hd]  per-head attention output of each prompt row
    value_mean        float32 [B, heads, hd]     mean value over all keys (= a blurred row's output)
    top_class         int64   [B]                argmax of logits (first index on ties)
    top_attention     float32 [B, heads, N]      attention of the top class
    top_head_context  float32 [B, heads, hd]     head_context of the top class

``trait_head.onnx`` (the last block's prompt-row tail, for trait ranking):
    head_context float32 [M, heads, hd], class_index int64 [M] -> class_logit float32 [M]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import ModelConfig

PIXELS = "pixels"
LOGITS = "logits"
ATTENTION = "attention"
HEAD_CONTEXT = "head_context"
VALUE_MEAN = "value_mean"
TOP_CLASS = "top_class"
TOP_ATTENTION = "top_attention"
TOP_HEAD_CONTEXT = "top_head_context"
CLASS_INDEX = "class_index"
CLASS_LOGIT = "class_logit"

BATCH_DIM = "batch"
ROWS_DIM = "rows"

# every class's outputs, and the predicted class's slices (all promptcam-run needs by default)
FULL_OUTPUTS = (LOGITS, ATTENTION, HEAD_CONTEXT, VALUE_MEAN)
TOP_OUTPUTS = (TOP_CLASS, TOP_ATTENTION, TOP_HEAD_CONTEXT)
# each top_* output is this full output gathered at top_class (validation checks they are exact slices)
TOP_SLICE_OF = {TOP_ATTENTION: ATTENTION, TOP_HEAD_CONTEXT: HEAD_CONTEXT}

Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output."""

    name: str
    dtype: str  # numpy / ONNX element type name: uint8, int64, float32
    shape: tuple[Dim, ...]
    layout: str | None = None

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"dtype": self.dtype, "shape": list(self.shape)}
        if self.layout:
            entry["layout"] = self.layout
        return entry

    def with_batch(self, batch: Dim) -> TensorSpec:
        """The same tensor with its first (batch) dimension fixed or renamed."""
        return TensorSpec(self.name, self.dtype, (batch, *self.shape[1:]), self.layout)


@dataclass(frozen=True)
class GraphSpec:
    """Inputs and outputs of one graph, in order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def tensor(self, name: str) -> TensorSpec:
        for spec in (*self.inputs, *self.outputs):
            if spec.name == name:
                return spec
        raise KeyError(name)

    def with_batch(self, batch: Dim) -> GraphSpec:
        return GraphSpec(tuple(t.with_batch(batch) for t in self.inputs),
                         tuple(t.with_batch(batch) for t in self.outputs))

    def to_manifest(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(inputs, outputs)`` as the manifest stores them: name -> {dtype, shape[, layout]}."""
        return ({t.name: t.to_dict() for t in self.inputs}, {t.name: t.to_dict() for t in self.outputs})


def model_io(config: ModelConfig, batch: Dim = BATCH_DIM) -> GraphSpec:
    """The tensors of ``model.onnx`` for ``config`` (``batch``: a fixed size or the dynamic dim's name)."""
    c, heads, n, hd, size = config.num_classes, config.num_heads, config.num_patches, config.head_dim, config.img_size
    return GraphSpec(
        inputs=(TensorSpec(PIXELS, "uint8", (batch, size, size, 3), "NHWC RGB"),),
        outputs=(
            TensorSpec(LOGITS, "float32", (batch, c)),
            TensorSpec(ATTENTION, "float32", (batch, c, heads, n)),
            TensorSpec(HEAD_CONTEXT, "float32", (batch, c, heads, hd)),
            TensorSpec(VALUE_MEAN, "float32", (batch, heads, hd)),
            TensorSpec(TOP_CLASS, "int64", (batch,)),
            TensorSpec(TOP_ATTENTION, "float32", (batch, heads, n)),
            TensorSpec(TOP_HEAD_CONTEXT, "float32", (batch, heads, hd)),
        ),
    )


def trait_head_io(config: ModelConfig) -> GraphSpec:
    """The tensors of ``trait_head.onnx``: blurred head contexts of one class each -> that class's logit."""
    return GraphSpec(
        inputs=(TensorSpec(HEAD_CONTEXT, "float32", (ROWS_DIM, config.num_heads, config.head_dim)),
                TensorSpec(CLASS_INDEX, "int64", (ROWS_DIM,))),
        outputs=(TensorSpec(CLASS_LOGIT, "float32", (ROWS_DIM,)),),
    )


def shape_mismatches(spec: GraphSpec, actual: dict[str, tuple[str, tuple[Dim | None, ...]]]) -> list[str]:
    """Differences between ``spec`` and a loaded graph's ``{name: (dtype, shape)}``, as sentences.

    A symbolic dimension in either (a string or None) matches anything; fixed sizes must be equal.
    Extra tensors in the graph are allowed only for outputs (older or newer models may add some);
    every declared input and output must exist.
    """
    problems = []
    for tensor in (*spec.inputs, *spec.outputs):
        if tensor.name not in actual:
            problems.append(f"{tensor.name!r} is missing")
            continue
        dtype, shape = actual[tensor.name]
        if dtype != tensor.dtype:
            problems.append(f"{tensor.name!r} is {dtype}, expected {tensor.dtype}")
        if len(shape) != len(tensor.shape) or any(
                isinstance(want, int) and isinstance(got, int) and want != got
                for want, got in zip(tensor.shape, shape, strict=False)):
            problems.append(f"{tensor.name!r} has shape {list(shape)}, expected {list(tensor.shape)}")
    return problems
