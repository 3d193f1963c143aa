"""Multiply-accumulates of an exported graph, and the images per second they mean on an ARM CPU, on paper.

Used by the aarch64 report (``benchmarks.arm64``): emulated timings mean nothing, so a Pi 5's or an Orin
Nano's speed is estimated from the graph's MACs and published per-core throughput, labelled as an estimate.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

# Per-core multiply-accumulates per cycle, from the Arm Neoverse N1 Software Optimization Guide (the
# server sibling of the Cortex-A76, same FP/ASIMD back end) as LLVM's scheduling model encodes it
# (llvm/lib/Target/AArch64/AArch64SchedNeoverseN1.td): two 128-bit FP/ASIMD pipes V0/V1, "ASIMD FP
# multiply accumulate" FMLA issued on either (2 per cycle x 4 fp32 lanes = 8 MACs), the dot product
# SDOT on either (2 per cycle x 16 int8 products = 32 MACs). Cortex-A78AE keeps two 128-bit ASIMD pipes.
PEAK_MACS_PER_CYCLE = {"fp32": 8, "int8": 32}
# The share of that peak ONNX Runtime's MLAS kernels reach: an assumption, stated in the report
GEMM_EFFICIENCY = {"fp32": 0.5, "int8": 0.35}
DEVICES = {
    "raspberry_pi_5": {"cpu": "4x Cortex-A76 at 2.4 GHz (BCM2712)", "cores": 4, "ghz": 2.4},
    "jetson_orin_nano_cpu": {"cpu": "6x Cortex-A78AE at 1.5 GHz (1.7 GHz in the Super mode)", "cores": 6,
                             "ghz": 1.5},
}
SOURCE = ("Arm Neoverse N1 Software Optimization Guide (Cortex-A76's server sibling: two 128-bit FP/ASIMD pipes; "
          "FMLA and SDOT on either), as encoded in LLVM's llvm/lib/Target/AArch64/AArch64SchedNeoverseN1.td")


def graph_macs(model_dir: Path, quantised: Collection[str] = ()) -> dict[str, Any]:
    """Multiply-accumulates per image of an exported float32 graph: every MatMul, Gemm and Conv at batch 1.

    Shapes are read from one ONNX Runtime run (the graph's reshapes are computed, so static shape
    inference leaves them open). ``int8_macs`` are the MACs of the ``quantised`` MatMuls (node names: an
    int8 export's ``int8_matmuls`` in its ``int8_report.json``); the rest stay float32.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from promptcam.core.iospec import PIXELS
    from promptcam.core.manifest import read_manifest

    model = onnx.load(str(model_dir / "model.onnx"))
    graph = model.graph
    weights = {init.name: list(numpy_helper.to_array(init).shape) for init in graph.initializer}
    nodes = [n for n in graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    existing = {o.name for o in graph.output}
    probes = list(dict.fromkeys(t for n in nodes for t in (n.input[0], n.input[1], n.output[0])
                                if t not in weights and t not in existing))
    for name in probes:
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    size = read_manifest(model_dir).config.img_size
    wanted = [o.name for o in session.get_outputs()]
    shapes = {name: list(v.shape) for name, v in zip(wanted, session.run(
        wanted, {PIXELS: np.zeros((1, size, size, 3), np.uint8)}), strict=True)}
    shapes.update(weights)
    per_node = {}
    for node in nodes:
        out, a, b = shapes[node.output[0]], shapes[node.input[0]], shapes[node.input[1]]
        if node.op_type == "Conv":  # out [1, C_out, H, W], each output element sums C_in x kh x kw products
            per_node[node.name] = math.prod(out) * math.prod(b[1:])
        elif node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
            per_node[node.name] = math.prod(out) * a[0]
        else:
            per_node[node.name] = math.prod(out) * a[-1]
    quantised = set(quantised)
    int8 = sum(v for k, v in per_node.items() if k in quantised)
    return {"macs": sum(per_node.values()), "int8_macs": int8, "fp32_macs": sum(per_node.values()) - int8,
            "matmuls": len(per_node), "int8_matmuls": len(quantised & set(per_node)),
            "not_found": sorted(quantised - set(per_node))}


def every_int8_candidate(model_dir: Path) -> list[str]:
    """The MatMuls an int8 export may quantise (``export.int8.find_targets``): a plan with every block in int8."""
    import onnx

    from promptcam.core.manifest import read_manifest
    from promptcam.export.int8 import find_targets

    depth = read_manifest(model_dir).config.depth
    return [t.name for t in find_targets(onnx.load(str(model_dir / "model.onnx")), depth)]


def speed_estimate(fp32: dict[str, Any], int8: dict[str, Any]) -> dict[str, Any]:
    """Images per second on paper: MACs / (cores x GHz x MACs per cycle x assumed efficiency)."""
    rows = {}
    for device, spec in DEVICES.items():
        row: dict[str, Any] = {**spec}
        for name, macs in (("fp32", fp32), ("int8", int8)):
            seconds = 0.0
            steps = []
            for kind, count in (("fp32", macs["fp32_macs"]), ("int8", macs["int8_macs"])):
                if not count:
                    continue
                rate = spec["cores"] * spec["ghz"] * 1e9 * PEAK_MACS_PER_CYCLE[kind] * GEMM_EFFICIENCY[kind]
                seconds += count / rate
                steps.append(f"{count / 1e6:.2f} M {kind} MACs / ({spec['cores']} x {spec['ghz']} GHz x "
                             f"{PEAK_MACS_PER_CYCLE[kind]} MACs/cycle x {GEMM_EFFICIENCY[kind]:.0%})")
            row[f"{name}_images_per_second"] = 1.0 / seconds
            row[f"{name}_arithmetic"] = " + ".join(steps) + f" = {seconds * 1e3:.4f} ms per image"
        rows[device] = row
    return {"label": "ESTIMATE on paper from the graph's MACs (GEMM work only: no softmax, LayerNorm, memory "
                     "traffic, image decoding or thread start-up); not a measurement",
            "source": SOURCE, "peak_macs_per_cycle_per_core": PEAK_MACS_PER_CYCLE,
            "assumed_gemm_efficiency": GEMM_EFFICIENCY, "devices": rows,
            "replace_with": "promptcam bench --threads 4 on the device (Pi 5; --threads 6 on an Orin Nano)"}
