"""The ``validate`` passes: the runtime's own backend vs eager PyTorch on fixed inputs, with numbers.

Each output is compared per batch (optimum / Polygraphy style) and gets one ``OutputCheck``: the
absolute and relative differences, the reference's scale and, where the output is gated, the
tolerance it had to meet. Tolerances scale with the output: float32 error of a 12-layer ViT grows
with the logits' magnitude (an official-layout ViT-B with logits of +-40 differs from eager by
2-4e-4 in ORT, 1e-5 relative -- plain float32 rounding), so a fixed absolute bound either refuses
correct graphs at real scale or is too loose at small scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnxruntime as ort
import torch

from promptcam.core.iospec import (
    ATTENTION,
    CLASS_INDEX,
    HEAD_CONTEXT,
    LOGITS,
    TOP_CLASS,
    TOP_OUTPUTS,
    TOP_SLICE_OF,
)
from promptcam.models.preprocess import normalize_pixels
from promptcam.models.promptcam import PromptCAM
from promptcam.runtime.backends.base import Backend

from .gates import flat_maps, map_correlation

AGREEMENT_WARNING = 0.99
TRAIT_HEAD = "trait_head"  # the trait-head graph's class logits, checked against the main graph's logits
# An fp32 graph must satisfy max|got - want| <= factor * max(1, max|want|) on each of these outputs
# (the others are exact slices or have no eager counterpart).
# Logits: 1e-4 of their scale. Measured on an official-layout ViT-B/16, C=200, logits to +-55 with
# sharp attention: 3-4e-4 absolute = 7e-6 of the scale, so ~15x margin; a folded constant off by 1e-3
# relative moves the logits by a good part of that 1e-3 of their scale and fails.
# Attention: probabilities (scale <= 1, so the bound is absolute), 1e-3. Their float32 error grows
# with the sharpness of the softmax: 1-2e-6 on a mildly perturbed ViT-B, 4e-5 with peaks of 0.99,
# 6e-4 on an extreme one with peaks of 0.99999. 1e-3 stays clear of rounding, and a wrong slice or a
# wrong block moves whole maps by far more; subtler weight errors are caught on the logits.
FP32_TOLERANCE = 1e-4
FP32_FACTORS = {LOGITS: FP32_TOLERANCE, TRAIT_HEAD: FP32_TOLERANCE, ATTENTION: 1e-3}


@dataclass
class OutputCheck:
    """Comparison of one output tensor at one batch size.

    Attributes:
        max_abs_diff / mean_abs_diff: Absolute differences.
        max_rel_diff: Largest element-wise relative difference (|diff| / max(|want|, 1e-6)); noisy
            near zero, reported only.
        reference_scale: max |want|.
        scaled_diff: max_abs_diff / max(1, reference_scale): what the tolerance bounds.
        tolerance: The absolute bound applied (``tolerance_factor * max(1, reference_scale)``); None:
            reported, not gated (reduced precisions).
        passed: Whether it met the tolerance (None when not gated).
    """

    output: str
    batch: int
    max_abs_diff: float
    mean_abs_diff: float
    max_rel_diff: float
    reference_scale: float = 0.0
    scaled_diff: float = 0.0
    tolerance: float | None = None
    passed: bool | None = None
    top1_agreement: float | None = None  # logits only
    min_correlation: float | None = None  # attention only: per (image, class, head) map
    flat_maps: int | None = None  # attention only: reference maps without spread (see gates.FLAT_MAP_SPREAD)
    mean_correlation: float | None = None

    def line(self) -> str:
        """One Polygraphy-style line: ``PASSED | Output: 'logits' batch=4 | ...``."""
        verdict = {True: "PASSED", False: "FAILED", None: "REPORT"}[self.passed]
        if self.tolerance == 0:
            bound = " (must be an exact slice)"
        else:
            bound = "" if self.tolerance is None else f" {'<=' if self.passed else '>'} {self.tolerance:.2e}"
        extra = ""
        if self.top1_agreement is not None:
            extra = f" top1_agreement={self.top1_agreement:.4f}"
        if self.mean_correlation is not None:
            extra = f" corr(mean/min)={self.mean_correlation:.5f}/{self.min_correlation:.5f}"
            if self.flat_maps:
                extra += f" ({self.flat_maps} flat maps compared by max_abs)"
        return (f"{verdict} | Output: {self.output!r:<18} batch={self.batch:<3} | max_abs={self.max_abs_diff:.3e}"
                f"{bound} (scale {self.reference_scale:.3g}, rel to scale {self.scaled_diff:.2e}) "
                f"mean_abs={self.mean_abs_diff:.3e} max_rel={self.max_rel_diff:.3e}{extra}")


def tolerance_factor(output: str, precision: str) -> float | None:
    """The gate on ``output``: a factor of max(1, max|reference|), or None (reported only).

    The top-class outputs are slices of the graph's own outputs: exact (0) in any precision. fp32
    outputs with an eager counterpart must agree to ``FP32_FACTORS`` of their scale. Reduced
    precisions (fp16, int8) are reported and warned about: their agreement is a property of the
    precision, not a sign of a wrong graph.
    """
    if output in TOP_OUTPUTS:
        return 0.0
    if precision == "fp32":
        return FP32_FACTORS.get(output)
    return None


@torch.no_grad()
def eager_outputs(model: PromptCAM, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eager logits and attention for a uint8 NHWC batch."""
    logits, attention = model.eval()(normalize_pixels(pixels, model.config), return_attention=True)
    return logits.numpy(), attention.numpy()


