"""The one image path: encoded bytes (or a decoded frame) -> the model's pixels, its size and a heatmap preview.

Every mode takes an image through ``model_input``: the folder run's decode workers, ``--detections``
crops, Ray's decode tasks, the inbox station and review's thumbnails. In order it does:

1. the header check: the size from the file's header, refused above ``MAX_PIXELS`` before any decode;
2. the pixel budget: the pixels being decoded by all threads together stay within ``DECODE_BUDGET``;
3. the decode at the reduced scale that is needed: a JPEG at the largest DCT reduction (1/2, 1/4, 1/8)
   that keeps the model's input size (whole images) or the smallest crop's (detections), and with
   heatmaps a preview whose long side is at least ``HEATMAP_PREVIEW_SIDE``;
4. the EXIF orientation (applied by the decoder: ``images.decode_image``).

Streams and videos, whose frames arrive decoded, enter at ``frame_input``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from promptcam.core.config import ModelConfig
from promptcam.core.errors import ImageError

from .crops import CROP_MARGIN, RUN_CONTEXT, CropContext, CropSquare, clip_box, crop_reduction, crop_square, cut_square
from .images import DECODE_BUDGET, check_dimensions, decode_image, full_size_of, is_jpeg, reduced_size, resize_for_model

# heatmaps are drawn on a JPEG decoded at a reduction that keeps its long side at least this (or the full
# photo when smaller): a 12 MP photo's overlay is 2000x1500, not 4000x3000, and costs a quarter of the decode
HEATMAP_PREVIEW_SIDE = 1000
MAX_PREVIEW_PIXELS = 50_000_000  # a preview kept for heatmaps is shrunk above this (memory of queued batches)


@dataclass
class ModelInput:
    """One image, ready for the model.

    Attributes:
        pixels: Model-size RGB uint8: [S, S, 3] for a whole image, [N, S, S, 3] for N crops.
        size: (height, width) of the full-size, EXIF-oriented image (not of a reduced decode).
        preview: The decode heatmaps are drawn on (None when not asked for).
        squares: With ``boxes``: the crop square of each box, in full-size pixels.
    """

    pixels: np.ndarray
    size: tuple[int, int]
    preview: np.ndarray | None = None
    squares: list[CropSquare] | None = None


def model_input(data: bytes | np.ndarray, name: str, config: ModelConfig, *,
                boxes: Sequence[Sequence[float]] | None = None, keep_preview: bool = False, reduce: bool = True,
                out: np.ndarray | None = None, context: Sequence[CropContext] | None = None,
                reduction_boxes: Sequence[Sequence[float]] | None = None) -> ModelInput:
    """Decode an image file's bytes once into what the model and the heatmaps need (steps in the module docstring).

    Args:
        data: The file's bytes.
        name: The image's name, for errors.
        config: The model's config (input size, interpolation).
        boxes: Normalised ``[x, y, w, h]`` detector boxes: the crops are returned instead of the whole
            image (an empty list decodes nothing and returns no crops).
        keep_preview: Also keep the heatmap preview.
        reduce: Allow a reduced JPEG decode.
        out: A [S, S, 3] uint8 slot of a batch buffer the whole image is resized into.
        context: With ``boxes``, each crop's margin and centre shift (training jitter); default the run's rule.
        reduction_boxes: The boxes whose smallest crop sets the JPEG reduction (default ``boxes``): training
            cuts one crop of a photo at the reduction the run uses for all of the photo's crops, so that a
            zero-jitter training crop is the run's crop byte for byte.

    Raises:
        ImageError: a damaged or refused header, or a file that does not decode (any decoder fault on
            hostile bytes becomes an ``ImageError`` naming the file).
    """
    width, height = check_dimensions(data, name)
    if boxes is not None and not boxes:
        size = config.img_size
        return ModelInput(np.empty((0, size, size, 3), np.uint8), (height, width), squares=[])
    contexts = list(context) if context is not None else [RUN_CONTEXT] * len(boxes or ())
    if boxes is not None and len(contexts) != len(boxes):
        raise ValueError(f"{len(contexts)} crop contexts for {len(boxes)} boxes")
    reduction = 1
    if reduce and is_jpeg(data):
        if boxes is None:
            reduction = frame_reduction(width, height, config.img_size,
                                        min_long_side=HEATMAP_PREVIEW_SIDE if keep_preview else 0)
        else:
            reduction = _crop_reduction(width, height, reduction_boxes or boxes, config.img_size, keep_preview)
    rw, rh = reduced_size(width, height, reduction)
    try:
        with DECODE_BUDGET.hold(rw * rh):
            rgb = decode_image(data, name, reduction=reduction, header=(width, height))
            full = full_size_of((width, height), rgb, reduction)
            preview = preview_of(rgb) if keep_preview else None
            if boxes is None:
                return ModelInput(resize_for_model(rgb, config, out), full, preview)
            scale = rgb.shape[1] / full[1]
            squares = [crop_square(b, full[1], full[0], c) for b, c in zip(boxes, contexts, strict=True)]
            crops = np.empty((len(boxes), config.img_size, config.img_size, 3), np.uint8)
            for i, square in enumerate(squares):
                resize_for_model(cut_square(rgb, square, scale), config, crops[i])
            return ModelInput(crops, full, preview, squares)
    except ImageError:
        raise
    except (cv2.error, MemoryError, ValueError, OSError) as exc:  # a decoder fault on hostile data: that file only
        raise ImageError(f"{name}: cannot decode image ({type(exc).__name__}: {str(exc).strip()[:200]})") from exc


def frame_input(rgb: np.ndarray, config: ModelConfig, *, keep_preview: bool = False) -> ModelInput:
    """A frame that arrived decoded (a camera stream, a video), as ``model_input`` returns a file."""
    preview = preview_of(rgb) if keep_preview else None
    return ModelInput(resize_for_model(rgb, config), (rgb.shape[0], rgb.shape[1]), preview)


def frame_reduction(width: int, height: int, model_size: int, *, min_long_side: int = 0) -> int:
    """The largest JPEG DCT reduction (1, 2, 4, 8) for a whole frame resized to the model's square input.

    Both sides must stay at or above ``model_size`` (each axis is resized to it), and the long side at or
    above ``min_long_side`` (the heatmap preview), or the full size when the photo is smaller.
    """
    long_side = max(width, height)
    for reduction in (8, 4, 2):
        if min(width, height) / reduction >= model_size and long_side / reduction >= min(min_long_side, long_side):
            return reduction
    return 1


def _crop_reduction(width: int, height: int, boxes: Sequence[Sequence[float]], size: int, keep_preview: bool) -> int:
    """The JPEG reduction for a photo's crops: its smallest crop stays at or above the model's size
    (the crop side is bounded below with the photo's shorter side, whatever its EXIF orientation),
    and with heatmaps the preview's long side at or above ``HEATMAP_PREVIEW_SIDE``."""
    smallest = min(max(clip_box(b)[2:]) for b in boxes) * min(width, height) * (1 + 2 * CROP_MARGIN)
    reduction = crop_reduction(smallest, size)
    long_side = max(width, height)
    while keep_preview and reduction > 1 and long_side / reduction < min(HEATMAP_PREVIEW_SIDE, long_side):
        reduction //= 2
    return reduction


def preview_of(rgb: np.ndarray) -> np.ndarray:
    """The decode a heatmap is drawn on, shrunk above ``MAX_PREVIEW_PIXELS`` (memory of queued batches)."""
    h, w = rgb.shape[:2]
    if h * w <= MAX_PREVIEW_PIXELS:
        return rgb
    scale = (MAX_PREVIEW_PIXELS / (h * w)) ** 0.5
    return cv2.resize(rgb, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
