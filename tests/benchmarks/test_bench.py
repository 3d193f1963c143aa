"""promptcam-bench produces its reports (numbers are measured, never asserted as speeds)."""

from __future__ import annotations

import json

from helpers import run_cli


def test_quick_bench_writes_reports(tmp_path) -> None:
    result = run_cli("promptcam-bench", "--quick", "--batch", "1,2", "--iters", "2", "--warmup", "0",
                     "--e2e-images", "4", "--backends",
                     "eager-official,eager,ort-cpu-fp32,ort-cpu-int8,trt-fp16,plain-vit",
                     "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = {(r["backend"], r["batch"]): r for r in data["rows"]}
    assert set(rows) == {(b, n) for b in ("eager-official", "eager", "ort-cpu-fp32", "ort-cpu-int8", "plain-vit")
                         for n in (1, 2)}
    for (backend, _), row in rows.items():
        assert row["p50_ms"] > 0 and row["p50_ms"] <= row["p99_ms"] and row["peak_rss_mib"] > 0
        assert row["speedup_vs_eager_official"] > 0
        if backend != "plain-vit":
            assert row["cost_vs_plain_vit"] > 0 and row["top1_agreement"] is not None
    assert rows[("ort-cpu-fp32", 2)]["max_abs_diff"] < 1e-4 and rows[("eager", 2)]["max_abs_diff"] < 1e-4
    assert "trt-fp16" in data["skipped"]
    assert data["machine"]["cores"] >= 1 and data["traits"]["ratio"] > 0
    assert data["end_to_end"]["images"] == 4
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "bench.md").read_text()
    assert "| ort-cpu-int8 | 2 |" in table and "Skipped:" in table
