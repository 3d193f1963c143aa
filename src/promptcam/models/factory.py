"""``create_model``: build a Prompt-CAM from a registered backbone, optionally with pretrained weights."""

from __future__ import annotations

from pathlib import Path

import torch

from promptcam.core.errors import CheckpointError, ConfigError

from .promptcam import PromptCAM
from .registry import get_backbone, make_config


def create_model(
    arch: str,
    num_classes: int,
    *,
    class_names: list[str] | None = None,
    pretrained: bool = False,
    weights: str | Path | None = None,
    drop_path_rate: float = 0.0,
    prompt_dropout: float = 0.0,
    **config_overrides: object,
) -> PromptCAM:
    """Build a Prompt-CAM model.

    Args:
        arch: Registered backbone name (see ``promptcam.models.list_backbones``).
        num_classes: Number of classes.
        class_names: Class names in logit order.
        pretrained: Load the backbone's timm pretrained weights (needs the timm cache or internet).
        weights: A local backbone weight file (timm ViT state dict) instead of ``pretrained``.
        drop_path_rate: Stochastic depth for training.
        prompt_dropout: Dropout on prompt tokens for training.
        **config_overrides: ``ModelConfig`` fields to override (``None`` values are ignored).

    Returns:
        The model (train mode, backbone not yet frozen).
    """
    config = make_config(arch, num_classes, class_names, **config_overrides)
    model = PromptCAM(config, drop_path_rate=drop_path_rate, prompt_dropout=prompt_dropout)
    if pretrained and weights:
        raise ConfigError("give either pretrained=True or weights=FILE, not both")
    if pretrained:
        spec = get_backbone(arch)
        if spec.timm_name is None:
            raise ConfigError(f"backbone {arch!r} has no pretrained weights; train one or pass weights=FILE")
        import timm

        source = timm.create_model(spec.timm_name, pretrained=True, num_classes=0, img_size=config.img_size)
        load_backbone_weights(model, source.state_dict(), spec.timm_name)
    elif weights:
        path = Path(weights)
        if not path.is_file():
            raise CheckpointError(f"{path}: backbone weight file not found")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state = blob.get("model", blob.get("state_dict", blob)) if isinstance(blob, dict) else blob
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: not a state dict")
        load_backbone_weights(model, state, str(path))
    return model


def load_backbone_weights(model: PromptCAM, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Copy a timm ViT state dict into the backbone; every backbone key must be present."""
    from timm.layers import resample_abs_pos_embed

    own = model.state_dict()
    backbone_keys = [k for k in own if not k.startswith(("vpt.", "head."))]
    missing = [k for k in backbone_keys if k not in state_dict]
    if missing:
        raise CheckpointError(f"{source}: backbone weights miss keys {missing[:10]}")
    new_state = {}
    for key in backbone_keys:
        tensor = state_dict[key]
        if key == "pos_embed" and tensor.shape != own[key].shape:
            grid = model.config.grid_size
            tensor = resample_abs_pos_embed(tensor, new_size=(grid, grid), num_prefix_tokens=1)
        if tensor.shape != own[key].shape:
            raise CheckpointError(f"{source}: key {key!r} has shape {tuple(tensor.shape)}, "
                                  f"the model expects {tuple(own[key].shape)}")
        new_state[key] = tensor
    model.load_state_dict(new_state, strict=False)
