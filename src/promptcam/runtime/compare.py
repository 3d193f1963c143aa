""""Why this class and not that one": the predicted class's map beside the runners-up's (and a chosen class's).

Each tile is the head-mean attention of one class's prompt (as ``promptcam-run`` draws the heatmap),
over the image, labelled with the class name and its probability; tiles go most probable first,
then any asked-for class that is not among them (the true class of a misclassified image, say).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .heatmap import overlay, write_image
from .inputs import HEATMAP_SUFFIX
from .predictor import Prediction

COMPARE_SUFFIX = ".compare.jpg"


def compare_classes(prediction: Prediction, k: int, extra: Sequence[int] = ()) -> list[int]:
    """The classes of a sheet: the ``k`` most probable (ties by index), then ``extra`` ones not among them."""
    ranked = np.argsort(-np.asarray(prediction.probabilities), kind="stable")[:k].tolist()
    return list(dict.fromkeys([*ranked, *extra]))


def compare_sheet(image_rgb: np.ndarray, prediction: Prediction, class_names: Sequence[str], k: int,
                  extra: Sequence[int] = (), *, tile: int = 224) -> np.ndarray:
    """One labelled overlay per compared class, side by side (BGR uint8).

    Args:
        image_rgb: The original image.
        prediction: A prediction holding the attention of every compared class
            (``Predictor.predict(..., compare=k, classes=extra)``).
        class_names: The model's class names.
        k: How many of the most probable classes.
        extra: Classes to show as well (``--class``).
        tile: Longest side of each tile in pixels.

    Raises:
        KeyError: The prediction lacks the attention of a compared class.
    """
    h, w = image_rgb.shape[:2]
    scale = tile / max(h, w)
    small = cv2.resize(image_rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    tiles = []
    for rank, c in enumerate(compare_classes(prediction, k, extra)):
        if c not in prediction.attention:
            raise KeyError(f"the prediction has no attention for class {c} ({class_names[c]})")
        lines = (class_names[c], f"p = {prediction.probabilities[c]:.1%}" + ("" if rank < k else " (chosen)"))
        tiles.append(_caption(overlay(small, prediction.attention_mean(c)), lines))
    return np.concatenate(tiles, axis=1)


def _caption(tile: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Write text lines at the top of a tile, white on a darkened band (readable on any heatmap)."""
    scale = max(0.3, tile.shape[1] / 520)
    step = int(20 * scale) + 4
    band = tile[: step * len(lines) + step // 2]
    band[:] = (band * 0.45).astype(np.uint8)
    for row, text in enumerate(lines):
        cv2.putText(tile, text, (4, step * (row + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return tile


def compare_path(heatmap_path: Path) -> Path:
    """Where the sheet of an image goes: beside its heatmap, ``NAME.compare.jpg`` for ``NAME.heatmap.jpg``."""
    name = heatmap_path.name  # the suffixes are equally long, so a name shortened to fit stays within limits
    stem = name[: -len(HEATMAP_SUFFIX)] if name.endswith(HEATMAP_SUFFIX) else heatmap_path.stem
    return heatmap_path.with_name(stem + COMPARE_SUFFIX)


def write_compare_sheet(path: Path, image_rgb: np.ndarray, prediction: Prediction, class_names: Sequence[str],
                        k: int, extra: Sequence[int] = ()) -> str:
    """Draw and write one sheet atomically; returns its path."""
    write_image(path, compare_sheet(image_rgb, prediction, class_names, k, extra))
    return str(path)
