""""Why this class and not that one": the predicted class's map beside the runners-up's (and a chosen class's).

Each tile is the head-mean attention of one class's prompt (as ``promptcam-run`` draws the heatmap),
over the image, labelled with the class name and its probability; tiles go most probable first,
then any asked-for class that is not among them (the true class of a misclassified image, say).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .heatmap import caption, overlay, thumbnail, write_image
from .prediction import Prediction, ranked_classes

COMPARE_SUFFIX = ".compare.jpg"


def compare_classes(prediction: Prediction, k: int, extra: Sequence[int] = ()) -> list[int]:
    """The classes of a sheet: the ``k`` most probable (ties by index), then ``extra`` ones not among them."""
    return list(dict.fromkeys([*ranked_classes(prediction.probabilities, k), *extra]))


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
    small = thumbnail(image_rgb, tile)
    tiles = []
    for rank, c in enumerate(compare_classes(prediction, k, extra)):
        if c not in prediction.attention:
            raise KeyError(f"the prediction has no attention for class {c} ({class_names[c]})")
        lines = (class_names[c], f"p = {prediction.probabilities[c]:.1%}" + ("" if rank < k else " (chosen)"))
        tiles.append(caption(overlay(small, prediction.attention_mean(c)), lines))
    return np.concatenate(tiles, axis=1)


def write_compare_sheet(path: Path, image_rgb: np.ndarray, prediction: Prediction, class_names: Sequence[str],
                        k: int, extra: Sequence[int] = ()) -> str:
    """Draw and write one sheet atomically; returns its path."""
    write_image(path, compare_sheet(image_rgb, prediction, class_names, k, extra))
    return str(path)
