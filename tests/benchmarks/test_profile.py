"""ORT profiles summarised by op type: the pure summariser, and a real CPU-provider profile."""

from __future__ import annotations

import json

import pytest

from promptcam.benchmarks.profile import profile_model, summarise_profile


def _node(op: str, dur_us: int, ts: int = 10, provider: str = "CUDAExecutionProvider") -> dict:
    return {"cat": "Node", "name": f"blocks/{op}_1_kernel_time", "dur": dur_us, "ts": ts,
            "args": {"op_name": op, "provider": provider}}


def test_summary_adds_kernel_time_per_op_type() -> None:
    events = [{"cat": "Session", "name": "model_run", "dur": 5000, "ts": 0},
              _node("MatMul", 3000), _node("MatMul", 1000), _node("Softmax", 1000, provider="CPUExecutionProvider"),
              {"cat": "Node", "name": "blocks/MatMul_1_fence_before", "dur": 700, "args": {"op_name": "MatMul"}},
              {"cat": "Session", "name": "SequentialExecutor::Execute", "dur": 4900}]
    summary = summarise_profile(events)
    assert summary["runs"] == 1 and summary["total_ms"] == pytest.approx(5.0)
    assert [(op["op_type"], op["calls"]) for op in summary["ops"]] == [("MatMul", 2), ("Softmax", 1)]
    assert summary["ops"][0]["total_ms"] == pytest.approx(4.0) and summary["ops"][0]["share"] == pytest.approx(0.8)
    assert summary["ops"][1]["providers"] == ["CPUExecutionProvider"]
    assert summarise_profile([]) == {"total_ms": 0.0, "runs": 0, "ops": []}


def test_real_cpu_profile_is_summarised(tiny_export, tmp_path) -> None:
    paths = profile_model(tiny_export / "model.onnx", "ort-cpu", 2, tmp_path, runs=3, threads=1)
    summary = json.loads(paths["json"].read_text())
    assert summary["runs"] == 3 and summary["batch"] == 2  # the first (warm-up) run is left out
    ops = {op["op_type"]: op for op in summary["ops"]}
    assert "MatMul" in ops and ops["MatMul"]["providers"] == ["CPUExecutionProvider"]
    assert sum(op["share"] for op in summary["ops"]) == pytest.approx(1.0)
    assert sum(op["total_ms"] for op in summary["ops"]) == pytest.approx(summary["total_ms"])
    assert all(op["calls"] % 3 == 0 for op in summary["ops"])  # every node once per profiled run
    table = paths["markdown"].read_text()
    assert "| MatMul |" in table and "3 profiled runs" in table
    with pytest.raises(ValueError, match="ort-cpu and ort-cuda"):
        profile_model(tiny_export / "model.onnx", "ort-trt", 2, tmp_path)
