"""benchmarks/gpu.sh: its syntax, the commands each part runs, and part selection / rerun markers.

A real QUICK=1 run of the bench and profile parts on the CPU takes minutes on a loaded 2-core machine,
so it is not a test; DRY_RUN=1 checks what each part would run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.sh"


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    merged = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), "DRY_RUN": "1", **env}
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=merged, timeout=60)


def test_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dry_run_shows_every_part(tmp_path) -> None:
    result = _run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    bench = next(line for line in lines if "promptcam-bench" in line and "--profile-batch" not in line)
    assert "--batch-size 1,8,32,64,128,256 --eager-batch 1,8,32" in bench
    for backend in ("eager-fp16", "eager-compile-fp16", "ort-cuda-fp16-graph", "ort-cuda-fp16-device", "trt-fp16"):
        assert backend in bench
    profile = next(line for line in lines if "--profile-batch 128" in line)
    assert "--batch-size 128" in profile and "--backends ort-cuda-fp16" in profile
    assert any("pytest" in line for line in lines)
    decode = [line for line in lines if "promptcam-run" in line]
    assert [("--decode cpu" in line, "--decode gpu" in line) for line in decode] == [(True, False), (False, True)]
    assert not list((tmp_path / "out").glob("*.done"))  # a dry run finishes nothing
    for part in ("tests", "bench", "profile", "decode"):
        assert (tmp_path / "out" / f"{part}.log").is_file()


def test_parts_select_and_done_parts_are_skipped(tmp_path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "bench.done").write_text("earlier\n")
    result = _run(tmp_path, PARTS="bench,profile", QUICK="1", PEER_DEVICE="cpu", COMPILE_BACKEND="eager")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "== bench: done before" in result.stdout
    commands = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert len(commands) == 1 and "--profile-batch 128" in commands[0]
    assert "--quick" in commands[0] and "--peer-device cpu --compile-backend eager" in commands[0]
    forced = _run(tmp_path, PARTS="bench", FORCE="1")
    assert "== bench: done before" not in forced.stdout and "--eager-batch 1,8,32" in forced.stdout
    assert (tmp_path / "out" / "bench.done").read_text() == "earlier\n"  # a dry run leaves markers alone
