"""promptcam-bench produces its reports (numbers are measured, never asserted as speeds)."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import run_cli


def test_quick_bench_writes_reports(tmp_path) -> None:
    # the peers on the CPU (bfloat16 autocast; torch.compile plumbing with backend="eager"): their code path
    result = run_cli("promptcam-bench", "--quick", "--batch", "1,2", "--eager-batch", "2", "--iters", "2",
                     "--warmup", "0", "--e2e-images", "4", "--real-size-frames", "0", "--video-clips", "0",
                     "--peer-device", "cpu",
                     "--compile-backend", "eager",
                     "--profile-batch", "2", "--backends",
                     "eager-official,eager,eager-fp16,eager-compile-fp16,ort-cpu-fp32,ort-cpu-fp32-device,"
                     "ort-cpu-int8,ort-cuda-fp16-graph,trt-fp16,plain-vit",
                     "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = {(r["backend"], r["batch"]): r for r in data["rows"]}
    torch_rows = ("eager-official", "eager", "eager-fp16", "eager-compile-fp16")
    assert set(rows) == ({(b, n) for b in ("ort-cpu-fp32", "ort-cpu-fp32-device", "ort-cpu-int8", "plain-vit")
                          for n in (1, 2)} | {(b, 2) for b in torch_rows})  # --eager-batch 2
    for (backend, batch), row in rows.items():
        assert row["p50_ms"] > 0 and row["p50_ms"] <= row["p99_ms"] and row["peak_rss_mib"] > 0
        if batch == 2:
            assert row["speedup_vs_eager_official"] > 0
        if backend != "plain-vit":  # every Prompt-CAM speed row carries its agreement with eager float32
            assert row["cost_vs_plain_vit"] > 0
            for key in ("max_abs_diff", "top1_agreement", "attention_mean_correlation", "attention_min_correlation"):
                assert row[key] is not None, (backend, key)
    assert rows[("ort-cpu-fp32", 2)]["max_abs_diff"] < 1e-4 and rows[("eager", 2)]["max_abs_diff"] < 1e-4
    assert rows[("ort-cpu-fp32-device", 2)]["max_abs_diff"] < 1e-4
    assert rows[("ort-cpu-fp32-device", 2)]["attention_min_correlation"] > 0.9999
    for peer in ("eager-fp16", "eager-compile-fp16"):  # bfloat16: the predicted class's maps stay close
        assert rows[(peer, 2)]["top1_agreement"] == 1.0 and rows[(peer, 2)]["attention_min_correlation"] > 0.99
    assert rows[("eager-compile-fp16", 2)]["compile_s"] >= 0 and "compile_s" not in rows[("eager-fp16", 2)]
    # skipped rows carry their reasons
    assert set(data["skipped"]) == {"ort-cuda-fp16-graph", "trt-fp16"}
    assert all(len(reason) > 10 for reason in data["skipped"].values())
    assert "not been executed on record" in data["tensorrt_note"]
    assert data["profile"]["backend"] == "ort-cpu-fp32" and (tmp_path / "ort_profile_b2.md").is_file()
    assert data["machine"]["cores"] >= 1 and data["traits"]["ratio"] > 0
    assert data["end_to_end"]["images"] == 4
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "bench.md").read_text()
    assert "| ort-cpu-int8 | 2 |" in table and "Skipped:" in table and "torch.compile time" in table
    assert "not been executed on record in this project" in table
    assert "not been executed on record" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only skip reasons")
def test_peers_without_cuda_are_skipped_with_reason(tmp_path) -> None:
    result = run_cli("promptcam-bench", "--quick", "--batch", "1", "--iters", "1", "--warmup", "0", "--e2e-images",
                     "0", "--no-real-scale", "--real-size-frames", "0", "--video-clips", "0", "--backends",
                     "eager-fp16,eager-compile-fp16,ort-cpu-fp32",
                     "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {r["backend"] for r in data["rows"]} == {"ort-cpu-fp32"}
    assert set(data["skipped"]) == {"eager-fp16", "eager-compile-fp16"}
    assert all(reason.startswith("needs CUDA") for reason in data["skipped"].values())


def test_eager_batches_must_be_measured_batches(tmp_path) -> None:
    result = run_cli("promptcam-bench", "--quick", "--batch", "1,2", "--eager-batch", "4", "--out", tmp_path)
    assert result.returncode != 0 and "--eager-batch [4] must be a subset of --batch-size [1, 2]" in result.stderr
