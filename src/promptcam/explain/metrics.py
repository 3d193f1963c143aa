"""Faithfulness of saliency maps: RISE-style insertion/deletion AUC, pointing game, energy in a mask.

Torch-free (numpy + OpenCV): the thousands of perturbed images go, batched, through any *scorer*,
a function ``uint8 [N, S, S, 3] -> class probabilities [N, C]`` (the exported model on ONNX
Runtime: ``predictor_scorer``; a hand-made function in the tests). The baselines it is compared
with (Grad-CAM, rollout ..., on PyTorch) are in ``promptcam.explain.baselines``.

Protocol (Petsiuk et al., RISE, BMVC 2018), on the image at the model's input size S x S:

* **Upsampling.** A saliency map [g, g] (one value per patch) is resized to S x S with bilinear
  interpolation (``cv2.resize``, ``INTER_LINEAR``, half-pixel centres); every method's map goes
  through the same resize, so the methods differ only in their maps.
* **Order.** Pixels are ranked by upsampled saliency, highest first; ties (flat regions, a
  Grad-CAM clipped at zero) are broken by a fixed random permutation (``seed``), not raster order.
* **Baseline.** A Gaussian-blurred copy of the image (``blur_sigma`` x S pixels of sigma). The
  blurred copy must carry no class evidence: with the default 0.25 (16 px on the 64-px synthetic
  world) the demo model gives the true class 4.5 % on it (chance 6 %); at RISE's 5 px on 224 px
  (0.022) it still gives 96 %, and every curve stays flat near 1.
* **Steps.** ``steps`` equal steps of ceil(S^2 / steps) pixels; a curve has ``steps + 1`` points,
  from 0 % to 100 % of the pixels. *Insertion* starts from the blurred copy and reveals the
  original's pixels in saliency order; *deletion* starts from the original and replaces them
  with the blurred copy's pixels.
* **Score.** The probability (softmax) of the explained class, the model's prediction on the
  unperturbed image. AUC: trapezoidal rule over the pixel fraction in [0, 1]. Insertion: higher is
  better; deletion: lower is better.

On images with ground-truth part masks: the **pointing game** (is the maximum of the upsampled map
inside the mask; no tolerance) and the **energy in the mask** (share of the min-max normalised
upsampled map's mass inside the mask; Score-CAM's energy-based pointing game).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from promptcam.core.errors import ConfigError

Scorer = Callable[[np.ndarray], np.ndarray]
T = TypeVar("T", str, Path)
METRICS = ("insertion", "deletion", "pointing_game", "energy_in_mask")
METRIC_HEADINGS = {"insertion": "insertion ↑", "deletion": "deletion ↓", "pointing_game": "pointing game ↑",
                   "energy_in_mask": "energy in traits ↑"}


@dataclass(frozen=True)
class Protocol:
    """How the perturbation curves are made (see the module docstring).

    Attributes:
        steps: Steps from 0 to 100 % of the pixels (the curve has ``steps + 1`` points).
        blur_sigma: Gaussian sigma of the baseline as a fraction of the image side.
        batch_size: Perturbed images per scorer call.
        seed: Seed of the tie-breaking permutation.
    """

    steps: int = 32
    blur_sigma: float = 0.25
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.blur_sigma <= 0:
            raise ConfigError("faithfulness: steps and batch size must be >= 1 and the blur sigma > 0")

    def describe(self, size: int) -> dict[str, Any]:
        """The protocol as written into every table (JSON and markdown)."""
        return {**asdict(self), "image_size": size, "blur_sigma_px": round(self.blur_sigma * size, 2),
                "pixels_per_step": math.ceil(size * size / self.steps), "score": "softmax probability of the "
                "predicted class", "baseline": "Gaussian-blurred copy", "upsampling": "bilinear (cv2 INTER_LINEAR)",
                "auc": "trapezoid over the pixel fraction [0, 1]"}


def blurred_copy(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """The blurred baseline of a uint8 [S, S, 3] image (reflected borders)."""
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma_px, sigmaY=sigma_px, borderType=cv2.BORDER_REFLECT)


def upsample_saliency(saliency: np.ndarray, size: int) -> np.ndarray:
    """A [g, g] map -> float32 [size, size] by bilinear interpolation (a map already that size is kept)."""
    grid = np.asarray(saliency, dtype=np.float32)
    if grid.ndim != 2:
        raise ConfigError(f"a saliency map must be 2-D, got shape {grid.shape}")
    if grid.shape == (size, size):
        return grid
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_LINEAR)


def pixel_order(saliency: np.ndarray, tie_break: np.ndarray) -> np.ndarray:
    """Flat pixel indices, most salient first; equal values ordered by ``tie_break`` (a permutation)."""
    flat = saliency.reshape(-1).astype(np.float64)
    return np.lexsort((tie_break, -flat))


def perturbed_images(image: np.ndarray, baseline: np.ndarray, order: np.ndarray, steps: int, *,
                     insertion: bool) -> np.ndarray:
    """The ``steps + 1`` images of one curve, uint8 [steps + 1, S, S, 3].

    Step i has the first min(i * ceil(S^2 / steps), S^2) pixels of ``order`` taken from the original
    (insertion) or from the baseline (deletion); the rest from the other one.
    """
    pixels = image.shape[0] * image.shape[1]
    per_step = math.ceil(pixels / steps)
    rank = np.empty(pixels, np.int64)
    rank[order] = np.arange(pixels)
    counts = np.minimum(np.arange(steps + 1) * per_step, pixels)
    changed = (rank[None, :] < counts[:, None]).reshape(steps + 1, *image.shape[:2], 1)
    first, second = (image, baseline) if insertion else (baseline, image)
    return np.where(changed, first[None], second[None])


def auc(curve: np.ndarray) -> float:
    """Area under a curve sampled at equal steps over [0, 1] (trapezoidal rule)."""
    y = np.asarray(curve, dtype=np.float64)
    if y.size < 2:
        raise ConfigError("a curve needs at least two points")
    return float((y.sum() - 0.5 * (y[0] + y[-1])) / (y.size - 1))


def score_batched(scorer: Scorer, images: np.ndarray, class_index: int, batch_size: int) -> np.ndarray:
    """The probability of ``class_index`` for each image, in scorer calls of ``batch_size``."""
    out = [np.asarray(scorer(images[i:i + batch_size]))[:, class_index] for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float64)


def curves_for_image(scorer: Scorer, image: np.ndarray, class_index: int, maps: Mapping[str, np.ndarray],
                     protocol: Protocol) -> dict[str, dict[str, np.ndarray]]:
    """Insertion and deletion curves of every method's map on one image, scored in shared batches.

    Args:
        scorer: uint8 [N, S, S, 3] -> probabilities [N, C].
        image: uint8 [S, S, 3] at the model's input size.
        class_index: The explained class.
        maps: Method name -> saliency map ([g, g] or [S, S]).
        protocol: Steps, blur, batch size, tie-break seed.

    Returns:
        Method -> {"insertion": curve, "deletion": curve}, each of ``steps + 1`` probabilities.
    """
    size = image.shape[0]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[1] != size or image.shape[2] != 3:
        raise ConfigError(f"expected a square uint8 RGB image at the model size, got {image.dtype} {image.shape}")
    baseline = blurred_copy(image, protocol.blur_sigma * size)
    tie_break = np.random.default_rng(protocol.seed).permutation(size * size)
    stacks = []
    for saliency in maps.values():
        order = pixel_order(upsample_saliency(saliency, size), tie_break)
        stacks += [perturbed_images(image, baseline, order, protocol.steps, insertion=True),
                   perturbed_images(image, baseline, order, protocol.steps, insertion=False)]
    scores = score_batched(scorer, np.concatenate(stacks), class_index, protocol.batch_size)
    scores = scores.reshape(len(maps), 2, protocol.steps + 1)
    return {name: {"insertion": scores[i, 0], "deletion": scores[i, 1]} for i, name in enumerate(maps)}


def pointing_hit(saliency: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the maximum of the map, upsampled to the mask's size, lies inside the mask."""
    full = upsample_saliency(saliency, mask.shape[0])
    return bool(mask.reshape(-1)[int(np.argmax(full))])


