"""Small but real ONNX models for the example plugin's tests, built with onnx.helper."""

from __future__ import annotations

import types

import numpy as np
import onnx
import pytest
from drpaiq_core.plugins import PluginHost
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Appends nodes named ``<OpType>_<index>`` the way exporters name them."""

    def __init__(self, named: bool = True) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.named = named

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs: object) -> list[str]:
        index = len(self.nodes)
        names = [f"t{index}_{k}" for k in range(outputs)]
        node_name = f"{op_type}_{index}" if self.named else ""
        self.nodes.append(helper.make_node(op_type, inputs, names, name=node_name, **attrs))
        return names

    def conv(self, x: str, c_in: int, c_out: int, k: int, seed: int) -> str:
        rng = np.random.default_rng(seed)
        w = self.const(f"w{seed}", rng.normal(0, 0.3, (c_out, c_in, k, k)).astype(np.float32))
        b = self.const(f"b{seed}", rng.normal(0, 0.1, (c_out,)).astype(np.float32))
        return self.op("Conv", [x, w, b], kernel_shape=[k, k], pads=[k // 2] * 4)[0]

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])[0]])[0]

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]):
        graph = helper.make_graph(self.nodes, "test", inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


#: Nodes of one YOLOv5 head after its last Conv, in graph order.
HEAD_TAIL = ["Reshape", "Transpose", "Sigmoid", "Split", "Mul", "Sub", "Add", "Mul", "Mul",
             "Pow", "Mul", "Concat", "Reshape"]  # fmt: skip


def yolo_like_model(named: bool = True) -> onnx.ModelProto:
    """A two-head YOLOv5-shaped detector on 16x16 inputs: SiLU backbone, 1x1 head Convs
    (2 anchors x 7 outputs), the Sigmoid/Split/Mul/Add/Pow/Concat box decoding of each
    head, and a final Concat into ``output`` [1, 640, 7]."""
    g = GraphBuilder(named)
    x = g.silu(g.conv("images", 3, 8, 3, seed=0))
    heads = []
    for level, (feature, size, stride) in enumerate([(x, 16, 8.0), (None, 8, 16.0)]):
        if feature is None:
            pooled = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])[0]
            feature = g.silu(g.conv(pooled, 8, 8, 3, seed=1))
        p = g.conv(feature, 8, 14, 1, seed=10 + level)
        p = g.op("Reshape", [p, g.const(f"shape5_{level}", np.array([1, 2, 7, size, size]))])[0]
        p = g.op("Transpose", [p], perm=[0, 1, 3, 4, 2])[0]
        y = g.op("Sigmoid", [p])[0]
        xy, wh, conf = g.op("Split", [y, g.const(f"split{level}", np.array([2, 2, 3]))], 3, axis=-1)
        two = g.const(f"two{level}", np.array(2.0, np.float32))
        xy = g.op("Mul", [xy, two])[0]
        xy = g.op("Sub", [xy, g.const(f"half{level}", np.array(0.5, np.float32))])[0]
        grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1).astype(np.float32)
        xy = g.op("Add", [xy, g.const(f"grid{level}", grid.reshape(1, 1, size, size, 2))])[0]
        xy = g.op("Mul", [xy, g.const(f"stride{level}", np.array(stride, np.float32))])[0]
        wh = g.op("Mul", [wh, two])[0]
        wh = g.op("Pow", [wh, g.const(f"power{level}", np.array(2.0, np.float32))])[0]
        anchors = np.array([[10, 13], [16, 30]], np.float32).reshape(1, 2, 1, 1, 2) * (level + 1)
        wh = g.op("Mul", [wh, g.const(f"anchors{level}", anchors)])[0]
        out = g.op("Concat", [xy, wh, conf], axis=-1)[0]
        heads.append(g.op("Reshape", [out, g.const(f"shape3_{level}", np.array([1, -1, 7]))])[0])
    g.op("Concat", heads, axis=1)
    g.nodes[-1].output[0] = "output"
    return g.model(
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 640, 7])],
    )


def classifier_model() -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: what the preset must refuse."""
    g = GraphBuilder()
    x = g.op("Relu", [g.conv("images", 3, 4, 3, seed=0)])[0]
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])[0]])[0]
    w = g.const("fc_w", np.ones((4, 10), np.float32))
    g.op("Gemm", [x, w])
    g.nodes[-1].output[0] = "logits"
    return g.model(
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
    )


def conv_then(op_types: list[str]) -> onnx.ModelProto:
    """A Conv followed by a chain of unary ops (none for an empty list)."""
    g = GraphBuilder()
    x = g.conv("images", 3, 4, 3, seed=0)
    for op_type in op_types:
        x = g.op(op_type, [x])[0]
    g.nodes[-1].output[0] = "output"
    return g.model(
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8, 8])],
    )


@pytest.fixture
def models() -> types.SimpleNamespace:
    """The model builders: ``yolo(named=True)``, ``classifier()``, ``conv_then(ops)``;
    ``HEAD_TAIL`` lists one head's tail op types."""
    return types.SimpleNamespace(
        yolo=yolo_like_model, classifier=classifier_model, conv_then=conv_then, HEAD_TAIL=HEAD_TAIL
    )


@pytest.fixture
def host() -> PluginHost:
    """A plugin host that knows only this plugin, registered as its entry point would."""
    from drpaiq_example_plugin import plugin

    host = PluginHost(load_entry_points=False)
    host.register(plugin, "example", "drpaiq-example-plugin")
    return host
