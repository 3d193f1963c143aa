"""Camera-trap scenes of the synthetic trait world, with MegaDetector-style boxes: the data of
``promptcam train --detections`` on the synthetic world, and how crops of any margin are scored.

Each scene is a JPEG of a textured field (``scene_background``) on which creatures of one species (the
photo's ImageFolder class) are pasted as the world's own 64-px tiles, scaled, each with its box in
``md.json`` (MegaDetector batch format 1.4, category ``1`` animal, a confidence). So a crop's margin
shows *foreign* background around the creature's tile, as a detector crop shows the scene around an
animal. Like real detector output, some scenes are empty (no detections), some carry a person box or
an animal box under the default threshold (neither is trained on).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from promptcam.batch.options import DetectionOptions
from promptcam.core.iospec import LOGITS
from promptcam.models.checkpoint import clean_class_name
from promptcam.results.megadetector import MEGADETECTOR_CATEGORIES
from promptcam.runtime.crops import CropContext
from promptcam.runtime.images import read_file_bytes
from promptcam.runtime.model_input import model_input
from promptcam.runtime.predictor import Predictor

from .demo import DemoRecipe
from .loop import TrainOptions
from .synthetic import WorldSpec, render_creature

MD_NAME = "md.json"
SCENES_NAME = "scenes.json"
SCORE_MARGINS = (0.0, 0.05, 0.1, 0.2)  # the crop margins (of the box's longer side, each side) scored


@dataclass(frozen=True)
class SceneSpec:
    """Scenes per class and split, their size, and the creatures' sizes (pixels of the box's side)."""

    world: WorldSpec = field(default_factory=WorldSpec)
    width: int = 256
    height: int = 192
    train_per_class: int = 60
    val_per_class: int = 10
    side_min: int = 72
    side_max: int = 120
    max_creatures: int = 2
    empty_rate: float = 0.1  # scenes of the class's folder with no creature and no detection
    seed: int = 0

    def __post_init__(self) -> None:
        if not (16 <= self.side_min <= self.side_max <= min(self.width // 2, self.height)):
            raise ValueError("creature sides must lie in [16, min(width / 2, height)]")


def scene_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A muted, low-frequency textured field with fine noise (another texture than the tiles' own)."""
    coarse = rng.uniform(80, 150, size=(8, 8, 3)).astype(np.float32)
    texture = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    grey = texture.mean(axis=2, keepdims=True)
    noise = rng.integers(-8, 9, size=(height, width, 1), dtype=np.int16)
    return np.clip(0.7 * grey + 0.3 * texture + noise, 0, 255).astype(np.uint8)


def _box(x: int, y: int, side: int, spec: SceneSpec) -> list[float]:
    return [round(x / spec.width, 6), round(y / spec.height, 6), round(side / spec.width, 6),
            round(side / spec.height, 6)]


