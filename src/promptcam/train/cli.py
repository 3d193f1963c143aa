"""``promptcam-train`` and ``promptcam-eval``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from promptcam.core.cli import run_cli, verbose_option
from promptcam.models.registry import list_backbones
from promptcam.results.megadetector import DEFAULT_CATEGORIES, DEFAULT_THRESHOLD
from promptcam.runtime.backends import ENGINES


@click.command()
@click.option("--data", type=click.Path(path_type=Path), required=True, help="ImageFolder root (train/, val/).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run folder (runs/NAME).")
@click.option("--backbone", type=click.Choice(list_backbones()), default="dino_vitb16", show_default=True)
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="Local backbone weights: a timm ViT state dict, or for CLIP backbones (bioclip_vitb16) an "
                   "open_clip checkpoint (open_clip_pytorch_model.bin / .pt / .safetensors, full CLIP or visual "
                   "tower; text-tower keys are ignored).")
@click.option("--act", type=click.Choice(["gelu", "quick_gelu"]), default=None,
              help="MLP activation of a CLIP backbone (default: open_clip_config.json beside --weights, "
                   "else the backbone preset: quick_gelu for bioclip_vitb16).")
@click.option("--pretrained", is_flag=True, help="timm pretrained weights (needs the timm cache or internet).")
@click.option("--img-size", type=int, default=None, help="Override the backbone's input size.")
@click.option("--epochs", type=int, default=130, show_default=True)
@click.option("--warmup-epochs", type=int, default=20, show_default=True)
@click.option("--lr", type=float, default=0.005, show_default=True)
@click.option("--min-lr", type=float, default=1e-6, show_default=True)
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--weight-decay", type=float, default=0.001, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--drop-path", type=float, default=0.1, show_default=True)
@click.option("--prompt-dropout", type=float, default=0.1, show_default=True)
@click.option("--val-split", type=float, default=None, help="Hold out this fraction of train/ when there is no val/.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Data-loading processes.")
@click.option("--cache-mb", type=int, default=None,
              help="Keep the decoded, resized images in RAM when train and val fit in this many MB (default 2048); "
                   "epochs only crop, flip and normalise; 0: decode every epoch. The model is the same either way.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option("--amp/--no-amp", default=None, help="Mixed precision (default: on with CUDA).")
@click.option("--no-progress", is_flag=True)
@click.option("--detections", type=click.Path(path_type=Path), default=None,
              help="Train on the crops of this MegaDetector batch-results file's boxes (format 1.x), each labelled "
                   "with its photo's class folder, cut as `promptcam run --detections` cuts them.")
@click.option("--detections-root", type=click.Path(path_type=Path), default=None,
              help="The folder the detector file's relative paths start from (default: --data).")
@click.option("--det-threshold", type=float, default=DEFAULT_THRESHOLD, show_default=True,
              help="Train on detections at or above this confidence.")
@click.option("--det-categories", default=",".join(DEFAULT_CATEGORIES), show_default=True,
              help="Detection categories to train on, names or ids (comma-separated).")
@click.option("--crop-margin", default="0,0.3", show_default=True,
              help="Training crops' context margin, drawn from MIN,MAX (of the box's longer side, each side; "
                   "the run uses 0.1). Validation crops are the run's.")
@click.option("--crop-shift", type=float, default=0.05, show_default=True,
              help="Training crops' centre shifted by up to this (of the box's longer side, each axis).")
@verbose_option
def train(data: Path, out: Path, backbone: str, weights: Path | None, act: str | None, pretrained: bool,
          img_size: int | None, epochs: int, warmup_epochs: int, lr: float, min_lr: float, momentum: float,
          weight_decay: float, batch_size: int, drop_path: float, prompt_dropout: float, val_split: float | None,
          seed: int, workers: int, cache_mb: int | None, resume: bool, amp: bool | None, no_progress: bool,
          detections: Path | None,
          detections_root: Path | None, det_threshold: float, det_categories: str, crop_margin: str,
          crop_shift: float, verbose: bool) -> None:
    """Train Prompt-CAM prompts + head on a frozen backbone (published recipe by default).

    With --detections, on the crops of a detector's boxes (docs/train-on-crops.md).
    Multi-GPU / multi-process: torchrun --nproc_per_node N $(which promptcam-train) ...
    """

    def body() -> None:
        from promptcam.batch.options import DetectionOptions

        from .crop_data import CropJitter, margin_range
        from .loop import TrainOptions, train_promptcam

        crops = DetectionOptions(detections, det_threshold, tuple(c.strip() for c in det_categories.split(",")
                                                                  if c.strip()), detections_root) \
            if detections is not None else None
        jitter = CropJitter(*margin_range(crop_margin), crop_shift)

        options = TrainOptions(
            data=data, out=out, backbone=backbone, weights=weights, pretrained=pretrained, img_size=img_size,
            epochs=epochs, warmup_epochs=warmup_epochs, lr=lr, min_lr=min_lr, momentum=momentum,
            weight_decay=weight_decay, batch_size=batch_size, drop_path=drop_path, prompt_dropout=prompt_dropout,
            val_split=val_split, seed=seed, workers=workers, resume=resume, amp=amp, progress=not no_progress,
            config_overrides={"act": act} if act else {}, detections=crops, crop_jitter=jitter,
            **({} if cache_mb is None else {"cache_mb": cache_mb}))
        result = train_promptcam(options, log=click.echo)
        if result.best_epoch > 0:
            click.echo(f"best val accuracy {result.best_accuracy:.2%} at epoch {result.best_epoch}: {result.best_path}")

    run_cli(body, verbose=verbose)


@click.command()
@click.option("--ckpt", type=click.Path(path_type=Path), required=True, help="model.pt or official checkpoint.")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="ImageFolder split (class folders), or a root with val/.")
@click.option("--classes", type=click.Path(path_type=Path), default=None, help="Class names (official checkpoints).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write metrics.json + confusion.csv here.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--faithfulness", is_flag=True,
              help="Instead of accuracy: insertion/deletion AUC of Prompt-CAM (from --model) against Grad-CAM, "
                   "Layer-CAM, Eigen-CAM, attention rollout and random maps; on a synthetic world also the "
                   "pointing game and energy in the trait masks. Writes OUT/faithfulness.{md,json}.")
@click.option("--model", "model_dirs", multiple=True, type=click.Path(path_type=Path),
              help="Faithfulness: exported model directory of --ckpt (repeat for fp32 and int8/fp16: one table each).")
@click.option("--images", "image_limit", type=int, default=64, show_default=True,
              help="Faithfulness: images, spread evenly over the classes.")
@click.option("--steps", type=int, default=32, show_default=True, help="Faithfulness: perturbation steps per curve.")
@click.option("--blur-sigma", type=float, default=0.25, show_default=True,
              help="Faithfulness: Gaussian sigma of the blurred baseline, as a fraction of the image side.")
@click.option("--engine", type=click.Choice(ENGINES), default="ort-cpu", show_default=True,
              help="Faithfulness: runtime engine of --model.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Faithfulness: ONNX Runtime intra-op threads (default: all cores).")
@verbose_option
def evaluate(ckpt: Path, data: Path, classes: Path | None, out: Path | None, batch_size: int, workers: int,
             faithfulness: bool, model_dirs: tuple[Path, ...], image_limit: int, steps: int, blur_sigma: float,
             engine: str, threads: int | None, verbose: bool) -> None:
    """Accuracy, per-class accuracy and confusion matrix of a checkpoint on a dataset (or --faithfulness)."""

    def body() -> None:
        if faithfulness:
            from promptcam.core.errors import ConfigError
            from promptcam.explain.baselines import faithfulness_table
            from promptcam.explain.metrics import Protocol
            from promptcam.models.checkpoint import read_class_names

            from .data import folder_images
            from .synthetic import MASKS_NAME, world_images

            if not model_dirs:
                raise ConfigError("--faithfulness needs --model DIR (the promptcam-export directory of --ckpt)")
            # a synthetic world: its val/ images with their trait masks (pointing game, energy in the traits);
            # else an ImageFolder split, or a root with val/: images spread over the class folders
            if (data / MASKS_NAME).is_file():
                images, masks = world_images(data, "val", image_limit)
            else:
                images, masks = folder_images(data / "val" if (data / "val").is_dir() else data, image_limit), None
            report = faithfulness_table(
                ckpt, list(model_dirs), images, masks=masks, engine=engine, threads=threads,
                protocol=Protocol(steps=steps, blur_sigma=blur_sigma, batch_size=max(batch_size, 1)),
                class_names=read_class_names(classes) if classes else None, log=lambda m: click.echo(m, err=True))
            click.echo(report.markdown)
            written = report.write(out) if out is not None else ()
            click.echo(f"faithfulness in {report.seconds:.1f}s"
                       + (f"; wrote {written[0]} and {written[1]}" if written else ""))
            return
        import torch
        from torch.utils.data import DataLoader

        from promptcam.core.errors import ConfigError
        from promptcam.models.checkpoint import load_model, read_class_names

        from .data import ImageFolderData, find_classes, list_samples
        from .evaluate import evaluate as run_eval

        model = load_model(ckpt, class_names=read_class_names(classes) if classes else None)
        split = data / "val" if (data / "val").is_dir() else data
        folders = find_classes(split)
        if [n for _, n in folders] != model.config.class_names:
            raise ConfigError(f"{split}: class folders do not match the checkpoint's {model.num_classes} classes")
        dataset = ImageFolderData(list_samples(split, [f for f, _ in folders]), model.config, train=False)
        result = run_eval(model, DataLoader(dataset, batch_size=batch_size, num_workers=workers), torch.device("cpu"))
        click.echo(f"accuracy {result.accuracy:.2%} on {len(dataset)} images")
        for name, acc in zip(model.config.class_names, result.per_class_accuracy, strict=True):
            click.echo(f"  {acc:7.2%}  {name}")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.json").write_text(json.dumps({
                "accuracy": result.accuracy, "loss": result.loss, "images": len(dataset),
                "per_class_accuracy": dict(zip(model.config.class_names, result.per_class_accuracy, strict=True)),
            }, indent=1))
            result.write_confusion(out / "confusion.csv", model.config.class_names)
            click.echo(f"wrote {out / 'metrics.json'} and {out / 'confusion.csv'}")

    run_cli(body, verbose=verbose)
