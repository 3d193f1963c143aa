"""Training on the synthetic world: targets on held-out images, resume, DDP on gloo, eval CLI."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from helpers import run_cli
from promptcam.models.checkpoint import load_model
from promptcam.models.registry import make_config
from promptcam.train.data import ImageFolderData, cache_images, find_classes, list_samples
from promptcam.train.loop import TrainOptions, train_promptcam
from promptcam.train.schedule import lr_at
from promptcam.train.synthetic import WorldSpec, generate_world

# two data workers on purpose (their random streams), on a test worker that has one core of its own
WORKERS_ON_FEW_CORES = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


def test_trained_world_meets_targets(trained_world) -> None:
    """The real demo recipe (seed 0), exported and run on ONNX Runtime, on 800 held-out images: the
    issue's targets themselves (docs/demo.md, "The demo, measured", has seeds 0, 1 and 2)."""
    from promptcam.train.demo import TARGET_ACCURACY, TARGET_PEAK_ON_TRAIT

    summary = trained_world["summary"]
    assert summary["held_out_images"] == 800
    assert summary["accuracy"] >= TARGET_ACCURACY, summary
    assert summary["attention_peak_on_trait"] >= TARGET_PEAK_ON_TRAIT, summary
    assert len(summary["per_class"]) == 16
    out = trained_world["out"]
    assert (out / "summary.md").is_file() and (out / "gallery.jpg").is_file()
    assert "insertion" in (out / "summary.md").read_text()
    assert len(list((out / "heatmaps").rglob("*.heatmap.jpg"))) == 800


def test_checkpoint_is_frozen_backbone_plus_prompts(trained_world) -> None:
    model = load_model(trained_world["ckpt"])
    backbone = torch.load(trained_world["ckpt"].parent.parent / "backbone.pt", weights_only=True)
    state = model.state_dict()
    for key, value in backbone.items():
        assert torch.equal(state[key], value), f"backbone weight {key} changed during prompt training"
    assert model.config.class_names[0] == "red-head magenta-tail"


def test_lr_schedule() -> None:
    kw = dict(total_steps=100, warmup_steps=20, base_lr=0.01, warmup_lr=0.0, min_lr=0.0)
    assert lr_at(0, **kw) == 0.0 and lr_at(10, **kw) == pytest.approx(0.005)
    assert lr_at(20, **kw) == pytest.approx(0.01) and lr_at(100, **kw) == pytest.approx(0.0)
    assert lr_at(60, **kw) == pytest.approx(0.005)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("small_world"),
                          WorldSpec(head_colours=2, tail_colours=2, train_per_class=16, val_per_class=4))


def _options(world: Path, out: Path, **kw) -> TrainOptions:
    base = dict(data=world, out=out, backbone="vit_micro_patch8", epochs=2, warmup_epochs=1, lr=0.05,
                batch_size=16, workers=0, progress=False, seed=0)
    return TrainOptions(**(base | kw))


@WORKERS_ON_FEW_CORES
def test_images_cached_in_ram_train_the_same_model(small_world, tmp_path) -> None:
    """Decoded once into RAM (the default for a dataset that fits; data workers reach it by fork) or decoded
    every epoch: the same weights. A budget too small for the images leaves the cache off and says so."""
    logs: dict[str, list[str]] = {"cached": [], "decoded": []}
    for run, cache_mb in (("cached", 64), ("decoded", 0)):
        train_promptcam(_options(small_world, tmp_path / run, workers=2, prompt_dropout=0.1, drop_path=0.1,
                                 cache_mb=cache_mb), log=logs[run].append)
    assert "80 images cached in RAM (1 MB)" in logs["cached"], logs["cached"]
    assert not any("cached" in line for line in logs["decoded"])
    weights = {run: torch.load(tmp_path / run / "last.pt", weights_only=True)["state_dict"] for run in logs}
    for key in ("vpt.prompt_embeddings", "head.weight", "head.bias"):
        assert torch.equal(weights["cached"][key], weights["decoded"][key]), key

    folders = [folder for folder, _ in find_classes(small_world / "train")]
    config = make_config("vit_micro_patch8", len(folders))
    both = [ImageFolderData(list_samples(small_world / split, folders), config, train=split == "train")
            for split in ("train", "val")]  # 64 at 69 px and 16 at 64 px: 1.06 MB
    said: list[str] = []
    assert not cache_images(both, 0, 2, said.append) and said == []  # 0: off, silently
    assert not cache_images(both, 1, 2, said.append)
    assert said == ["images not cached in RAM: they need 1 MB, over --cache-mb 1"]
    assert all(dataset.cached is None for dataset in both)