def render_scene(class_index: int, spec: SceneSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """One RGB scene of a class and its detections (MegaDetector dicts)."""
    frame = scene_background(rng, spec.width, spec.height)
    detections: list[dict] = []
    if rng.random() >= spec.empty_rate:
        count = int(rng.integers(1, spec.max_creatures + 1))
        slot = spec.width // count  # one creature per vertical strip: boxes do not overlap
        for k in range(count):
            side = int(rng.integers(spec.side_min, min(spec.side_max, slot) + 1))
            x = k * slot + int(rng.integers(0, slot - side + 1))
            y = int(rng.integers(0, spec.height - side + 1))
            tile, _ = render_creature(class_index, spec.world, rng)
            frame[y:y + side, x:x + side] = cv2.resize(tile, (side, side), interpolation=cv2.INTER_LINEAR)
            detections.append({"category": "1", "conf": round(float(rng.uniform(0.5, 0.98)), 3),
                               "bbox": _box(x, y, side, spec)})
    if rng.random() < 0.3:  # a person box (another category) and a weak animal box (under 0.2): not trained on
        detections.append({"category": "2", "conf": 0.8, "bbox": [0.05, 0.05, 0.1, 0.3]})
    if rng.random() < 0.3:
        detections.append({"category": "1", "conf": 0.12, "bbox": [0.6, 0.7, 0.15, 0.2]})
    return frame, detections


def generate_scenes(out_dir: str | Path, spec: SceneSpec = SceneSpec()) -> Path:
    """Write ``train/`` and ``val/`` ImageFolder trees of scene JPEGs and their ``md.json`` (paths relative
    to ``out_dir``). Deterministic for a spec; complete scenes already at ``out_dir`` are reused."""
    out = Path(out_dir)
    meta = {"spec": asdict(spec), "class_names": spec.world.class_names()}
    if (out / SCENES_NAME).is_file() and json.loads((out / SCENES_NAME).read_text()) == meta:
        return out
    images = []
    for split, per_class, offset in (("train", spec.train_per_class, 2), ("val", spec.val_per_class, 3)):
        rng = np.random.default_rng([spec.seed, offset])  # other streams than the world's tiles (0, 1)
        for index, name in enumerate(spec.world.class_names()):
            folder = out / split / f"{index:03d}.{name.replace(' ', '_')}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                frame, detections = render_scene(index, spec, rng)
                rel = f"{split}/{folder.name}/{k:04d}.jpg"
                cv2.imwrite(str(out / rel), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
                images.append({"file": rel, "detections": detections,
                               "max_detection_conf": max((d["conf"] for d in detections), default=0.0)})
    (out / MD_NAME).write_text(json.dumps({
        "info": {"format_version": "1.4", "detector": "synthetic (promptcam.train.scenes)"},
        "detection_categories": MEGADETECTOR_CATEGORIES, "images": images}))
    (out / SCENES_NAME).write_text(json.dumps(meta, indent=1))  # written last: marks the scenes complete
    return out


# prompts on the demo's frozen backbone, from its crops: the demo's prompt recipe (docs/demo.md), 16 epochs
CROP_RECIPE = {"epochs": 16, "warmup_epochs": 2, "lr": 0.02, "weight_decay": 0.05, "batch_size": 32,
               "drop_path": 0.0, "prompt_dropout": 0.0}


def crop_training_options(scenes_dir: Path, out: Path, backbone: Path, seed: int, **overrides: object) -> TrainOptions:
    """``promptcam train --data SCENES --detections SCENES/md.json --backbone vit_micro_patch8_h8 --weights
    BACKBONE`` with ``CROP_RECIPE`` (``overrides`` replace its entries or set other ``TrainOptions``)."""
    return TrainOptions(**{"data": scenes_dir, "out": out, "backbone": DemoRecipe().arch, "weights": backbone,
                           "seed": seed, "workers": 0, "progress": False,
                           "detections": DetectionOptions(Path(scenes_dir) / MD_NAME), **CROP_RECIPE, **overrides})


@dataclass
class MarginScore:
    """Held-out crops classified right at each margin: ``{margin: (right, total)}``."""

    counts: dict[float, tuple[int, int]]

    def accuracy(self, margin: float) -> float:
        right, total = self.counts[margin]
        return right / max(total, 1)

    def row(self) -> str:
        return " | ".join(f"{r}/{t} ({r / max(t, 1):.1%})" for r, t in self.counts.values())


def score_margins(predictor: Predictor, scenes_dir: str | Path, margins: tuple[float, ...] = SCORE_MARGINS,
                  split: str = "val") -> MarginScore:
    """Accuracy of an exported model on the held-out scenes' animal crops, cut by the run's crop path with
    each margin of foreign background (``0.1`` is exactly the crop ``promptcam run --detections`` cuts).
    Labels are matched by class name, so a model of more classes than the scenes' is scored too."""
    root = Path(scenes_dir)
    entries = [e for e in json.loads((root / MD_NAME).read_text())["images"] if e["file"].startswith(f"{split}/")]
    config = predictor.config
    counts = {}
    for margin in margins:
        pixels, labels = [], []
        for entry in entries:
            boxes = [d["bbox"] for d in entry["detections"] if d["category"] == "1" and d["conf"] >= 0.2]
            if not boxes:
                continue
            photo = model_input(read_file_bytes(root / entry["file"]), entry["file"], config, boxes=boxes,
                                context=[CropContext(margin)] * len(boxes))
            pixels.append(photo.pixels)
            labels += [predictor.class_names.index(clean_class_name(Path(entry["file"]).parent.name))] * len(boxes)
        stacked = np.concatenate(pixels)
        predicted = np.concatenate([predictor.backend.infer(stacked[i:i + predictor.batch_size], (LOGITS,))[LOGITS]
                                    .argmax(axis=1) for i in range(0, len(stacked), predictor.batch_size)])
        counts[margin] = (int((predicted == np.asarray(labels)).sum()), len(labels))
    return MarginScore(counts)


def main(argv: list[str] | None = None) -> None:
    """``python -m promptcam.train.scenes OUT [--seed N]``: write the scenes and their md.json."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m promptcam.train.scenes", description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = generate_scenes(args.out, SceneSpec(seed=args.seed))
    print(f"wrote {out / 'train'}, {out / 'val'} and {out / MD_NAME}")


if __name__ == "__main__":
    main()
