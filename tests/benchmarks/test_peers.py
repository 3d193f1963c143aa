"""The PyTorch peer rows return what the runtime returns: logits and the predicted class's maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptcam.benchmarks.backends import Skipped
from promptcam.benchmarks.peers import eager_peer
from promptcam.models.checkpoint import load_model
from promptcam.runtime.backends.onnxruntime import OrtBackend


def _pixels(size: int, batch: int = 6) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _row_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(-1, a.shape[-1]) - a.reshape(-1, a.shape[-1]).mean(-1, keepdims=True)
    b = b.reshape(-1, b.shape[-1]) - b.reshape(-1, b.shape[-1]).mean(-1, keepdims=True)
    return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


@pytest.fixture(scope="module")
def runtime_answer(tiny_checkpoints, tiny_export):
    """The tiny model's checkpoint, and what the runtime (ORT export of it) returns by default."""
    model = load_model(tiny_checkpoints["dino"])
    pixels = _pixels(model.config.img_size)
    got = OrtBackend(tiny_export / "model.onnx", "ort-cpu", threads=1).infer(pixels, ("logits", "top_attention"))
    return model, pixels, got


def test_fp32_peer_matches_the_runtime(runtime_answer) -> None:
    model, pixels, want = runtime_answer
    logits, maps = eager_peer("eager-fp16", model, device="cpu", half=False).quality(pixels)
    assert logits.shape == want["logits"].shape and maps.shape == want["top_attention"].shape
    assert np.abs(logits - want["logits"]).max() <= 1e-4 * max(1.0, np.abs(want["logits"]).max())
    assert (logits.argmax(-1) == want["logits"].argmax(-1)).all()
    assert _row_correlation(maps, want["top_attention"]).min() >= 0.999


def test_bf16_autocast_peer_stays_close(runtime_answer) -> None:
    model, pixels, want = runtime_answer
    peer = eager_peer("eager-fp16", model, device="cpu")
    assert "bfloat16" in peer.description and "not the peer" in peer.description
    logits, maps = peer.quality(pixels)
    assert np.abs(logits - want["logits"]).max() <= 0.05 * max(1.0, np.abs(want["logits"]).max())
    assert (logits.argmax(-1) == want["logits"].argmax(-1)).all()  # so the maps are of the same class
    assert _row_correlation(maps, want["top_attention"]).min() >= 0.99


def test_compiled_peer_plumbing_records_first_calls(runtime_answer) -> None:
    # backend="eager": torch.compile's graph capture without code generation (inductor takes minutes on
    # a loaded 2-core machine); the compiled peer must answer exactly as the uncompiled one
    model, pixels, _ = runtime_answer
    plain = eager_peer("eager-fp16", model, device="cpu", half=False)
    compiled = eager_peer("eager-compile-fp16", model, device="cpu", half=False, compile_backend="eager")
    assert plain.first_call_s is None
    np.testing.assert_array_equal(compiled.run(pixels), plain.run(pixels))
    compiled.run(pixels[:2])
    assert set(compiled.first_call_s) == {6, 2} and all(s > 0 for s in compiled.first_call_s.values())
    got, want = compiled.quality(pixels), plain.quality(pixels)
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only skip")
def test_fp16_peer_without_cuda_is_skipped_with_reason(tiny_checkpoints) -> None:
    with pytest.raises(Skipped, match="needs CUDA"):
        eager_peer("eager-fp16", load_model(tiny_checkpoints["dino"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the fp16 peer)")
def test_fp16_peer_on_cuda_stays_close(runtime_answer) -> None:
    model, pixels, want = runtime_answer
    # (the compiled peer's agreement is in its bench rows: inductor would cost the GPU tests' time budget)
    logits, maps = eager_peer("eager-fp16", model).quality(pixels)
    assert (logits.argmax(-1) == want["logits"].argmax(-1)).all()
    assert _row_correlation(maps, want["top_attention"]).min() >= 0.99
