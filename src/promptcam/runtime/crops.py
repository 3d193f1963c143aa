"""Square crops around detector boxes, and their heatmaps drawn back onto the photo.

Crop rule (the MegaDetector-family square crop, as ``megadetector.classification`` crops with
``square_crops``, with a margin and centred padding):

1. The box ``[x_min, y_min, width, height]`` (normalised to the EXIF-oriented photo) is clipped to
   ``[0, 1]`` and scaled to pixels of the full-size photo.
2. The crop is the square centred on the box centre with side ``max(width, height) * (1 + 2 *
   CROP_MARGIN)``: the longer side plus 10 % of it on each side, so the whole animal and a little
   context are in it and the animal is never stretched.
3. The square is not shifted into the photo: where it leaves the photo it is padded with zeros
   (black), so the animal stays centred, as the detector saw it.
4. The square is resized to the model's input like a whole image (``resize_for_model``: area
   averaging when shrinking, the model's interpolation when enlarging).

Training (``promptcam train --detections``) cuts its crops with this same rule; its augmentation only
moves the margin of step 2 and the square's centre (``CropContext``), so at zero jitter a training crop
is the run's crop, byte for byte.

Crops are cut from one decode of the photo (``decode_image`` at the JPEG reduction that
``crop_reduction`` allows), so a photo with ten animals is decoded once.

A box with no pixels in the photo (entirely outside it, or ending on its edge, so nothing is left
after clipping) or less than ``MIN_BOX_PIXELS`` of them is not cropped: its crop would be black padding
(or a smear of one pixel), and a class read from it would be noise. ``box_failure`` says why; the
detection is recorded as failed with that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .heatmap import normalise_map

CROP_MARGIN = 0.1  # of the box's longer side, on each side
MIN_BOX_PIXELS = 1.0  # a box's area inside the photo, in full-size pixels, below which it is not classified


@dataclass(frozen=True)
class CropSquare:
    """A crop in full-size photo pixels: left, top, side (floats; may extend past the photo)."""

    left: float
    top: float
    side: float


def clip_box(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    """A normalised ``[x, y, w, h]`` clipped to the photo ``[0, 1]``."""
    x, y, w, h = (float(v) for v in bbox)
    x0, y0 = min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)
    x1, y1 = min(max(x + w, 0.0), 1.0), min(max(y + h, 0.0), 1.0)
    return x0, y0, x1 - x0, y1 - y0


def box_failure(bbox: Sequence[float], width: int | None = None, height: int | None = None) -> str | None:
    """Why a box cannot be classified, or None.

    Without the photo's size only a box with nothing inside the photo is known (``"box outside the
    photo"``); with it (``width`` x ``height``, any EXIF orientation: the area is the same), also a box
    covering less than ``MIN_BOX_PIXELS`` of it.
    """
    _, _, w, h = clip_box(bbox)
    if not (w > 0 and h > 0):  # also NaN
        return "box outside the photo"
    if width is not None and height is not None:
        area = w * width * h * height
        if area < MIN_BOX_PIXELS:
            return f"box covers {area:.2g} pixel(s) of the photo, less than one pixel"
    return None


@dataclass(frozen=True)
class CropContext:
    """How much context a crop square takes around its box: the run's rule by default.

    Attributes:
        margin: Of the box's longer side, on each side (the run uses ``CROP_MARGIN``).
        shift_x, shift_y: The square's centre moved off the box's centre, in units of the box's
            longer side (training jitter; the run uses 0).
    """

    margin: float = CROP_MARGIN
    shift_x: float = 0.0
    shift_y: float = 0.0


RUN_CONTEXT = CropContext()


def crop_square(bbox: Sequence[float], width: int, height: int, context: CropContext = RUN_CONTEXT) -> CropSquare:
    """The crop square of a normalised box in a ``width`` x ``height`` photo (rule in the module docstring)."""
    x, y, w, h = clip_box(bbox)
    longer = max(w * width, h * height, 1.0)
    side = longer * (1 + 2 * context.margin)
    cx = (x + w / 2) * width + context.shift_x * longer
    cy = (y + h / 2) * height + context.shift_y * longer
    return CropSquare(cx - side / 2, cy - side / 2, side)


def square_pixels(square: CropSquare, scale: float) -> tuple[int, int, int]:
    """(left, top, side) in the pixels of a decode ``scale`` times the full size."""
    side = max(1, round(square.side * scale))
    return round(square.left * scale), round(square.top * scale), side


def cut_square(image: np.ndarray, square: CropSquare, scale: float) -> np.ndarray:
    """The crop from a decode of the photo at ``scale``, zero-padded where it leaves the photo.

    A crop inside the photo is a view (no copy); the caller resizes it into its batch slot.
    """
    left, top, side = square_pixels(square, scale)
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(0, left), max(0, top), min(w, left + side), min(h, top + side)
    if (x0, y0, x1, y1) == (left, top, left + side, top + side):
        return image[top:top + side, left:left + side]
    out = np.zeros((side, side, 3), np.uint8)
    if x1 > x0 and y1 > y0:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = image[y0:y1, x0:x1]
    return out


def crop_reduction(min_region_side: float, model_size: int) -> int:
    """The largest JPEG reduction (1, 2, 4, 8) that keeps a region of ``min_region_side`` full-size
    pixels at or above the model's input size; a region already smaller than the model's input
    needs every pixel (1)."""
    for reduction in (8, 4, 2):
        if min_region_side / reduction >= model_size:
            return reduction
    return 1


@dataclass(frozen=True)
class BoxHeat:
    """One classified crop to draw: its box, its crop square, its head-mean attention map and a label."""

    bbox: Sequence[float]
    square: CropSquare
    attention: np.ndarray
    label: str


def overlay_boxes(image_rgb: np.ndarray, full_size: tuple[int, int], boxes: Sequence[BoxHeat], *,
                  alpha: float = 0.5) -> np.ndarray:
    """All crops' attention on one photo: each map is stretched over its crop square and drawn inside
    its box only; outside the boxes the photo is unchanged. Returns BGR uint8 of ``image_rgb``'s size.

    Args:
        image_rgb: The photo as decoded (full size, or a reduced preview of it).
        full_size: (height, width) of the full-size photo the boxes and squares refer to.
    """
    h, w = image_rgb.shape[:2]
    scale = w / full_size[1]
    out = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    for box in boxes:
        left, top, side = square_pixels(box.square, scale)
        heat = cv2.resize(normalise_map(box.attention), (side, side), interpolation=cv2.INTER_CUBIC)
        x, y, bw, bh = clip_box(box.bbox)
        x0, y0 = int(x * w), int(y * h)
        x1, y1 = max(x0 + 1, min(w, round((x + bw) * w))), max(y0 + 1, min(h, round((y + bh) * h)))
        x1, y1 = min(x1, w), min(y1, h)
        # the box's part of the square (the box lies inside its square by construction)
        sx0, sy0 = max(0, x0 - left), max(0, y0 - top)
        sx1, sy1 = min(side, x1 - left), min(side, y1 - top)
        if sx1 <= sx0 or sy1 <= sy0:
            continue
        region = heat[sy0:sy1, sx0:sx1]
        colour = cv2.applyColorMap(np.clip(region * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
        ty0, tx0 = top + sy0, left + sx0
        target = out[ty0:ty0 + region.shape[0], tx0:tx0 + region.shape[1]]
        target[...] = cv2.addWeighted(colour, alpha, target, 1 - alpha, 0)
        thickness = max(1, round(max(h, w) / 500))
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), thickness)
        scale_text = max(0.4, max(h, w) / 1600)
        cv2.putText(out, box.label, (x0 + 2, max(y0 - 4, int(14 * scale_text))), cv2.FONT_HERSHEY_SIMPLEX,
                    scale_text, (255, 255, 255), max(1, thickness), cv2.LINE_AA)
    return out
