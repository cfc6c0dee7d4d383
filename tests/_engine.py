"""Helpers for engine tests: small real ONNX models, an in-memory reader, and a
fake-quantization reference computed from a plan."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from drpaiq_core.config import QuantizeConfig
from drpaiq_core.pipeline import quantize
from drpaiq_core.plan import QuantPlan
from drpaiq_core.plugin_api import Batch, Reader, ReaderContext
from drpaiq_core.plugins import PluginHost
from drpaiq_core.qparams import fake_quantize
from drpaiq_core.summary import Summary
from onnx import helper, numpy_helper

OPSET = 14


class ArrayReader(Reader):
    """Feeds fixed arrays (one dict per batch)."""

    PLUGIN_NAME = "test_arrays"

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        super().__init__(ReaderContext(dataset=None, model_path=None, inputs=()))
        self.feeds = list(feeds)

    def __len__(self) -> int:
        return sum(next(iter(f.values())).shape[0] for f in self.feeds)

    def batches(self) -> Iterator[Batch]:
        for feed in self.feeds:
            yield Batch(dict(feed))


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: dict[str, list[int | str]],
    outputs: list[str],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = OPSET,
) -> onnx.ModelProto:
    """A checked float32 model."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in inputs.items()],
        [_unknown_shape_output(n) for n in outputs],
        [numpy_helper.from_array(v, k) for k, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    # Exporters write output shapes; let shape inference fill them in as they would.
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def _unknown_shape_output(name: str) -> onnx.ValueInfoProto:
    value = onnx.ValueInfoProto()
    value.name = name
    value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return value


def random_feeds(
    inputs: dict[str, list[int | str]], batches: int = 4, batch: int = 2, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(batches):
        feed = {}
        for name, shape in inputs.items():
            dims = [batch if not isinstance(d, int) else d for d in shape]
            feed[name] = rng.normal(size=dims).astype(np.float32)
        feeds.append(feed)
    return feeds


def run_quantize(
    tmp_path: Path,
    model: onnx.ModelProto,
    feeds: list[dict[str, np.ndarray]],
    name: str = "m",
    host: PluginHost | None = None,
    **overrides: object,
) -> tuple[Path, Path, Summary]:
    """Save ``model``, quantize it with MinMax from ``feeds`` (with the plugins of
    ``host``, by default the installed ones); (fp32, int8, summary)."""
    fp32 = tmp_path / f"{name}.onnx"
    out = tmp_path / f"{name}_q.onnx"
    onnx.save(model, str(fp32))
    config = QuantizeConfig(
        input_model=fp32,
        output_model=out,
        reader_object=ArrayReader(feeds),
        calibrate_method="minmax",
        skip_preprocess=True,
        quiet=True,
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    summary = quantize(config, host)
    return fp32, out, summary


def session(path: Path | bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(
        str(path) if isinstance(path, Path) else path, options, providers=["CPUExecutionProvider"]
    )


def run(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(path).run(None, feed)


def fake_quant_reference(
    model: onnx.ModelProto, plan: QuantPlan, feed: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Evaluate ``model`` node by node; every tensor the plan quantizes is replaced
    by its NumPy fake-quantized value, weights and biases by their dequantized
    integers. ONNX Runtime only supplies each op's float semantics."""
    values: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        values[init.name] = numpy_helper.to_array(init)
    constants_by_user: dict[tuple[str, int], np.ndarray] = {}
    for weight in plan.constants.values():
        params = weight.params
        q = weight.values.astype(np.float32)
        scale = params.scale.astype(np.float32)
        if params.axis is not None and scale.ndim == 1:
            shape = [1] * q.ndim
            shape[params.axis] = -1
            scale = scale.reshape(shape)
        for user in weight.users:
            constants_by_user[user] = (q * scale).astype(np.float32)
    for name, value in feed.items():
        values[name] = (
            fake_quantize(value, plan.activations[name]) if name in plan.activations else value
        )
    for name, value in plan.constant_activations.items():
        values[name] = fake_quantize(value, plan.activations[name])
    for node in model.graph.node:
        args = []
        for index, name in enumerate(node.input):
            if (node.name, index) in constants_by_user:
                args.append(constants_by_user[(node.name, index)])
            else:
                value = values[name] if name else None
                edge = plan.edges.get((node.name, index))
                if value is not None and edge is not None:
                    value = fake_quantize(value, edge)  # requantized on this edge only
                args.append(value)
        outs = _run_node(node, args, model)
        for name, value in zip(node.output, outs):
            values[name] = (
                fake_quantize(value, plan.activations[name]) if name in plan.activations else value
            )
    return values


def _run_node(
    node: onnx.NodeProto, args: list[np.ndarray | None], model: onnx.ModelProto
) -> list[np.ndarray]:
    names = [f"i{i}" if a is not None else "" for i, a in enumerate(args)]
    single = helper.make_node(
        node.op_type, names, [f"o{i}" for i in range(len(node.output))], domain=node.domain
    )
    single.attribute.extend(node.attribute)
    inputs = [
        helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
        for n, a in zip(names, args)
        if a is not None
    ]
    outputs = [onnx.ValueInfoProto(name=o) for o in single.output]
    graph = helper.make_graph([single], "node", inputs, outputs)
    m = helper.make_model(graph, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    feed = {n: a for n, a in zip(names, args) if a is not None}
    return session(m.SerializeToString()).run(None, feed)
