"""Prompt-CAM training: frozen backbone, deep prompts + shared head, the published recipe by default."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from promptcam.batch.options import DetectionOptions
from promptcam.core.errors import CheckpointError, ConfigError
from promptcam.models.checkpoint import save_checkpoint
from promptcam.models.factory import create_model
from promptcam.models.promptcam import PromptCAM

from .crop_data import CropJitter, DetectionCropData, crop_samples
from .data import CACHE_MB, ImageFolderData, cache_images, find_classes, list_samples, split_samples
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown
from .evaluate import evaluate
from .schedule import lr_at

LAST_NAME, BEST_NAME, METRICS_NAME = "last.pt", "best.pt", "metrics.jsonl"


@dataclass
class TrainOptions:
    """Every knob of ``promptcam-train``; defaults are the published CUB recipe."""

    data: Path
    out: Path
    backbone: str = "dino_vitb16"
    weights: Path | None = None
    pretrained: bool = False
    img_size: int | None = None
    epochs: int = 130
    warmup_epochs: int = 20
    lr: float = 0.005
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6
    momentum: float = 0.9
    weight_decay: float = 0.001
    batch_size: int = 16
    drop_path: float = 0.1
    prompt_dropout: float = 0.1
    val_split: float | None = None
    seed: int = 0
    workers: int = 2
    cache_mb: int = CACHE_MB  # decoded images kept in RAM when they fit (data.cache_images); 0: off
    resume: bool = False
    amp: bool | None = None  # None: on when CUDA is available
    progress: bool = True
    config_overrides: dict[str, Any] = field(default_factory=dict)
    detections: DetectionOptions | None = None  # train on the crops of a detector file's boxes (crop_data)
    crop_jitter: CropJitter = field(default_factory=CropJitter)


@dataclass
class TrainResult:
    best_accuracy: float
    best_epoch: int
    best_path: Path
    history: list[dict[str, float]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch's randomness: a pure function of the run's seed, the epoch and the rank."""
    return (seed * 1_000_003 + epoch * 1_009 + rank) % 2**63


def build_datasets(options: TrainOptions, model_config_factory, log=print) -> tuple[Dataset, Dataset, list[str]]:  # noqa: ANN001
    data = Path(options.data)
    train_dir = data / "train" if (data / "train").is_dir() else data
    classes = find_classes(train_dir)
    folders, names = [f for f, _ in classes], [n for _, n in classes]
    samples = list_samples(train_dir, folders)
    if options.val_split:
        train_samples, val_samples = split_samples(samples, options.val_split, options.seed)
    elif (data / "val").is_dir():
        train_samples, val_samples = samples, list_samples(data / "val", folders)
    else:
        raise ConfigError(f"{data}: no val/ folder; pass --val-split FRACTION")
    config = model_config_factory(names)
    if options.detections is not None:
        return (*_crop_datasets(options, data, train_samples, val_samples, config, log), names)
    return ImageFolderData(train_samples, config, train=True), ImageFolderData(val_samples, config, train=False), names


def _crop_datasets(options: TrainOptions, data: Path, train_samples: list[tuple[Path, int]],
                   val_samples: list[tuple[Path, int]], config, log) -> tuple[Dataset, Dataset]:  # noqa: ANN001
    """Train on jittered crops, validate on the run's own crops (``crop_data``); photos split before crops."""
    samples, counts = crop_samples(train_samples + val_samples, data, options.detections)
    log(f"{options.detections.path}: {counts.summary()}")
    for line in counts.details():
        log(line)
    val_paths = {Path(p) for p, _ in val_samples}
    train_crops = [s for s in samples if s.path not in val_paths]
    val_crops = [s for s in samples if s.path in val_paths]
    if not val_crops:
        raise ConfigError(f"{options.detections.path}: no validation photo has a qualifying detection")
    return (DetectionCropData(train_crops, config, jitter=options.crop_jitter, flip=True),
            DetectionCropData(val_crops, config))


def train_promptcam(options: TrainOptions, log=print) -> TrainResult:  # noqa: ANN001
    """Train prompts + head on a frozen backbone; checkpoints every epoch, best by val accuracy."""
    dist_info = init_distributed()
    try:
        return _train(options, dist_info, log if dist_info.is_main else (lambda *_: None))
    finally:
        shutdown(dist_info)


