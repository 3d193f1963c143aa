"""Faithfulness table of Prompt-CAM against Grad-CAM, Layer-CAM, attention rollout and random maps.

The maps of the baselines come from the PyTorch model of the checkpoint; Prompt-CAM's from the
exported model exactly as ``promptcam-run`` draws it; every perturbed image is scored by the
exported model on ONNX Runtime, batched (``promptcam.explain.metrics`` holds the protocol). Which
images: the caller's (``promptcam-eval --faithfulness`` picks them with ``promptcam.train.synthetic.
world_images`` or ``promptcam.train.data.folder_images``).

Baselines, on ``PromptCAM`` (sequence in every block: C prompts, then cls, then the patches):

* **Grad-CAM / Layer-CAM** (pytorch-grad-cam, PyPI ``grad-cam``): target layer the last block's
  ``norm1``; its output is [B, C + 1 + N, D] (the last block is the only one whose prompts reach
  the logits), and the reshape transform keeps the N patch tokens ``[C + 1:]`` and folds them to
  the [grid, grid] patch grid. Maps are taken at grid resolution (no resize inside the library).
* **Eigen-CAM**: the same layer and reshape; no gradients, so the same map for every class.
* **Attention rollout** (Abnar & Zuidema 2020), over the tokens that persist across blocks
  (cls and patches): in blocks 0..L-2, the head-mean attention restricted to those tokens, row
  renormalised, mixed half-half with the identity (the residual) and renormalised, multiplied up;
  in the last block, the head-mean attention row of the explained class's prompt over cls and
  patches (renormalised) is multiplied onto that product; the patch columns are the map. That
  prompt is the token the class's logit is read from, as the cls token is in a plain ViT.
* **Attention rollout (cls)**: the plain-ViT recipe ported as is: every block, the last included,
  treated alike, and the cls row of the product (class-agnostic; Prompt-CAM never reads the cls token).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from promptcam.core.errors import ConfigError
from promptcam.core.optional import optional_import
from promptcam.explain.metrics import (
    FaithfulnessTable,
    Protocol,
    curves_for_image,
    predictor_scorer,
    prompt_cam_maps,
    random_map,
)
from promptcam.models.checkpoint import load_model
from promptcam.models.preprocess import normalize_pixels
from promptcam.models.promptcam import PromptCAM
from promptcam.runtime.images import read_image, resize_for_model

METHODS = ("Prompt-CAM", "Grad-CAM", "Layer-CAM", "Eigen-CAM", "attention rollout", "attention rollout (cls)",
           "random")


class _Logits(nn.Module):
    """The model as pytorch-grad-cam wants it: images in, logits out."""

    def __init__(self, model: PromptCAM) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)[0]


def patch_tokens_to_grid(tokens: torch.Tensor, num_classes: int, grid: int) -> torch.Tensor:
    """The reshape transform: last block's [B, C + 1 + N, D] -> patch grid [B, D, grid, grid].

    Drops the C prompt tokens and the cls token, which come first in Prompt-CAM's sequence.
    """
    expected = num_classes + 1 + grid * grid
    if tokens.dim() != 3 or tokens.shape[1] != expected:
        raise ConfigError(f"target layer output {tuple(tokens.shape)}: expected [B, {expected}, D] "
                          f"({num_classes} prompts, cls, {grid}x{grid} patches)")
    patches = tokens[:, num_classes + 1:, :]
    return patches.reshape(tokens.shape[0], grid, grid, tokens.shape[2]).permute(0, 3, 1, 2)


class TorchExplainer:
    """Grad-CAM, Layer-CAM and attention rollout maps at patch-grid resolution on a ``PromptCAM``."""

    def __init__(self, model: PromptCAM) -> None:
        self.model = model.eval()
        self.config = model.config
        self.grid = model.config.grid_size

    def _cam(self, cam_name: str, pixels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
        grad_cam = optional_import("pytorch_grad_cam", extra="explain", purpose=f"the {cam_name} baseline")
        cam_class = getattr(grad_cam, cam_name)
        ClassifierOutputTarget = grad_cam.utils.model_targets.ClassifierOutputTarget  # noqa: N806 - a class

        grid, c = self.grid, self.config.num_classes

        class AtGrid(cam_class):  # keep the map on the patch grid: every method is upsampled the same way later
            def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, int]:
                return grid, grid

        cam = AtGrid(model=_Logits(self.model), target_layers=[self.model.blocks[-1].norm1],
                     reshape_transform=lambda t: patch_tokens_to_grid(t, c, grid))
        try:
            images = normalize_pixels(pixels, self.config).requires_grad_(True)  # a graph even with frozen weights
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(k)) for k in classes])
        finally:
            cam.activations_and_grads.release()
        return np.asarray(maps, dtype=np.float32)

    def grad_cam(self, pixels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
        """Grad-CAM maps [B, grid, grid] of ``classes`` (one per image) on uint8 [B, S, S, 3]."""
        return self._cam("GradCAM", pixels, classes)

    def layer_cam(self, pixels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
        """Layer-CAM maps [B, grid, grid]."""
        return self._cam("LayerCAM", pixels, classes)

    def eigen_cam(self, pixels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
        """Eigen-CAM maps [B, grid, grid] (first principal component of the patch tokens; class-agnostic)."""
        return self._cam("EigenCAM", pixels, classes)

    def cls_rollout(self, pixels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
        """Attention rollout of the cls token, [B, grid, grid] (the same for every class)."""
        return self.rollout(pixels, classes, query="cls")

    @torch.no_grad()
    def rollout(self, pixels: np.ndarray, classes: Sequence[int], query: str = "prompt") -> np.ndarray:
        """Attention rollout of the explained class's prompt (or of ``query="cls"``), [B, grid, grid]
        (see the module docstring)."""
        model, c = self.model, self.config.num_classes
        x = model.embed(normalize_pixels(pixels, self.config))
        batch, tokens = x.shape[:2]
        eye = torch.eye(tokens)
        joint = eye.expand(batch, -1, -1).clone()
        prompts = model.vpt.prompt_embeddings
        for index, block in enumerate(model.blocks):
            x = torch.cat([prompts[index].expand(batch, -1, -1), x], dim=1)
            x, probs = model.run_block(block, x, need_probs=True)
            attention = probs.mean(dim=1)  # head mean [B, C + T, C + T]
            if index < len(model.blocks) - 1 or query == "cls":
                x = x[:, c:]
                a = attention[:, c:, c:]
                a = a / a.sum(dim=-1, keepdim=True)
                a = 0.5 * a + 0.5 * eye
                joint = (a / a.sum(dim=-1, keepdim=True)) @ joint
            else:
                rows = attention[torch.arange(batch), torch.as_tensor(list(classes)), c:]  # [B, T]
                rows = rows / rows.sum(dim=-1, keepdim=True)
                flow = (rows.unsqueeze(1) @ joint).squeeze(1)
        if query == "cls":
            flow = joint[:, 0]
        return flow[:, 1:].reshape(batch, self.grid, self.grid).numpy().astype(np.float32)


@dataclass
class FaithfulnessReport:
    """What ``faithfulness_table`` returns: one table per exported model."""

    markdown: str
    json: dict[str, Any]
    seconds: float

    def write(self, out: Path) -> tuple[Path, Path]:
        """Write ``faithfulness.md`` and ``faithfulness.json`` into ``out`` (atomically); returns their paths."""
        from promptcam.core.atomic import atomic_write_text

        out.mkdir(parents=True, exist_ok=True)
        paths = out / "faithfulness.md", out / "faithfulness.json"
        atomic_write_text(paths[0], self.markdown)
        atomic_write_text(paths[1], json.dumps(self.json, indent=1))
        return paths


def faithfulness_table(
    ckpt: str | Path,
    model_dirs: str | Path | Sequence[str | Path],
    images: Sequence[str | Path],
    *,
    masks: Sequence[np.ndarray | None] | None = None,
    protocol: Protocol = Protocol(),
    engine: str = "ort-cpu",
    threads: int | None = None,
    methods: Sequence[str] = METHODS,
    class_names: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> FaithfulnessReport:
    """Insertion/deletion (and, with masks, pointing game and energy) for each method, per exported model.

    Args:
        ckpt: The project checkpoint the exported models were made from (baselines run on it).
        model_dirs: One or more ``promptcam-export`` directories of that checkpoint (fp32, int8, fp16):
            one table each; every perturbed image is scored by that model.
        images: Image files (any size; resized to the model input as the runtime does).
        masks: Optional ground-truth masks, one per image (any size; None for an image without).
        protocol: Steps, blur, batch size, seed (``promptcam.explain.metrics``).
        engine: Runtime engine for the exported models.
        threads: ONNX Runtime intra-op threads.
        methods: Which of ``METHODS`` to include.
        class_names: Class names for an official checkpoint (as given to ``promptcam-export --classes``).
        log: Progress lines.

    Returns:
        Markdown (the tables, Table-1 form, mean ± standard error) and JSON ({"tables": [...]}).
    """
    from promptcam.runtime.predictor import Predictor

    started = time.perf_counter()
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ConfigError(f"unknown faithfulness method(s) {sorted(unknown)}; choose from {', '.join(METHODS)}")
    if masks is not None and len(masks) != len(images):
        raise ConfigError(f"{len(masks)} masks for {len(images)} images")
    if not images:
        raise ConfigError("faithfulness: no images")
    dirs = [Path(model_dirs)] if isinstance(model_dirs, str | Path) else [Path(d) for d in model_dirs]
    explainer = TorchExplainer(load_model(ckpt, class_names=class_names))
    tables, texts = [], []
    for model_dir in dirs:
        with Predictor(model_dir, engine, batch_size=protocol.batch_size, threads=threads) as predictor:
            if predictor.config.to_dict() != explainer.config.to_dict():
                raise ConfigError(f"{model_dir}: exported from another model than {ckpt} (configs differ)")
            table = _table_for_model(predictor, explainer, images, masks, protocol, methods, log)
            table.title = f"faithfulness — {predictor.manifest.precision} {model_dir.name} ({predictor.backend.name})"
            tables.append(table.to_json() | {"model_dir": str(model_dir), "precision": predictor.manifest.precision})
            texts.append(table.to_markdown())
    seconds = time.perf_counter() - started
    return FaithfulnessReport("\n".join(texts), {"tables": tables, "seconds": round(seconds, 2)}, seconds)


def _table_for_model(predictor: Any, explainer: TorchExplainer, images: Sequence[str | Path],
                     masks: Sequence[np.ndarray | None] | None, protocol: Protocol, methods: Sequence[str],
                     log: Callable[[str], None]) -> FaithfulnessTable:
    size = predictor.config.img_size
    pixels = np.stack([resize_for_model(read_image(p), predictor.config) for p in images])
    classes, prompt_maps = prompt_cam_maps(predictor, pixels)
    maps: dict[str, list[np.ndarray]] = {"Prompt-CAM": prompt_maps}
    torch_methods = {"Grad-CAM": explainer.grad_cam, "Layer-CAM": explainer.layer_cam,
                     "Eigen-CAM": explainer.eigen_cam, "attention rollout": explainer.rollout,
                     "attention rollout (cls)": explainer.cls_rollout}
    for name, method in torch_methods.items():
        if name in methods:
            maps[name] = [m for s in range(0, len(pixels), 32)
                          for m in method(pixels[s:s + 32], classes[s:s + 32].tolist())]
    rng = np.random.default_rng(protocol.seed)
    maps["random"] = [random_map(explainer.grid, rng) for _ in range(len(pixels))]
    maps = {m: maps[m] for m in methods}
    table = FaithfulnessTable(protocol.describe(size))
    scorer = predictor_scorer(predictor)
    report_every = max(1, math.ceil(len(pixels) / 4))
    for i in range(len(pixels)):
        per_image = {m: maps[m][i] for m in methods}
        curves = curves_for_image(scorer, pixels[i], int(classes[i]), per_image, protocol)
        mask = masks[i] if masks is not None else None
        if mask is not None and mask.shape[:2] != (size, size):
            mask = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
        table.add_image(curves, per_image, None if mask is None else mask.astype(bool))
        if (i + 1) % report_every == 0:
            log(f"faithfulness: {i + 1}/{len(pixels)} images")
    return table
