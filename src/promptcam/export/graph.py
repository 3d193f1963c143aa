"""The optimised Prompt-CAM ONNX graph (the ``build-graph`` pass).

Blocks 0..L-2 run only the image tokens; the prompts enter as constant keys/values. The last
block computes only the C prompt rows (cls/patch outputs are unused) with constant prompt queries
and prompt-to-prompt scores. Cost is therefore a plain ViT plus C extra keys per block plus the
C-row tail -- not the 2x of pushing C prompts through every layer.

Its inputs and outputs (names, dtypes, shapes) are declared once, in ``promptcam.core.iospec``.

``head_context`` and ``value_mean`` let the runtime rank trait heads with the tiny
``trait_head`` graph instead of re-running the backbone. The ``top_*`` outputs are what
``promptcam-run`` needs by default (explain the predicted class): on a GPU, copying the full
``attention`` of every class to the host costs more than the network (C=200, batch 32: 60 MB).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from promptcam.core.iospec import (
    ATTENTION,
    CLASS_INDEX,
    CLASS_LOGIT,
    HEAD_CONTEXT,
    LOGITS,
    PIXELS,
    TOP_ATTENTION,
    TOP_CLASS,
    TOP_HEAD_CONTEXT,
    VALUE_MEAN,
    GraphSpec,
    TensorSpec,
    model_io,
    trait_head_io,
)

from .constants import BlockWeights, FoldedWeights
from .onnx_builder import GraphBuilder

SQRT_TWO = math.sqrt(2.0)
QUICK_GELU_ALPHA = 1.702  # OpenAI CLIP's QuickGELU: x * sigmoid(1.702 x)


def _value_info(spec: TensorSpec) -> onnx.ValueInfoProto:
    elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype))
    return helper.make_tensor_value_info(spec.name, elem_type, list(spec.shape))


def _model(g: GraphBuilder, name: str, spec: GraphSpec, metadata: dict[str, str] | None) -> onnx.ModelProto:
    """The graph with the inputs and outputs the IO spec declares."""
    return g.model(name, [_value_info(t) for t in spec.inputs], [_value_info(t) for t in spec.outputs],
                   metadata=metadata)


def _layer_norm(g: GraphBuilder, x: str, w: np.ndarray, b: np.ndarray, eps: float) -> str:
    """float32 LayerNormalization (opset 17), result in the compute dtype."""
    y = g.op("LayerNormalization", [x, g.weight("ln_w", w, keep_fp32=True), g.weight("ln_b", b, keep_fp32=True)],
             axis=-1, epsilon=eps)
    return g.to_compute(y)


def _linear(g: GraphBuilder, x: str, w: np.ndarray, b: np.ndarray) -> str:
    return g.op("Add", [g.op("MatMul", [x, g.weight("w", w)]), g.weight("b", b)])


def _gelu(g: GraphBuilder, x: str) -> str:
    # exact (erf) GELU as in timm, in the form torch.onnx writes: x * (1 + erf(x / sqrt 2)) * 0.5.
    # ORT fuses exactly this pattern (Div, not Mul by 1/sqrt 2) into Gelu/BiasGelu; TensorRT too.
    erf = g.op("Erf", [g.op("Div", [x, g.weight("sqrt_two", np.array(SQRT_TWO))])])
    return g.op("Mul", [g.op("Mul", [x, g.op("Add", [erf, g.weight("one", np.array(1.0))])]),
                        g.weight("half", np.array(0.5))])


def _quick_gelu(g: GraphBuilder, x: str) -> str:
    # the pattern ORT's QuickGelu fusion matches: Mul(x, Sigmoid(Mul(x, alpha)))
    return g.op("Mul", [x, g.op("Sigmoid", [g.op("Mul", [x, g.weight("alpha", np.array(QUICK_GELU_ALPHA))])])])


def _activation(g: GraphBuilder, x: str, act: str) -> str:
    return _quick_gelu(g, x) if act == "quick_gelu" else _gelu(g, x)


def _mlp_residual(g: GraphBuilder, x: str, blk: BlockWeights, cfg) -> str:
    with g.scope("mlp"):
        h = _layer_norm(g, x, blk.norm2_w, blk.norm2_b, cfg.norm_eps)
        h = _linear(g, _activation(g, _linear(g, h, blk.fc1_w, blk.fc1_b), cfg.act), blk.fc2_w, blk.fc2_b)
        return g.op("Add", [x, g.to_fp32(h)])


def _split_heads(g: GraphBuilder, x: str, parts: int, heads: int, hd: int) -> list[str]:
    """[B, T, parts*D] -> ``parts`` tensors [B, heads, T, hd]."""
    x = g.op("Reshape", [x, g.ints("shape", [0, 0, parts, heads, hd])])
    x = g.op("Transpose", [x], perm=[2, 0, 3, 1, 4])
    if parts == 1:
        return [g.op("Squeeze", [x, g.ints("axis", [0])])]
    pieces = g.op("Split", [x], n_out=parts, axis=0)
    return [g.op("Squeeze", [p, g.ints("axis", [0])]) for p in pieces]


def _gather_class(g: GraphBuilder, x: str, index: str, batch: str, tail: Sequence[int]) -> str:
    """x[b, index[b]] for x [B, C, *tail] and index int64 [B] -> [B, *tail]."""
    rank = len(tail) + 2
    where = g.op("Reshape", [index, g.ints("index_shape", [-1] + [1] * (rank - 1))])
    where = g.op("Expand", [where, g.op("Concat", [batch, g.ints("one_tail", [1, *tail])], axis=0)])
    return g.op("Squeeze", [g.op("GatherElements", [x, where], axis=1), g.ints("class_axis", [1])])


def _with_prompts(g: GraphBuilder, prompt: np.ndarray, tokens: str, bhcd_shape: str) -> str:
    """Concat constant prompt keys/values [heads, C, hd] (broadcast over batch) before the image ones."""
    const = g.weight("prompt_kv", prompt[None])
    return g.op("Concat", [g.op("Expand", [const, bhcd_shape]), tokens], axis=2)


def _fused_attention(g: GraphBuilder, qkv: str, blk: BlockWeights, cfg, bcd_shape: str) -> str:
    """ORT's MultiHeadAttention (com.microsoft) on [B, T, D] tensors: on CUDA a flash /
    memory-efficient kernel that never writes the [B, heads, T, C + T] scores to memory."""
    d, c = cfg.embed_dim, cfg.num_classes
    q, k, v = g.op("Split", [qkv, g.ints("split", [d, d, d])], n_out=3, axis=2)

    def with_prompts(prompt: np.ndarray, tokens: str) -> str:  # [heads, C, hd] -> [B, C + T, D]
        const = g.weight("prompt_kv", prompt.transpose(1, 0, 2).reshape(1, c, d))
        return g.op("Concat", [g.op("Expand", [const, bcd_shape]), tokens], axis=1)

    # the 1/sqrt(hd) scale is already folded into the query weights
    return g.op("MultiHeadAttention", [q, with_prompts(blk.prompt_keys, k), with_prompts(blk.prompt_values, v)],
                domain="com.microsoft", num_heads=cfg.num_heads, scale=1.0)


def _explicit_attention(g: GraphBuilder, qkv: str, blk: BlockWeights, cfg, bhcd_shape: str) -> str:
    """Attention in standard ONNX ops (TensorRT, any runtime): [B, T, 3D] -> [B, T, D]."""
    q, k, v = _split_heads(g, qkv, 3, cfg.num_heads, cfg.head_dim)
    keys = _with_prompts(g, blk.prompt_keys, k, bhcd_shape)
    values = _with_prompts(g, blk.prompt_values, v, bhcd_shape)
    scores = g.op("MatMul", [q, g.op("Transpose", [keys], perm=[0, 1, 3, 2])])
    probs = g.to_compute(g.op("Softmax", [g.to_fp32(scores)], axis=-1))
    ctx = g.op("Transpose", [g.op("MatMul", [probs, values])], perm=[0, 2, 1, 3])
    return g.op("Reshape", [ctx, g.ints("shape", [0, 0, cfg.embed_dim])])


def _image_block(g: GraphBuilder, x: str, blk: BlockWeights, cfg, bhcd_shape: str, bcd_shape: str | None) -> str:
    """One block for the image tokens; prompts only contribute constant keys and values.
    ``bcd_shape`` given: ORT's fused attention; None: standard ONNX ops."""
    with g.scope("attn"):
        h = _layer_norm(g, x, blk.norm1_w, blk.norm1_b, cfg.norm_eps)
        qkv = _linear(g, h, blk.qkv_w, blk.qkv_b)
        if bcd_shape is not None:
            ctx = _fused_attention(g, qkv, blk, cfg, bcd_shape)
        else:
            ctx = _explicit_attention(g, qkv, blk, cfg, bhcd_shape)
        x = g.op("Add", [x, g.to_fp32(_linear(g, ctx, blk.proj_w, blk.proj_b))])
    return _mlp_residual(g, x, blk, cfg)


