"""A deterministic synthetic "trait world": creatures whose species is a combination of part colours.

Each image shows one grey creature (body ellipse, round head, triangular tail) at a random place,
size and facing, on a textured background with grey distractor blobs. Species = head colour x
tail colour, so telling two species apart needs one specific part: two species with the same
head differ only in the tail, and vice versa. Ground-truth part masks are saved per image, so a
heatmap can be scored: does the true class's attention peak land on a trait?
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from promptcam.core.errors import ConfigError
from promptcam.explain.metrics import spread_over_classes

# RGB colours, far apart in hue and away from the muted background palette. Heads and tails use
# separate palettes: with a shared one, "red head, green tail" and "green head, red tail" would
# differ only in which shape carries which colour, not in a trait.
HEAD_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
}
TAIL_COLOURS = {
    "magenta": (210, 50, 210),
    "cyan": (40, 210, 220),
    "orange": (245, 140, 20),
    "white": (250, 250, 250),
}
HEAD_BIT, TAIL_BIT = 1, 2
MASKS_NAME = "masks.npz"
WORLD_NAME = "world.json"


@dataclass(frozen=True)
class WorldSpec:
    """Size of the world: ``head_colours x tail_colours`` species."""

    img_size: int = 64
    head_colours: int = 4
    tail_colours: int = 4
    train_per_class: int = 250
    val_per_class: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if not (1 <= self.head_colours <= len(HEAD_COLOURS) and 1 <= self.tail_colours <= len(TAIL_COLOURS)):
            raise ValueError(f"at most {len(HEAD_COLOURS)} head and {len(TAIL_COLOURS)} tail colours")

    def class_names(self) -> list[str]:
        heads = list(HEAD_COLOURS)[: self.head_colours]
        tails = list(TAIL_COLOURS)[: self.tail_colours]
        return [f"{h}-head {t}-tail" for h in heads for t in tails]

    def traits_of(self, class_index: int) -> tuple[str, str]:
        h, t = divmod(class_index, self.tail_colours)
        return list(HEAD_COLOURS)[h], list(TAIL_COLOURS)[t]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Muted low-frequency colour texture plus fine noise."""
    base = rng.uniform(70, 160, size=3)
    coarse = rng.normal(0, 25, size=(6, 6, 3))
    texture = cv2.resize(coarse.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, 8, size=(size, size, 3))
    grey = texture.mean(axis=2, keepdims=True)
    # keep it desaturated so that trait colours stay the only vivid ones
    image = base.mean() + 0.2 * (base - base.mean()) + 0.7 * grey + 0.3 * texture + fine
    return np.clip(image, 0, 255)


