"""int8 rewrite of the Prompt-CAM graph's weight MatMuls, one plan at a time.

ONNX Runtime's quantizer is not used for the rewrite: its dynamic MatMul path stores per-channel
weights with 7 bits (``reduce_range``), its static path also quantised attention-probability
MatMuls (probabilities ~1/(C+T) rounded to steps of 1/255) and each call re-runs calibration. Here:

* weights: int8, symmetric, one scale per output column (8 bits, no reduced range);
* dynamic plan: ``com.microsoft.DynamicQuantizeMatMul`` (the kernel ORT's own fusion produces),
  activations quantised per batch at run time;
* static plan: standard QDQ (``QuantizeLinear``/``DequantizeLinear`` before ``MatMul``, which ONNX
  Runtime fuses into an integer kernel and TensorRT reads), activation ranges from one calibration run;
* only MatMuls with a weight initializer in blocks 0..L-2 and the last block's image key/value
  projection are candidates: the attention-score MatMuls, the last block's prompt rows and the head
  stay float32 (they are the answer and the explanation).

Building a plan is a cheap graph rewrite, so a mixed-precision search can try many plans.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from promptcam.core.errors import ExportError
from promptcam.core.iospec import PIXELS

CALIBRATION_METHODS = ("minmax", "percentile")
PERCENTILE = 99.99


@dataclass(frozen=True)
class MatMulTarget:
    """A weight MatMul (and its bias Add) that may run in int8."""

    name: str  # MatMul node name
    block: int
    role: str  # qkv / proj / fc1 / fc2 / image_kv
    activation: str  # input tensor name
    weight: str  # initializer name [K, N]
    bias_add: str  # name of the Add node with the bias initializer
    bias: str
    output: str  # the Add's output (what downstream reads)


@dataclass(frozen=True)
class Int8Plan:
    """Which targets run in int8, and how."""

    mode: str  # "dynamic" | "static"
    int8_blocks: frozenset[int]
    calibration: str = "minmax"  # static only
    smooth: float = 0.0  # SmoothQuant migration strength alpha folded into the LayerNorms; 0: off
    signed_activations: bool = False  # static: int8 with zero point 0 (TensorRT's only form), else uint8

    def describe(self, depth: int) -> str:
        fp32 = sorted(set(range(depth)) - self.int8_blocks)
        kept = ", ".join(f"block{b}" if b < depth - 1 else f"block{b} image k/v" for b in fp32)
        how = self.mode if self.mode == "dynamic" else f"static/{self.calibration}"
        how += f", SmoothQuant alpha={self.smooth:g}" if self.smooth else ""
        return f"{how} int8 in {len(self.int8_blocks)}/{depth} blocks" + (f" (fp32: {kept})" if kept else "")


@dataclass
class ActivationRanges:
    """Calibrated [min, max] of each target's input, per method."""

    ranges: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # method -> tensor -> range
    channel_absmax: dict[str, np.ndarray] = field(default_factory=dict)  # tensor -> max |x| per input channel

    def get(self, method: str, tensor: str) -> tuple[float, float]:
        try:
            return self.ranges[method][tensor]
        except KeyError:
            raise ExportError(f"no calibrated range for {tensor!r} ({method})") from None


def _block_of(name: str) -> int | None:
    head = name.split("/", 1)[0]
    return int(head.removeprefix("block")) if head.startswith("block") and head[5:].isdigit() else None