def prompt_tail(g: GraphBuilder, context: str, prompt_tokens: str, blk: BlockWeights, fw: FoldedWeights) -> str:
    """Prompt rows after attention: proj + residual, MLP, final LayerNorm, shared head -> logits.

    Args:
        context: per-head attention output, [..., D] in the compute dtype.
        prompt_tokens: float32 residual input of those prompt rows, [..., D].
    """
    cfg = fw.config
    x = g.op("Add", [prompt_tokens, g.to_fp32(_linear(g, context, blk.proj_w, blk.proj_b))])
    x = _mlp_residual(g, x, blk, cfg)
    with g.scope("head"):
        y = g.op("LayerNormalization", [x, g.weight("norm_w", fw.norm_w, keep_fp32=True),
                                        g.weight("norm_b", fw.norm_b, keep_fp32=True)],
                 axis=-1, epsilon=cfg.norm_eps)
        # the head stays float32: logits decide top-1 and trait ranking
        y = g.op("Add", [g.op("MatMul", [y, g.weight("head_w", fw.head_w, keep_fp32=True)]),
                         g.weight("head_b", fw.head_b, keep_fp32=True)])
        return g.op("Squeeze", [y, g.ints("axis", [-1])])


def build_promptcam_graph(
    fw: FoldedWeights,
    *,
    compute_dtype: np.dtype = np.dtype(np.float32),
    opset: int = 17,
    metadata: dict[str, str] | None = None,
    fused_attention: bool = False,
) -> onnx.ModelProto:
    """Build the optimised graph from folded weights.

    Args:
        fw: Output of ``fold_prompt_constants``.
        compute_dtype: float32, or float16 for GPUs (LayerNorm/softmax/residuals stay float32).
        opset: ONNX opset (>= 17 for LayerNormalization).
        metadata: ``metadata_props`` to store.
        fused_attention: Blocks 0..L-2 use ONNX Runtime's ``MultiHeadAttention`` contrib op (the
            model for ORT); False: standard ONNX ops only (the graph TensorRT builds from). The last
            block always computes its prompt rows' softmax explicitly: it is the explanation.

    Returns:
        The ONNX model.
    """
    cfg = fw.config
    c, heads, hd, d = cfg.num_classes, cfg.num_heads, cfg.head_dim, cfg.embed_dim
    g = GraphBuilder(compute_dtype, opset)

    with g.scope("embed"):
        pixels = g.op("Cast", [PIXELS], to=TensorProto.FLOAT)
        pixels = g.to_compute(g.op("Transpose", [pixels], perm=[0, 3, 1, 2]))
        # normalisation is folded into the convolution weights
        patches = g.op("Conv", [pixels, g.weight("patch_w", fw.patch_w), g.weight("patch_b", fw.patch_b)],
                       kernel_shape=[cfg.patch_size] * 2, strides=[cfg.patch_size] * 2)
        patches = g.op("Transpose", [g.op("Reshape", [g.to_fp32(patches), g.ints("shape", [0, d, -1])])],
                       perm=[0, 2, 1])
        patches = g.op("Add", [patches, g.weight("patch_pos", fw.patch_pos, keep_fp32=True)])
        batch = g.op("Shape", [PIXELS], start=0, end=1)
        cls = g.op("Expand", [g.weight("cls_pos", fw.cls_pos, keep_fp32=True),
                              g.op("Concat", [batch, g.ints("one_d", [1, d])], axis=0)])
        x = g.op("Concat", [cls, patches], axis=1)  # [B, 1 + N, D], float32 residual stream
        if fw.pre_norm_w is not None:  # CLIP's ln_pre, before the prompts join; stays float32
            x = g.op("LayerNormalization", [x, g.weight("pre_norm_w", fw.pre_norm_w, keep_fp32=True),
                                            g.weight("pre_norm_b", fw.pre_norm_b, keep_fp32=True)],
                     axis=-1, epsilon=cfg.norm_eps)
        bhcd_shape = g.op("Concat", [batch, g.ints("hcd", [heads, c, hd])], axis=0)
        bcd_shape = g.op("Concat", [batch, g.ints("cd", [c, d])], axis=0) if fused_attention else None

    for index, blk in enumerate(fw.blocks[:-1]):
        with g.scope(f"block{index}"):
            x = _image_block(g, x, blk, cfg, bhcd_shape, bcd_shape)

    blk = fw.blocks[-1]
    with g.scope(f"block{cfg.depth - 1}"), g.scope("prompt_rows"):
        h = _layer_norm(g, x, blk.norm1_w, blk.norm1_b, cfg.norm_eps)
        # only keys and values of the image tokens: their queries would produce unused outputs
        with g.scope("image_kv"):
            k, v = _split_heads(g, _linear(g, h, blk.qkv_w[:, d:], blk.qkv_b[d:]), 2, heads, hd)
        values = _with_prompts(g, blk.prompt_values, v, bhcd_shape)  # [B, heads, C + T, hd]
        image_scores = g.op("MatMul", [g.weight("prompt_q", fw.last_prompt_queries),
                                       g.op("Transpose", [k], perm=[0, 1, 3, 2])])  # [B, heads, C, T]
        prompt_scores = g.op("Expand", [g.weight("prompt_scores", fw.last_prompt_scores, keep_fp32=True),
                                        g.op("Concat", [batch, g.ints("hcc", [heads, c, c])], axis=0)])
        scores = g.op("Concat", [prompt_scores, g.to_fp32(image_scores)], axis=-1)
        probs = g.op("Softmax", [scores], axis=-1)  # float32 [B, heads, C, C + 1 + N]
        patch_probs = g.op("Slice", [probs, g.ints("start", [c + 1]), g.ints("end", [c + 1 + cfg.num_patches]),
                                     g.ints("axis", [3])])
        g.rename(g.op("Transpose", [patch_probs], perm=[0, 2, 1, 3]), ATTENTION)
        ctx = g.op("Transpose", [g.op("MatMul", [g.to_compute(probs), values])], perm=[0, 2, 1, 3])
        g.rename(g.to_fp32(ctx), HEAD_CONTEXT)  # [B, C, heads, hd]
        g.rename(g.to_fp32(g.reduce_mean(values, 2)), VALUE_MEAN)
        ctx = g.op("Reshape", [ctx, g.ints("shape", [0, c, d])])
        tokens = g.weight("prompt_tokens", fw.last_prompt_tokens, keep_fp32=True)
        logits = g.rename(prompt_tail(g, ctx, tokens, blk, fw), LOGITS)

    with g.scope(TOP_CLASS):
        top = g.rename(g.op("ArgMax", [logits], axis=1, keepdims=0), TOP_CLASS)
        g.rename(_gather_class(g, ATTENTION, top, batch, [heads, cfg.num_patches]), TOP_ATTENTION)
        g.rename(_gather_class(g, HEAD_CONTEXT, top, batch, [heads, hd]), TOP_HEAD_CONTEXT)
    return _model(g, "promptcam", model_io(cfg), metadata)


def build_trait_head_graph(fw: FoldedWeights, *, opset: int = 17,
                           metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """The last block's prompt-row tail alone: (head_context, class_index) -> class logit.

    Inputs (``iospec.trait_head_io``): head-context rows of the main graph's output, some heads
    replaced by ``value_mean`` to blur them, and the class of each row; output: that class's logit.
    Always float32: it is tiny and decides the trait ranking.
    """
    cfg = fw.config
    g = GraphBuilder(np.dtype(np.float32), opset)
    with g.scope("trait_head"):
        ctx = g.op("Reshape", [HEAD_CONTEXT, g.ints("shape", [0, cfg.embed_dim])])
        tokens = g.op("Gather", [g.weight("prompt_tokens", fw.last_prompt_tokens), CLASS_INDEX], axis=0)
        g.rename(prompt_tail(g, ctx, tokens, fw.blocks[-1], fw), CLASS_LOGIT)
    return _model(g, "promptcam_trait_head", trait_head_io(cfg), metadata)
