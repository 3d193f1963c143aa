"""Fixed-buffer IO binding (the ort-cuda-fp16-device/-graph rows' code path) and CUDA-graph option errors."""

from __future__ import annotations

import numpy as np
import pytest

from promptcam.core.errors import BackendUnavailableError
from promptcam.runtime.backends.onnxruntime import OrtBackend


def test_device_buffers_answer_as_infer(tiny_export) -> None:
    backend = OrtBackend(tiny_export / "model.onnx", "ort-cpu", threads=1)
    size = backend.session.get_inputs()[0].shape[1]
    outputs = ("logits", "top_class", "top_attention")
    first, second = (np.random.default_rng(seed).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
                     for seed in (1, 2))
    for pixels in (first, second, first[:1]):  # buffers reused for a batch size, new ones for another
        want = backend.infer(pixels, outputs)
        got = backend.infer_on_device(pixels, outputs)
        assert set(got) == set(outputs)
        for name in outputs:
            np.testing.assert_array_equal(got[name].numpy(), want[name])
    assert len(backend._bound) == 2


def test_device_buffers_name_an_unknown_output(tiny_export) -> None:
    backend = OrtBackend(tiny_export / "model.onnx", "ort-cpu", threads=1)
    size = backend.session.get_inputs()[0].shape[1]
    with pytest.raises(BackendUnavailableError, match="no outputs \\['nope'\\]"):
        backend.infer_on_device(np.zeros((1, size, size, 3), np.uint8), ("logits", "nope"))


@pytest.mark.parametrize("engine", ["ort-cpu", "ort-trt"])
def test_cuda_graphs_need_ort_cuda(tiny_export, engine: str) -> None:
    with pytest.raises(BackendUnavailableError, match=f"{engine}: CUDA graphs .* need engine ort-cuda"):
        OrtBackend(tiny_export / "model.onnx", engine, cuda_graph=True)


def _ort_cuda_ready() -> bool:
    import onnxruntime as ort

    from promptcam.runtime.cuda import has_nvidia_driver

    return "CUDAExecutionProvider" in ort.get_available_providers() and has_nvidia_driver()


@pytest.mark.skipif(not _ort_cuda_ready(), reason="needs ORT's CUDA provider and an NVIDIA driver")
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_cuda_device_buffers_and_graphs_answer_as_the_cpu(tiny_export, cuda_graph: bool) -> None:
    cpu = OrtBackend(tiny_export / "model.onnx", "ort-cpu", threads=1)
    gpu = OrtBackend(tiny_export / "model.onnx", "ort-cuda", cuda_graph=cuda_graph)
    size = cpu.session.get_inputs()[0].shape[1]
    outputs = ("logits", "top_class", "top_attention")
    for seed in (1, 2, 3, 1):  # captured graphs replay on new data in the same buffers
        pixels = np.random.default_rng(seed).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
        want = cpu.infer(pixels, outputs)
        got = {name: value.numpy() for name, value in gpu.infer_on_device(pixels, outputs).items()}
        np.testing.assert_array_equal(got["top_class"], want["top_class"])
        np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(got["top_attention"], want["top_attention"], rtol=1e-3, atol=1e-4)
