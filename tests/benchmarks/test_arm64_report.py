"""The recorded aarch64 report (benchmarks/arm64.sh, too slow for CI under emulation) and its summary line parse,
agree with each other, and show the checks of issue 30 passing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptcam.benchmarks.arm64 import STATION_DOCS, parse_summary_line, summary_line
from promptcam.benchmarks.macs import graph_macs, speed_estimate

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "arm64"


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads((RESULTS / "arm64.json").read_text())


def test_summary_line_parses_and_matches_the_report(report: dict) -> None:
    line = (RESULTS / "summary.txt").read_text().strip()
    fields = parse_summary_line(line)
    assert line == report["summary_line"] == summary_line(report)  # the format did not drift from the recording
    assert fields["verdict"] == "PASSED"
    assert fields["fp32_top1_same"] == f"{report['fp32']['images']}/{report['fp32']['images']}"
    assert float(fields["footprint_mb"]) == pytest.approx(report["footprint"]["venv_mb"], abs=0.05)
    assert fields["torch_free"] == "yes" and fields["station_match"] == "yes"
    assert float(fields["station_max_float_diff"]) <= report["station"]["float_tolerance"]


def test_parse_refuses_other_lines() -> None:
    for line in ("", "arm64 PASSED", "arm64 MAYBE a=1", "x86 PASSED a=1", "arm64 PASSED a=1 b"):
        with pytest.raises(ValueError):
            parse_summary_line(line)
    assert parse_summary_line("arm64 FAILED a=1 b=x/y") == {"verdict": "FAILED", "a": "1", "b": "x/y"}


def test_recorded_checks_pass_on_aarch64(report: dict) -> None:
    assert report["sides"]["aarch64"]["architecture"] == "aarch64"
    assert report["sides"]["x86_64"]["architecture"] == "x86_64"
    fp32 = report["fp32"]
    assert fp32["passed"] and fp32["top1_same"] == fp32["images"] >= 800
    assert fp32["logits_scaled_diff"] <= 1e-4 and fp32["maps_min_correlation"] >= 0.999
    int8 = report["int8"]
    arm = int8["aarch64"]
    assert arm["passed"] and arm["top1_agreement"] >= 0.99
    assert arm["attention_mean_correlation"] >= 0.99 and arm["attention_min_correlation"] >= 0.9
    assert int8["validate_int8_on_aarch64"]["passed"] and int8["validate_int8_on_aarch64"]["recorded"]
    assert int8["warned_before_validation"] and int8["warning_gone_after_validation"]
    station = report["station"]
    assert all(station[n]["matches"] and not station[n]["problems"] for n in STATION_DOCS)
    assert station["watch_rows"]["rows"] >= 9 and station["watch_rows"]["failed_rows"] >= 1
    assert station["run_detections"]["classified_detections"] >= 8
    assert report["imports"]["runtime_pulls"] == [] and report["imports"]["installed"] == []
    assert report["footprint"]["venv_mb"] > 0


def test_speed_is_an_estimate_never_an_emulated_timing(report: dict) -> None:
    estimate = report["speed_estimate"]
    assert "ESTIMATE" in estimate["label"] and "promptcam bench --threads 4" in estimate["replace_with"]
    assert report["timings"].startswith("none")
    again = speed_estimate(report["macs_per_image"]["fp32_graph"], report["macs_per_image"]["int8_graph"])
    assert again["devices"] == estimate["devices"]  # the arithmetic in the report is the code's


def test_graph_macs_of_a_real_export(tiny_export: Path) -> None:
    macs = graph_macs(tiny_export)
    assert macs["matmuls"] > 10 and macs["macs"] == macs["fp32_macs"] > 0 and macs["int8_macs"] == 0