def _train(options: TrainOptions, dist_info: DistInfo, log) -> TrainResult:  # noqa: ANN001
    seed_everything(options.seed + dist_info.rank)
    device = torch.device(f"cuda:{dist_info.local_rank}" if torch.cuda.is_available() else "cpu")
    amp = torch.cuda.is_available() if options.amp is None else options.amp
    holder: dict[str, PromptCAM] = {}

    def make(names: list[str]):  # noqa: ANN202
        holder["model"] = create_model(
            options.backbone, len(names), class_names=names, pretrained=options.pretrained, weights=options.weights,
            drop_path_rate=options.drop_path, prompt_dropout=options.prompt_dropout, img_size=options.img_size,
            **options.config_overrides)
        return holder["model"].config

    train_set, val_set, names = build_datasets(options, make, log)
    cache_images((train_set, val_set), options.cache_mb, options.workers, log)
    model = holder["model"]
    model.freeze_backbone()
    model.to(device)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay)
    start_epoch, best_acc, best_epoch, history = 0, -1.0, -1, []
    if options.resume and (out / LAST_NAME).is_file():
        start_epoch, best_acc, best_epoch, history = _restore(out / LAST_NAME, model, optimizer)
        log(f"resumed from {out / LAST_NAME} at epoch {start_epoch}")

    sampler = DistributedSampler(train_set, dist_info.world_size, dist_info.rank, seed=options.seed) \
        if dist_info.enabled else None
    # Every epoch draws its data order, augmentation and dropout from seeds derived from (seed, epoch,
    # rank) alone, so a resumed run continues exactly as an uninterrupted one (workers are recreated per
    # epoch for the same reason: persistent workers would carry their random streams across epochs).
    order = torch.Generator()
    loader = DataLoader(train_set, batch_size=options.batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=options.workers, drop_last=len(train_set) > options.batch_size,
                        generator=order)
    val_loader = DataLoader(val_set, batch_size=max(32, options.batch_size), num_workers=options.workers)
    wrapped: torch.nn.Module = DistributedDataParallel(model) if dist_info.enabled else model
    steps_per_epoch = len(loader)
    total_steps, warmup_steps = options.epochs * steps_per_epoch, options.warmup_epochs * steps_per_epoch
    scaler = torch.amp.GradScaler(enabled=amp and device.type == "cuda")
    log(f"{len(train_set)} train / {len(val_set)} val images, {len(names)} classes, "
        f"{sum(p.numel() for p in trainable):,} trainable parameters, device {device}"
        + (f", DDP x{dist_info.world_size}" if dist_info.enabled else ""))
    if dist_info.is_main and start_epoch == 0:
        log(f"{'epoch':>5} {'lr':>9} {'loss':>8} {'train':>7} {'val':>7} {'best':>7} {'sec':>6}")

    for epoch in range(start_epoch, options.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        order.manual_seed(epoch_seed(options.seed, epoch))
        torch.manual_seed(epoch_seed(options.seed, epoch, dist_info.rank))
        wrapped.train()
        started = time.perf_counter()
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
        bar = _bar(loader, epoch, options.progress and dist_info.is_main)
        for step, (images, labels) in enumerate(bar):
            lr = lr_at(epoch * steps_per_epoch + step, total_steps=total_steps, warmup_steps=warmup_steps,
                       base_lr=options.lr, warmup_lr=options.warmup_lr, min_lr=options.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                logits, _ = wrapped(images)
                loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            totals += torch.tensor([loss.item() * len(labels), float((logits.argmax(-1) == labels).sum()), len(labels)],
                                   dtype=torch.float64)
        all_reduce_sum(totals, dist_info)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": float(totals[0] / totals[2]),
               "train_acc": float(totals[1] / totals[2])}
        if dist_info.is_main:
            result = evaluate(model, val_loader, device)
            row |= {"val_loss": result.loss, "val_acc": result.accuracy, "seconds": time.perf_counter() - started}
            if result.accuracy > best_acc:
                best_acc, best_epoch = result.accuracy, epoch + 1
                save_checkpoint(model, out / BEST_NAME, extra={"epoch": epoch + 1, "val_acc": best_acc})
            history.append(row)
            save_checkpoint(model, out / LAST_NAME, extra={
                "epoch": epoch + 1, "best_acc": best_acc, "best_epoch": best_epoch, "history": json.dumps(history),
                "optimizer": optimizer.state_dict(), "options": json.dumps(asdict(options), default=str)})
            with open(out / METRICS_NAME, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            log(f"{epoch + 1:>5} {lr:>9.2e} {row['train_loss']:>8.4f} {row['train_acc']:>7.2%} "
                f"{result.accuracy:>7.2%} {best_acc:>7.2%} {row['seconds']:>6.1f}")
        barrier(dist_info)
    return TrainResult(best_acc, best_epoch, out / BEST_NAME, history)


def _restore(path: Path, model: PromptCAM, optimizer: torch.optim.Optimizer) -> tuple[int, float, int, list]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["state_dict"])
        extra = blob["extra"]
        optimizer.load_state_dict(extra["optimizer"])
        return int(extra["epoch"]), float(extra["best_acc"]), int(extra["best_epoch"]), json.loads(extra["history"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot resume from this checkpoint: {exc}") from exc


def _bar(loader: DataLoader, epoch: int, enabled: bool):  # noqa: ANN202
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, unit="batch", dynamic_ncols=True)
