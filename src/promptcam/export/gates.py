"""Quality gates of an int8 export: the answer (top-1) and the explanation (attention maps) must
match float32, or nothing is written."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

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
        missed gates, ``passed`` and ``forced``.

    Raises:
        ValidationError: A gate is missed and ``force`` is False (nothing has been written).
    """
    failed = gates.failures(numbers)
    record = {"gates": gates.as_dict(), "measured": {k: numbers.get(k) for k in GATED_KEYS},
              "reference": reference, "passed": not failed, "failed": failed, "forced": bool(failed) and force}
    if failed and not force:
        raise ValidationError(
            f"int8 export misses its quality gates against {reference}; nothing was written:\n  "
            + "\n  ".join(failed) + "\n(use fp16/fp32, --calib with representative images, lower the gates with "
            "--gate-top1/--gate-attention-mean/--gate-attention-min, or --force to write it anyway)")
    if failed:
        log("WARNING: --force: writing an int8 model that misses its quality gates: " + "; ".join(failed))
    return record
