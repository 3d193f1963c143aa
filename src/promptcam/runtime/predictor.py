"""``Predictor``: classify images and explain them, on whatever backend the model directory allows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from promptcam.core.config import ModelConfig
from promptcam.core.errors import ConfigError
from promptcam.core.manifest import Manifest, read_manifest
from promptcam.core.traits import HeadRanking

from .backends import Backend, create_backend
from .backends.base import TOP_OUTPUTS
from .images import read_image, resize_for_model
from .traits import TraitRanker


@dataclass
class ClassScore:
    index: int
    name: str
    probability: float


@dataclass
class Prediction:
    """Everything the runtime knows about one image.

    Attributes:
        logits / probabilities: [C].
        top_k: Best classes, most probable first.
        attention: class index -> per-head maps [heads, grid, grid] (softmax attention of that
            class's prompt over the patches).
        image_size: (height, width) of the original image, to map heatmaps back.
        traits: class index -> greedy head ranking (when asked for).
    """

    logits: np.ndarray
    probabilities: np.ndarray
    top_k: list[ClassScore]
    attention: dict[int, np.ndarray]
    image_size: tuple[int, int]
    traits: dict[int, HeadRanking] = field(default_factory=dict)

    @property
    def top1(self) -> ClassScore:
        return self.top_k[0]

    def attention_mean(self, class_index: int) -> np.ndarray:
        """Head-mean attention map [grid, grid]."""
        return self.attention[class_index].mean(axis=0)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


class Predictor:
    """Classifier + explainer over an exported model directory.

    Args:
        model_dir: Directory written by ``promptcam-export`` (manifest.json, model.onnx ...).
        engine: ``auto`` | ``ort`` | ``ort-cpu`` | ``ort-cuda`` | ``ort-trt`` | ``trt``.
        batch_size: Images per backend call.
        threads: ORT intra-op threads (default: the cores this process may use).
    """

    def __init__(
        self,
        model_dir: str | Path,
        engine: str = "auto",
        *,
        batch_size: int = 8,
        threads: int | None = None,
        device_id: int = 0,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest: Manifest = read_manifest(self.model_dir)
        self.config: ModelConfig = self.manifest.config
        self.backend: Backend = create_backend(self.model_dir, self.manifest, engine, threads=threads,
                                               device_id=device_id)
        limit = self.backend.max_batch
        self.batch_size = min(batch_size, limit) if limit else batch_size
        self._ranker: TraitRanker | None = None

    @property
    def engine_description(self) -> str:
        return f"{self.backend.name}: {self.backend.description}"

    @property
    def class_names(self) -> list[str]:
        return self.config.class_names

    def class_index(self, name_or_index: str | int) -> int:
        """Class index from a name (exact) or an index."""
        if isinstance(name_or_index, int) or str(name_or_index).isdigit():
            index = int(name_or_index)
            if not 0 <= index < self.config.num_classes:
                raise ConfigError(f"class index {index} is outside 0..{self.config.num_classes - 1}")
            return index
        try:
            return self.class_names.index(str(name_or_index))
        except ValueError:
            raise ConfigError(f"unknown class {name_or_index!r}") from None

    def prepare(self, image: np.ndarray | str | Path) -> tuple[np.ndarray, tuple[int, int]]:
        """A path or RGB uint8 array -> (model-size pixels, original (h, w))."""
        rgb = read_image(image) if isinstance(image, str | Path) else np.asarray(image, dtype=np.uint8)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ConfigError(f"expected an RGB image [H, W, 3], got shape {rgb.shape}")
        return resize_for_model(rgb, self.config), (rgb.shape[0], rgb.shape[1])

    def predict(
        self,
        images: Sequence[np.ndarray | str | Path],
        *,
        top_k: int = 5,
        classes: Sequence[str | int] | None = None,
        traits: int = 0,
    ) -> list[Prediction]:
        """Classify and explain images (paths or RGB uint8 arrays of any size).

        Args:
            images: The images.
            top_k: How many classes to list per image.
            classes: Classes whose attention to return (default: each image's top-1).
            traits: Rank trait heads of those classes and keep this many (0: no ranking).

        Returns:
            One ``Prediction`` per image.
        """
        prepared = [self.prepare(image) for image in images]
        results: list[Prediction] = []
        for start in range(0, len(prepared), self.batch_size):
            chunk = prepared[start:start + self.batch_size]
            pixels = np.stack([p for p, _ in chunk])
            results += self.predict_pixels(pixels, [s for _, s in chunk], top_k=top_k, classes=classes,
                                           traits=traits)
        return results

    def predict_pixels(
        self,
        pixels: np.ndarray,
        image_sizes: Sequence[tuple[int, int]],
        *,
        top_k: int = 5,
        classes: Sequence[str | int] | None = None,
        traits: int = 0,
    ) -> list[Prediction]:
        """Like ``predict`` for an already resized uint8 batch [B, S, S, 3] (at most ``batch_size``)."""
        wanted = [self.class_index(c) for c in classes] if classes else None
        # explaining the predicted class only: fetch its slices, not every class's maps
        top_only = wanted is None and set(TOP_OUTPUTS) <= set(self.backend.output_names)
        if top_only:
            outputs = ("logits", "top_class", "top_attention") + (("top_head_context", "value_mean") if traits else ())
        else:
            outputs = ("logits", "attention") + (("head_context", "value_mean") if traits else ())
        out = self.backend.infer(pixels, outputs)
        probabilities = softmax(out["logits"].astype(np.float64))
        grid = self.config.grid_size
        results = []
        for i, size in enumerate(image_sizes):
            order = np.argsort(-probabilities[i], kind="stable")[:top_k]
            top = [ClassScore(int(j), self.class_names[j], float(probabilities[i, j])) for j in order]
            if top_only:
                chosen = [int(out["top_class"][i])]
                attention = {chosen[0]: out["top_attention"][i].reshape(-1, grid, grid)}
            else:
                chosen = wanted or [top[0].index]
                attention = {c: out["attention"][i, c].reshape(-1, grid, grid) for c in chosen}
            prediction = Prediction(out["logits"][i], probabilities[i], top, attention, (int(size[0]), int(size[1])))
            if traits:
                ranker = self.trait_ranker()
                for c in chosen:
                    context = out["top_head_context"][i] if top_only else out["head_context"][i, c]
                    prediction.traits[c] = ranker.rank(out["logits"][i], context, out["value_mean"][i], c, k=traits)
            results.append(prediction)
        return results

    def trait_ranker(self) -> TraitRanker:
        if self._ranker is None:
            self._ranker = TraitRanker(self.manifest.file(self.model_dir, "trait_head"),
                                       device_id=self.backend.device_id if self.backend.on_gpu else None)
        return self._ranker

    def close(self) -> None:
        self.backend.close()
