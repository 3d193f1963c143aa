"""Which CPU architectures an int8 model's quality gates were measured on.

ONNX Runtime's int8 kernels differ between architectures (x86: AVX2 / AVX-512 VNNI; ARM: NEON dot
product, i8mm), so gates passed on one architecture prove nothing about another. The export records
where its gates ran (``validation["int8_gates"]["validated_on"]``), ``promptcam validate-int8`` re-runs
the gates on a station and adds that station's architecture, and the runtime warns when an int8 model
loads on an architecture that is not listed (docs/arm64.md).
"""

from __future__ import annotations

import platform
import time
from importlib import metadata
from typing import Any

# platform.machine() spellings of one architecture (Linux, macOS, Windows)
ARCHITECTURE_NAMES = {"x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64", "aarch64": "aarch64",
                      "arm64": "aarch64", "armv8l": "aarch64"}


def machine_architecture(machine: str | None = None) -> str:
    """This machine's architecture (or ``machine``'s), one name per architecture: ``x86_64``, ``aarch64`` ..."""
    raw = (platform.machine() if machine is None else machine).strip().lower()
    return ARCHITECTURE_NAMES.get(raw, raw or "unknown")


def onnxruntime_version() -> str | None:
    """The installed ONNX Runtime's version (either wheel), without importing it."""
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def architecture_record(numbers: dict[str, Any], *, how: str) -> dict[str, Any]:
    """One ``validated_on`` entry: this machine, its ONNX Runtime, the gated numbers and how they were measured."""
    return {"architecture": machine_architecture(), "machine": platform.machine(),
            "onnxruntime": onnxruntime_version(), "how": how,
            "measured": {k: numbers.get(k) for k in ("top1_agreement", "attention_mean_correlation",
                                                     "attention_min_correlation", "images")},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def validated_architectures(validation: dict[str, Any]) -> list[str]:
    """The architectures an int8 manifest's gates passed on (empty when none is recorded)."""
    gates = validation.get("int8_gates") if isinstance(validation, dict) else None
    entries = gates.get("validated_on") if isinstance(gates, dict) else None
    if not isinstance(entries, list):
        return []
    return list(dict.fromkeys(str(e["architecture"]) for e in entries
                              if isinstance(e, dict) and isinstance(e.get("architecture"), str)))


def int8_architecture_warning(precision: str, validation: dict[str, Any], model_dir: str,
                              machine: str | None = None) -> str | None:
    """The warning for loading an int8 model on an architecture its gates never ran on (None: no warning).

    Args:
        precision: The manifest's precision (only ``int8`` is checked).
        validation: The manifest's ``validation`` section.
        model_dir: For the message.
        machine: ``platform.machine()`` of the loading machine (tests pass another one).
    """
    if precision != "int8":
        return None
    here = machine_architecture(machine)
    listed = validated_architectures(validation)
    if here in listed:
        return None
    where = ", ".join(listed) if listed else "an unrecorded architecture (exported before architectures were recorded)"
    return (f"WARNING: {model_dir}: int8 model whose quality gates ran on {where}, not on this machine's {here}; "
            "ONNX Runtime's int8 kernels differ between architectures. Check it here with: promptcam "
            f"validate-int8 {model_dir} --reference FP32_MODEL_DIR --images DIR")