def energy_in_mask(saliency: np.ndarray, mask: np.ndarray) -> float:
    """Share of the min-max normalised upsampled map's mass inside the mask (a flat map: the mask's area)."""
    full = upsample_saliency(saliency, mask.shape[0]).astype(np.float64)
    span = full.max() - full.min()
    full = (full - full.min()) / span if span > 0 else np.ones_like(full)
    return float(full[mask.astype(bool)].sum() / full.sum())


def spread_over_classes(paths: Sequence[T], limit: int) -> list[T]:
    """The first ``limit`` of ``paths`` taken round robin over their parent folders (the classes), in order."""
    groups: dict[str, list[T]] = {}
    for path in paths:
        groups.setdefault(Path(path).parent.name, []).append(path)
    chosen: list[T] = []
    for i in range(max((len(g) for g in groups.values()), default=0)):
        chosen += [g[i] for g in groups.values() if i < len(g)]
    return chosen[:limit]


def random_map(grid: int, rng: np.random.Generator) -> np.ndarray:
    """The random baseline: uniform noise on the patch grid (upsampled like every other map)."""
    return rng.random((grid, grid)).astype(np.float32)


@dataclass
class FaithfulnessTable:
    """Per-method, per-image metric values and their Table-1 summary (mean ± standard error)."""

    protocol: dict[str, Any]
    title: str = "faithfulness"
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, method: str, metric: str, value: float) -> None:
        self.values.setdefault(method, {}).setdefault(metric, []).append(float(value))

    def add_image(self, curves: Mapping[str, Mapping[str, np.ndarray]], maps: Mapping[str, np.ndarray],
                  mask: np.ndarray | None = None) -> None:
        """Record one image: AUCs of its curves and, with a ground-truth mask, pointing game and energy."""
        for method, pair in curves.items():
            self.add(method, "insertion", auc(pair["insertion"]))
            self.add(method, "deletion", auc(pair["deletion"]))
            if mask is not None:
                self.add(method, "pointing_game", pointing_hit(maps[method], mask))
                self.add(method, "energy_in_mask", energy_in_mask(maps[method], mask))

    def summary(self, method: str, metric: str) -> dict[str, float] | None:
        values = np.asarray(self.values.get(method, {}).get(metric, []), dtype=np.float64)
        if values.size == 0:
            return None
        se = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else 0.0
        return {"mean": float(values.mean()), "se": se, "n": int(values.size)}

    def metrics(self) -> list[str]:
        return [m for m in METRICS if any(m in per for per in self.values.values())]

    def to_json(self) -> dict[str, Any]:
        images = max((len(v) for per in self.values.values() for v in per.values()), default=0)
        return {"title": self.title, "images": images, "protocol": self.protocol,
                "rows": [{"method": method, **{m: self.summary(method, m) for m in self.metrics()}}
                         for method in self.values]}

    def to_markdown(self) -> str:
        data = self.to_json()
        metrics = self.metrics()
        p = self.protocol
        lines = [f"**{self.title}** — {data['images']} images; RISE-style, {p.get('steps')} steps of "
                 f"{p.get('pixels_per_step')} px, baseline: Gaussian blur sigma {p.get('blur_sigma_px')} px, "
                 "maps upsampled bilinearly to the input; mean ± standard error", "",
                 "| method | " + " | ".join(METRIC_HEADINGS[m] for m in metrics) + " |",
                 "|---|" + "---|" * len(metrics)]
        for row in data["rows"]:
            cells = [f"{row[m]['mean']:.3f} ± {row[m]['se']:.3f}" if row[m] else "–" for m in metrics]
            lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def predictor_scorer(predictor: Any) -> Scorer:
    """A scorer on an exported model: its backend's logits, softmaxed (batches split to the backend's limit).

    Args:
        predictor: A ``promptcam.runtime.Predictor``.
    """
    from promptcam.core.iospec import LOGITS
    from promptcam.runtime.prediction import softmax

    limit = predictor.backend.max_batch

    def score(pixels: np.ndarray) -> np.ndarray:
        step = min(len(pixels), limit) if limit else len(pixels)
        logits = [predictor.backend.infer(np.ascontiguousarray(pixels[i:i + step]), (LOGITS,))[LOGITS]
                  for i in range(0, len(pixels), step)]
        return softmax(np.concatenate(logits).astype(np.float64))

    return score


def prompt_cam_maps(predictor: Any, pixels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Predicted classes and their Prompt-CAM maps exactly as ``promptcam-run`` draws them.

    The run's path: ``predict_pixels`` without ``classes`` (the predicted class's attention) and
    ``Prediction.attention_mean`` (head mean, [grid, grid]).

    Returns:
        Predicted class per image [B] and one [grid, grid] map per image.
    """
    classes, maps = [], []
    for start in range(0, len(pixels), predictor.batch_size):
        chunk = pixels[start:start + predictor.batch_size]
        sizes: Sequence[tuple[int, int]] = [chunk.shape[1:3]] * len(chunk)
        for prediction in predictor.predict_pixels(chunk, sizes, top_k=1):
            explained = next(iter(prediction.attention))
            classes.append(explained)
            maps.append(prediction.attention_mean(explained))
    return np.asarray(classes, np.int64), maps
