"""The one declaration of the graphs' tensors: what the exported files actually have, and how mismatches read."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from promptcam.core.iospec import BATCH_DIM, model_io, shape_mismatches, trait_head_io
from promptcam.core.manifest import read_manifest
from promptcam.runtime.backends.checks import ort_tensors


def _declared(value: onnx.ValueInfoProto) -> tuple[str, tuple]:
    tensor = value.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    return dtype, tuple(d.dim_param or d.dim_value for d in tensor.shape.dim)


@pytest.mark.parametrize("name", ["model.onnx", "trait_head.onnx"])
def test_exported_graphs_are_the_spec(name: str, tiny_export) -> None:
    cfg = read_manifest(tiny_export).config
    spec = model_io(cfg) if name == "model.onnx" else trait_head_io(cfg)
    graph = onnx.load(str(tiny_export / name)).graph
    for values, tensors in ((graph.input, spec.inputs), (graph.output, spec.outputs)):
        assert [(v.name, *_declared(v)) for v in values] == [(t.name, t.dtype, t.shape) for t in tensors]
    session = ort.InferenceSession(str(tiny_export / name), providers=["CPUExecutionProvider"])
    assert shape_mismatches(spec, ort_tensors(session)) == []


def test_fixed_batch_manifest_and_mismatch_sentences(tiny_export) -> None:
    cfg = read_manifest(tiny_export).config
    inputs, outputs = model_io(cfg, 2).to_manifest()
    assert inputs["pixels"] == {"dtype": "uint8", "shape": [2, 64, 64, 3], "layout": "NHWC RGB"}
    assert outputs["top_class"] == {"dtype": "int64", "shape": [2]}
    assert model_io(cfg).with_batch(2) == model_io(cfg, 2) and model_io(cfg).tensor("pixels").shape[0] == BATCH_DIM
    session = ort.InferenceSession(str(tiny_export / "model.onnx"), providers=["CPUExecutionProvider"])
    loaded = ort_tensors(session)
    assert shape_mismatches(model_io(cfg, 3), loaded) == []  # a dynamic batch accepts any fixed one
    loaded["logits"] = ("float16", loaded["logits"][1])
    del loaded["value_mean"]
    assert shape_mismatches(model_io(cfg), loaded) == ["'logits' is float16, expected float32",
                                                      "'value_mean' is missing"]
