"""Checkpoints: the project's ``model.pt`` format and import of official Prompt-CAM checkpoints.

Project format::

    {"format": "promptcam", "version": 1, "config": {...ModelConfig...}, "state_dict": {...}}

Official format (unchanged from the Prompt-CAM repository)::

    {"model_state_dict": {timm ViT keys..., "vpt.prompt_embeddings": [L, C, D], "head.weight": [1, D], ...}}
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from promptcam.core.config import OFFICIAL_MEAN, OFFICIAL_STD, ModelConfig, default_class_names
from promptcam.core.errors import CheckpointError, ConfigError

from .promptcam import PromptCAM

FORMAT_NAME = "promptcam"
FORMAT_VERSION = 1
HEAD_DIM = 64  # ViT convention: heads = D / 64 unless told otherwise


def read_class_names(path: str | Path) -> list[str]:
    """One class name per non-empty line; CUB-style ``001.Black_footed_Albatross`` is cleaned."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: class-name file not found")
    names = [clean_class_name(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise CheckpointError(f"{path}: class-name file is empty")
    return names


def clean_class_name(raw: str) -> str:
    """``001.Black_footed_Albatross`` -> ``Black footed Albatross``; other names are stripped."""
    name = raw.strip()
    name = re.sub(r"^\d+[._ -]", "", name)
    return name.replace("_", " ").strip() or raw.strip()


def read_torch_file(path: Path) -> Any:
    """``torch.load`` (weights only, CPU) with one clear ``CheckpointError`` for missing, empty and
    unreadable (truncated, not PyTorch) files."""
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - garbage input makes torch.load raise almost any type
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or not a checkpoint?): {first_line}"
        ) from exc


