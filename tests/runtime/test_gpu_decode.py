"""``--decode gpu``: one clear error where it cannot run; on a GPU (benchmarks/gpu.sh), CPU decoding's top-1."""

from __future__ import annotations

import importlib.util
import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from helpers import run_cli
from promptcam.batch.run import RunOptions, run_files
from promptcam.core.errors import BackendUnavailableError
from promptcam.runtime import Predictor
from promptcam.runtime.backends import has_nvidia_driver
from promptcam.runtime.gpu_decode import check_gpu_decode

GPU_DECODE_READY = (has_nvidia_driver() and "CUDAExecutionProvider" in ort.get_available_providers()
                    and importlib.util.find_spec("nvidia.nvimgcodec") is not None
                    and importlib.util.find_spec("cvcuda") is not None)


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(root / f"{i}.jpg"), cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8),
                                                       (640, 480), interpolation=cv2.INTER_CUBIC))
    (root / "broken.jpg").write_bytes((root / "0.jpg").read_bytes()[:500])
    return root


@pytest.mark.skipif(GPU_DECODE_READY, reason="this machine can decode on the GPU")
def test_decode_gpu_without_a_gpu_is_one_clear_error(tiny_export, jpegs, tmp_path):
    with pytest.raises(BackendUnavailableError, match="--engine ort-cuda"):
        check_gpu_decode("ort-cpu")
    with pytest.raises(BackendUnavailableError, match="--decode gpu"):
        check_gpu_decode("ort-cuda")
    for engine in ("ort-cuda", "ort-cpu"):
        result = run_cli("promptcam-run", "--model", tiny_export, "--engine", engine, jpegs, "--out",
                         tmp_path / engine, "--decode", "gpu", "--no-progress")
        assert result.returncode == 1, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "--decode gpu" in lines[0] and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / engine / "results.json").exists()  # refused before any work
    # the CPU path is unchanged: --decode cpu is the default run
    result = run_cli("promptcam-run", "--model", tiny_export, "--engine", "ort-cpu", jpegs, "--out", tmp_path / "cpu",
                     "--decode", "cpu", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert len(json.loads((tmp_path / "cpu" / "results.json").read_text())["images"]) == 7


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_DECODE_READY, reason="needs an NVIDIA GPU, onnxruntime-gpu and the 'gpu-decode' extra")
def test_gpu_decoding_agrees_with_cpu_decoding(tiny_export, jpegs, tmp_path):
    results = {}
    with Predictor(tiny_export, "ort-cuda", batch_size=4) as predictor:
        for decode in ("cpu", "gpu"):
            out = tmp_path / decode
            run_files(predictor, RunOptions(inputs=[jpegs], out_dir=out, progress=False, decode=decode),
                      log=lambda _: None)
            results[decode] = {r["file"]: r for r in map(json.loads, (out / "results.jsonl").open())}
    assert results["gpu"]["broken.jpg"].get("failure")
    for name, record in results["cpu"].items():
        if "failure" in record:
            continue
        got = results["gpu"][name]
        assert (got["width"], got["height"]) == (record["width"], record["height"])
        assert got["top_k"][0]["index"] == record["top_k"][0]["index"], name
