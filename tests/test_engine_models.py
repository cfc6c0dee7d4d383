"""Models as real exporters write them: Constant-node weights, unfolded
BatchNormalization, opset 11/12, dynamic dimensions, normalization patterns,
failed shape inference, external data; plus determinism and the summary."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests._engine import make_model, random_feeds, run, run_quantize

pytest.importorskip("drpaiq_plugins_ops")
pytest.importorskip("drpaiq_plugins_calibrators")

RNG = np.random.default_rng(7)


def _w(*shape: int, tag: int = 0) -> np.ndarray:
    # Seeded by shape and tag, so a test's weights do not depend on which tests ran before.
    return np.random.default_rng([7, tag, *shape]).normal(scale=0.5, size=shape).astype(np.float32)


def _small_cnn(opset: int = 13) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
        helper.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "FW", "FB"], ["y"], name="fc", transB=1),
    ]
    inits = {"W1": _w(4, 3, 3, 3), "B1": _w(4), "W2": _w(4, 4, 3, 3), "FW": _w(5, 4), "FB": _w(5)}
    return make_model(nodes, {"x": ["N", 3, 6, 6]}, ["y"], inits, opset=opset)


def _close(a: np.ndarray, b: np.ndarray, tolerance: float = 0.1) -> bool:
    return float(np.max(np.abs(a - b))) <= tolerance * float(np.max(np.abs(b)) + 1e-6)


@pytest.mark.parametrize("opset", [11, 12])
def test_old_opsets_are_raised_to_13_and_said(tmp_path: Path, opset: int) -> None:
    model = _small_cnn(opset)
    feeds = random_feeds({"x": ["N", 3, 6, 6]})
    fp32, out, summary = run_quantize(tmp_path, model, feeds)
    assert summary.opset == (opset, 13)
    assert any("opset raised" in note for note in summary.notes)
    written = onnx.load(str(out))
    assert next(o.version for o in written.opset_import if o.domain == "") == 13
    assert _close(run(out, feeds[0])[0], run(fp32, feeds[0])[0])


def test_constant_node_weights_and_unfolded_batchnorm(tmp_path: Path) -> None:
    weight = _w(4, 3, 3, 3)
    nodes = [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(weight, "W")),
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], name="bn"
        ),
        helper.make_node("Relu", ["bn"], ["y"], name="relu"),
    ]
    inits = {
        "gamma": np.abs(_w(4, tag=1)) + 0.5,
        "beta": _w(4, tag=2),
        "mean": _w(4, tag=3),
        "var": np.abs(_w(4, tag=4)) + 0.5,
    }
    model = make_model(nodes, {"x": ["N", 3, 5, 5]}, ["y"], inits)
    feeds = random_feeds({"x": ["N", 3, 5, 5]})
    fp32, out, _summary = run_quantize(tmp_path, model, feeds)
    written = onnx.load(str(out))
    ops = [n.op_type for n in written.graph.node]
    assert "BatchNormalization" not in ops and "Constant" not in ops
    conv = next(n for n in written.graph.node if n.op_type == "Conv")
    producers = {o: n for n in written.graph.node for o in n.output}
    assert producers[conv.input[1]].op_type == "DequantizeLinear"
    assert producers[conv.input[2]].op_type == "DequantizeLinear"  # folded int32 bias
    assert _close(run(out, feeds[0])[0], run(fp32, feeds[0])[0])


def test_dynamic_dims_and_normalization_pattern(tmp_path: Path) -> None:
    # A layer-norm-like tail as exporters write it: ReduceMean/Sub/Pow/Sqrt/Div.
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("ReduceMean", ["c"], ["mu"], name="mean", axes=[1], keepdims=1),
        helper.make_node("Sub", ["c", "mu"], ["d"], name="sub"),
        helper.make_node("Pow", ["d", "two"], ["sq"], name="pow"),
        helper.make_node("ReduceMean", ["sq"], ["v"], name="var", axes=[1], keepdims=1),
        helper.make_node("Add", ["v", "eps"], ["ve"], name="add_eps"),
        helper.make_node("Sqrt", ["ve"], ["s"], name="sqrt"),
        helper.make_node("Div", ["d", "s"], ["y"], name="div"),
    ]
    inits = {
        "W": _w(4, 3, 1, 1),
        "two": np.array(2.0, np.float32),
        "eps": np.array(1e-5, np.float32),
    }
    model = make_model(nodes, {"x": ["N", 3, "H", "W"]}, ["y"], inits)
    feeds = random_feeds({"x": ["N", 3, 5, 7]})
    fp32, out, summary = run_quantize(tmp_path, model, feeds)
    assert summary.float_nodes["sqrt"][1] == "no op quantizer for Sqrt"
    # The epsilon Add keeps its precision, and the summary says why.
    assert summary.float_nodes["add_eps"] == (
        "Add",
        "a normalization's variance + epsilon: in INT8 the epsilon would vanish",
    )
    assert summary.float_nodes["var"] == (
        "ReduceMean",
        "a normalization's variance: kept float with its epsilon Add",
    )
    assert {"conv", "sub"} <= set(summary.quantized)
    other = {"x": RNG.normal(size=(1, 3, 9, 4)).astype(np.float32)}  # other H, W still run
    assert run(out, other)[0].shape == (1, 4, 9, 4)
    # A 4-channel normalization is ill-conditioned in INT8; bound the damage loosely.
    assert _close(run(out, feeds[0])[0], run(fp32, feeds[0])[0], tolerance=0.3)


def test_failed_shape_inference_still_quantizes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = _small_cnn()
    # A value_info that contradicts the real shape makes ONNX shape inference fail.
    model.graph.value_info.append(
        helper.make_tensor_value_info("c1", onnx.TensorProto.FLOAT, [1, 2])
    )
    feeds = random_feeds({"x": ["N", 3, 6, 6]})
    logger = logging.getLogger("drpaiq")
    logger.addHandler(caplog.handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        fp32, out, _ = run_quantize(tmp_path, model, feeds)
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(level)
    assert "shape inference failed" in caplog.text
    assert _close(run(out, feeds[0])[0], run(fp32, feeds[0])[0])


def test_external_data_model(tmp_path: Path) -> None:
    model = _small_cnn()
    source = tmp_path / "src"
    source.mkdir()
    onnx.save(
        model,
        str(source / "ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.data",
        size_threshold=0,
    )
    from drpaiq_core.config import QuantizeConfig
    from drpaiq_core.pipeline import quantize

    from tests._engine import ArrayReader

    feeds = random_feeds({"x": ["N", 3, 6, 6]})
    out = tmp_path / "ext_q.onnx"
    quantize(
        QuantizeConfig(
            input_model=source / "ext.onnx",
            output_model=out,
            reader_object=ArrayReader(feeds),
            skip_preprocess=True,
            quiet=True,
        )
    )
    assert _close(run(out, feeds[0])[0], run(source / "ext.onnx", feeds[0])[0])


def test_two_runs_give_identical_bytes_and_summary_json(tmp_path: Path) -> None:
    model = _small_cnn()
    feeds = random_feeds({"x": ["N", 3, 6, 6]})
    first = tmp_path / "one"
    second = tmp_path / "two"
    first.mkdir()
    second.mkdir()
    _, out1, _ = run_quantize(first, model, feeds, summary_json=first / "s.json")
    _, out2, _ = run_quantize(second, model, feeds)
    assert out1.read_bytes() == out2.read_bytes()
    data = json.loads((first / "s.json").read_text())
    assert data["quantized_by_op_type"]["Conv"] == 2
    assert data["size_after"] == out1.stat().st_size
    assert data["plan"]["activations"]["x"]["dtype"] == "int8"


def test_uint8_and_symmetric_activations(tmp_path: Path) -> None:
    model = _small_cnn()
    feeds = random_feeds({"x": ["N", 3, 6, 6]})
    _, out_u8, s_u8 = run_quantize(tmp_path, model, feeds, name="u8", activation_type="uint8")
    assert s_u8.plan.activations["x"].dtype == "uint8"
    _, out_sym, s_sym = run_quantize(tmp_path, model, feeds, name="sym", activation_symmetric=True)
    assert all(int(p.zero_point) == 0 for p in s_sym.plan.activations.values())
    fp32 = tmp_path / "m.onnx"
    onnx.save(model, str(fp32))
    for out in (out_u8, out_sym):
        assert _close(run(out, feeds[0])[0], run(fp32, feeds[0])[0])


def test_zero_is_exact_and_constant_tensor_gets_nonzero_scale() -> None:
    from drpaiq_core.qparams import activation_params, fake_quantize

    for lo, hi in [(0.3, 2.0), (-1.7, -0.2), (-0.37, 5.1), (0.0, 0.0), (2.5, 2.5)]:
        params = activation_params(lo, hi, "int8", symmetric=False)
        assert float(params.scale) > 0
        assert fake_quantize(np.zeros(3, np.float32), params).tolist() == [0.0, 0.0, 0.0]
        if lo != hi:
            step = float(params.scale)
            values = np.linspace(min(lo, 0), max(hi, 0), 50, dtype=np.float32)
            assert np.max(np.abs(fake_quantize(values, params) - values)) <= step / 2 + 1e-6


def test_shape_arithmetic_is_counted_on_one_summary_line(tmp_path: Path) -> None:
    """A dynamic-batch export computes its Reshape target from Shape/Gather/Concat on
    int64 values: nothing to quantize there, and listing each node as "left in float"
    would hide the float nodes that matter. They are counted on one line instead."""
    weight = np.random.default_rng(0).normal(size=(4, 2, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Shape", ["c"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsqueeze"),
        helper.make_node("Concat", ["n1", "rest"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["c", "target"], ["flat"], name="reshape"),
        helper.make_node("Exp", ["flat"], ["y"], name="exp"),
    ]
    inits = {
        "W": weight,
        "zero": np.array(0, np.int64),
        "axes": np.array([0], np.int64),
        "rest": np.array([-1], np.int64),
    }
    inputs: dict[str, list[int | str]] = {"x": ["N", 2, 3, 3]}
    model = make_model(nodes, inputs, ["y"], inits)
    _, _, summary = run_quantize(tmp_path, model, random_feeds(inputs))
    reasons = {name: why for name, (_, why) in summary.float_nodes.items()}
    integer = "no float output (integer or shape computation)"
    assert {name for name, why in reasons.items() if why == integer} == {
        "shape",
        "gather",
        "unsqueeze",
        "concat",
    }
    assert reasons["exp"] == "no op quantizer for Exp"
    assert summary.quantized["reshape"] == "Reshape"
    text = summary.to_text()
    assert "left in float 1 node(s):\n  exp (Exp): no op quantizer for Exp" in text
    assert f"not quantized, {integer}: 4 node(s) (Concat 1, Gather 1, Shape 1, Unsqueeze 1)" in text
    assert "shape (Shape)" not in text


def test_an_input_normalization_in_the_graph_stays_float(tmp_path: Path) -> None:
    """``(x - mean) / std`` written into the graph at the model input (Keras and some
    torch exports): quantizing it rounds the input twice more and rounds the
    per-channel mean to the input's scale (the same error on every pixel of a channel).
    It stays float, and the first layer's input is quantized once, as ONNX Runtime
    does; a Sub or Mul further in is quantized as before."""
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["centred"], name="sub"),
        helper.make_node("Div", ["centred", "std"], ["normal"], name="div"),
        helper.make_node("Mul", ["normal", "gain"], ["scaled"], name="gain"),
        helper.make_node("Conv", ["scaled", "W"], ["c"], name="conv"),
        helper.make_node("Sub", ["c", "shift"], ["y"], name="shift"),
    ]
    inits = {
        "mean": mean,
        "std": std,
        "gain": np.full((1,), 1.5, np.float32),
        "W": _w(4, 3, 3, 3),
        "shift": np.full((1, 4, 1, 1), 0.1, np.float32),
    }
    model = make_model(nodes, {"x": ["N", 3, 8, 8]}, ["y"], inits)
    feeds = [{"x": RNG.uniform(0, 1, size=(2, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    fp32, out, summary = run_quantize(tmp_path, model, feeds)
    reason = "normalizes the model input with constants: kept float, the first layer's input"
    for name in ("sub", "gain"):
        assert summary.float_nodes[name][1].startswith(reason), summary.float_nodes
    assert summary.quantized["conv"] == "Conv"
    assert summary.quantized["shift"] == "Sub"  # not at the input: quantized
    assert "x" not in summary.plan.activations
    assert "scaled" in summary.plan.activations
    assert _close(run(out, feeds[0])[0], run(fp32, feeds[0])[0], 0.05)