def load_checkpoint(
    path: str | Path,
    *,
    class_names: list[str] | None = None,
    num_heads: int | None = None,
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Read a project or official checkpoint into (config, state_dict).

    Args:
        path: ``model.pt`` (project format) or an official ``{"model_state_dict": ...}`` file.
        class_names: Names for an official checkpoint (ignored for the project format, which has its own).
        num_heads: Heads of an official checkpoint's backbone (default D / 64).

    Returns:
        The config and the state dict, not yet checked against the model.
    """
    path = Path(path)
    blob = read_torch_file(path)
    if not isinstance(blob, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(blob).__name__}")
    if blob.get("format") == FORMAT_NAME:
        version = blob.get("version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{path}: promptcam checkpoint version {version!r} is not supported "
                                  f"(this build reads version {FORMAT_VERSION})")
        config = ModelConfig.from_document(blob, ("state_dict",), what="promptcam checkpoint", origin=str(path),
                                           error=CheckpointError)
        return config, blob["state_dict"]
    if "model_state_dict" in blob:
        state_dict = blob["model_state_dict"]
        if not isinstance(state_dict, dict):
            raise CheckpointError(f"{path}: 'model_state_dict' is not a dict")
        try:
            config = config_from_official_state_dict(state_dict, class_names=class_names, num_heads=num_heads)
        except (CheckpointError, ConfigError) as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
        return config, state_dict
    keys = ", ".join(sorted(map(str, blob))[:8])
    raise CheckpointError(f"{path}: unknown checkpoint format (top-level keys: {keys}); expected a promptcam "
                          "model.pt or an official Prompt-CAM checkpoint with 'model_state_dict'")


def _require(state_dict: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise CheckpointError(f"missing key {key!r}")
    value = state_dict[key]
    if not isinstance(value, torch.Tensor):
        raise CheckpointError(f"key {key!r} is not a tensor")
    return value


def config_from_official_state_dict(
    state_dict: dict[str, torch.Tensor],
    *,
    class_names: list[str] | None = None,
    num_heads: int | None = None,
) -> ModelConfig:
    """Infer the model config of an official checkpoint from its tensor shapes."""
    proj = _require(state_dict, "patch_embed.proj.weight")
    if proj.dim() != 4 or proj.shape[1] != 3 or proj.shape[2] != proj.shape[3]:
        raise CheckpointError(f"key 'patch_embed.proj.weight' has shape {tuple(proj.shape)}, expected [D, 3, p, p]")
    embed_dim, patch_size = int(proj.shape[0]), int(proj.shape[2])
    prompts = _require(state_dict, "vpt.prompt_embeddings")
    if prompts.dim() != 3 or prompts.shape[2] != embed_dim:
        raise CheckpointError(f"key 'vpt.prompt_embeddings' has shape {tuple(prompts.shape)}, "
                              f"expected [layers, classes, {embed_dim}]")
    depth = 1 + max((int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    if depth == 0:
        raise CheckpointError("no 'blocks.N.*' keys: not a ViT checkpoint")
    if prompts.shape[0] != depth:
        raise CheckpointError(f"key 'vpt.prompt_embeddings' has {prompts.shape[0]} layers but the backbone has {depth}")
    pos = _require(state_dict, "pos_embed")
    # shape checks before any indexing: a malformed file is a clear error, never an IndexError
    grid = math.isqrt(int(pos.shape[1]) - 1) if pos.dim() == 3 and pos.shape[1] >= 2 else 0
    if grid == 0 or grid * grid != pos.shape[1] - 1 or pos.shape[2] != embed_dim:
        raise CheckpointError(f"key 'pos_embed' has shape {tuple(pos.shape)}, expected [1, 1 + grid^2, {embed_dim}]")
    fc1 = _require(state_dict, "blocks.0.mlp.fc1.weight")
    if fc1.dim() != 2 or fc1.shape[1] != embed_dim:
        raise CheckpointError(f"key 'blocks.0.mlp.fc1.weight' has shape {tuple(fc1.shape)}, "
                              f"expected [hidden, {embed_dim}]")
    if "norm_pre.weight" in state_dict:
        # fail closed: activation, LayerNorm eps and preprocessing of a CLIP backbone are not in the weights
        raise CheckpointError("a CLIP-style backbone (norm_pre / ln_pre): the official format cannot say its "
                              "activation or preprocessing; train with --backbone bioclip_vitb16 --weights "
                              "OPEN_CLIP_FILE instead")
    num_classes = int(prompts.shape[1])
    layerscale = "blocks.0.ls1.gamma" in state_dict
    heads = num_heads or max(1, embed_dim // HEAD_DIM)
    if layerscale and patch_size == 14 and embed_dim == 768:
        arch = "dinov2_vitb14"
    elif not layerscale and patch_size == 16 and embed_dim == 768:
        arch = "dino_vitb16"
    else:
        arch = f"official_vit_p{patch_size}_d{embed_dim}" + ("_ls" if layerscale else "")
    names = list(class_names) if class_names else default_class_names(num_classes)
    if len(names) != num_classes:
        raise CheckpointError(f"{len(names)} class names given but the checkpoint has {num_classes} prompts")
    return ModelConfig(
        arch=arch, img_size=grid * patch_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
        num_heads=heads, num_classes=num_classes, class_names=names, layerscale=layerscale,
        mlp_ratio=fc1.shape[0] / embed_dim, mean=OFFICIAL_MEAN, std=OFFICIAL_STD, interpolation="bilinear",
    )


def load_state_dict_strict(model: PromptCAM, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load every parameter or fail naming the first wrong keys: never a silent partial load."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing:
        raise CheckpointError(f"{source}: missing keys {missing[:10]}" + (" ..." if len(missing) > 10 else ""))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected keys {unexpected[:10]}" + (" ..." if len(unexpected) > 10 else ""))
    for key, tensor in expected.items():
        given = state_dict[key]
        if not isinstance(given, torch.Tensor):
            raise CheckpointError(f"{source}: key {key!r} is not a tensor")
        if tuple(given.shape) != tuple(tensor.shape):
            raise CheckpointError(f"{source}: key {key!r} has shape {tuple(given.shape)}, "
                                  f"the model expects {tuple(tensor.shape)}")
    model.load_state_dict(state_dict, strict=True)


def load_model(
    path: str | Path,
    *,
    class_names: list[str] | None = None,
    num_heads: int | None = None,
) -> PromptCAM:
    """Build a ``PromptCAM`` in eval mode from a project or official checkpoint."""
    config, state_dict = load_checkpoint(path, class_names=class_names, num_heads=num_heads)
    model = PromptCAM(config)
    load_state_dict_strict(model, state_dict, str(path))
    return model.eval()


def save_checkpoint(model: PromptCAM, path: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write the project format atomically (temp file + rename: a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
    }
    if extra:
        blob["extra"] = extra
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path
