"""The ``validate`` pass: ORT vs eager PyTorch on fixed inputs, with numbers (optimum/Polygraphy style)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort
import torch

from promptcam.models.preprocess import normalize_pixels
from promptcam.models.promptcam import PromptCAM

# fp32 graphs must match eager this closely on logits; a wrong graph is never written silently
FP32_LOGIT_TOLERANCE = 1e-4
AGREEMENT_WARNING = 0.99


@dataclass
class OutputCheck:
    """Comparison of one output tensor at one batch size."""

    output: str
    batch: int
    max_abs_diff: float
    mean_abs_diff: float
    max_rel_diff: float
    top1_agreement: float | None = None  # logits only
    min_correlation: float | None = None  # attention only: per (image, class, head) map
    mean_correlation: float | None = None

    def line(self) -> str:
        extra = ""
        if self.top1_agreement is not None:
            extra = f" top1_agreement={self.top1_agreement:.4f}"
        if self.mean_correlation is not None:
            extra = f" corr(mean/min)={self.mean_correlation:.5f}/{self.min_correlation:.5f}"
        return (f"{self.output:<10} batch={self.batch:<3} max_abs={self.max_abs_diff:.3e} "
                f"mean_abs={self.mean_abs_diff:.3e} max_rel={self.max_rel_diff:.3e}{extra}")


@torch.no_grad()
def eager_outputs(model: PromptCAM, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eager logits and attention for a uint8 NHWC batch."""
    logits, attention = model.eval()(normalize_pixels(pixels, model.config), return_attention=True)
    return logits.numpy(), attention.numpy()


def _rowwise_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    denom = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    return np.where(denom > 0, (a * b).sum(-1) / np.maximum(denom, 1e-30), 1.0)


def compare(output: str, batch: int, got: np.ndarray, want: np.ndarray) -> OutputCheck:
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    check = OutputCheck(output, batch, float(diff.max()), float(diff.mean()),
                        float((diff / np.maximum(np.abs(want), 1e-6)).max()))
    if output == "logits":
        check.top1_agreement = float((got.argmax(-1) == want.argmax(-1)).mean())
    elif output == "attention":
        corr = _rowwise_correlation(got.reshape(-1, got.shape[-1]), want.reshape(-1, want.shape[-1]))
        check.min_correlation, check.mean_correlation = float(corr.min()), float(corr.mean())
    return check


def validate_session(
    session: ort.InferenceSession,
    trait_head: ort.InferenceSession,
    model: PromptCAM,
    batches: list[np.ndarray],
) -> list[OutputCheck]:
    """Run ORT and eager on each pixel batch; also check the trait-head graph reproduces the logits."""
    checks: list[OutputCheck] = []
    for pixels in batches:
        names = ["logits", "attention", "head_context", "top_class", "top_attention", "top_head_context"]
        logits, attention, head_context, top_class, top_attention, top_head_context = session.run(
            names, {"pixels": pixels})
        want_logits, want_attention = eager_outputs(model, pixels)
        checks.append(compare("logits", len(pixels), logits, want_logits))
        checks.append(compare("attention", len(pixels), attention, want_attention))
        # the top-class outputs must be exact slices of the full ones (the runtime uses either)
        rows = np.arange(len(pixels))
        checks.append(compare("top_class", len(pixels), top_class, logits.argmax(-1)))
        checks.append(compare("top_attention", len(pixels), top_attention, attention[rows, top_class]))
        checks.append(compare("top_head_context", len(pixels), top_head_context, head_context[rows, top_class]))
        # trait head on the unblurred context of every class must give back the logits
        b, c = logits.shape
        rows = head_context.reshape(b * c, *head_context.shape[2:])
        class_logit = trait_head.run(None, {"head_context": rows, "class_index": np.tile(np.arange(c), b)})[0]
        checks.append(compare("trait_head", len(pixels), class_logit.reshape(b, c), logits))
    return checks


def summarize(checks: list[OutputCheck]) -> dict[str, object]:
    """Worst case per output, for the manifest."""
    summary: dict[str, object] = {"checks": [asdict(c) for c in checks]}
    for name in {c.output for c in checks}:
        rows = [c for c in checks if c.output == name]
        summary[f"{name}_max_abs_diff"] = max(c.max_abs_diff for c in rows)
    agreements = [c.top1_agreement for c in checks if c.top1_agreement is not None]
    correlations = [c.min_correlation for c in checks if c.min_correlation is not None]
    attention = [c for c in checks if c.mean_correlation is not None]
    images = sum(c.batch for c in checks if c.output == "logits")
    summary["images"] = images
    # agreement over all validation images (weighted by batch), not the worst batch
    summary["top1_agreement"] = (sum(c.top1_agreement * c.batch for c in checks if c.top1_agreement is not None)
                                 / images) if agreements else None
    summary["attention_min_correlation"] = min(correlations) if correlations else None
    summary["attention_mean_correlation"] = (sum(c.mean_correlation * c.batch for c in attention)
                                             / sum(c.batch for c in attention)) if attention else None
    return summary