def compare(output: str, batch: int, got: np.ndarray, want: np.ndarray, factor: float | None = None) -> OutputCheck:
    """Differences of ``got`` from ``want``; gated at ``factor * max(1, max|want|)`` when a factor is given."""
    want64 = want.astype(np.float64)
    diff = np.abs(got.astype(np.float64) - want64)
    scale = float(np.abs(want64).max()) if want.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    check = OutputCheck(output, batch, max_abs, float(diff.mean()) if diff.size else 0.0,
                        float((diff / np.maximum(np.abs(want64), 1e-6)).max()) if diff.size else 0.0,
                        reference_scale=scale, scaled_diff=max_abs / max(1.0, scale))
    if factor is not None:
        check.tolerance = factor * max(1.0, scale)
        check.passed = bool(max_abs <= check.tolerance)
    if output == LOGITS:
        check.top1_agreement = float((got.argmax(-1) == want.argmax(-1)).mean())
    elif output == ATTENTION:
        rows_got, rows_want = got.reshape(-1, got.shape[-1]), want.reshape(-1, want.shape[-1])
        flat = flat_maps(rows_want.astype(np.float64))
        corr = map_correlation(rows_got, rows_want, flat)
        check.min_correlation, check.mean_correlation = float(corr.min()), float(corr.mean())
        check.flat_maps = int(flat.sum())
    return check


def validate_backend(
    backend: Backend,
    trait_head: ort.InferenceSession,
    model: PromptCAM,
    batches: list[np.ndarray],
    precision: str,
) -> list[OutputCheck]:
    """Run the runtime backend and eager on each pixel batch; also check the trait head reproduces the logits.

    Args:
        backend: The exported graph loaded by the runtime's backend for the target engine.
        trait_head: ``trait_head.onnx`` in ONNX Runtime (always float32).
        model: The eager model.
        batches: uint8 pixel batches [B, H, W, 3].
        precision: The export's precision (decides which outputs are gated, see ``tolerance_factor``).

    Returns:
        One check per output and batch, in order.
    """
    checks: list[OutputCheck] = []

    def check(output: str, n: int, got: np.ndarray, want: np.ndarray) -> None:
        checks.append(compare(output, n, got, want, tolerance_factor(output, precision)))

    for pixels in batches:
        n = len(pixels)
        out = backend.infer(pixels, (LOGITS, ATTENTION, HEAD_CONTEXT, *TOP_OUTPUTS))
        want_logits, want_attention = eager_outputs(model, pixels)
        check(LOGITS, n, out[LOGITS], want_logits)
        check(ATTENTION, n, out[ATTENTION], want_attention)
        # the top-class outputs must be exact slices of the full ones (the runtime uses either)
        top, rows = out[TOP_CLASS], np.arange(n)
        check(TOP_CLASS, n, top, out[LOGITS].argmax(-1))
        for name, full in TOP_SLICE_OF.items():
            check(name, n, out[name], out[full][rows, top])
        # trait head on the unblurred context of every class must give back the logits
        b, c = out[LOGITS].shape
        context = out[HEAD_CONTEXT].reshape(b * c, *out[HEAD_CONTEXT].shape[2:])
        class_logit = trait_head.run(None, {HEAD_CONTEXT: context, CLASS_INDEX: np.tile(np.arange(c), b)})[0]
        check(TRAIT_HEAD, n, class_logit.reshape(b, c), out[LOGITS])
    return checks


def fit_batches(batches: list[np.ndarray], low: int, high: int | None) -> list[np.ndarray]:
    """The validation batches cut to what an engine's batch profile accepts (``low``..``high`` images)."""
    fitted = []
    for pixels in batches:
        step = high or len(pixels)
        fitted += [pixels[i:i + step] for i in range(0, len(pixels), step) if len(pixels[i:i + step]) >= low]
    return fitted


def summarize(checks: list[OutputCheck]) -> dict[str, object]:
    """Worst case per output, for the manifest (every check is stored too)."""
    summary: dict[str, object] = {"checks": [asdict(c) for c in checks], "tolerance": {
        "rule": "max_abs_diff <= factor * max(1, max|reference|)", "fp32_factors": dict(FP32_FACTORS),
        "exact": list(TOP_OUTPUTS)}}
    for name in dict.fromkeys(c.output for c in checks):
        rows = [c for c in checks if c.output == name]
        summary[f"{name}_max_abs_diff"] = max(c.max_abs_diff for c in rows)
        summary[f"{name}_scaled_diff"] = max(c.scaled_diff for c in rows)
    summary["passed"] = all(c.passed is not False for c in checks)
    agreements = [c.top1_agreement for c in checks if c.top1_agreement is not None]
    correlations = [c.min_correlation for c in checks if c.min_correlation is not None]
    attention = [c for c in checks if c.mean_correlation is not None]
    images = sum(c.batch for c in checks if c.output == LOGITS)
    summary["images"] = images
    # agreement over all validation images (weighted by batch), not the worst batch
    summary["top1_agreement"] = (sum(c.top1_agreement * c.batch for c in checks if c.top1_agreement is not None)
                                 / images) if agreements else None
    summary["attention_min_correlation"] = min(correlations) if correlations else None
    summary["attention_flat_maps"] = sum(c.flat_maps or 0 for c in attention)
    summary["attention_mean_correlation"] = (sum(c.mean_correlation * c.batch for c in attention)
                                             / sum(c.batch for c in attention)) if attention else None
    return summary

