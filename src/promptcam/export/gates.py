"""Quality gates of an int8 export: the answer (top-1) and the explanation (attention maps) must
match float32, or nothing is written.

Torch-free: ``promptcam validate-int8`` applies the same gates on a station (``export/target.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from promptcam.core.architecture import architecture_record
from promptcam.core.errors import ExportError, ValidationError


@dataclass(frozen=True)
class Int8Gates:
    """Minimum agreement of an int8 graph with the float32 reference.

    Attributes:
        top1: Fraction of validation images whose top-1 class is unchanged.
        attention_mean: Mean Pearson correlation of the attention maps, over every
            (image, class, head) map.
        attention_min: Worst single (image, class, head) map's correlation.
    """

    top1: float = 0.99
    attention_mean: float = 0.99
    attention_min: float = 0.9

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not 0.0 <= value <= 1.0:
                raise ExportError(f"int8 gate {name} must be in [0, 1], got {value}")

    def failures(self, numbers: dict[str, Any]) -> list[str]:
        """One line per missed gate, with the measured value and the shortfall.

        Args:
            numbers: ``top1_agreement``, ``attention_mean_correlation`` and
                ``attention_min_correlation`` (validation summary keys).
        """
        missed = []
        for key, label, gate in (("top1_agreement", "top-1 agreement", self.top1),
                                 ("attention_mean_correlation", "attention correlation (mean)", self.attention_mean),
                                 ("attention_min_correlation", "attention correlation (worst map)",
                                  self.attention_min)):
            value = numbers.get(key)
            if value is None:
                missed.append(f"{label}: not measured (gate {gate:g})")
            elif value < gate:
                missed.append(f"{label} {value:.4f} < gate {gate:g} (short by {gate - value:.4f})")
        return missed

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


GATED_KEYS = ("top1_agreement", "attention_mean_correlation", "attention_min_correlation")


def check_int8_gates(numbers: dict[str, Any], gates: Int8Gates, *, reference: str, force: bool,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Apply ``gates`` to measured ``numbers``; refuse unless ``force``.

    Args:
        numbers: Validation summary (``top1_agreement``, ``attention_*_correlation``).
        gates: The gates.
        reference: What the numbers compare against (for the message and the manifest).
        force: Record a miss instead of refusing.
        log: Where the forced warning goes.

    Returns:
        The record stored as ``validation["int8_gates"]`` in the manifest: gates, measured values,
        missed gates, ``passed``, ``forced`` and ``validated_on`` (this machine's architecture when passed).

    Raises:
        ValidationError: A gate is missed and ``force`` is False (nothing has been written).
    """
    failed = gates.failures(numbers)
    record = {"gates": gates.as_dict(), "measured": {k: numbers.get(k) for k in GATED_KEYS},
              "reference": reference, "passed": not failed, "failed": failed, "forced": bool(failed) and force,
              # the kernels that produced these numbers: the runtime warns on any other architecture
              "validated_on": [] if failed else [architecture_record(numbers, how=f"export, against {reference}")]}
    if failed and not force:
        raise ValidationError(
            f"int8 export misses its quality gates against {reference}; nothing was written:\n  "
            + "\n  ".join(failed) + "\n(use fp16/fp32, --calib with representative images, lower the gates with "
            "--gate-top1/--gate-attention-mean/--gate-attention-min, or --force to write it anyway)")
    if failed:
        log("WARNING: --force: writing an int8 model that misses its quality gates: " + "; ".join(failed))
    return record


# A map whose reference varies by less than this over the patches has no spatial structure: a head
# that gives its whole row to the [cls] and prompt tokens (seen on the demo model: patch weights of
# ~1e-10 that vary by ~1e-13). Its Pearson correlation is the correlation of float noise, anything
# from -1 to 1, so such a map is judged by its absolute difference instead: 1.0 when the other map
# is within FLAT_MAP_TOLERANCE of it everywhere (it is flat too, as drawn), else 0.0.
FLAT_MAP_SPREAD = 1e-6
FLAT_MAP_TOLERANCE = 1e-4


def flat_maps(want: np.ndarray) -> np.ndarray:
    """Which reference maps (rows over the last axis) are flat: standard deviation < ``FLAT_MAP_SPREAD``."""
    return want.std(-1) < FLAT_MAP_SPREAD


def map_correlation(got: np.ndarray, want: np.ndarray, flat: np.ndarray | None = None) -> np.ndarray:
    """Pearson correlation of each map (row over the last axis) of ``got`` with ``want``; flat
    reference maps (``flat``, else ``flat_maps(want)``) count 1.0 when matched within
    ``FLAT_MAP_TOLERANCE``, else 0.0."""
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    a = got64 - got64.mean(-1, keepdims=True)
    b = want64 - want64.mean(-1, keepdims=True)
    denom = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    corr = np.where(denom > 0, (a * b).sum(-1) / np.maximum(denom, 1e-300), 0.0)
    flat = flat_maps(want64) if flat is None else flat
    matched = np.abs(got64 - want64).max(-1) <= FLAT_MAP_TOLERANCE
    return np.where(flat, matched.astype(np.float64), corr)


def gate_numbers(logits: np.ndarray, attention: np.ndarray, want_logits: np.ndarray,
                 want_attention: np.ndarray) -> dict[str, Any]:
    """The gated numbers of outputs against a float32 reference on the same images.

    Args:
        logits / attention: The graph under test, ``[N, C]`` and ``[N, C, heads, patches]``.
        want_logits / want_attention: The float32 reference.

    Returns:
        ``top1_agreement``, ``attention_mean_correlation`` and ``attention_min_correlation`` over every
        (image, class, head) map, ``attention_flat_maps`` and ``images``.
    """
    rows, want_rows = attention.reshape(-1, attention.shape[-1]), want_attention.reshape(-1, want_attention.shape[-1])
    flat = flat_maps(want_rows.astype(np.float64))
    corr = map_correlation(rows, want_rows, flat)
    return {"top1_agreement": float((logits.argmax(-1) == want_logits.argmax(-1)).mean()),
            "attention_mean_correlation": float(corr.mean()), "attention_min_correlation": float(corr.min()),
            "attention_flat_maps": int(flat.sum()), "images": int(len(logits))}
