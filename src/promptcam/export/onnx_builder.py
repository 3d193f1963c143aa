"""A tiny ONNX graph builder: scoped node names, initializers, mixed precision casts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
              np.dtype(np.int64): TensorProto.INT64, np.dtype(np.uint8): TensorProto.UINT8}


class GraphBuilder:
    """Accumulates nodes and initializers; every node is named ``scope/op_n``.

    ``compute`` is the dtype of weights and matrix products (float32 or float16); LayerNorm,
    softmax and the residual stream stay float32 (fp16 LayerNorm overflows on DINO activations).
    """

    def __init__(self, compute: np.dtype = np.dtype(np.float32), opset: int = 17) -> None:
        self.compute = np.dtype(compute)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._scopes: list[str] = []
        self._count = 0

    @property
    def mixed(self) -> bool:
        return self.compute != np.float32

    @contextmanager
    def scope(self, name: str) -> Iterator[None]:
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    def _name(self, base: str) -> str:
        self._count += 1
        return "/".join([*self._scopes, f"{base}_{self._count}"])

    def weight(self, base: str, array: np.ndarray, *, keep_fp32: bool = False) -> str:
        """A float initializer in the compute dtype (or float32 where accuracy needs it)."""
        dtype = np.float32 if keep_fp32 else self.compute
        return self.tensor(base, np.asarray(array, dtype=dtype))

    def tensor(self, base: str, array: np.ndarray) -> str:
        name = self._name(base)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, base: str, values: Sequence[int]) -> str:
        return self.tensor(base, np.asarray(values, dtype=np.int64))

    def op(self, op_type: str, inputs: Sequence[str], *, n_out: int = 1, domain: str = "", **attrs: object):
        """Add a node; returns its output name (or list of names when ``n_out`` > 1)."""
        name = self._name(op_type)
        outputs = [f"{name}:{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=name, domain=domain, **attrs))
        return outputs[0] if n_out == 1 else outputs

    def reduce_mean(self, x: str, axis: int) -> str:
        # axes moved from attribute to input in opset 18
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.ints("axis", [axis])], keepdims=0)
        return self.op("ReduceMean", [x], axes=[axis], keepdims=0)

    def to_compute(self, x: str) -> str:
        return self.op("Cast", [x], to=NP_TO_ONNX[self.compute]) if self.mixed else x

    def to_fp32(self, x: str) -> str:
        return self.op("Cast", [x], to=TensorProto.FLOAT) if self.mixed else x

    def rename(self, x: str, name: str) -> str:
        """Give a tensor a public name (graph outputs) with an Identity node."""
        self.nodes.append(helper.make_node("Identity", [x], [name], name=self._name(f"output_{name}")))
        return name

    def model(
        self,
        graph_name: str,
        inputs: list[onnx.ValueInfoProto],
        outputs: list[onnx.ValueInfoProto],
        *,
        metadata: dict[str, str] | None = None,
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs, self.initializers)
        domains = sorted({n.domain for n in self.nodes if n.domain})  # contrib ops (com.microsoft)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)]
                                  + [helper.make_opsetid(domain, 1) for domain in domains],
                                  producer_name="promptcam")
        model.ir_version = min(model.ir_version, 10)  # readable by ORT/TRT releases of the last years
        for key, value in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        return model
