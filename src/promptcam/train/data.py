"""ImageFolder datasets decoded with the runtime's own OpenCV code (train/serve parity)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from promptcam.core.config import ModelConfig
from promptcam.core.errors import ConfigError
from promptcam.explain.metrics import spread_over_classes
from promptcam.models.checkpoint import clean_class_name
from promptcam.models.preprocess import normalize_pixels
from promptcam.runtime.images import is_image_path, read_image, resize_for_model

TRAIN_RESIZE_RATIO = 240 / 224  # published recipe: Resize 240 -> RandomCrop 224


def find_classes(split_dir: Path) -> list[tuple[str, str]]:
    """(folder name, clean class name) for each class folder, sorted by folder name."""
    if not split_dir.is_dir():
        raise ConfigError(f"{split_dir}: data folder not found")
    folders = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not folders:
        raise ConfigError(f"{split_dir}: no class folders (expected ImageFolder layout: {split_dir}/<class>/<image>)")
    return [(f, clean_class_name(f)) for f in folders]


def list_samples(split_dir: Path, folders: list[str]) -> list[tuple[Path, int]]:
    samples = []
    for label, folder in enumerate(folders):
        samples += [(p, label) for p in sorted((split_dir / folder).rglob("*")) if p.is_file() and is_image_path(p)]
    if not samples:
        raise ConfigError(f"{split_dir}: no images found")
    return samples


def folder_images(split_dir: str | Path, limit: int = 64) -> list[Path]:
    """Images of an ImageFolder split, spread evenly over the class folders (``promptcam-eval --faithfulness``)."""
    split = Path(split_dir)
    return spread_over_classes([p for p, _ in list_samples(split, [f for f, _ in find_classes(split)])], limit)


class ImageFolderData(Dataset):
    """Images and labels; ``train=True`` adds the published augmentation (resize, random crop, flip).

    Args:
        samples: (path, label) pairs.
        config: Model config (size, mean/std, interpolation).
        train: Augment.
    """

    def __init__(self, samples: list[tuple[Path, int]], config: ModelConfig, *, train: bool) -> None:
        self.samples = samples
        self.config = config
        self.train = train
        self.resize_to = math.ceil(config.img_size * TRAIN_RESIZE_RATIO)

    def __len__(self) -> int:
        return len(self.samples)

    def pixels(self, index: int) -> np.ndarray:
        """uint8 RGB at model size (augmented when training)."""
        path, _ = self.samples[index]
        rgb = read_image(path)
        if not self.train:
            return resize_for_model(rgb, self.config)
        size, big = self.config.img_size, self.resize_to
        interpolation = cv2.INTER_AREA if max(rgb.shape[:2]) > big else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (big, big), interpolation=interpolation)
        top, left = (int(v) for v in torch.randint(0, big - size + 1, (2,)))
        rgb = rgb[top:top + size, left:left + size]
        if torch.rand(()) < 0.5:
            rgb = rgb[:, ::-1]
        return np.ascontiguousarray(rgb)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return normalize_pixels(self.pixels(index), self.config)[0], self.samples[index][1]


def split_samples(
    samples: list[tuple[Path, int]], fraction: float, seed: int
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Stratified train/val split of one folder (``--val-split``)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"--val-split must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in sorted({y for _, y in samples}):
        items = [s for s in samples if s[1] == label]
        order = rng.permutation(len(items))
        n_val = max(1, round(len(items) * fraction))
        val += [items[i] for i in order[:n_val]]
        train += [items[i] for i in order[n_val:]]
    return train, val
