"""Turn a quantization plan into a QDQ model.

Placement follows what ONNX Runtime fuses into integer kernels:

* a quantized activation ``t`` produced by a node: the producer now writes
  ``t_float``, ``QuantizeLinear`` reads it and ``DequantizeLinear`` writes ``t`` again,
  so every consumer (and a graph output of that name) sees the dequantized value
  without being rewired;
* a quantized graph input: ``QuantizeLinear``/``DequantizeLinear`` at the start of the
  graph, its consumers read ``t_dequantized``;
* weights, biases and constant activations: integer initializers and one
  ``DequantizeLinear`` each; only the nodes the plan names read the dequantized copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from drpaiq_core.plan import QuantPlan
from drpaiq_core.qparams import NP_TYPES, QParams


class _Names:
    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.used: set[str] = set()
        for node in graph.node:
            self.used.update(node.input)
            self.used.update(node.output)
            self.used.add(node.name)
        for coll in (graph.input, graph.output, graph.value_info):
            self.used.update(v.name for v in coll)
        self.used.update(init.name for init in graph.initializer)

    def new(self, base: str) -> str:
        name = base
        counter = 1
        while name in self.used:
            name = f"{base}_{counter}"
            counter += 1
        self.used.add(name)
        return name


class _Builder:
    """Creates QuantizeLinear/DequantizeLinear nodes and their parameter initializers
    with names unique in the graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.names = _Names(model)
        self.initializers: list[TensorProto] = []

    def _params(self, base: str, params: QParams) -> tuple[str, str]:
        scale_name = self.names.new(f"{base}_scale")
        zp_name = self.names.new(f"{base}_zero_point")
        self.initializers.append(numpy_helper.from_array(params.scale, scale_name))
        self.initializers.append(numpy_helper.from_array(params.zero_point, zp_name))
        return scale_name, zp_name

    def dequantize_constant(
        self, values: np.ndarray, int_base: str, base: str, params: QParams
    ) -> tuple[onnx.NodeProto, str]:
        """An integer initializer and the DequantizeLinear reading it."""
        int_name = self.names.new(int_base)
        self.initializers.append(numpy_helper.from_array(values, int_name))
        scale, zp = self._params(base, params)
        dq_out = self.names.new(f"{base}_dequantized")
        node = helper.make_node(
            "DequantizeLinear",
            [int_name, scale, zp],
            [dq_out],
            name=self.names.new(f"{base}_DequantizeLinear"),
            **_axis_attrs(params),
        )
        return node, dq_out

    def quantize_pair(
        self, source: str, base: str, params: QParams, q_out: str, dq_out: str
    ) -> list[onnx.NodeProto]:
        """QuantizeLinear(source) -> DequantizeLinear -> ``dq_out``."""
        scale, zp = self._params(base, params)
        return [
            helper.make_node(
                "QuantizeLinear",
                [source, scale, zp],
                [q_out],
                name=self.names.new(f"{base}_QuantizeLinear"),
            ),
            helper.make_node(
                "DequantizeLinear",
                [q_out, scale, zp],
                [dq_out],
                name=self.names.new(f"{base}_DequantizeLinear"),
            ),
        ]


def _axis_attrs(params: QParams) -> dict[str, Any]:
    return {"axis": params.axis} if params.axis is not None and params.scale.ndim == 1 else {}


def _quantize_values(values: np.ndarray, params: QParams) -> np.ndarray:
    info = np.iinfo(NP_TYPES[params.dtype])
    zero_point = params.zero_point.astype(np.float32)
    q = np.clip(np.round(values / params.scale) + zero_point, info.min, info.max)
    return q.astype(NP_TYPES[params.dtype])


def emit(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """A new model with the plan applied; ``model`` is not modified."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    build = _Builder(out)
    names = build.names
    head: list[onnx.NodeProto] = []
    graph_inputs = {v.name for v in graph.input} - {i.name for i in graph.initializer}

    # Constants: integer initializers + DequantizeLinear, read by the planned users.
    rewire: dict[tuple[str, int], str] = {}
    for qname, weight in sorted(plan.constants.items()):
        node, dq_out = build.dequantize_constant(weight.values, qname, weight.source, weight.params)
        head.append(node)
        for user in weight.users:
            rewire[user] = dq_out

    # Whole-tensor replacements: graph inputs and constant activations.
    replace: dict[str, str] = {}
    for tensor, value in sorted(plan.constant_activations.items()):
        params = plan.activations[tensor]
        node, dq_out = build.dequantize_constant(
            _quantize_values(value, params), f"{tensor}_quantized", tensor, params
        )
        head.append(node)
        replace[tensor] = dq_out
    for tensor in sorted(t for t in plan.activations if t in graph_inputs):
        dq_out = names.new(f"{tensor}_dequantized")
        q_out = names.new(f"{tensor}_quantized")
        head.extend(build.quantize_pair(tensor, tensor, plan.activations[tensor], q_out, dq_out))
        replace[tensor] = dq_out

    produced = {t for t in plan.activations if t not in graph_inputs}
    produced -= set(plan.constant_activations)
    body: list[onnx.NodeProto] = []
    for node in graph.node:
        for index, name in enumerate(node.input):
            if (node.name, index) in rewire:
                node.input[index] = rewire[(node.name, index)]
            elif name in replace:
                node.input[index] = replace[name]
            edge = plan.edges.get((node.name, index))
            if edge is not None:
                base = f"{node.name}_input{index}_requantized"
                dq_out = names.new(base)
                q_out = names.new(f"{base}_q")
                body.extend(build.quantize_pair(node.input[index], base, edge, q_out, dq_out))
                node.input[index] = dq_out
        tail: list[onnx.NodeProto] = []
        for index, name in enumerate(node.output):
            if name not in produced:
                continue
            float_name = names.new(f"{name}_float")
            node.output[index] = float_name
            q_out = names.new(f"{name}_quantized")
            tail.extend(build.quantize_pair(float_name, name, plan.activations[name], q_out, name))
        body.append(node)
        body.extend(tail)

    new_inits = build.initializers
    del graph.node[:]
    graph.node.extend(head + body)
    used_inputs = {i for node in graph.node for i in node.input}
    kept = [init for init in graph.initializer if init.name in used_inputs]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    # Graph inputs that were only initializers' declarations and are now unused go too.
    unused = [v for v in graph.input if v.name not in used_inputs and v.name not in graph_inputs]
    for value in unused:
        graph.input.remove(value)
    return out
