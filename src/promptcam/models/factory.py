"""``create_model``: build a Prompt-CAM from a registered backbone, optionally with pretrained weights."""

from __future__ import annotations

from pathlib import Path

import torch

from promptcam.core.config import ModelConfig
from promptcam.core.errors import CheckpointError, ConfigError

from .checkpoint import read_torch_file
from .openclip import activation_from_config, is_open_clip_state_dict, open_clip_to_timm
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
        weights: A local backbone weight file instead of ``pretrained``: a timm ViT state dict, or an
            open_clip checkpoint (full CLIP or visual tower; ``.bin``/``.pt``/``.safetensors``) for
            CLIP backbones such as ``bioclip_vitb16``. An ``open_clip_config.json`` beside it sets the
            activation unless ``act`` is given.
        drop_path_rate: Stochastic depth for training.
        prompt_dropout: Dropout on prompt tokens for training.
        **config_overrides: ``ModelConfig`` fields to override (``None`` values are ignored).

    Returns:
        The model (train mode, backbone not yet frozen).
    """
    if pretrained and weights:
        raise ConfigError("give either pretrained=True or weights=FILE, not both")
    if weights and config_overrides.get("act") is None and get_backbone(arch).pre_norm:
        config_overrides["act"] = activation_from_config(Path(weights))
    config = make_config(arch, num_classes, class_names, **config_overrides)
    state, file_names = _read_backbone_file(Path(weights), config) if weights else (None, None)
    # built after reading the file: a bad file fails before seconds of ViT-B initialisation
    model = PromptCAM(config, drop_path_rate=drop_path_rate, prompt_dropout=prompt_dropout)
    if pretrained:
        spec = get_backbone(arch)
        if spec.timm_name is None:
            raise ConfigError(f"backbone {arch!r} has no timm pretrained weights; pass weights=FILE "
                              "(for CLIP backbones an open_clip checkpoint such as open_clip_pytorch_model.bin)")
        import timm

        source = timm.create_model(spec.timm_name, pretrained=True, num_classes=0, img_size=config.img_size)
        load_backbone_weights(model, source.state_dict(), spec.timm_name)
    elif state is not None:
        load_backbone_weights(model, state, str(weights), file_names=file_names)
    return model


def _read_backbone_file(path: Path, config: ModelConfig) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """A weight file's backbone tensors in timm layout, and their keys in the file when renamed (open_clip)."""
    state = read_weight_file(path)
    if not is_open_clip_state_dict(state):
        return state, None
    if not config.pre_norm:
        raise CheckpointError(f"{path}: an open_clip (CLIP) checkpoint does not fit backbone {config.arch!r}; "
                              "use a CLIP backbone such as bioclip_vitb16")
    return open_clip_to_timm(state, config.depth, str(path))


def read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a backbone weight file (``{"model": sd}``, ``{"state_dict": sd}`` or ``sd``).

    Raises:
        CheckpointError: missing, empty, truncated or not a state dict, naming the file.
    """
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"{path}: backbone weight file not found")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file (truncated?): {exc}") from exc
    blob = read_torch_file(path)
    state = blob.get("model", blob.get("state_dict", blob)) if isinstance(blob, dict) else blob
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict (found {type(state).__name__})")
    return state


def load_backbone_weights(model: PromptCAM, state_dict: dict[str, torch.Tensor], source: str, *,
                          file_names: dict[str, str] | None = None) -> None:
    """Copy a timm ViT state dict into the backbone; every backbone key must be present.

    ``file_names``: the key each tensor had in the file, when it was renamed (open_clip), for errors.

    Raises:
        CheckpointError: a missing key, or a shape that differs (after resampling ``pos_embed``).
    """
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
            where = f" ({file_names[key]} in the file)" if file_names and key in file_names else ""
            raise CheckpointError(f"{source}: key {key!r}{where} has shape {tuple(tensor.shape)}, "
                                  f"the model expects {tuple(own[key].shape)}")
        new_state[key] = tensor
    model.load_state_dict(new_state, strict=False)
