"""``Predictor``: classify images and explain them, on whatever backend the model directory allows."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from promptcam.core.architecture import int8_architecture_warning
from promptcam.core.config import ModelConfig
from promptcam.core.errors import ConfigError, ManifestError
from promptcam.core.iospec import (
    ATTENTION,
    HEAD_CONTEXT,
    LOGITS,
    TOP_ATTENTION,
    TOP_CLASS,
    TOP_HEAD_CONTEXT,
    TOP_OUTPUTS,
    VALUE_MEAN,
)
from promptcam.core.manifest import Manifest, read_manifest

from .backends import Backend, create_backend
from .backends.checks import check_model_files
from .images import read_image, resize_for_model
from .prediction import DEFAULT_TOP_K, ClassScore, Prediction, ranked_classes, softmax
from .traits import TraitRanker


class Predictor:
    """Classifier + explainer over an exported model directory.

    Construction loads and checks everything before the first image: ``model.onnx`` (or the
    TensorRT plan) and ``trait_head.onnx`` must carry the manifest's config in their metadata and
    have the tensors ``iospec`` declares for it; any difference is one ``ManifestError`` and nothing
    stays loaded. A context manager: leaving the ``with`` frees the backend.

    Args:
        model_dir: Directory written by ``promptcam-export`` (manifest.json, model.onnx ...).
        engine: ``auto`` | ``ort`` | ``ort-cpu`` | ``ort-cuda`` | ``ort-trt`` | ``trt``.
        batch_size: Images per backend call.
        threads: ORT intra-op threads (default: the cores this process may use).
        server: A ``promptcam serve`` URL (``http://HOST:PORT`` / ``grpc://HOST:PORT``): the model runs there,
            the rest here; its manifest must equal ``model_dir``'s (the trait head stays local).
        server_wait: Seconds a lost server is retried before ``ServerUnavailableError``.
    """

    def __init__(
        self,
        model_dir: str | Path,
        engine: str = "auto",
        *,
        batch_size: int = 8,
        threads: int | None = None,
        device_id: int = 0,
        server: str | None = None,
        server_wait: float = 60.0,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.manifest: Manifest = read_manifest(self.model_dir)
        self.config: ModelConfig = self.manifest.config
        gates = self.manifest.validation.get("int8_gates") or {}
        unvalidated = int8_architecture_warning(self.manifest.precision, self.manifest.validation, str(self.model_dir))
        if gates.get("forced"):  # promptcam-export --force wrote it below its quality gates: say so at every load
            print(f"WARNING: {self.model_dir}: int8 model exported with --force; it misses its quality gates: "
                  + "; ".join(gates.get("failed", [])), file=sys.stderr)
        elif unvalidated:  # int8 kernels differ between architectures: gates from another one prove nothing here
            print(unvalidated, file=sys.stderr)
        for role in self.manifest.files:  # every listed file is a plain name inside the directory, and exists
            self.manifest.file(self.model_dir, role)
        trait_head_path = self.manifest.file(self.model_dir, "trait_head")
        self.backend: Backend = create_backend(self.model_dir, self.manifest, engine, threads=threads,
                                               device_id=device_id, server=server, server_wait=server_wait)
        try:
            self._ranker = self._load_trait_ranker(trait_head_path)
            main_file = self.manifest.files["engine" if self.backend.name == "trt" else "model"]
            check_model_files(self.model_dir, self.manifest, self.backend, self._ranker.session,
                              model_file=main_file, trait_head_file=trait_head_path.name)
        except BaseException:
            self.backend.close()  # nothing stays half-loaded
            raise
        limit = self.backend.max_batch
        self.batch_size = min(batch_size, limit) if limit else batch_size

    def _load_trait_ranker(self, path: Path) -> TraitRanker:
        try:
            return TraitRanker(path, device_id=self.backend.device_id if self.backend.on_gpu else None)
        except Exception as exc:  # ORT raises its own exception types for unreadable files
            raise ManifestError(f"{path}: ONNX Runtime cannot load the trait head: {exc}") from exc

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
        top_k: int = DEFAULT_TOP_K,
        classes: Sequence[str | int] | None = None,
        traits: int = 0,
        compare: int = 0,
    ) -> list[Prediction]:
        """Classify and explain images (paths or RGB uint8 arrays of any size).

        Args:
            images: The images.
            top_k: How many classes to list per image.
            classes: Classes whose attention to return (default: each image's top-1).
            traits: Rank trait heads of those classes and keep this many (0: no ranking).
            compare: Also return the attention of each image's ``compare`` most probable classes (after
                ``classes``, whose first stays the explained one), from the same inference; traits are
                then ranked for the explained class only.

        Returns:
            One ``Prediction`` per image.
        """
        prepared = [self.prepare(image) for image in images]
        results: list[Prediction] = []
        for start in range(0, len(prepared), self.batch_size):
            chunk = prepared[start:start + self.batch_size]
            pixels = np.stack([p for p, _ in chunk])
            results += self.predict_pixels(pixels, [s for _, s in chunk], top_k=top_k, classes=classes,
                                           traits=traits, compare=compare)
        return results

    def predict_pixels(
        self,
        pixels: np.ndarray,
        image_sizes: Sequence[tuple[int, int]],
        *,
        top_k: int = DEFAULT_TOP_K,
        classes: Sequence[str | int] | None = None,
        traits: int = 0,
        compare: int = 0,
    ) -> list[Prediction]:
        """Like ``predict`` for an already resized uint8 batch [B, S, S, 3] (at most ``batch_size``): a NumPy
        array, or a ``gpu_decode.DeviceBatch`` already in the backend's GPU memory (``--decode gpu``)."""
        wanted = [self.class_index(c) for c in classes] if classes else None
        # explaining the predicted class only: fetch its slices, not every class's maps
        top_only = wanted is None and not compare and set(TOP_OUTPUTS) <= set(self.backend.output_names)
        if top_only:
            outputs = (LOGITS, TOP_CLASS, TOP_ATTENTION) + ((TOP_HEAD_CONTEXT, VALUE_MEAN) if traits else ())
        else:
            outputs = (LOGITS, ATTENTION) + ((HEAD_CONTEXT, VALUE_MEAN) if traits else ())
        device_infer = getattr(pixels, "infer", None)  # a DeviceBatch binds its GPU memory itself
        out = device_infer(self.backend, outputs) if device_infer else self.backend.infer(pixels, outputs)
        probabilities = softmax(out[LOGITS].astype(np.float64))
        grid = self.config.grid_size
        results = []
        for i, size in enumerate(image_sizes):
            order = ranked_classes(probabilities[i], top_k)
            top = [ClassScore(int(j), self.class_names[j], float(probabilities[i, j])) for j in order]
            if top_only:
                chosen = [int(out[TOP_CLASS][i])]
                attention = {chosen[0]: out[TOP_ATTENTION][i].reshape(-1, grid, grid)}
            else:
                chosen = wanted or [top[0].index]
                if compare:  # the runners-up, most probable first, after the asked-for classes
                    ranked = ranked_classes(probabilities[i], compare)
                    chosen = list(dict.fromkeys([*chosen, *ranked]))
                attention = {c: out[ATTENTION][i, c].reshape(-1, grid, grid) for c in chosen}
            prediction = Prediction(out[LOGITS][i], probabilities[i], top, attention, (int(size[0]), int(size[1])))
            if traits:
                ranker = self.trait_ranker()
                for c in chosen[:1] if compare else chosen:
                    context = out[TOP_HEAD_CONTEXT][i] if top_only else out[HEAD_CONTEXT][i, c]
                    prediction.traits[c] = ranker.rank(out[LOGITS][i], context, out[VALUE_MEAN][i], c, k=traits)
            results.append(prediction)
        return results

    def predict_batched(self, pixels: np.ndarray, *, top_k: int = DEFAULT_TOP_K,
                        classes: Sequence[str | int] | None = None) -> list[Prediction]:
        """``predict_pixels`` for any number of model-size images [N, S, S, 3] (detector crops), in backend batches."""
        size = self.config.img_size
        predictions: list[Prediction] = []
        for start in range(0, len(pixels), self.batch_size):
            part = pixels[start:start + self.batch_size]
            predictions += self.predict_pixels(part, [(size, size)] * len(part), top_k=top_k, classes=classes)
        return predictions

    def compare(self, image: np.ndarray | str | Path, k: int = 3, *,
                classes: Sequence[str | int] = ()) -> tuple[Prediction, np.ndarray]:
        """"Why this class and not that one": the maps of the top ``k`` classes and of ``classes``, one inference.

        Returns:
            The prediction (attention of every shown class) and the sheet, BGR uint8: one overlay per
            class, most probable first, then the asked-for classes, each labelled with name and probability.
        """
        from .compare import compare_sheet

        rgb = read_image(image) if isinstance(image, str | Path) else np.asarray(image, dtype=np.uint8)
        prediction = self.predict([rgb], top_k=k, classes=list(classes) or None, compare=k)[0]
        return prediction, compare_sheet(rgb, prediction, self.class_names, k,
                                         extra=[self.class_index(c) for c in classes])

    def trait_ranker(self) -> TraitRanker:
        """The trait-head ranker (loaded and checked with the model)."""
        return self._ranker

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
