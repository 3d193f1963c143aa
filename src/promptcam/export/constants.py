"""Fold everything image-independent out of the Prompt-CAM forward (the ``fold-prompt-constants`` pass).

The prompts do not depend on the image, so per block their keys and values are constants; in the
last block the prompt queries and the prompt-to-prompt scores are constants too. CLIP's ``ln_pre``
(``norm_pre``) acts on the image tokens before the prompts join, so it stays in the graph. LayerScale and
the attention scale fold into the adjacent weights, and pixel normalisation folds into the patch
embedding. Everything is computed in float64 and stored as float32 numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from promptcam.core.config import ModelConfig
from promptcam.models.promptcam import PromptCAM


@dataclass
class BlockWeights:
    """One transformer block, weights transposed for ``x @ W`` and LayerScale folded in."""

    norm1_w: np.ndarray
    norm1_b: np.ndarray
    qkv_w: np.ndarray  # [D, 3D], query part pre-multiplied by the attention scale
    qkv_b: np.ndarray
    proj_w: np.ndarray  # [D, D] * ls1
    proj_b: np.ndarray
    norm2_w: np.ndarray
    norm2_b: np.ndarray
    fc1_w: np.ndarray
    fc1_b: np.ndarray
    fc2_w: np.ndarray  # [4D, D] * ls2
    fc2_b: np.ndarray
    prompt_keys: np.ndarray  # [heads, C, hd]
    prompt_values: np.ndarray  # [heads, C, hd]


@dataclass
class FoldedWeights:
    """Everything the graph builder needs, as numpy arrays."""

    config: ModelConfig
    patch_w: np.ndarray  # [D, 3, p, p], takes raw 0..255 RGB
    patch_b: np.ndarray  # [D]; CLIP has no patch bias, but the folded normalisation gives one
    cls_pos: np.ndarray  # [1, 1, D] = cls_token + pos_embed[0]
    patch_pos: np.ndarray  # [N, D]
    blocks: list[BlockWeights]
    last_prompt_queries: np.ndarray  # [heads, C, hd], scaled
    last_prompt_scores: np.ndarray  # [heads, C, C] prompt-to-prompt pre-softmax scores
    last_prompt_tokens: np.ndarray  # [C, D] residual input of the last block's prompt rows
    norm_w: np.ndarray
    norm_b: np.ndarray
    head_w: np.ndarray  # [D, 1]
    head_b: np.ndarray  # [1]
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    pre_norm_w: np.ndarray | None = None  # CLIP's ln_pre over [cls, patches]; None without pre_norm
    pre_norm_b: np.ndarray | None = None


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy()


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _heads(x: np.ndarray, heads: int) -> np.ndarray:
    """[C, D] -> [heads, C, hd]."""
    c, d = x.shape
    return x.reshape(c, heads, d // heads).transpose(1, 0, 2)


@torch.no_grad()
def fold_prompt_constants(model: PromptCAM) -> FoldedWeights:
    """Precompute the image-independent parts of a Prompt-CAM model for export."""
    cfg = model.config
    d, heads = cfg.embed_dim, cfg.num_heads
    scale = (d // heads) ** -0.5
    prompts = _np(model.vpt.prompt_embeddings)  # [L, C, D]

    # pixels in 0..255: normalised = p * a_c + b_c with a_c = 1 / (255 std_c), b_c = -mean_c / std_c
    mean, std = np.asarray(cfg.mean), np.asarray(cfg.std)
    a, b = 1.0 / (255.0 * std), -mean / std
    conv_w = _np(model.patch_embed.proj.weight)
    bias = model.patch_embed.proj.bias  # None for CLIP (pre_norm) backbones
    conv_b = _np(bias) if bias is not None else np.zeros(conv_w.shape[0])
    patch_w = conv_w * a[None, :, None, None]
    patch_b = conv_b + (conv_w * b[None, :, None, None]).sum(axis=(1, 2, 3))
    pos = _np(model.pos_embed)[0]
    cls_pos = (_np(model.cls_token)[0, 0] + pos[0])[None, None, :]

    blocks: list[BlockWeights] = []
    last_q = last_pp = None
    for index, block in enumerate(model.blocks):
        ls1 = _np(block.ls1.gamma) if hasattr(block.ls1, "gamma") else np.ones(d)
        ls2 = _np(block.ls2.gamma) if hasattr(block.ls2, "gamma") else np.ones(d)
        qkv_w, qkv_b = _np(block.attn.qkv.weight).T.copy(), _np(block.attn.qkv.bias).copy()
        n1w, n1b = _np(block.norm1.weight), _np(block.norm1.bias)
        prompt_qkv = _layer_norm(prompts[index], n1w, n1b, cfg.norm_eps) @ qkv_w + qkv_b  # [C, 3D]
        prompt_q = _heads(prompt_qkv[:, :d], heads) * scale
        prompt_k = _heads(prompt_qkv[:, d:2 * d], heads)
        prompt_v = _heads(prompt_qkv[:, 2 * d:], heads)
        qkv_w[:, :d] *= scale
        qkv_b[:d] *= scale
        blocks.append(BlockWeights(
            norm1_w=_f32(n1w), norm1_b=_f32(n1b), qkv_w=_f32(qkv_w), qkv_b=_f32(qkv_b),
            proj_w=_f32(_np(block.attn.proj.weight).T * ls1[None, :]),
            proj_b=_f32(_np(block.attn.proj.bias) * ls1),
            norm2_w=_f32(_np(block.norm2.weight)), norm2_b=_f32(_np(block.norm2.bias)),
            fc1_w=_f32(_np(block.mlp.fc1.weight).T), fc1_b=_f32(_np(block.mlp.fc1.bias)),
            fc2_w=_f32(_np(block.mlp.fc2.weight).T * ls2[None, :]), fc2_b=_f32(_np(block.mlp.fc2.bias) * ls2),
            prompt_keys=_f32(prompt_k), prompt_values=_f32(prompt_v),
        ))
        if index == cfg.depth - 1:
            last_q = prompt_q
            last_pp = prompt_q @ prompt_k.transpose(0, 2, 1)  # [heads, C, C]
    assert last_q is not None and last_pp is not None
    return FoldedWeights(
        config=cfg, patch_w=_f32(patch_w), patch_b=_f32(patch_b), cls_pos=_f32(cls_pos),
        patch_pos=_f32(pos[1:]), blocks=blocks,
        last_prompt_queries=_f32(last_q), last_prompt_scores=_f32(last_pp),
        last_prompt_tokens=_f32(prompts[-1]),
        norm_w=_f32(_np(model.norm.weight)), norm_b=_f32(_np(model.norm.bias)),
        head_w=_f32(_np(model.head.weight).T), head_b=_f32(_np(model.head.bias)),
        pre_norm_w=_f32(_np(model.norm_pre.weight)) if cfg.pre_norm else None,
        pre_norm_b=_f32(_np(model.norm_pre.bias)) if cfg.pre_norm else None,
    )
