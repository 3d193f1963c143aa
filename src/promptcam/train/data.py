"""ImageFolder datasets decoded with the runtime's own OpenCV code (train/serve parity)."""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Sequence
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
CACHE_MB = 2048  # decoded training images kept in RAM up to this size (``cache_images``)


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
        self.cached: np.ndarray | None = None  # [N, S, S, 3] uint8 of ``prepared`` (``preload``)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def prepared_side(self) -> int:
        """The side of ``prepared`` images: the training resize, or the model's input."""
        return self.resize_to if self.train else self.config.img_size

    def prepared(self, index: int) -> np.ndarray:
        """The deterministic part of the pipeline: decoded and resized (from the cache once ``preload`` ran)."""
        if self.cached is not None:
            return self.cached[index]
        path, _ = self.samples[index]
        rgb = read_image(path)
        if not self.train:
            return resize_for_model(rgb, self.config)
        big = self.resize_to
        interpolation = cv2.INTER_AREA if max(rgb.shape[:2]) > big else cv2.INTER_LINEAR
        return cv2.resize(rgb, (big, big), interpolation=interpolation)

    def preload(self) -> None:
        """Decode and resize every image once into one array, so epochs only crop, flip and normalise."""
        side = self.prepared_side
        cache = np.empty((len(self.samples), side, side, 3), np.uint8)
        for index in range(len(self.samples)):
            cache[index] = self.prepared(index)
        self.cached = cache

    def pixels(self, index: int) -> np.ndarray:
        """uint8 RGB at model size (augmented when training)."""
        rgb = self.prepared(index)
        if not self.train:
            return rgb
        size, big = self.config.img_size, self.resize_to
        top, left = (int(v) for v in torch.randint(0, big - size + 1, (2,)))
        rgb = rgb[top:top + size, left:left + size]
        if torch.rand(()) < 0.5:
            rgb = rgb[:, ::-1]
        return np.ascontiguousarray(rgb)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return normalize_pixels(self.pixels(index), self.config)[0], self.samples[index][1]


def cache_images(datasets: Sequence[Dataset], budget_mb: int, workers: int, log=print) -> bool:  # noqa: ANN001
    """Preload the ImageFolder datasets into RAM when they fit in ``budget_mb`` (0: never); returns whether.

    Decoding every image every epoch cost a small dataset's epoch a fifth of its time (the demo world:
    3 s of 15 s on 2 cores). The cache is made before the loader starts its workers and reaches them by
    fork, shared copy-on-write; a start method that pickles the dataset into each worker every epoch
    (spawn, forkserver) would copy it instead, so the cache is then left off. The augmentation draws
    from the same random stream either way: a cached run trains the same model as an uncached one.
    """
    folders = [d for d in datasets if isinstance(d, ImageFolderData)]
    if budget_mb <= 0 or not folders:
        return False
    need = sum(len(d) * d.prepared_side ** 2 * 3 for d in folders)
    if need > budget_mb * 2**20:
        log(f"images not cached in RAM: they need {need / 2**20:.0f} MB, over --cache-mb {budget_mb}")
        return False
    start_method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    if workers > 0 and start_method != "fork":
        log(f"images not cached in RAM: data workers start by {start_method}, which would copy the cache into each")
        return False
    for dataset in folders:
        dataset.preload()
    log(f"{sum(len(d) for d in folders)} images cached in RAM ({need / 2**20:.0f} MB)")
    return True


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
