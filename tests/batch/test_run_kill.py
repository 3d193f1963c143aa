"""promptcam-run SIGKILLed at seeded random points, and journals cut or zero-filled as a power cut
leaves them: ``--resume`` always finishes with the results of an uninterrupted run."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from promptcam.batch.run import RunOptions, run_files
from promptcam.runtime import Predictor

N_IMAGES = 24


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kill_images")
    rng = np.random.default_rng(7)
    for i in range(N_IMAGES):
        folder = root / f"cam{i % 3}"
        folder.mkdir(exist_ok=True)
        cv2.imwrite(str(folder / f"img_{i:02d}.{'jpg' if i % 4 else 'png'}"),
                    rng.integers(0, 256, (30 + i, 60 - i, 3), dtype=np.uint8))
    (root / "cam1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 torn")
    (root / "cam2" / "empty.png").write_bytes(b"")
    return root


def outputs(out: Path) -> tuple[list, str]:
    data = json.loads((out / "results.json").read_text())
    return data["images"], (out / "results.csv").read_text()


def run_args(model: Path, tree: Path, out: Path) -> list[str]:
    return [str(Path(sys.executable).parent / "promptcam-run"), "--model", str(model), str(tree), "--out", str(out),
            "--heatmaps", str(out.parent / (out.name + "_heat")), "--traits", "2", "--batch-size", "2",
            "--checkpoint-every", "1", "--workers", "2", "--no-progress"]


@pytest.fixture(scope="module")
def reference(tiny_export, small_tree, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("kill_reference")
    done = subprocess.run(run_args(tiny_export, small_tree, work / "out"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    images, table = outputs(work / "out")
    return {"images": images, "csv": table, "journal": (work / "out" / "results.jsonl").read_bytes(),
            "run": (work / "out" / "run.json").read_bytes()}


def _journal_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_sigkill_at_random_points_then_resume(tiny_export, small_tree, reference, tmp_path) -> None:
    rng = random.Random(20261129)
    total = len(reference["images"])
    kills = [rng.randrange(0, total) for _ in range(4)]  # journal lines written before the kill
    out = tmp_path / "out"
    args = run_args(tiny_export, small_tree, out)
    killed = []
    for after_lines in kills:
        process = subprocess.Popen(args + ["--resume"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while process.poll() is None and _journal_lines(out / "results.jsonl") <= after_lines:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
        killed.append((after_lines, _journal_lines(out / "results.jsonl"), process.wait()))
    print("kills (after line, journal lines, exit):", killed)
    assert any(code == -signal.SIGKILL for *_, code in killed)  # at least one kill landed mid-run
    done = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    images, table = outputs(out)
    assert images == _with_heat_dir(reference["images"], out)
    assert table == _csv_with_heat_dir(reference["csv"], reference["images"], out)


def _heat_prefix(images: list) -> str:
    heat = next(im["promptcam"]["heatmap"] for im in images if "promptcam" in im)
    return heat[:heat.index("_heat") + len("_heat")]


def _with_heat_dir(images: list, out: Path) -> list:
    # the reference wrote its heatmaps to its own folder: compare modulo that prefix
    return json.loads(json.dumps(images).replace(_heat_prefix(images), str(out.parent / (out.name + "_heat"))))


def _csv_with_heat_dir(table: str, images: list, out: Path) -> str:
    return table.replace(_heat_prefix(images), str(out.parent / (out.name + "_heat")))


@pytest.mark.parametrize("damage", ["truncate", "zero_tail", "zero_middle", "garbage_middle"])
def test_power_cut_journal_then_resume(tiny_export, small_tree, tmp_path, damage: str) -> None:
    predictor = Predictor(tiny_export, "ort-cpu", batch_size=2)
    out = tmp_path / "out"
    options = RunOptions(inputs=[small_tree], out_dir=out, traits=2, progress=False, heatmaps=tmp_path / "heat")
    run_files(predictor, options, log=lambda _: None)
    reference_images, reference_csv = outputs(out)

    # what a power cut leaves: the journal cut short, zeros where blocks never reached the card, or garbage
    rng = random.Random(f"power-{damage}")
    journal = bytearray((out / "results.jsonl").read_bytes())
    at = rng.randrange(1, len(journal) - 1)
    if damage == "truncate":
        journal = journal[:at]
    elif damage == "zero_tail":
        journal[at:] = bytes(len(journal) - at)
    elif damage == "zero_middle":
        end = min(len(journal) - 1, at + rng.randrange(10, 400))
        journal[at:end] = bytes(end - at)
    else:
        end = min(len(journal) - 1, at + 40)
        journal[at:end] = bytes(rng.randrange(256) for _ in range(end - at))
    (out / "results.jsonl").write_bytes(bytes(journal))
    for name in ("results.json", "results.csv"):
        (out / name).unlink()

    messages: list[str] = []
    options.resume = True
    summary = run_files(predictor, options, log=messages.append)
    assert outputs(out) == (reference_images, reference_csv)
    assert summary.ok + summary.failed == len(reference_images) and summary.resumed < len(reference_images)
    if damage in ("zero_middle", "garbage_middle"):
        assert any("damaged line" in m for m in messages), messages
    assert len((out / "results.jsonl").read_bytes().splitlines()) == len(reference_images)  # compacted again


def test_kill_at_start_then_resume(tiny_export, small_tree, reference, tmp_path) -> None:
    """A kill before the journal exists (while starting up) leaves a run that --resume starts cleanly."""
    out = tmp_path / "out"
    args = run_args(tiny_export, small_tree, out)
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(random.Random(3).uniform(0.05, 0.3))
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    images, _ = outputs(out)
    assert images == _with_heat_dir(reference["images"], out)
    shutil.rmtree(out)
