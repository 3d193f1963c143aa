"""TensorRT: what the CPU allows (profiles, compatibility checks, clear errors); the build on a GPU."""

from __future__ import annotations

import importlib.util

import pytest

from helpers import run_cli
from promptcam.core.errors import BackendUnavailableError, ExportError
from promptcam.core.manifest import read_manifest
from promptcam.export.tensorrt import BatchProfile, build_engine
from promptcam.runtime.backends import create_backend
from promptcam.runtime.backends.tensorrt import check_engine_compatible

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def test_batch_profile() -> None:
    profile = BatchProfile.parse("1,8,32")
    assert profile.shapes(224) == ((1, 224, 224, 3), (8, 224, 224, 3), (32, 224, 224, 3))
    for bad in ("8,1,32", "1,8", "a,b,c", "0,1,2"):
        with pytest.raises(ExportError):
            BatchProfile.parse(bad)


def test_engine_compatibility_is_checked() -> None:
    facts = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA A100", "compute_capability": "8.0"}
    check_engine_compatible(facts, "10.3.0", {"gpu_name": "NVIDIA A100", "compute_capability": "8.0"})
    with pytest.raises(BackendUnavailableError, match="built with TensorRT 10.3.0 but this machine has 10.8.0"):
        check_engine_compatible(facts, "10.8.0", {"gpu_name": "NVIDIA A100", "compute_capability": "8.0"})
    with pytest.raises(BackendUnavailableError, match="compute_capability='8.0'.*'8.7'"):
        check_engine_compatible(facts, "10.3.0", {"gpu_name": "NVIDIA A100", "compute_capability": "8.7"})


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the no-TensorRT path cannot be exercised")
def test_engine_build_without_tensorrt_is_a_clear_error(tiny_export, tmp_path) -> None:
    with pytest.raises(BackendUnavailableError, match=r"TensorRT is not installed.*promptcam\[trt\]"):
        build_engine(tiny_export / "model.onnx", tmp_path / "model.plan", img_size=64, profile=BatchProfile())


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed")
def test_export_cli_reaches_the_engine_pass(tiny_checkpoints, tmp_path) -> None:
    """ONNX, validation and manifest are written before the engine pass, which fails clearly here."""
    out = tmp_path / "out"
    result = run_cli("promptcam-export", "--ckpt", tiny_checkpoints["dino"], "--out", out, "--engine", "trt",
                     "--precision", "fp16")
    assert result.returncode == 1
    assert "[write-model-dir" in result.stdout
    assert "error: TensorRT is not installed" in result.stderr
    manifest = read_manifest(out)
    assert "engine" not in manifest.files and (out / "model.onnx").is_file()


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed")
def test_trt_runtime_engine_without_tensorrt(tiny_export) -> None:
    manifest = read_manifest(tiny_export)
    manifest.files["engine"] = "model.onnx"  # any file: the import fails first
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        create_backend(tiny_export, manifest, "trt")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT and an NVIDIA GPU (run benchmarks/gpu.sh on a GPU machine)")
def test_trt_engine_matches_onnxruntime(tiny_checkpoints, tmp_path) -> None:
    import numpy as np

    from helpers import random_pixels
    from promptcam.runtime.predictor import Predictor

    out = tmp_path / "out"
    result = run_cli("promptcam-export", "--ckpt", tiny_checkpoints["dino"], "--out", out, "--engine", "trt",
                     "--precision", "fp16", "--trt-batch", "1,4,8")
    assert result.returncode == 0, result.stderr
    # the built plan was validated through TensorRTBackend against eager before it was written
    assert "[validate-trt-engine" in result.stdout
    engine = read_manifest(out).engine
    assert engine["validation"]["engine"] == "trt" and engine["validation"]["passed"]
    assert engine["validation"]["top_attention_max_abs_diff"] == 0
    trt_pred, cpu_pred = Predictor(out, "trt"), Predictor(out, "ort-cpu")
    pixels = random_pixels(4, trt_pred.config.img_size)
    got = trt_pred.backend.infer(pixels)
    want = cpu_pred.backend.infer(pixels)
    assert (got["logits"].argmax(-1) == want["logits"].argmax(-1)).all()
    assert np.abs(got["attention"] - want["attention"]).max() < 1e-2
    with trt_pred:  # the backend frees its buffers and destroys its CUDA stream on exit
        pass
    assert trt_pred.backend.stream is None and not trt_pred.backend._buffers
