"""open_clip checkpoints (BioCLIP and other CLIP ViTs) -> the project's timm-layout backbone keys.

An open_clip file is either the whole CLIP state dict (vision keys under ``visual.``, text tower
at the top level, which is ignored) or the visual tower alone. Keys map one to one:

    conv1.weight                       -> patch_embed.proj.weight  (no bias: pre_norm models)
    class_embedding [D]                -> cls_token [1, 1, D]
    positional_embedding [T, D]        -> pos_embed [1, T, D]
    ln_pre                             -> norm_pre
    transformer.resblocks.i.ln_1       -> blocks.i.norm1
    ....attn.in_proj_weight / _bias    -> blocks.i.attn.qkv.weight / .bias  (same q, k, v order)
    ....attn.out_proj                  -> blocks.i.attn.proj
    ....ln_2                           -> blocks.i.norm2
    ....mlp.c_fc / mlp.c_proj          -> blocks.i.mlp.fc1 / fc2
    ln_post                            -> norm
    proj                               -> unused: the Prompt-CAM head scores prompt features

The activation (GELU or QuickGELU) is not in the weights; ``activation_from_config`` reads it
from the ``open_clip_config.json`` that hub downloads keep next to the weight file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from promptcam.core.errors import CheckpointError

VISUAL_PREFIX = "visual."
CONFIG_NAME = "open_clip_config.json"
# keys only a full CLIP state dict has (text tower, logit scale): vision keys then carry ``visual.``
TEXT_TOWER_KEYS = ("token_embedding.weight", "text_projection", "logit_scale")
_LINEAR = ("weight", "bias")
_BLOCK_KEYS = {
    # open_clip name inside transformer.resblocks.i -> timm name inside blocks.i
    **{f"ln_1.{p}": f"norm1.{p}" for p in _LINEAR},
    "attn.in_proj_weight": "attn.qkv.weight",
    "attn.in_proj_bias": "attn.qkv.bias",
    **{f"attn.out_proj.{p}": f"attn.proj.{p}" for p in _LINEAR},
    **{f"ln_2.{p}": f"norm2.{p}" for p in _LINEAR},
    **{f"mlp.c_fc.{p}": f"mlp.fc1.{p}" for p in _LINEAR},
    **{f"mlp.c_proj.{p}": f"mlp.fc2.{p}" for p in _LINEAR},
}
_OPTIONAL_BLOCK_KEYS = {"ls_1.gamma": "ls1.gamma", "ls_2.gamma": "ls2.gamma"}  # LayerScale variants


def is_open_clip_state_dict(state_dict: dict[str, object]) -> bool:
    """True for a full CLIP (``visual.conv1.weight``) or visual-tower (``conv1.weight``) state dict."""
    keys = {_strip_module(str(k)) for k in state_dict}
    return bool(keys & {"conv1.weight", "class_embedding", VISUAL_PREFIX + "conv1.weight",
                        VISUAL_PREFIX + "class_embedding", *TEXT_TOWER_KEYS})


def _strip_module(key: str) -> str:
    # open_clip training checkpoints saved from DistributedDataParallel prefix every key with "module."
    return key[len("module."):] if key.startswith("module.") else key


def visual_state_dict(state_dict: dict[str, object], source: str) -> tuple[dict[str, torch.Tensor], str]:
    """The vision tower's tensors with open_clip names, and the prefix they carried in the file.

    A full CLIP state dict keeps only ``visual.*`` (the text tower is ignored); a tower-alone dict
    is taken as is.
    """
    stripped = {_strip_module(str(k)): v for k, v in state_dict.items()}
    if any(k.startswith(VISUAL_PREFIX) for k in stripped):
        visual = {k[len(VISUAL_PREFIX):]: v for k, v in stripped.items() if k.startswith(VISUAL_PREFIX)}
        prefix = VISUAL_PREFIX
    elif any(k in stripped for k in TEXT_TOWER_KEYS):
        # the text tower also has transformer.resblocks.*: never take those for vision blocks
        raise CheckpointError(f"{source}: no open_clip vision tower: a CLIP state dict without visual.* keys "
                              "(text tower only?)")
    else:
        visual, prefix = stripped, ""
    for key, value in visual.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: open_clip key {prefix + key!r} is not a tensor")
    return visual, prefix  # type: ignore[return-value]


def open_clip_depth(visual: dict[str, torch.Tensor]) -> int:
    """Number of ``transformer.resblocks.i`` in a visual state dict."""
    indices = {int(k.split(".")[2]) for k in visual
               if k.startswith("transformer.resblocks.") and k.split(".")[2].isdigit()}
    return max(indices) + 1 if indices else 0


def open_clip_to_timm(state_dict: dict[str, object], depth: int,
                      source: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Map an open_clip (full CLIP or visual tower) state dict to the project's backbone keys.

    Args:
        state_dict: The file's state dict.
        depth: Blocks of the model being loaded; the file must have exactly as many.
        source: File name for errors.

    Returns:
        timm-layout backbone tensors (``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight``, ...),
        and for each of them the key it had in the file (for error messages).

    Raises:
        CheckpointError: naming the missing open_clip key (with its ``visual.`` prefix as in the file)
            or the block-count mismatch.
    """
    visual, prefix = visual_state_dict(state_dict, source)
    found = open_clip_depth(visual)
    if found == 0 and "conv1.weight" not in visual:
        raise CheckpointError(f"{source}: no open_clip vision tower (no {prefix}conv1.weight or "
                              f"{prefix}transformer.resblocks.* keys)")
    if found != depth:
        raise CheckpointError(f"{source}: the open_clip vision tower has {found} blocks, the model has {depth}")
    names = {"conv1.weight": "patch_embed.proj.weight", "class_embedding": "cls_token",
             "positional_embedding": "pos_embed", "ln_pre.weight": "norm_pre.weight", "ln_pre.bias": "norm_pre.bias",
             "ln_post.weight": "norm.weight", "ln_post.bias": "norm.bias"}
    for index in range(depth):
        for theirs, ours in _BLOCK_KEYS.items():
            names[f"transformer.resblocks.{index}.{theirs}"] = f"blocks.{index}.{ours}"
    missing = [prefix + k for k in names if k not in visual]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise CheckpointError(f"{source}: open_clip checkpoint misses vision keys {missing[:5]}{more}")
    for index in range(depth):
        for theirs, ours in _OPTIONAL_BLOCK_KEYS.items():
            if (key := f"transformer.resblocks.{index}.{theirs}") in visual:
                names[key] = f"blocks.{index}.{ours}"
    out = {ours: visual[theirs] for theirs, ours in names.items()}
    # open_clip stores the class token as [D] and positions as [T, D]; timm as [1, 1, D] / [1, T, D]
    if out["cls_token"].dim() == 1:
        out["cls_token"] = out["cls_token"].reshape(1, 1, -1)
    if out["pos_embed"].dim() == 2:
        out["pos_embed"] = out["pos_embed"].unsqueeze(0)
    return out, {ours: prefix + theirs for theirs, ours in names.items()}


def activation_from_config(weights: Path) -> str | None:
    """``quick_gelu`` / ``gelu`` from an ``open_clip_config.json`` beside ``weights``; None when there
    is none or it does not say (then the backbone preset decides).

    Raises:
        CheckpointError: the file exists but is not valid JSON.
    """
    path = Path(weights).parent / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable open_clip config: {exc}") from exc
    model_cfg = data.get("model_cfg", data) if isinstance(data, dict) else None
    if not isinstance(model_cfg, dict) or "quick_gelu" not in model_cfg:
        return None
    return "quick_gelu" if model_cfg["quick_gelu"] else "gelu"
