"""The model against an independent, deliberately naive reference written from the published semantics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import TINY, perturbed_model
from promptcam.core.traits import greedy_head_ranking
from promptcam.models.blur import blurred_class_scores, rank_trait_heads
from promptcam.models.checkpoint import load_model


def naive_forward(sd: dict[str, torch.Tensor], images: torch.Tensor, heads: int, eps: float = 1e-6,
                  blur: dict[int, list[int]] | None = None, act: str = "gelu") -> tuple[torch.Tensor, torch.Tensor]:
    """Step by step, float64, from an official-layout state dict. ``blur``: class -> heads to blur.

    CLIP layout (BioCLIP): no patch bias, ``norm_pre`` (ln_pre) on [cls, patches] before the prompts
    join, ``act="quick_gelu"``: x * sigmoid(1.702 x).
    """
    sd = {k: v.double() for k, v in sd.items()}
    x = images.double()
    w = sd["patch_embed.proj.weight"]
    p = w.shape[-1]
    x = torch.nn.functional.conv2d(x, w, sd.get("patch_embed.proj.bias"), stride=p)  # [B, D, g, g]
    x = x.flatten(2).transpose(1, 2)  # [B, N, D]
    b, n, d = x.shape
    x = torch.cat([sd["cls_token"].expand(b, 1, d), x], dim=1) + sd["pos_embed"]
    prompts = sd["vpt.prompt_embeddings"]
    depth, c = prompts.shape[0], prompts.shape[1]

    def ln(t: torch.Tensor, prefix: str) -> torch.Tensor:
        mu = t.mean(-1, keepdim=True)
        var = ((t - mu) ** 2).mean(-1, keepdim=True)
        return (t - mu) / torch.sqrt(var + eps) * sd[prefix + ".weight"] + sd[prefix + ".bias"]

    if "norm_pre.weight" in sd:
        x = ln(x, "norm_pre")

    attention = None
    for layer in range(depth):
        pre = f"blocks.{layer}."
        x = torch.cat([prompts[layer].expand(b, c, d), x], dim=1)
        t = x.shape[1]
        h = ln(x, pre + "norm1")
        qkv = h @ sd[pre + "attn.qkv.weight"].T + sd[pre + "attn.qkv.bias"]
        q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
        hd = d // heads
        out = torch.zeros(b, t, d, dtype=torch.float64)
        probs_all = torch.zeros(b, heads, t, t, dtype=torch.float64)
        for head in range(heads):
            sl = slice(head * hd, (head + 1) * hd)
            scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(hd)
            if layer == depth - 1 and blur:
                for cls_index, blurred in blur.items():
                    if head in blurred:
                        scores[:, cls_index, :] = 0.0
            probs = torch.softmax(scores, dim=-1)
            probs_all[:, head] = probs
            out[..., sl] = probs @ v[..., sl]
        out = out @ sd[pre + "attn.proj.weight"].T + sd[pre + "attn.proj.bias"]
        if pre + "ls1.gamma" in sd:
            out = out * sd[pre + "ls1.gamma"]
        x = x + out
        h = ln(x, pre + "norm2")
        h = h @ sd[pre + "mlp.fc1.weight"].T + sd[pre + "mlp.fc1.bias"]
        h = h * torch.sigmoid(1.702 * h) if act == "quick_gelu" else 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        h = h @ sd[pre + "mlp.fc2.weight"].T + sd[pre + "mlp.fc2.bias"]
        if pre + "ls2.gamma" in sd:
            h = h * sd[pre + "ls2.gamma"]
        x = x + h
        if layer < depth - 1:
            x = x[:, c:]
        else:
            attention = probs_all[:, :, :c, c + 1:].permute(0, 2, 1, 3)
    x = ln(x, "norm")
    logits = (x[:, :c] @ sd["head.weight"].T + sd["head.bias"]).squeeze(-1)
    return logits, attention


@pytest.mark.parametrize("layout", sorted(TINY))
def test_model_matches_naive_reference(layout: str, tmp_path) -> None:
    from helpers import official_checkpoint

    source = perturbed_model(**TINY[layout], seed=3)
    path = official_checkpoint(source, tmp_path / "official.pth")
    model = load_model(path)  # through the official import: a dropped key would show here
    sd = torch.load(path, weights_only=True)["model_state_dict"]
    images = torch.randn(3, 3, model.config.img_size, model.config.img_size)
    with torch.no_grad():
        logits, attention = model(images, return_attention=True)
    want_logits, want_attention = naive_forward(sd, images, model.config.num_heads)
    assert logits.shape == (3, model.num_classes)
    assert attention.shape == (3, model.num_classes, model.config.num_heads, model.config.num_patches)
    torch.testing.assert_close(logits.double(), want_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(attention.double(), want_attention, atol=1e-5, rtol=0)
    # attention over patches alone is not renormalised: rows sum to less than one
    assert float(attention.sum(-1).max()) < 1.0


def test_every_parameter_group_matters() -> None:
    """Perturbing any one parameter tensor changes the logits: none is silently unused."""
    model = perturbed_model(**TINY["dinov2"], seed=1)
    images = torch.randn(2, 3, model.config.img_size, model.config.img_size)
    with torch.no_grad():
        base, _ = model(images)
        for name, p in model.named_parameters():
            saved = p.clone()
            # random, not constant: LayerNorm removes a constant shift of a token exactly
            p.add_(torch.randn_like(p) * 0.5)
            changed, _ = model(images)
            p.copy_(saved)
            assert not torch.allclose(changed, base, atol=1e-6), name


@pytest.mark.slow
def test_vit_b_size_checkpoint_matches_reference(tmp_path) -> None:
    from helpers import official_checkpoint

    source = perturbed_model("dino_vitb16", 200, seed=5)
    path = official_checkpoint(source, tmp_path / "vitb.pth")
    model = load_model(path)
    assert model.config.arch == "dino_vitb16" and model.config.num_heads == 12 and model.config.num_patches == 196
    sd = torch.load(path, weights_only=True)["model_state_dict"]
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        logits, attention = model(images, return_attention=True)
    want_logits, want_attention = naive_forward(sd, images, 12)
    torch.testing.assert_close(logits.double(), want_logits, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(attention.double(), want_attention, atol=1e-5, rtol=0)


def test_blurring_matches_reference() -> None:
    model = perturbed_model(**TINY["dino"], seed=2)
    sd = model.state_dict()
    image = torch.randn(3, model.config.img_size, model.config.img_size)
    sets = [[0], [1, 3], [0, 1, 2, 3]]
    got = blurred_class_scores(model, image, 2, sets)
    for blur_set, score in zip(sets, got, strict=True):
        logits, _ = naive_forward(sd, image[None], model.config.num_heads, blur={2: blur_set})
        assert score == pytest.approx(float(torch.softmax(logits, -1)[0, 2]), abs=1e-6)
    # blurring every head makes the row uniform over all C + 1 + N keys
    mask = torch.zeros(1, model.num_classes, model.config.num_heads, dtype=torch.bool)
    mask[0, 2] = True
    with torch.no_grad():
        _, attention = model(image[None], return_attention=True, blur_mask=mask)
    uniform = 1.0 / (model.num_classes + 1 + model.config.num_patches)
    assert torch.allclose(attention[0, 2], torch.full_like(attention[0, 2], uniform))


def test_greedy_ranking_matches_naive_search() -> None:
    model = perturbed_model(**TINY["dino"], seed=4)
    sd = model.state_dict()
    image = torch.randn(3, model.config.img_size, model.config.img_size)
    heads = model.config.num_heads
    ranking = rank_trait_heads(model, image, class_index=1, k=2)

    # naive greedy, one reference forward per candidate
    blurred: list[int] = []
    remaining = list(range(heads))
    while len(remaining) > 1:
        scores = []
        for h in remaining:
            logits, _ = naive_forward(sd, image[None], heads, blur={1: blurred + [h]})
            scores.append(float(torch.softmax(logits, -1)[0, 1]))
        blurred.append(remaining.pop(int(np.argmax(scores))))
    assert ranking.order == remaining + blurred[::-1]
    assert set(ranking.top_heads) == set(ranking.order[:2])
    assert sorted(ranking.order) == list(range(heads))


def test_greedy_ranking_counts_evaluations() -> None:
    """12 heads, k=4: the official search evaluates 12+11+...+5 = 68 blurred forwards to reach 4."""
    calls: list[int] = []

    def evaluate(sets):
        calls.append(len(sets))
        return np.array([-(sum(s)) for s in sets], dtype=float)  # blurring high heads hurts most

    ranking = greedy_head_ranking(evaluate, 12, k=4)
    assert sum(calls[:8]) == 68
    assert ranking.top_heads == [11, 10, 9, 8] and ranking.order[:4] == [11, 10, 9, 8]
    with pytest.raises(ValueError):
        greedy_head_ranking(evaluate, 12, k=13)
