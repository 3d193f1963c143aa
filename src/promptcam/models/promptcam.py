"""The Prompt-CAM model: a timm VisionTransformer with one deep prompt per class and layer.

Forward semantics (published method, reference code):
  prompts FIRST, then cls, then patches; prompt outputs dropped after every block but the last;
  final LayerNorm; a shared ``Linear(D, 1)`` scores each class's prompt -> logits [B, C].
  The explanation of class c is the last block's softmax attention row of prompt c over the
  patch columns (not renormalised): attention [B, C, heads, N].
CLIP-style backbones (``config.pre_norm``, BioCLIP) LayerNorm the embedded tokens (``ln_pre``,
key ``norm_pre``) before the first block; the prompts enter after it, as for DINO.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import QuickGELU
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from promptcam.core.config import ModelConfig

LAYERSCALE_INIT = 1e-5  # DINOv2's LayerScale init; real values come from the weights
ACTIVATION_LAYERS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


class DeepPrompts(nn.Module):
    """Learnable prompt tokens [depth, num_classes, dim] (key ``vpt.prompt_embeddings``)."""

    def __init__(self, depth: int, num_classes: int, dim: int) -> None:
        super().__init__()
        self.prompt_embeddings = nn.Parameter(torch.empty(depth, num_classes, dim))
        # Uniform init as in VPT: prompts live on the scale of patch tokens.
        nn.init.uniform_(self.prompt_embeddings, -0.05, 0.05)


class PromptCAM(nn.Module):
    """Prompt-CAM on a timm VisionTransformer; state-dict keys match the official checkpoints."""

    def __init__(self, config: ModelConfig, *, drop_path_rate: float = 0.0, prompt_dropout: float = 0.0) -> None:
        super().__init__()
        self.config = config
        vit = VisionTransformer(
            img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
            depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, qkv_bias=True,
            init_values=LAYERSCALE_INIT if config.layerscale else None, num_classes=0,
            norm_layer=partial(nn.LayerNorm, eps=config.norm_eps), drop_path_rate=drop_path_rate,
            # pre_norm: CLIP's ln_pre, and timm then builds the patch embedding without a bias as CLIP does
            pre_norm=config.pre_norm, act_layer=ACTIVATION_LAYERS[config.act],
        )
        # Adopt the backbone's modules directly so keys read cls_token, blocks.0.attn.qkv.weight, ...
        self.patch_embed = vit.patch_embed
        self.cls_token = vit.cls_token
        self.pos_embed = vit.pos_embed
        self.norm_pre = vit.norm_pre  # Identity (no keys) unless config.pre_norm
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.vpt = DeepPrompts(config.depth, config.num_classes, config.embed_dim)
        self.prompt_dropout = nn.Dropout(prompt_dropout)
        self.head = nn.Linear(config.embed_dim, 1)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of the frozen ViT (everything but prompts and head)."""
        trainable = {id(p) for p in (*self.vpt.parameters(), *self.head.parameters())}
        return [p for p in self.parameters() if id(p) not in trainable]

    def freeze_backbone(self) -> None:
        """The published recipe: only prompts and the shared head train."""
        for p in self.backbone_parameters():
            p.requires_grad_(False)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, H, W] -> tokens [B, 1 + N, D] (cls first, pos_embed added, then
        ``norm_pre`` for CLIP backbones): what the first block sees after the prompts."""
        x = self.patch_embed(images)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return self.norm_pre(torch.cat([cls, x], dim=1) + self.pos_embed)

    def forward(
        self,
        images: torch.Tensor,
        *,
        return_attention: bool = False,
        blur_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Classify and (optionally) explain.

        Args:
            images: Normalised images [B, 3, H, W].
            return_attention: Also return the last block's prompt-to-patch attention.
            blur_mask: Optional bool [B, C, heads] or [C, heads]: True blurs that (class, head) row
                of the last block (pre-softmax scores set to 0, so the row becomes uniform).

        Returns:
            logits [B, C] and attention [B, C, heads, N] (or None).
        """
        c = self.num_classes
        x = self.embed(images)
        batch = x.shape[0]
        prompts = self.prompt_dropout(self.vpt.prompt_embeddings)
        last = len(self.blocks) - 1
        attention = None
        for index, block in enumerate(self.blocks):
            x = torch.cat([prompts[index].expand(batch, -1, -1), x], dim=1)
            if index < last:
                x, _ = self.run_block(block, x)
                x = x[:, c:]  # prompt outputs are discarded after every block but the last
            else:
                need_probs = return_attention or blur_mask is not None
                x, probs = self.run_block(block, x, need_probs=need_probs, blur_mask=blur_mask)
                if return_attention:
                    # rows: prompt queries; columns: patches only (after C prompts and cls)
                    attention = probs[:, :, :c, c + 1:].permute(0, 2, 1, 3)
        x = self.norm(x[:, :c])
        logits = self.head(x).squeeze(-1)
        return logits, attention

    def run_block(
        self,
        block: nn.Module,
        x: torch.Tensor,
        *,
        need_probs: bool = False,
        blur_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One transformer block on [B, T, D]; explicit softmax attention when its probabilities are needed.

        Returns:
            The block output and, when ``need_probs``, the attention probabilities [B, heads, T, T].
        """
        attn = block.attn
        batch, tokens, dim = x.shape
        heads = attn.num_heads
        qkv = attn.qkv(block.norm1(x)).reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        probs = None
        if need_probs:
            scores = (q * attn.scale) @ k.transpose(-2, -1)  # [B, heads, T, T]
            if blur_mask is not None:
                scores = _blur_scores(scores, blur_mask, self.num_classes)
            probs = scores.softmax(dim=-1)
            out = attn.attn_drop(probs) @ v
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=attn.attn_drop.p if self.training else 0.0
            )
        out = attn.proj_drop(attn.proj(attn.norm(out.transpose(1, 2).reshape(batch, tokens, dim))))
        x = x + block.drop_path1(block.ls1(out))
        x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        return x, probs


def _blur_scores(scores: torch.Tensor, blur_mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Zero the pre-softmax scores of blurred (class, head) rows over all keys."""
    batch, heads = scores.shape[:2]
    mask = blur_mask.to(torch.bool)
    if mask.dim() == 2:
        mask = mask.unsqueeze(0).expand(batch, -1, -1)
    # [B, C, heads] -> [B, heads, C, 1] over the prompt query rows
    row_mask = mask.permute(0, 2, 1).unsqueeze(-1)
    prompt_rows = scores[:, :, :num_classes].masked_fill(row_mask, 0.0)
    return torch.cat([prompt_rows, scores[:, :, num_classes:]], dim=2)
