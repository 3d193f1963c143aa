"""promptcam-bench's real-size row: 12 MP JPEGs against the same frames pre-shrunk, in bench.json and bench.md
(numbers are measured, never asserted as speeds)."""

from __future__ import annotations

import json

import pytest

from helpers import run_cli


def test_quick_bench_carries_the_real_size_row(tmp_path) -> None:
    result = run_cli("promptcam-bench", "--quick", "--batch", "2", "--iters", "1", "--warmup", "0",
                     "--e2e-images", "0", "--no-real-scale", "--backends", "ort-cpu-fp32,ort-cpu-int8",
                     "--real-size-frames", "2", "--video-clips", "1", "--video-seconds", "2", "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    video = data["video"]  # the video row: the same frames from a clip and as JPEGs
    assert video["frames_classified"] == 2 and video["clip_frames_per_s"] > 0 and video["jpeg_frames_per_s"] > 0
    assert "## Video" in (tmp_path / "bench.md").read_text()
    real = data["real_size"]
    assert real["frames"] == 2 and real["size"] == "4000x3000" and real["mean_file_mb"] > 0.5
    # on a CPU: the int8 export, the fastest model (decoding has the least room beside it)
    assert real["backend"] == "ort-cpu-int8" and real["batch"] == 2 and "CPUExecutionProvider" in real["engine"]
    for key in ("small_img_per_s", "large_img_per_s", "large_full_decode_img_per_s", "small_cpu_ms_per_image",
                "large_cpu_ms_per_image", "large_full_decode_cpu_ms_per_image"):
        assert real[key] > 0, key
    assert real["jpeg_decoder"] == "simplejpeg"
    assert real["ratio"] == pytest.approx(real["large_img_per_s"] / real["small_img_per_s"], rel=0.02)
    assert real["ratio_full_decode"] == pytest.approx(real["large_full_decode_img_per_s"] / real["small_img_per_s"],
                                                      rel=0.02)
    table = (tmp_path / "bench.md").read_text()
    assert "## Real-size: 2 camera-trap frames as 4000x3000 JPEGs" in table
    assert f"| 12 MP, decoded at the size needed | {real['large_img_per_s']:.1f} | {real['ratio']:.2f} |" in table
    assert f"| 12 MP, full decode | {real['large_full_decode_img_per_s']:.1f} |" in table
    assert f"| {real['large_cpu_ms_per_image']:.0f} |" in table and "JPEG decoder simplejpeg" in table
    assert f"ratio {real['ratio']}" in result.stdout

