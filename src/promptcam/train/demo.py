"""``promptcam-demo``: the whole pipeline offline, on the synthetic trait world.

world -> pretrain a small ViT (stand-in for DINO) -> freeze -> train Prompt-CAM prompts -> export ONNX
-> run the torch-free runtime on held-out images -> heatmaps, results files and a summary with
accuracy and how often the true class's attention peak lands on a trait. Every stage is cached.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import click
import cv2
import numpy as np

from promptcam.core.cli import run_cli, verbose_option
from promptcam.core.iospec import ATTENTION, LOGITS
from promptcam.runtime.heatmap import overlay
from promptcam.runtime.images import read_image, resize_for_model
from promptcam.runtime.predictor import Predictor

from .synthetic import WorldSpec, generate_world, load_masks, peak_in_mask, trait_mask_for

# what the recipe must reach on held-out images, for every seed, on any machine of the project's kind
TARGET_ACCURACY = 0.95
TARGET_PEAK_ON_TRAIT = 0.90


@dataclass(frozen=True)
class DemoRecipe:
    """The demo's recipe, chosen on numbers from three seeds and two CPU code paths (README).

    Two things made the first recipe a knife edge (99.5% on one machine, 89% on another; reproduced
    here by running PyTorch's AVX2 kernels instead of AVX-512: 38% after the first epoch, not 92%):
    - prompt training started at its full learning rate, so the first epochs' path hung on float
      rounding that differs between CPUs; a two-epoch warm-up and a lower rate remove that;
    - a backbone trained for classification alone copies the trait colours into any token, so
      prompts could read them off background patches; ``pretrain_local_weight`` makes every patch
      token also reconstruct its own patch (self-supervised), keeping tokens local as DINO's are.
    Then one or two classes per seed kept near-uniform maps that still classified by pooling. Two
    causes, both in pretraining: the reconstruction target was normalised per patch, which erases
    flat colours (a white tail read like the grey body), so the target is now the pixels; and the
    classification loss read the [cls] token, which left patch tokens free to carry the class
    evidence anywhere (a prompt read it off the background), so it now reads the patch tokens'
    average (``pretrain_pool``), which ties each token to its own patch. 8 heads instead of 4
    give each prompt more chances to find its trait. A prompt that stays diffuse still classifies
    (a uniform row averages the patch tokens, which is what pretraining classified from); weight
    decay 0.05 instead of the published 0.001 moved those prompts onto their traits. Seeds 0/1/2
    reach 99.8/94.6/98.1% (docs/demo.md, "The demo, measured").
    """

    arch: str = "vit_micro_patch8_h8"
    pretrain_epochs: int = 8
    pretrain_lr: float = 2e-3
    pretrain_local_weight: float = 3.0
    pretrain_pool: str = "avg"
    prompt_epochs: int = 12
    prompt_warmup_epochs: int = 2
    prompt_lr: float = 0.02
    prompt_weight_decay: float = 0.05
    batch_size: int = 32
    seed: int = 0


@dataclass
class WorldScore:
    images: int
    accuracy: float
    peak_in_trait: float
    per_class_peak: list[float]  # the peak-on-trait rate of each class's own images
    per_class_accuracy: list[float]


def score_world(predictor: Predictor, world_dir: Path, split: str = "val") -> WorldScore:
    """Accuracy and attention-peak-on-trait rate of an exported model on held-out world images."""
    masks = {k: v for k, v in load_masks(world_dir).items() if k.startswith(f"{split}/")}
    names = sorted(masks)
    labels = [int(Path(n).parent.name.split(".")[0]) for n in names]
    classes = predictor.config.num_classes
    counts, correct, hits = np.zeros(classes), np.zeros(classes), np.zeros(classes)
    grid = predictor.config.grid_size
    for start in range(0, len(names), predictor.batch_size):
        chunk = names[start:start + predictor.batch_size]
        pixels = np.stack([resize_for_model(read_image(world_dir / n), predictor.config) for n in chunk])
        out = predictor.backend.infer(pixels, (LOGITS, ATTENTION))
        for i, name in enumerate(chunk):
            label = labels[start + i]
            counts[label] += 1
            correct[label] += int(out[LOGITS][i].argmax() == label)
            head_mean = out[ATTENTION][i, label].mean(axis=0).reshape(grid, grid)
            hits[label] += int(peak_in_mask(head_mean, trait_mask_for(masks[name])))
    seen = np.maximum(counts, 1)
    return WorldScore(len(names), float(correct.sum() / len(names)), float(hits.sum() / len(names)),
                      [float(v) for v in hits / seen], [float(v) for v in correct / seen])


def _stage(cache: Path, name: str, params: dict, outputs: list[Path], build: Callable[[], object], log) -> bool:  # noqa: ANN001
    """Run ``build`` unless its outputs exist for the same params; returns whether it ran."""
    stamp = cache / f".{name}.json"
    wanted = json.dumps(params, sort_keys=True, default=str)
    if stamp.is_file() and stamp.read_text() == wanted and all(p.exists() for p in outputs):
        log(f"[{name}] cached")
        return False
    started = time.perf_counter()
    build()
    stamp.write_text(wanted)
    log(f"[{name}] done in {time.perf_counter() - started:.1f}s")
    return True


def gallery(predictor: Predictor, world_dir: Path, out: Path, per_class: int = 1, scale: int = 4) -> Path:
    """One tile pair (image | heatmap of the true class) per class, for a quick look."""
    rows = []
    for index, _ in enumerate(predictor.class_names):
        folder = next((world_dir / "val").glob(f"{index:03d}.*"))
        for path in sorted(folder.glob("*.png"))[:per_class]:
            rgb = read_image(path)
            prediction = predictor.predict([rgb], classes=[index])[0]
            big = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
            heat = overlay(big, prediction.attention_mean(index))
            rows.append(np.concatenate([cv2.cvtColor(big, cv2.COLOR_RGB2BGR), heat], axis=1))
    sheet = np.concatenate([np.concatenate(rows[i:i + 4], axis=1) for i in range(0, len(rows) - len(rows) % 4, 4)])
    cv2.imwrite(str(out), sheet)
    return out


def build_demo_model(cache: Path, recipe: DemoRecipe = DemoRecipe(), spec: WorldSpec = WorldSpec(),
                     log=print) -> dict[str, Path]:  # noqa: ANN001
    """The world, backbone, trained prompts and fp32 export of the demo, each cached in ``cache``.

    Returns:
        Paths: ``world``, ``backbone``, ``run`` (training folder), ``ckpt`` and ``model`` (export folder).
    """
    from promptcam.export.passes import ExportOptions, export_model

    from .loop import TrainOptions, train_promptcam
    from .pretrain import pretrain_backbone

    cache.mkdir(parents=True, exist_ok=True)
    world, backbone, run_dir, model_dir = cache / "world", cache / "backbone.pt", cache / "run", cache / "model"
    _stage(cache, "world", asdict(spec), [world / "world.json"], lambda: generate_world(world, spec), log)
    pre = {"spec": asdict(spec), "arch": recipe.arch, "epochs": recipe.pretrain_epochs, "lr": recipe.pretrain_lr,
           "local_weight": recipe.pretrain_local_weight, "pool": recipe.pretrain_pool, "seed": recipe.seed}
    _stage(cache, "pretrain", pre, [backbone], lambda: pretrain_backbone(
        world, backbone, arch=recipe.arch, epochs=recipe.pretrain_epochs, lr=recipe.pretrain_lr, seed=recipe.seed,
        local_weight=recipe.pretrain_local_weight, pool=recipe.pretrain_pool, log=log), log)
    train_options = TrainOptions(
        data=world, out=run_dir, backbone=recipe.arch, weights=backbone, epochs=recipe.prompt_epochs,
        warmup_epochs=recipe.prompt_warmup_epochs, lr=recipe.prompt_lr, weight_decay=recipe.prompt_weight_decay,
        batch_size=recipe.batch_size, drop_path=0.0,
        prompt_dropout=0.0, seed=recipe.seed, progress=False)

    def train() -> None:
        for stale in ("last.pt", "best.pt", "metrics.jsonl"):
            (run_dir / stale).unlink(missing_ok=True)
        train_promptcam(train_options, log=log)

    _stage(cache, "train", {**pre, **asdict(recipe)}, [run_dir / "best.pt"], train, log)
    _stage(cache, "export", {**pre, **asdict(recipe), "export": 1}, [model_dir / "manifest.json"],
           lambda: export_model(ExportOptions(ckpt=run_dir / "best.pt", out=model_dir), log=log), log)
    return {"world": world, "backbone": backbone, "run": run_dir, "ckpt": run_dir / "best.pt", "model": model_dir}


def run_demo(out: Path, cache: Path, recipe: DemoRecipe = DemoRecipe(), spec: WorldSpec = WorldSpec(),
             log=print, faithfulness_images: int = 64) -> dict:  # noqa: ANN001
    """Run (or reuse) every stage; returns the summary dict also written to ``out/summary.json``.

    ``faithfulness_images``: held-out images of the insertion/deletion table (the test suite uses fewer).
    """
    from promptcam.batch.run import RunOptions, run_files

    out.mkdir(parents=True, exist_ok=True)
    built = build_demo_model(cache, recipe, spec, log)
    world, run_dir, model_dir = built["world"], built["run"], built["model"]

    predictor = Predictor(model_dir, "ort-cpu", batch_size=32)
    summary_run = run_files(predictor, RunOptions(
        inputs=[world / "val"], out_dir=out / "results", heatmaps=out / "heatmaps", traits=4, overwrite=True,
        progress=False), log=log)
    score = score_world(predictor, world)
    gallery_path = gallery(predictor, world, out / "gallery.jpg")
    faithfulness = demo_faithfulness(run_dir / "best.pt", model_dir, world, log, images=faithfulness_images)
    names = predictor.class_names
    weak = [f"{names[c]} ({rate:.0%})" for c, rate in enumerate(score.per_class_peak) if rate < TARGET_PEAK_ON_TRAIT]
    summary = {
        "seed": recipe.seed, "recipe": asdict(recipe),
        "held_out_images": score.images, "accuracy": score.accuracy, "attention_peak_on_trait": score.peak_in_trait,
        "per_class": {names[c]: {"accuracy": score.per_class_accuracy[c], "peak_on_trait": score.per_class_peak[c]}
                      for c in range(len(names))},
        "engine": predictor.engine_description, "model_dir": str(model_dir),
        "validation": {k: predictor.manifest.validation.get(k) for k in ("logits_max_abs_diff", "top1_agreement")},
        "results": summary_run.outputs, "heatmaps": str(out / "heatmaps"), "gallery": str(gallery_path),
        "runtime_images_per_second": summary_run.images_per_second,
        "faithfulness": faithfulness["json"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(
        "# promptcam demo summary\n\n"
        f"- seed: {recipe.seed}\n- held-out images: {score.images}\n"
        f"- accuracy (exported model, ONNX Runtime): {score.accuracy:.1%} (target {TARGET_ACCURACY:.0%})\n"
        f"- true-class attention peak on a trait (head or tail): {score.peak_in_trait:.1%} "
        f"(target {TARGET_PEAK_ON_TRAIT:.0%})\n"
        f"- classes whose maps miss their traits (peak on a trait in < {TARGET_PEAK_ON_TRAIT:.0%} of their "
        f"images): {', '.join(weak) or 'none'}\n"
        f"- engine: {predictor.engine_description}\n- results: {summary_run.outputs['megadetector']}\n"
        f"- heatmaps: {out / 'heatmaps'}\n- gallery: {gallery_path}\n\n"
        f"## Faithfulness of the maps\n\n{faithfulness['markdown']}\n")
    return summary


def demo_faithfulness(ckpt: Path, model_dir: Path, world: Path, log, images: int = 64) -> dict:  # noqa: ANN001
    """The paper's Table 1 (insertion/deletion) on held-out world images; Grad-CAM rows need the ``explain`` extra."""
    from promptcam.core.errors import PromptCamError
    from promptcam.explain.baselines import METHODS, faithfulness_table
    from promptcam.explain.metrics import Protocol

    from .synthetic import world_images

    paths, masks = world_images(world, "val", limit=images)
    methods = METHODS
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        methods = tuple(m for m in METHODS if not m.endswith("-CAM") or m == "Prompt-CAM")
        log("faithfulness: grad-cam is not installed (pip install 'promptcam[explain]'); no Grad-CAM rows")
    try:
        report = faithfulness_table(ckpt, model_dir, paths, masks=masks, protocol=Protocol(steps=32),
                                    methods=methods, log=log)
    except PromptCamError as exc:
        return {"markdown": f"not measured: {exc}", "json": None}
    return {"markdown": report.markdown, "json": report.json}


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo_out"), show_default=True)
@click.option("--cache", type=click.Path(path_type=Path), default=Path(".promptcam-cache/demo"), show_default=True,
              help="Cached world, backbone, training run and export.")
@click.option("--seed", type=int, default=0, show_default=True, help="Training seed (pretraining and prompts).")
@click.option("--fresh", is_flag=True, help="Ignore the cache and redo every stage.")
@verbose_option
def main(out: Path, cache: Path, seed: int, fresh: bool, verbose: bool) -> None:
    """Train, export and run Prompt-CAM on the offline synthetic trait world; write heatmaps and a summary."""

    def body() -> None:
        if fresh:
            for stamp in cache.glob(".*.json"):
                stamp.unlink()
        summary = run_demo(out, cache, DemoRecipe(seed=seed), log=click.echo)
        click.echo((out / "summary.md").read_text())
        if summary["accuracy"] < TARGET_ACCURACY or summary["attention_peak_on_trait"] < TARGET_PEAK_ON_TRAIT:
            click.echo(f"warning: below the demo targets ({TARGET_ACCURACY:.0%} accuracy, "
                       f"{TARGET_PEAK_ON_TRAIT:.0%} attention peak on a trait)", err=True)

    run_cli(body, verbose=verbose)
