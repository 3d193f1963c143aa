"""The PyTorch peers a user who wants speed would pick: autocast half precision with SDPA, and the
same under ``torch.compile``. They return what the runtime returns by default: logits and the
predicted class's attention maps [B, heads, N].
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from promptcam.models.promptcam import PromptCAM

from .backends import BenchBackend, Skipped


class TopClassForward(nn.Module):
    """Prompt-CAM's forward returning logits [B, C] and the top class's attention [B, heads, N].

    Every block runs fused SDPA. The last block computes only the prompt rows (the only rows the
    logits read: LayerNorm, MLP and the residuals act per token), and once the logits are known
    recomputes one softmax row per image and head, the predicted class's, from that block's
    queries and keys, instead of materialising all C x T probabilities. The maps equal
    ``PromptCAM.forward(..., return_attention=True)`` gathered at the predicted class.
    """

    def __init__(self, model: PromptCAM) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        m = self.model
        c = m.num_classes
        x = m.embed(images)
        batch = x.shape[0]
        last = len(m.blocks) - 1
        for index, block in enumerate(m.blocks):
            x = torch.cat([m.vpt.prompt_embeddings[index].expand(batch, -1, -1), x], dim=1)
            if index < last:
                x = m.run_block(block, x)[0][:, c:]
        block = m.blocks[last]
        attn = block.attn
        tokens, dim = x.shape[1], x.shape[2]
        heads = attn.num_heads
        qkv = attn.qkv(block.norm1(x)).reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q[:, :, :c]), attn.k_norm(k)  # prompt queries only
        out = F.scaled_dot_product_attention(q, k, v)
        prompts = x[:, :c] + block.ls1(attn.proj(attn.norm(out.transpose(1, 2).reshape(batch, c, dim))))
        prompts = prompts + block.ls2(block.mlp(block.norm2(prompts)))
        logits = m.head(m.norm(prompts)).squeeze(-1)
        top = logits.argmax(-1)
        q_top = q[torch.arange(batch, device=q.device), :, top].unsqueeze(2)  # [B, heads, 1, hd]
        # one row per image and head, in float32 outside autocast: the map's small entries matter
        with torch.autocast(q.device.type, enabled=False):
            scores = (q_top.float() * attn.scale) @ k.float().transpose(-2, -1)
        top_attention = scores.softmax(dim=-1)[:, :, 0, c + 1:]  # patch columns, not renormalised
        return logits.float(), top_attention


def normalize_on_device(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] on the device -> normalised float32 [B, 3, H, W] (as the exported graph does it)."""
    return (pixels.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


def peer_device(requested: str) -> torch.device:
    """The device of the peer rows: ``cuda`` (the comparison) or ``cpu`` (a plumbing check only)."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise Skipped("needs CUDA (fp16 autocast peers run on a GPU only; --peer-device cpu checks the code path)")
    return torch.device(requested)


def eager_peer(name: str, model: PromptCAM, *, device: str = "cuda", compile_backend: str | None = None,
               compile_mode: str | None = None, half: bool = True) -> BenchBackend:
    """``eager-fp16`` or (with ``compile_backend``) ``eager-compile-fp16``.

    Args:
        name: The row name.
        model: The project's PyTorch model (float32 weights; autocast casts per op).
        device: ``cuda``: autocast float16. ``cpu``: autocast bfloat16, to exercise the same code on
            a machine without a GPU; its speed is no statement about the fp16 peer.
        compile_backend: ``torch.compile`` backend (``inductor``; ``eager`` checks the plumbing only).
        compile_mode: ``torch.compile`` mode (None: the default).
        half: Autocast (False: float32 throughout, for exact comparisons in tests).

    Returns:
        The backend; for compiled peers ``first_call_s`` collects the first call per batch size
        (compilation included, as torch.compile specialises on shapes).
    """
    where = peer_device(device)
    dtype = torch.float16 if where.type == "cuda" else torch.bfloat16
    forward = TopClassForward(model).to(where)
    if compile_backend:
        forward = torch.compile(forward, backend=compile_backend, mode=compile_mode, dynamic=False)
    cfg = model.config
    mean = torch.tensor(cfg.mean, dtype=torch.float32, device=where)[:, None, None]
    std = torch.tensor(cfg.std, dtype=torch.float32, device=where)[:, None, None]

    @torch.inference_mode()
    def infer(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # uint8 to the device, normalised there: the same transfer the exported graph gets
        images = normalize_on_device(torch.from_numpy(np.ascontiguousarray(pixels)).to(where), mean, std)
        with torch.autocast(where.type, dtype=dtype, enabled=half):
            logits, top_attention = forward(images)
        # both outputs to the host, as the runtime rows fetch logits and the top class's maps
        return logits.float().cpu().numpy(), top_attention.float().cpu().numpy()

    first_call: dict[int, float] = {}

    def run(pixels: np.ndarray) -> np.ndarray:
        if len(pixels) not in first_call:
            start = time.perf_counter()
            logits = infer(pixels)[0]
            first_call[len(pixels)] = time.perf_counter() - start
            return logits
        return infer(pixels)[0]

    precision = str(dtype).removeprefix("torch.") if half else "off (float32)"
    what = f"autocast {precision}, SDPA in every block, top-class maps recomputed"
    if compile_backend:
        what += f", torch.compile(backend={compile_backend!r}, mode={compile_mode!r}, dynamic=False)"
    where_text = torch.cuda.get_device_name(where) if where.type == "cuda" else "CPU (code-path check, not the peer)"
    return BenchBackend(name, run, f"PyTorch {torch.__version__} {what}, {where_text}",
                        on_torch_cuda=where.type == "cuda", quality=infer,
                        first_call_s=first_call if compile_backend else None)