def render_creature(class_index: int, spec: WorldSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 image and its part mask (bit 1 head, bit 2 tail)."""
    s = spec.img_size
    head_name, tail_name = spec.traits_of(class_index)
    image = _background(rng, s)
    for _ in range(rng.integers(0, 3)):  # grey distractor blobs: shape alone tells nothing
        centre = tuple(int(v) for v in rng.integers(0, s, size=2))
        shade = float(rng.uniform(90, 200))
        cv2.circle(image, centre, int(rng.integers(s // 20, s // 9)), (shade, shade, shade), -1)
    mask = np.zeros((s, s), np.uint8)
    scale = rng.uniform(0.85, 1.1)
    body_a, body_b = int(s * 0.2 * scale), int(s * 0.11 * scale)
    head_r, tail_len = int(s * 0.12 * scale), int(s * 0.2 * scale)
    margin = body_a + head_r + 2
    cx, cy = (int(v) for v in rng.integers(margin, s - margin, size=2))
    facing = 1 if rng.random() < 0.5 else -1
    body_shade = float(rng.uniform(110, 150))
    cv2.ellipse(image, (cx, cy), (body_a, body_b), 0, 0, 360, (body_shade,) * 3, -1)
    head_c = (cx + facing * body_a, cy - body_b // 2)
    head_colour = np.asarray(HEAD_COLOURS[head_name], float) * rng.uniform(0.85, 1.05)
    cv2.circle(image, head_c, head_r, tuple(float(v) for v in head_colour), -1)
    cv2.circle(mask, head_c, head_r, HEAD_BIT, -1)
    tail_x = cx - facing * body_a
    tail = np.array([[tail_x + facing * 2, cy], [tail_x - facing * tail_len, cy - tail_len // 2 - 2],
                     [tail_x - facing * tail_len, cy + tail_len // 2 + 2]], np.int32)
    tail_colour = np.asarray(TAIL_COLOURS[tail_name], float) * rng.uniform(0.85, 1.05)
    cv2.fillPoly(image, [tail], tuple(float(v) for v in tail_colour))
    tail_mask = np.zeros_like(mask)
    cv2.fillPoly(tail_mask, [tail], 1)
    mask[tail_mask > 0] |= TAIL_BIT
    return np.clip(image, 0, 255).astype(np.uint8), mask


def generate_world(out_dir: str | Path, spec: WorldSpec = WorldSpec()) -> Path:
    """Write ``train/`` and ``val/`` ImageFolder trees, ``masks.npz`` and ``world.json``.

    Deterministic for a given spec; a complete world already at ``out_dir`` is reused.
    """
    out = Path(out_dir)
    meta_path = out / WORLD_NAME
    meta = {"spec": spec.__dict__, "class_names": spec.class_names()}
    if meta_path.is_file() and json.loads(meta_path.read_text()) == meta:
        return out
    names = spec.class_names()
    masks: dict[str, np.ndarray] = {}
    for split, per_class, seed_offset in (("train", spec.train_per_class, 0), ("val", spec.val_per_class, 1)):
        rng = np.random.default_rng([spec.seed, seed_offset])
        for index, name in enumerate(names):
            folder = out / split / f"{index:03d}.{name.replace(' ', '_')}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                image, mask = render_creature(index, spec, rng)
                rel = f"{split}/{folder.name}/{k:04d}.png"
                cv2.imwrite(str(out / rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                masks[rel] = mask
    np.savez_compressed(out / MASKS_NAME, **masks)
    meta_path.write_text(json.dumps(meta, indent=1))  # written last: marks the world complete
    return out


def load_masks(world_dir: str | Path) -> dict[str, np.ndarray]:
    """Relative image path -> part mask."""
    with np.load(Path(world_dir) / MASKS_NAME) as data:
        return {key: data[key] for key in data.files}


def trait_mask_for(mask: np.ndarray) -> np.ndarray:
    """The distinguishing traits of a creature: head and tail."""
    return (mask & (HEAD_BIT | TAIL_BIT)) > 0


def world_images(world_dir: str | Path, split: str = "val", limit: int = 64) -> tuple[list[Path], list[np.ndarray]]:
    """Held-out world images, spread evenly over the classes, and their trait masks (head | tail).

    The images of ``promptcam-eval --faithfulness`` and of the demo's faithfulness table.
    """
    world = Path(world_dir)
    masks = {k: v for k, v in load_masks(world).items() if k.startswith(f"{split}/")}
    if not masks:
        raise ConfigError(f"{world}: no {split}/ images in the world's masks")
    chosen = spread_over_classes(sorted(masks), limit)
    return [world / n for n in chosen], [trait_mask_for(masks[n]) for n in chosen]


def peak_in_mask(attention_map: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the attention peak (a [grid, grid] map) falls on a patch that overlaps the mask."""
    grid = attention_map.shape[0]
    patch = mask.shape[0] // grid
    overlaps = mask[: grid * patch, : grid * patch].reshape(grid, patch, grid, patch).any(axis=(1, 3))
    row, col = np.unravel_index(int(np.argmax(attention_map)), attention_map.shape)
    return bool(overlaps[row, col])
