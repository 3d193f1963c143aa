"""The synthetic trait world: deterministic, masks aligned with the drawn traits."""

from __future__ import annotations

import numpy as np

from promptcam.runtime.images import read_image
from promptcam.train.synthetic import (
    HEAD_BIT,
    HEAD_COLOURS,
    TAIL_BIT,
    TAIL_COLOURS,
    WorldSpec,
    generate_world,
    load_masks,
    peak_in_mask,
    render_creature,
)


def test_world_is_deterministic_and_complete(tmp_path) -> None:
    spec = WorldSpec(head_colours=2, tail_colours=2, train_per_class=3, val_per_class=2)
    a, b = generate_world(tmp_path / "a", spec), generate_world(tmp_path / "b", spec)
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.png"))
    assert len(files) == 4 * 5
    assert files[0] == "train/000.red-head_magenta-tail/0000.png"
    for rel in files:
        assert np.array_equal(read_image(a / rel), read_image(b / rel))
    assert set(load_masks(a)) == set(files)


def test_masks_cover_the_trait_colours() -> None:
    spec = WorldSpec()
    rng = np.random.default_rng(0)
    for class_index in range(16):
        image, mask = render_creature(class_index, spec, rng)
        head, tail = spec.traits_of(class_index)
        head_pixels = image[(mask & HEAD_BIT) > 0].astype(float)
        tail_pixels = image[(mask & TAIL_BIT) > 0].astype(float)
        assert len(head_pixels) > 30 and len(tail_pixels) > 30
        # the masked pixels carry the class's colours (the tail may overlap the body edge slightly)
        assert np.linalg.norm(np.median(head_pixels, 0) - HEAD_COLOURS[head]) < 60
        assert np.linalg.norm(np.median(tail_pixels, 0) - TAIL_COLOURS[tail]) < 60


def test_peak_in_mask() -> None:
    mask = np.zeros((64, 64), bool)
    mask[8:16, 40:48] = True  # patch (1, 5) on an 8x8 grid
    attention = np.zeros((8, 8))
    attention[1, 5] = 1
    assert peak_in_mask(attention, mask)
    attention[1, 5], attention[6, 0] = 0, 1
    assert not peak_in_mask(attention, mask)
