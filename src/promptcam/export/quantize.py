"""The ``quantize-int8`` pass: ONNX Runtime int8 for CPUs (VNNI on x86, dot-product on ARM).

The prompt rows of the last block (their scores, softmax, projection, MLP and the head) stay
float32: they decide top-1 and the heatmaps. The last block's image-token key/value projection is
an ordinary block's work and is quantised like the others. Weights are graph initializers, so
the quantizer sees them all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from promptcam.core.errors import ExportError


def sensitive_nodes(model: onnx.ModelProto, depth: int) -> list[str]:
    """Nodes kept in float32: the last block's prompt rows and the head (not its image key/value projection)."""
    last = f"block{depth - 1}/"
    return [n.name for n in model.graph.node
            if (n.name.startswith(last) and "/image_kv/" not in n.name) or "/head/" in n.name]


class _PixelReader:
    """CalibrationDataReader over uint8 pixel batches."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._iter: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {"pixels": batch}


def quantize_int8(
    src: Path, dst: Path, *, depth: int, calibration: list[np.ndarray] | None = None
) -> str:
    """Quantise ``src`` to ``dst``; dynamic without calibration, static QDQ with it.

    Returns:
        ``"dynamic"`` or ``"static"``.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    model = onnx.load(str(src))
    exclude = sensitive_nodes(model, depth)
    try:
        if calibration:
            quantize_static(
                str(src), str(dst), _PixelReader(calibration), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul"], per_channel=True, nodes_to_exclude=exclude,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )
            return "static"
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                         per_channel=False, nodes_to_exclude=exclude)
        return "dynamic"
    except Exception as exc:  # the quantizer raises bare exceptions of many kinds
        raise ExportError(f"int8 quantisation of {src} failed: {exc}") from exc