@WORKERS_ON_FEW_CORES
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_exactly_where_it_stopped(small_world, tmp_path, workers: int) -> None:
    """2 epochs + resume to 3 ends with the weights and optimizer state of 3 uninterrupted epochs."""
    straight = train_promptcam(_options(small_world, tmp_path / "straight", epochs=3, workers=workers,
                                        prompt_dropout=0.1, drop_path=0.1), log=lambda *_: None)

    class Interrupted(Exception):
        pass

    def interrupt_after_epoch_2(line: str) -> None:  # the epoch-2 row is logged after last.pt is written
        if line.split()[:1] == ["2"]:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_promptcam(_options(small_world, tmp_path / "resumed", epochs=3, workers=workers, prompt_dropout=0.1,
                                 drop_path=0.1), log=interrupt_after_epoch_2)
    resumed = train_promptcam(_options(small_world, tmp_path / "resumed", epochs=3, resume=True, workers=workers,
                                       prompt_dropout=0.1, drop_path=0.1), log=lambda *_: None)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    metrics = [json.loads(line) for line in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert resumed.history[-1]["train_loss"] == straight.history[-1]["train_loss"]

    def final(run: str) -> tuple[dict, dict]:
        blob = torch.load(tmp_path / run / "last.pt", weights_only=True)
        return blob["state_dict"], blob["extra"]["optimizer"]["state"]

    (want_weights, want_optim), (got_weights, got_optim) = final("straight"), final("resumed")
    for key in ("vpt.prompt_embeddings", "head.weight", "head.bias"):
        assert torch.equal(got_weights[key], want_weights[key]), key
    assert want_optim and want_optim.keys() == got_optim.keys()
    for index, state in want_optim.items():
        assert torch.equal(got_optim[index]["momentum_buffer"], state["momentum_buffer"])


def test_cli_val_split_and_eval(small_world, tmp_path) -> None:
    result = run_cli("promptcam-train", "--data", small_world / "train", "--val-split", "0.25", "--out",
                     tmp_path / "run", "--backbone", "vit_micro_patch8", "--epochs", "1", "--warmup-epochs", "0",
                     "--workers", "0", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "epoch" in result.stdout and "best val accuracy" in result.stdout
    result = run_cli("promptcam-eval", "--ckpt", tmp_path / "run" / "best.pt", "--data", small_world,
                     "--out", tmp_path / "eval", "--workers", "0")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 16 and set(metrics["per_class_accuracy"]) == {
        "red-head magenta-tail", "red-head cyan-tail", "green-head magenta-tail", "green-head cyan-tail"}
    assert (tmp_path / "eval" / "confusion.csv").read_text().count("\n") == 5


def test_cli_errors(tmp_path) -> None:
    result = run_cli("promptcam-train", "--data", tmp_path / "none", "--out", tmp_path / "run")
    assert result.returncode == 1 and "data folder not found" in result.stderr
    (tmp_path / "flat" / "a").mkdir(parents=True)
    result = run_cli("promptcam-train", "--data", tmp_path / "flat", "--out", tmp_path / "run")
    assert result.returncode == 1 and "no images found" in result.stderr


def test_ddp_two_cpu_processes_on_gloo(small_world, tmp_path) -> None:
    exe = Path(sys.executable).parent / "promptcam-train"
    result = __import__("subprocess").run(
        # --standalone: a local rendezvous on a free port (no fixed port to collide with)
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(exe),
         "--data", small_world, "--out", tmp_path / "ddp", "--backbone", "vit_micro_patch8", "--epochs", "1",
         "--warmup-epochs", "0", "--workers", "0", "--no-progress"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DDP x2" in result.stdout
    metrics = [json.loads(line) for line in open(tmp_path / "ddp" / "metrics.jsonl")]
    assert len(metrics) == 1  # only rank 0 writes
    assert load_model(tmp_path / "ddp" / "best.pt").num_classes == 4
