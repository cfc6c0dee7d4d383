"""A read-only index over an ONNX graph: producers, consumers, constants, shapes.

This is the :class:`~drpaiq_core.plugin_api.GraphView` that op quantizers and
exclusion matchers receive.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from drpaiq_core.plugin_api import GraphView

_FLOAT = onnx.TensorProto.FLOAT


class ModelGraph(GraphView):
    """Index of a model's main graph (subgraphs of If/Loop are left alone).

    :param model: the model; it is not modified.
    :param observed_shapes: shapes seen while running the model, to fill gaps that
        shape inference left.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        observed_shapes: Mapping[str, tuple[int | None, ...]] | None = None,
    ) -> None:
        self.model = model
        graph = model.graph
        self._nodes = list(graph.node)
        self._producer: dict[str, onnx.NodeProto] = {}
        self._consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self._nodes:
            for out in node.output:
                if out:
                    self._producer[out] = node
            for inp in node.input:
                if inp:
                    self._consumers[inp].append(node)
        self._initializers = {init.name: init for init in graph.initializer}
        self._constant_nodes = {
            node.output[0]: node
            for node in self._nodes
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx")
        }
        self._outputs = {out.name for out in graph.output}
        self._types: dict[str, int] = {}
        self._shapes: dict[str, tuple[int | None, ...]] = {}
        for value in [*graph.input, *graph.value_info, *graph.output]:
            tensor_type = value.type.tensor_type
            if tensor_type.elem_type:
                self._types[value.name] = tensor_type.elem_type
            if tensor_type.HasField("shape"):
                self._shapes[value.name] = tuple(
                    int(d.dim_value) if d.HasField("dim_value") else None
                    for d in tensor_type.shape.dim
                )
        for name, init in self._initializers.items():
            self._types[name] = init.data_type
            self._shapes[name] = tuple(int(d) for d in init.dims)
        for name, shape in (observed_shapes or {}).items():
            known = self._shapes.get(name)
            if known is None or None in known:
                self._shapes[name] = tuple(shape)
        self._cache: dict[str, np.ndarray] = {}

    @property
    def nodes(self) -> Sequence[onnx.NodeProto]:
        return self._nodes

    def node_by_name(self, name: str) -> onnx.NodeProto | None:
        """The node called ``name``, or None."""
        for node in self._nodes:
            if node.name == name:
                return node
        return None

    def producer(self, tensor: str) -> onnx.NodeProto | None:
        node = self._producer.get(tensor)
        if node is not None and node.op_type == "Constant":
            return None
        return node

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        return list(self._consumers.get(tensor, ()))

    def is_constant_name(self, tensor: str) -> bool:
        """Whether ``tensor`` is an initializer or a Constant node's output."""
        return tensor in self._initializers or tensor in self._constant_nodes

    def constant(self, tensor: str) -> np.ndarray | None:
        if tensor in self._cache:
            return self._cache[tensor]
        value: np.ndarray | None = None
        if tensor in self._initializers:
            value = numpy_helper.to_array(self._initializers[tensor])
        elif tensor in self._constant_nodes:
            node = self._constant_nodes[tensor]
            for attr in node.attribute:
                if attr.name == "value":
                    value = numpy_helper.to_array(attr.t)
                elif attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
                    value = np.array(helper.get_attribute_value(attr))
        if value is not None:
            self._cache[tensor] = value
        return value

    def is_graph_output(self, tensor: str) -> bool:
        return tensor in self._outputs

    def is_graph_input(self, tensor: str) -> bool:
        """Whether ``tensor`` is a real (non-initializer) input of the model."""
        return any(v.name == tensor for v in self.model.graph.input) and (
            tensor not in self._initializers
        )

    def shape(self, tensor: str) -> tuple[int | None, ...] | None:
        return self._shapes.get(tensor)

    def elem_type(self, tensor: str) -> int | None:
        """The ONNX element type if known."""
        if tensor in self._types:
            return self._types[tensor]
        if tensor in self._constant_nodes:
            value = self.constant(tensor)
            if value is not None:
                return int(helper.np_dtype_to_tensor_dtype(value.dtype))
        return None

    def is_float(self, tensor: str) -> bool:
        elem = self.elem_type(tensor)
        if elem is not None:
            return elem == _FLOAT
        # Unknown type: a tensor produced by a float-only op family is float.
        producer = self._producer.get(tensor)
        return producer is not None and producer.op_type not in _NON_FLOAT_PRODUCERS

    def attribute(self, node: onnx.NodeProto, name: str, default: Any = None) -> Any:
        for attr in node.attribute:
            if attr.name == name:
                value = helper.get_attribute_value(attr)
                if isinstance(value, bytes):
                    return value.decode("utf-8")
                if isinstance(value, list) and value and isinstance(value[0], bytes):
                    return [v.decode("utf-8") for v in value]
                return value
        return default


_NON_FLOAT_PRODUCERS = frozenset(
    {
        "Shape",
        "Size",
        "NonZero",
        "ArgMax",
        "ArgMin",
        "TopK",
        "Equal",
        "Greater",
        "Less",
        "Not",
        "And",
        "Or",
        "Cast",
        "ConstantOfShape",
        "Range",
    }
)
