"""Stand-in for DINO pretraining on the synthetic world: a small ViT trained supervised, then frozen.

Prompts on a frozen *random* backbone do not learn; real users start from DINO/DINOv2 weights,
the offline demo and tests start from this.
"""

from __future__ import annotations

from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader

from promptcam.models.registry import make_config

from .data import CACHE_MB, ImageFolderData, cache_images, find_classes, list_samples
from .loop import seed_everything


def pretrain_backbone(
    data: Path,
    out: Path,
    *,
    arch: str = "vit_micro_patch8",
    epochs: int = 6,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    local_weight: float = 0.0,
    pool: str = "token",
    cache_mb: int = CACHE_MB,
    log=print,  # noqa: ANN001
) -> Path:
    """Train a timm ViT classifier on ``data/train`` and save its backbone state dict (no head).

    ``local_weight`` > 0 adds a self-supervised term: every final patch token must also reconstruct
    its own patch's pixels. Classification alone lets the blocks copy the trait colours into any
    token; DINO's patch features, which this backbone stands in for, stay local, and Prompt-CAM's
    maps are only as local as the tokens they attend to. The target is the patch as the model sees
    it, not normalised per patch as MAE does: that normalisation maps every flat patch to zero, so
    the inside of a white tail and of the grey body asked the same of their tokens, and prompts of
    white-tailed classes found nothing local to attend to.

    ``pool`` is what the classification loss sees: ``"token"`` the [cls] token (timm's default),
    ``"avg"`` the mean of the patch tokens. Through [cls], patch tokens are free scratch space: the
    blocks can park the class evidence on background patches, and a prompt may then classify from
    there. Averaging makes each patch token answer for its own patch, the reason CAM classifies
    from a global average: the evidence stays on the trait patches that Prompt-CAM should point at.
    The saved state dict has the same keys either way (the final norm stays ``norm``).
    """
    if pool not in ("token", "avg"):
        raise ValueError(f"pool must be 'token' or 'avg', not {pool!r}")
    seed_everything(seed)
    train_dir = Path(data) / "train"
    folders = [f for f, _ in find_classes(train_dir)]
    config = make_config(arch, len(folders))
    model = VisionTransformer(img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
                              depth=config.depth, num_heads=config.num_heads, num_classes=len(folders),
                              init_values=1e-5 if config.layerscale else None, global_pool=pool, fc_norm=False)
    # no augmentation: the synthetic world already varies position, size and facing
    images = ImageFolderData(list_samples(train_dir, folders), config, train=False)
    # cached: read in this process (nothing left for workers to do, so their start method does not matter)
    workers = 0 if cache_images([images], cache_mb, 0, log) else 2
    loader = DataLoader(images, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        generator=torch.Generator().manual_seed(seed))
    patch = config.patch_size
    decoder = torch.nn.Linear(config.embed_dim, patch * patch * 3)  # dropped after pretraining
    optimizer = torch.optim.AdamW([*model.parameters(), *decoder.parameters()], lr=lr, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(loader))
    for epoch in range(epochs):
        model.train()
        correct = total = 0
        for images, labels in loader:
            tokens = model.forward_features(images)
            logits = model.forward_head(tokens)
            loss = torch.nn.functional.cross_entropy(logits, labels)
            if local_weight:
                prefix = model.num_prefix_tokens
                loss = loss + local_weight * torch.nn.functional.mse_loss(
                    decoder(tokens[:, prefix:]), patch_pixels(images, patch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            correct += int((logits.argmax(-1) == labels).sum())
            total += len(labels)
        log(f"pretrain epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, train acc {correct / total:.1%}")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    return out


def patch_pixels(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, N, patch*patch*3]: each patch's (model-normalised) pixels, row-major patches."""
    b, c, h, w = images.shape
    patches = images.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(b, (h // patch) * (w // patch), patch * patch * c)
