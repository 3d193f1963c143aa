"""ONNX Runtime's CUDA provider (IO binding) against the CPU provider: runs where a GPU is (benchmarks/gpu.sh)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from helpers import random_pixels, run_cli
from promptcam.core.manifest import read_manifest
from promptcam.runtime import Predictor
from promptcam.runtime.backends import has_nvidia_driver

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (has_nvidia_driver() and "CUDAExecutionProvider" in ort.get_available_providers()),
                       reason="needs an NVIDIA GPU and onnxruntime-gpu's CUDAExecutionProvider"),
]


def test_ort_cuda_fp32_equals_cpu(tiny_export) -> None:
    cuda, cpu = Predictor(tiny_export, "ort-cuda", batch_size=8), Predictor(tiny_export, "ort-cpu", batch_size=8)
    assert "CUDAExecutionProvider" in cuda.engine_description
    pixels = random_pixels(8, cuda.config.img_size, seed=3)
    names = cuda.backend.output_names
    assert "top_attention" in names
    got, want = cuda.backend.infer(pixels, names), cpu.backend.infer(pixels, names)
    assert set(got) == set(want) == set(names)
    np.testing.assert_array_equal(got["top_class"], want["top_class"])
    for name in want:
        # TF32 is off for fp32 exports: the GPU agrees with the CPU to rounding
        assert np.abs(got[name] - want[name]).max() < 1e-3, name
    assert cuda.trait_ranker().description == "CUDAExecutionProvider"
    images = [random_pixels(1, 50 + 9 * i, seed=i)[0] for i in range(3)]
    for a, b in zip(cuda.predict(images, traits=2), cpu.predict(images, traits=2), strict=True):
        assert a.top1.index == b.top1.index
        assert a.traits[a.top1.index].order == b.traits[b.top1.index].order


def test_ort_cuda_fp16_export(tiny_checkpoints, tmp_path) -> None:
    out = tmp_path / "fp16"
    result = run_cli("promptcam-export", "--ckpt", tiny_checkpoints["dino"], "--out", out, "--precision", "fp16")
    assert result.returncode == 0, result.stderr
    # an fp16 export for ONNX Runtime is validated on the engine it is for
    validation = read_manifest(out).validation
    assert validation["engine"] == "ort-cuda" and "CUDAExecutionProvider" in validation["provider"]
    assert validation["passed"]
    cuda, cpu = Predictor(out, "ort-cuda"), Predictor(out, "ort-cpu")
    pixels = random_pixels(16, cuda.config.img_size, seed=4)
    got, want = cuda.backend.infer(pixels), cpu.backend.infer(pixels)
    assert (got["logits"].argmax(-1) == want["logits"].argmax(-1)).mean() >= 0.9
    assert np.abs(got["attention"] - want["attention"]).max() < 1e-2


def test_run_cli_on_cuda(tiny_export, tmp_path) -> None:
    """promptcam-run --engine ort-cuda decodes, infers, writes heatmaps and results; a corrupt file is one record."""
    import cv2

    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        cv2.imwrite(str(images / f"{i}.jpg"), random_pixels(1, 80, seed=i)[0])
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    result = run_cli("promptcam-run", "--model", tiny_export, "--engine", "ort-cuda", "--out", out, "--heatmaps",
                     tmp_path / "heat", "--traits", "2", "--no-progress", images)
    assert result.returncode == 0, result.stderr
    assert "CUDAExecutionProvider" in result.stderr  # the engine line
    assert "5 classified, 1 failed" in result.stdout
    assert len(list((tmp_path / "heat").rglob("*.heatmap.jpg"))) == 5
