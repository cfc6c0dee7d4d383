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

import onnx
from onnx import TensorProto, helper, numpy_helper

from drpaiq_core.plan import QuantPlan
from drpaiq_core.qparams import QParams


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


def _params_initializers(
    base: str, params: QParams, names: _Names
) -> tuple[str, str, list[TensorProto]]:
    scale_name = names.new(f"{base}_scale")
    zp_name = names.new(f"{base}_zero_point")
    inits = [
        numpy_helper.from_array(params.scale, scale_name),
        numpy_helper.from_array(params.zero_point, zp_name),
    ]
    return scale_name, zp_name, inits


def _axis_attrs(params: QParams) -> dict[str, Any]:
    return {"axis": params.axis} if params.axis is not None and params.scale.ndim == 1 else {}


def emit(model: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """A new model with the plan applied; ``model`` is not modified."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    names = _Names(out)
    new_inits: list[TensorProto] = []
    head: list[onnx.NodeProto] = []
    graph_inputs = {v.name for v in graph.input} - {i.name for i in graph.initializer}

    # Constants: integer initializers + DequantizeLinear, read by the planned users.
    rewire: dict[tuple[str, int], str] = {}
    for qname, weight in sorted(plan.constants.items()):
        int_name = names.new(qname)
        new_inits.append(numpy_helper.from_array(weight.values, int_name))
        scale, zp, inits = _params_initializers(weight.source, weight.params, names)
        new_inits.extend(inits)
        dq_out = names.new(f"{weight.source}_dequantized")
        head.append(
            helper.make_node(
                "DequantizeLinear",
                [int_name, scale, zp],
                [dq_out],
                name=names.new(f"{weight.source}_DequantizeLinear"),
                **_axis_attrs(weight.params),
            )
        )
        for user in weight.users:
            rewire[user] = dq_out

    # Whole-tensor replacements: graph inputs and constant activations.
    replace: dict[str, str] = {}
    for tensor, value in sorted(plan.constant_activations.items()):
        params = plan.activations[tensor]
        import numpy as np

        from drpaiq_core.qparams import NP_TYPES

        info = np.iinfo(NP_TYPES[params.dtype])
        q = np.clip(
            np.round(value / params.scale) + params.zero_point.astype(np.float32),
            info.min,
            info.max,
        ).astype(NP_TYPES[params.dtype])
        int_name = names.new(f"{tensor}_quantized")
        new_inits.append(numpy_helper.from_array(q, int_name))
        scale, zp, inits = _params_initializers(tensor, params, names)
        new_inits.extend(inits)
        dq_out = names.new(f"{tensor}_dequantized")
        head.append(
            helper.make_node(
                "DequantizeLinear",
                [int_name, scale, zp],
                [dq_out],
                name=names.new(f"{tensor}_DequantizeLinear"),
            )
        )
        replace[tensor] = dq_out
    for tensor in sorted(t for t in plan.activations if t in graph_inputs):
        params = plan.activations[tensor]
        scale, zp, inits = _params_initializers(tensor, params, names)
        new_inits.extend(inits)
        q_out = names.new(f"{tensor}_quantized")
        dq_out = names.new(f"{tensor}_dequantized")
        head.append(
            helper.make_node(
                "QuantizeLinear",
                [tensor, scale, zp],
                [q_out],
                name=names.new(f"{tensor}_QuantizeLinear"),
            )
        )
        head.append(
            helper.make_node(
                "DequantizeLinear",
                [q_out, scale, zp],
                [dq_out],
                name=names.new(f"{tensor}_DequantizeLinear"),
            )
        )
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
        for index, name in enumerate(node.input):
            edge = plan.edges.get((node.name, index))
            if edge is None:
                continue
            base = f"{node.name}_input{index}_requantized"
            scale, zp, inits = _params_initializers(base, edge, names)
            new_inits.extend(inits)
            q_out = names.new(f"{base}_q")
            dq_out = names.new(base)
            body.append(
                helper.make_node(
                    "QuantizeLinear",
                    [name, scale, zp],
                    [q_out],
                    name=names.new(f"{base}_QuantizeLinear"),
                )
            )
            body.append(
                helper.make_node(
                    "DequantizeLinear",
                    [q_out, scale, zp],
                    [dq_out],
                    name=names.new(f"{base}_DequantizeLinear"),
                )
            )
            node.input[index] = dq_out
        tail: list[onnx.NodeProto] = []
        for index, name in enumerate(node.output):
            if name not in produced:
                continue
            params = plan.activations[name]
            float_name = names.new(f"{name}_float")
            node.output[index] = float_name
            scale, zp, inits = _params_initializers(name, params, names)
            new_inits.extend(inits)
            q_out = names.new(f"{name}_quantized")
            tail.append(
                helper.make_node(
                    "QuantizeLinear",
                    [float_name, scale, zp],
                    [q_out],
                    name=names.new(f"{name}_QuantizeLinear"),
                )
            )
            tail.append(
                helper.make_node(
                    "DequantizeLinear",
                    [q_out, scale, zp],
                    [name],
                    name=names.new(f"{name}_DequantizeLinear"),
                )
            )
        body.append(node)
        body.extend(tail)

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