def find_targets(model: onnx.ModelProto, depth: int) -> list[MatMulTarget]:
    """The weight MatMuls that may be quantised, in graph order, with their role in the block."""
    inits = {i.name for i in model.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    roles = {"attn": ["qkv", "proj"], "mlp": ["fc1", "fc2"]}
    seen: dict[tuple[int, str], int] = {}
    targets = []
    for node in model.graph.node:
        block = _block_of(node.name)
        if node.op_type != "MatMul" or node.input[1] not in inits or block is None:
            continue
        if block == depth - 1 and "/image_kv/" not in node.name:
            continue  # the last block's prompt rows: they decide top-1 and the heatmaps
        users = consumers.get(node.output[0], [])
        add = users[0] if len(users) == 1 and users[0].op_type == "Add" else None
        bias = next((i for i in (add.input if add else []) if i in inits), None)
        if add is None or bias is None:
            raise ExportError(f"int8: MatMul {node.name} is not followed by a bias Add; graph layout changed")
        if "/image_kv/" in node.name:
            role = "image_kv"
        else:
            part = node.name.split("/")[1]
            index = seen.get((block, part), 0)
            seen[(block, part)] = index + 1
            role = roles[part][index]
        targets.append(MatMulTarget(node.name, block, role, node.input[0], node.input[1], add.name, bias,
                                    add.output[0]))
    if not targets:
        raise ExportError("int8: the graph has no weight MatMul to quantise")
    return targets


def calibrate(model: onnx.ModelProto, targets: list[MatMulTarget], batches: list[np.ndarray]) -> ActivationRanges:
    """Run the float32 graph once over ``batches`` and record each target input's range."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = sorted({t.activation for t in targets})
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    lows = {n: np.inf for n in names}
    highs = {n: -np.inf for n in names}
    clipped: dict[str, list[float]] = {n: [] for n in names}
    channels: dict[str, np.ndarray] = {}
    for pixels in batches:
        for name, value in zip(names, session.run(names, {PIXELS: pixels}), strict=True):
            lows[name] = min(lows[name], float(value.min()))
            highs[name] = max(highs[name], float(value.max()))
            # percentile of |x| per batch, averaged: outliers of a single image do not set the scale
            clipped[name].append(float(np.percentile(np.abs(value), PERCENTILE)))
            per_channel = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
            channels[name] = np.maximum(channels[name], per_channel) if name in channels else per_channel
    ranges = ActivationRanges(channel_absmax=channels)
    ranges.ranges["minmax"] = {n: (min(lows[n], 0.0), max(highs[n], 0.0)) for n in names}
    ranges.ranges["percentile"] = {}
    for n in names:
        bound = float(np.mean(clipped[n]))
        ranges.ranges["percentile"][n] = (max(lows[n], -bound) if lows[n] < 0 else 0.0, min(highs[n], bound))
    return ranges


def smooth_model(model: onnx.ModelProto, targets: list[MatMulTarget], channel_absmax: dict[str, np.ndarray],
                 alpha: float) -> onnx.ModelProto:
    """SmoothQuant: move activation outliers into the weights, exactly, in float32.

    For each target whose input is a LayerNormalization output read by that target alone (qkv,
    fc1, the last block's image key/value projection), per input channel j:
    ``s_j = max|x_j|**alpha / max|W_j|**(1 - alpha)``; the LayerNorm's weight and bias are divided by
    ``s_j`` and row j of W is multiplied by it. The float32 function is unchanged; int8 then sees
    flatter activations and slightly less flat weights.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for target in targets:
        norm = producers.get(target.activation)
        if norm is None or norm.op_type != "LayerNormalization" or readers.get(target.activation) != 1:
            continue  # proj (attention output) and fc2 (after GELU) have no LayerNorm to fold into
        if target.activation not in channel_absmax:
            continue
        weight = numpy_helper.to_array(inits[target.weight]).astype(np.float64)
        ln_w = numpy_helper.to_array(inits[norm.input[1]]).astype(np.float64)
        ln_b = numpy_helper.to_array(inits[norm.input[2]]).astype(np.float64)
        x_max = np.maximum(channel_absmax[target.activation].astype(np.float64), 1e-5)
        w_max = np.maximum(np.abs(weight).max(axis=1), 1e-5)
        scale = np.clip(x_max**alpha / w_max ** (1.0 - alpha), 1e-4, 1e4)
        for name, value in ((target.weight, weight * scale[:, None]), (norm.input[1], ln_w / scale),
                            (norm.input[2], ln_b / scale)):
            inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    return out


def quantize_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8, one scale per output column: returns (int8 [K, N], float32 scale [N])."""
    scale = np.abs(weight).max(axis=0).astype(np.float64) / 127.0
    scale = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def _activation_params(low: float, high: float, *, signed: bool) -> tuple[np.float32, np.uint8 | np.int8]:
    if signed:  # symmetric int8, zero point 0
        bound = max(-low, high)
        return np.float32(bound / 127.0 if bound > 0 else 1.0), np.int8(0)
    scale = (high - low) / 255.0 if high > low else 1.0
    zero = int(np.clip(np.rint(-low / scale), 0, 255))
    return np.float32(scale), np.uint8(zero)


def apply_plan(
    model: onnx.ModelProto, targets: list[MatMulTarget], plan: Int8Plan, ranges: ActivationRanges | None = None
) -> onnx.ModelProto:
    """A copy of the float32 ``model`` with the plan's targets in int8."""
    chosen = [t for t in targets if t.block in plan.int8_blocks]
    if plan.mode == "static" and ranges is None:
        raise ExportError("static int8 needs calibrated activation ranges")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    weights = {i.name: i for i in graph.initializer}
    by_name = {t.name: t for t in chosen}
    drop_nodes = {t.bias_add for t in chosen} | ({t.name for t in chosen} if plan.mode == "dynamic" else set())
    drop_weights: set[str] = set()
    new_inits: list[onnx.TensorProto] = []
    new_nodes: list[onnx.NodeProto] = []
    quantized_inputs: dict[str, str] = {}  # static: activation -> its dequantized copy (shared by consumers)
    for node in graph.node:
        target = by_name.get(node.name)
        if target is None:
            if node.name not in drop_nodes:
                new_nodes.append(node)
            continue
        q, scale = quantize_weight(numpy_helper.to_array(weights[target.weight]))
        drop_weights.add(target.weight)
        base = target.name.replace("/", "_")
        if plan.mode == "dynamic":
            new_inits += [numpy_helper.from_array(q, f"{base}_w_int8"),
                          numpy_helper.from_array(scale, f"{base}_w_scale")]
            new_nodes.append(helper.make_node(
                "DynamicQuantizeMatMul", [target.activation, f"{base}_w_int8", f"{base}_w_scale", "", target.bias],
                [target.output], name=target.name + "/int8", domain="com.microsoft"))
            continue
        if target.activation not in quantized_inputs:
            a_scale, a_zero = _activation_params(*ranges.get(plan.calibration, target.activation),  # type: ignore[union-attr]
                                                 signed=plan.signed_activations)
            act = target.activation.replace("/", "_").replace(":", "_")
            new_inits += [numpy_helper.from_array(np.array(a_scale), f"{act}_a_scale"),
                          numpy_helper.from_array(np.array(a_zero), f"{act}_a_zero")]
            new_nodes += [
                helper.make_node("QuantizeLinear", [target.activation, f"{act}_a_scale", f"{act}_a_zero"],
                                 [f"{act}_q"], name=f"{act}/QuantizeLinear"),
                helper.make_node("DequantizeLinear", [f"{act}_q", f"{act}_a_scale", f"{act}_a_zero"],
                                 [f"{act}_dq"], name=f"{act}/DequantizeLinear"),
            ]
            quantized_inputs[target.activation] = f"{act}_dq"
        new_inits += [numpy_helper.from_array(q, f"{base}_w_int8"), numpy_helper.from_array(scale, f"{base}_w_scale"),
                      numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{base}_w_zero")]
        new_nodes += [
            helper.make_node("DequantizeLinear", [f"{base}_w_int8", f"{base}_w_scale", f"{base}_w_zero"],
                             [f"{base}_w_dq"], name=f"{target.name}/DequantizeWeight", axis=1),
            helper.make_node("MatMul", [quantized_inputs[target.activation], f"{base}_w_dq"], [node.output[0]],
                             name=target.name),
            helper.make_node("Add", [node.output[0], target.bias], [target.output], name=target.bias_add),
        ]
    kept = [i for i in graph.initializer if i.name not in drop_weights]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    del graph.node[:]
    graph.node.extend(new_nodes)
    if plan.mode == "dynamic" and chosen and not any(o.domain == "com.microsoft" for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return out
