"""Triton model repository: configs parse against Triton's ModelConfig schema; the ONNX inside runs."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from helpers import run_cli

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="needs the triton-client extra for Triton's config schema")
text_format = pytest.importorskip("google.protobuf.text_format")


def _parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_triton_repository(tiny_checkpoints, tmp_path) -> None:
    repo = tmp_path / "repo"
    result = run_cli("promptcam-export", "--ckpt", tiny_checkpoints["dino"], "--out", tmp_path / "model",
                     "--triton-repo", repo, "--trt-batch", "1,8,16", "--triton-kind", "cpu")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in repo.iterdir()) == ["promptcam", "promptcam_trait_head"]

    config = _parse(repo / "promptcam" / "config.pbtxt")
    assert config.name == "promptcam" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("pixels", model_config_pb2.TYPE_UINT8, [64, 64, 3])]
    outputs = {o.name: list(o.dims) for o in config.output}
    assert outputs == {"logits": [5], "attention": [5, 4, 64], "head_context": [5, 4, 32], "value_mean": [4, 32],
                       "top_class": [1], "top_attention": [4, 64], "top_head_context": [4, 32]}
    top_class = next(o for o in config.output if o.name == "top_class")
    assert top_class.data_type == model_config_pb2.TYPE_INT64 and list(top_class.reshape.shape) == []
    assert top_class.HasField("reshape")
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.version_policy.latest.num_versions == 1
    manifest = json.loads(config.parameters["promptcam.manifest"].string_value)
    assert manifest["config"]["class_names"][0] == "class_000"

    head = _parse(repo / "promptcam_trait_head" / "config.pbtxt")
    assert head.max_batch_size == 0 and [list(i.dims) for i in head.input] == [[-1, 4, 32], [-1]]

    # the versioned model file is the exported model and runs with the config's shapes
    session = ort.InferenceSession(str(repo / "promptcam" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [i.name for i in config.input]
    assert [o.name for o in session.get_outputs()] == [o.name for o in config.output]
    logits, attention = session.run(["logits", "attention"], {"pixels": np.zeros((3, 64, 64, 3), np.uint8)})
    assert logits.shape == (3, *outputs["logits"]) and attention.shape == (3, *outputs["attention"])
    assert (repo / "promptcam_trait_head" / "1" / "model.onnx").is_file()


def test_triton_gpu_kind_and_fixed_batch(tiny_checkpoints, tmp_path) -> None:
    from promptcam.export.passes import ExportOptions, export_model

    export_model(ExportOptions(ckpt=tiny_checkpoints["dinov2"], out=tmp_path / "m", batch=4,
                               triton_repo=tmp_path / "repo"), log=lambda _: None)
    config = _parse(tmp_path / "repo" / "promptcam" / "config.pbtxt")
    assert config.max_batch_size == 4 and list(config.dynamic_batching.preferred_batch_size) == [4]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
