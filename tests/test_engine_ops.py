"""Each op quantizer on a small real model: the quantized model passes onnx.checker,
runs in ONNX Runtime, and matches a NumPy fake-quant reference computed from the
plan within one quantization step of the output."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from drpaiq_core.plugin_api import GraphView, NodeQuantSpec, OpQuantizer, QuantOptions
from drpaiq_core.plugins import PluginHost
from onnx import helper

from tests._engine import fake_quant_reference, make_model, random_feeds, run, run_quantize
from tests._plugin_helpers import plugin

pytest.importorskip("drpaiq_plugins_ops")
pytest.importorskip("drpaiq_plugins_calibrators")

RNG = np.random.default_rng(42)


def _w(*shape: int, tag: int = 0) -> np.ndarray:
    # Seeded by shape and tag, so a test's weights do not depend on which tests ran before.
    return np.random.default_rng([42, tag, *shape]).normal(scale=0.5, size=shape).astype(np.float32)


def conv() -> tuple:
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    return nodes, {"x": ["N", 3, 6, 6]}, ["y"], {"W": _w(4, 3, 3, 3), "B": _w(4)}


def conv_relu() -> tuple:
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    return nodes, {"x": ["N", 3, 6, 6]}, ["y"], {"W": _w(4, 3, 3, 3), "B": _w(4)}


def conv_clip() -> tuple:
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="clip"),
    ]
    inits = {"W": _w(4, 3, 1, 1), "lo": np.array(0, np.float32), "hi": np.array(0.5, np.float32)}
    return nodes, {"x": ["N", 3, 5, 5]}, ["y"], inits


def conv_transpose() -> tuple:
    nodes = [
        helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], name="deconv", strides=[2, 2])
    ]
    return nodes, {"x": ["N", 3, 4, 4]}, ["y"], {"W": _w(3, 5, 2, 2), "B": _w(5)}


def batch_norm() -> tuple:
    nodes = [
        helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], name="batch_norm")
    ]
    inits = {
        "g": _w(3, tag=1),
        "b": _w(3, tag=2),
        "m": _w(3, tag=3),
        "v": np.abs(_w(3, tag=4)) + 0.5,
    }
    return nodes, {"x": ["N", 3, 4, 4]}, ["y"], inits


def gemm() -> tuple:
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="gemm", transB=1)]
    return nodes, {"x": ["N", 8]}, ["y"], {"W": _w(5, 8), "B": _w(5)}


def matmul_bias_add() -> tuple:
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"], name="matmul"),
        helper.make_node("Add", ["m", "B"], ["y"], name="bias_add"),
    ]
    return nodes, {"x": ["N", 8]}, ["y"], {"W": _w(8, 6), "B": _w(6)}


def binary(op: str) -> Callable[[], tuple]:
    def build() -> tuple:
        nodes = [helper.make_node(op, ["a", "b"], ["y"], name=op.lower())]
        return nodes, {"a": ["N", 4, 3], "b": ["N", 4, 3]}, ["y"], {}

    build.__name__ = op.lower()
    return build


def concat() -> tuple:
    nodes = [helper.make_node("Concat", ["a", "b"], ["y"], name="concat", axis=1)]
    return nodes, {"a": ["N", 2, 3], "b": ["N", 3, 3]}, ["y"], {}


def concat_of_a_narrow_shared_tensor() -> tuple:
    """A YOLO head: a sigmoid score (0..1) read by a Mul and concatenated with box
    coordinates 50 times wider."""
    nodes = [
        helper.make_node("Sigmoid", ["a"], ["score"], name="sigmoid"),
        helper.make_node("Mul", ["score", "a"], ["gated"], name="mul"),
        helper.make_node("Relu", ["b"], ["positive"], name="relu"),
        helper.make_node("Mul", ["positive", "wide"], ["box"], name="scale_box"),
        helper.make_node("Concat", ["box", "score"], ["y"], name="concat", axis=1),
    ]
    return (
        nodes,
        {"a": ["N", 2, 3], "b": ["N", 3, 3]},
        ["y", "gated"],
        {"wide": np.full((1,), 50.0, np.float32)},
    )


def residual(op: str) -> Callable[[], tuple]:
    """A residual block as modB has it: a ReLU6 skip, a Conv branch much wider than
    [-6, 6], their sum (or difference) through ReLU6."""

    def build() -> tuple:
        nodes = [
            helper.make_node("Conv", ["x", "W1"], ["s"], name="stem"),
            helper.make_node("Clip", ["s", "lo", "hi"], ["skip"], name="stem_relu6"),
            helper.make_node("Conv", ["skip", "W2"], ["c"], name="branch", pads=[1, 1, 1, 1]),
            helper.make_node(op, ["c", "skip"], ["sum"], name=op.lower()),
            helper.make_node("Clip", ["sum", "lo", "hi"], ["y"], name="out_relu6"),
        ]
        inits = {
            "W1": 4 * _w(4, 3, 1, 1, tag=5),
            "W2": 2 * _w(4, 4, 3, 3, tag=6),
            "lo": np.array(0, np.float32),
            "hi": np.array(6, np.float32),
        }
        return nodes, {"x": ["N", 3, 5, 5]}, ["y"], inits

    build.__name__ = f"residual_{op.lower()}"
    return build


def unary(op: str, shape: list, **attrs: object) -> Callable[[], tuple]:
    def build() -> tuple:
        nodes = [helper.make_node(op, ["x"], ["y"], name=op.lower(), **attrs)]
        return nodes, {"x": shape}, ["y"], {}

    build.__name__ = op.lower()
    return build


def with_const(op: str, const: np.ndarray, shape: list, **attrs: object) -> Callable[[], tuple]:
    def build() -> tuple:
        nodes = [helper.make_node(op, ["x", "c"], ["y"], name=op.lower(), **attrs)]
        return nodes, {"x": shape}, ["y"], {"c": const}

    build.__name__ = op.lower()
    return build


def resize() -> tuple:
    nodes = [helper.make_node("Resize", ["x", "", "s"], ["y"], name="resize", mode="nearest")]
    return nodes, {"x": ["N", 2, 3, 3]}, ["y"], {"s": np.array([1, 1, 2, 2], np.float32)}


def split() -> tuple:
    nodes = [helper.make_node("Split", ["x", "sp"], ["y", "z"], name="split", axis=1)]
    return nodes, {"x": ["N", 4, 3]}, ["y", "z"], {"sp": np.array([1, 3], np.int64)}


def slice_() -> tuple:
    nodes = [helper.make_node("Slice", ["x", "st", "en", "ax"], ["y"], name="slice")]
    inits = {
        "st": np.array([1], np.int64),
        "en": np.array([3], np.int64),
        "ax": np.array([1], np.int64),
    }
    return nodes, {"x": ["N", 4, 3]}, ["y"], inits


def pad() -> tuple:
    nodes = [helper.make_node("Pad", ["x", "p"], ["y"], name="pad")]
    return nodes, {"x": ["N", 2, 3]}, ["y"], {"p": np.array([0, 0, 1, 0, 0, 1], np.int64)}


CASES = [
    conv,
    conv_relu,
    conv_clip,
    conv_transpose,
    batch_norm,
    gemm,
    matmul_bias_add,
    binary("Add"),
    binary("Sub"),
    binary("Mul"),
    residual("Add"),
    residual("Sub"),
    concat,
    concat_of_a_narrow_shared_tensor,
    unary("MaxPool", ["N", 2, 4, 4], kernel_shape=[2, 2], strides=[2, 2]),
    unary("AveragePool", ["N", 2, 4, 4], kernel_shape=[2, 2], strides=[2, 2]),
    unary("GlobalAveragePool", ["N", 2, 4, 4]),
    unary("Relu", ["N", 6]),
    unary("LeakyRelu", ["N", 6], alpha=0.1),
    unary("Sigmoid", ["N", 6]),
    unary("HardSigmoid", ["N", 6]),
    unary("HardSwish", ["N", 6]),
    unary("Tanh", ["N", 6]),
    unary("Softmax", ["N", 6], axis=1),
    unary("Flatten", ["N", 2, 3], axis=1),
    unary("Transpose", ["N", 2, 3], perm=[0, 2, 1]),
    with_const("Reshape", np.array([0, 6], np.int64), ["N", 2, 3]),
    with_const("Squeeze", np.array([1], np.int64), ["N", 1, 3]),
    with_const("Unsqueeze", np.array([1], np.int64), ["N", 3]),
    resize,
    split,
    slice_,
    pad,
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.strip("_"))
def test_op_matches_fake_quant_reference(tmp_path: Path, case: Callable[[], tuple]) -> None:
    nodes, inputs, outputs, inits = case()
    model = make_model(nodes, inputs, outputs, inits)
    feeds = random_feeds(inputs)
    _, out, summary = run_quantize(tmp_path, model, feeds)
    written = onnx.load(str(out))
    onnx.checker.check_model(written, full_check=True)
    plan = summary.plan
    assert all(node.name in summary.quantized for node in model.graph.node), summary.float_nodes
    for feed in feeds:
        got = run(out, feed)
        reference = fake_quant_reference(model, plan, feed)
        for name, value in zip(outputs, got):
            params = plan.activations[name]
            step = float(params.scale)
            err = float(np.max(np.abs(value - reference[name])))
            # One quantization step of the output, plus float rounding slack.
            assert err <= step * 1.0001 + 1e-6, f"{name}: error {err} > step {step}"


def test_weights_are_int8_per_channel_and_bias_int32(tmp_path: Path) -> None:
    nodes, inputs, outputs, inits = conv()
    _, out, summary = run_quantize(
        tmp_path, make_model(nodes, inputs, outputs, inits), random_feeds(inputs)
    )
    written = onnx.load(str(out))
    by_name = {i.name: i for i in written.graph.initializer}
    dq = {n.input[0]: n for n in written.graph.node if n.op_type == "DequantizeLinear"}
    weight = by_name["W_quantized"]
    bias = by_name["B_quantized"]
    assert weight.data_type == onnx.TensorProto.INT8
    assert bias.data_type == onnx.TensorProto.INT32
    assert helper.get_attribute_value(dq["W_quantized"].attribute[0]) == 0  # axis 0
    w_scale = onnx.numpy_helper.to_array(by_name[dq["W_quantized"].input[1]])
    b_scale = onnx.numpy_helper.to_array(by_name[dq["B_quantized"].input[1]])
    x_scale = summary.plan.activations["x"].scale
    assert w_scale.shape == (4,)
    np.testing.assert_allclose(b_scale, (x_scale * w_scale).astype(np.float32), rtol=1e-6)
    b_zp = onnx.numpy_helper.to_array(by_name[dq["B_quantized"].input[2]])
    assert not b_zp.any()


def test_a_pruned_channels_large_bias_stays_exact(tmp_path: Path) -> None:
    """A folded BatchNormalization with gamma near 0 leaves a channel with near-zero
    weights and a normal bias: at the plain weight scale the int32 bias would overflow
    (and be clipped to a fraction of itself). The channel's weight scale is raised
    instead, so its bias, and its output, stay right."""
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    weight[0] = rng.normal(size=(3, 3, 3)).astype(np.float32) * 1e-9
    bias = np.array([0.8, 0.1, -0.2, 0.3], np.float32)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    inputs: dict[str, list[int | str]] = {"x": ["N", 3, 8, 8]}
    model = make_model(nodes, inputs, ["y"], {"W": weight, "B": bias})
    fp32, out, summary = run_quantize(tmp_path, model, random_feeds(inputs))
    written = onnx.load(str(out))
    by_name = {i.name: onnx.numpy_helper.to_array(i) for i in written.graph.initializer}
    dq = {n.input[0]: n for n in written.graph.node if n.op_type == "DequantizeLinear"}
    q_bias = by_name["B_quantized"].astype(np.int64)
    b_scale = by_name[dq["B_quantized"].input[1]].astype(np.float64)
    assert np.abs(q_bias).max() <= 2**30
    # Every bias, the pruned channel's included, within half a step of its value.
    assert np.all(np.abs(q_bias * b_scale - bias) <= b_scale * 0.5001)
    w_scale = by_name[dq["W_quantized"].input[1]]
    x_scale = summary.plan.activations["x"].scale
    np.testing.assert_allclose(b_scale, (x_scale * w_scale).astype(np.float32), rtol=1e-6)
    feed = random_feeds(inputs, batches=1, seed=7)[0]
    expected, got = run(fp32, feed)[0], run(out, feed)[0]
    # The pruned channel outputs its bias; the others stay within a few output steps.
    np.testing.assert_allclose(got[:, 0], 0.8, atol=summary.plan.activations["y"].scale)
    step = float(summary.plan.activations["y"].scale)
    assert float(np.max(np.abs(got - expected))) < 8 * step


@pytest.mark.parametrize("zero", ["constant", "dead_relu"])
def test_an_all_zero_add_input_does_not_coarsen_the_other(tmp_path: Path, zero: str) -> None:
    """An Add of a live tensor and one that is zero on all the data (a zero constant
    such as an untrained LayerNorm beta, or a ReLU branch that never fires): the zero
    input is exact at any scale, so the shared scale is the live input's, not the
    fallback scale 1.0 of an empty range."""
    if zero == "constant":
        # The Add follows a layer (an Add of a constant right at the model input is an
        # input normalization, which stays float).
        nodes = [
            helper.make_node("Tanh", ["x"], ["live"], name="tanh"),
            helper.make_node("Add", ["live", "z"], ["y"], name="add"),
        ]
        inits = {"z": np.zeros((1, 4, 1, 1), np.float32)}
    else:
        nodes = [
            helper.make_node("Sub", ["x", "big"], ["low"], name="sub"),
            helper.make_node("Relu", ["low"], ["z"], name="relu"),
            helper.make_node("Tanh", ["x"], ["live"], name="tanh"),
            helper.make_node("Add", ["live", "z"], ["y"], name="add"),
        ]
        inits = {"big": np.full((1,), 100.0, np.float32)}
    inputs: dict[str, list[int | str]] = {"x": ["N", 4, 5, 5]}
    model = make_model(nodes, inputs, ["y"], inits)
    fp32, out, summary = run_quantize(tmp_path, model, random_feeds(inputs))
    assert summary.quantized["add"] == "Add"
    x_range = summary.plan.ranges["live"]
    x_scale = float(summary.plan.activations["live"].scale)
    assert x_scale == pytest.approx((x_range[1] - x_range[0]) / 255, rel=1e-6)
    feed = random_feeds(inputs, batches=1, seed=5)[0]
    error = np.abs(run(out, feed)[0] - run(fp32, feed)[0])
    assert float(error.max()) <= 2 * float(summary.plan.activations["y"].scale)


@pytest.mark.parametrize("op", ["Add", "Sub"])
def test_a_sum_input_is_cut_to_what_reaches_the_clipped_output(tmp_path: Path, op: str) -> None:
    """Before a ReLU6, the Conv branch of a residual sum matters only where the sum can
    still land inside [0, 6]: the plan cuts its range there (and the shared scale with
    it), and clamping the FP32 model's branch to the cut changes no output at all."""
    nodes, inputs, outputs, inits = residual(op)()
    model = make_model(nodes, inputs, outputs, inits)
    feeds = random_feeds(inputs)
    fp32, _, summary = run_quantize(tmp_path, model, feeds)
    plan = summary.plan
    (c_lo, c_hi), (k_lo, k_hi) = plan.ranges["c"], plan.ranges["skip"]
    y_lo, y_hi = plan.ranges["y"]
    assert k_lo == 0.0 and 5.0 < k_hi <= 6.0 and c_lo < -8.0 and c_hi > 12.0  # a wide branch
    if op == "Add":  # c in [y_lo - max(skip), y_hi - min(skip)]
        expected = (y_lo - k_hi, y_hi - k_lo)
    else:  # c - skip: c in [y_lo + min(skip), y_hi + max(skip)]
        expected = (min(y_lo + k_lo, 0.0), y_hi + k_hi)
    cut = plan.cuts[(op.lower(), 0)]
    assert cut == pytest.approx(expected, abs=1e-6)
    assert (op.lower(), 1) not in plan.cuts  # the skip's whole range can reach the output
    assert "1 Add/Sub input range(s) cut to the values that can still reach" in summary.notes[-1]
    # The branch is read by the sum alone: quantized once, over the cut, at the shared
    # scale; the skip (read by the branch too) keeps its own and is requantized on its edge.
    c = plan.activations["c"]
    assert float(c.scale) == pytest.approx((cut[1] - cut[0]) / 255, rel=1e-6)
    assert float(plan.edges[(op.lower(), 1)].scale) == float(c.scale)
    assert float(plan.activations["skip"].scale) == pytest.approx(k_hi / 255, rel=1e-6)
    # The cut is exact: the FP32 model with the branch clamped to it gives the same output.
    more = [*feeds, *random_feeds(inputs, seed=3)]
    _assert_clamping_changes_nothing(tmp_path, fp32, op, 0, cut, more)


def _assert_clamping_changes_nothing(
    tmp_path: Path,
    fp32: Path,
    op: str,
    index: int,
    cut: tuple[float, float],
    feeds: list[dict[str, np.ndarray]],
) -> None:
    """The FP32 model with input ``index`` of its ``op`` node clamped to ``cut`` gives the
    same outputs (to float rounding: the Clip in between keeps ONNX Runtime from fusing
    the sum into its neighbours)."""
    clamped = onnx.load(str(fp32))
    node = next(n for n in clamped.graph.node if n.op_type == op)
    source = node.input[index]
    node.input[index] = f"{source}_clamped"
    clamped.graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(np.array(cut[0], np.float32), "cut_lo"),
            onnx.numpy_helper.from_array(np.array(cut[1], np.float32), "cut_hi"),
        ]
    )
    clamped.graph.node.insert(
        list(clamped.graph.node).index(node),
        helper.make_node("Clip", [source, "cut_lo", "cut_hi"], [f"{source}_clamped"], name="clamp"),
    )
    clamped_path = tmp_path / "clamped.onnx"
    onnx.save(clamped, str(clamped_path))
    for feed in feeds:
        np.testing.assert_allclose(run(clamped_path, feed)[0], run(fp32, feed)[0], atol=1e-5)


class SumQuantizer(OpQuantizer):
    """A third party's quantizer for ONNX ``Sum`` (no built-in claims it): every input
    an activation, the output the sum of all, no shared scale."""

    PLUGIN_NAME = "test_sum"
    DESCRIPTION = "Sum (tests)"
    OP_TYPES = ("Sum",)

    def quantize_node(
        self, node: onnx.NodeProto, graph: GraphView, options: QuantOptions
    ) -> NodeQuantSpec | None:
        n = len(node.input)
        return NodeQuantSpec(activations=tuple(range(n)), outputs=(0,), sum_signs=(1,) * n)


def test_a_third_party_sum_gets_its_inputs_cut_without_a_shared_scale(tmp_path: Path) -> None:
    """``sum_signs`` alone (no ``same_scale``): a three-input Sum before ReLU6 cuts its
    wide input to ``[-(max b + max c), 6]``, quantized at that input's own scale."""
    nodes, inputs, _, inits = residual("Add")()
    nodes = [
        *nodes[:3],
        helper.make_node("Conv", ["x", "W3"], ["s2"], name="stem2"),
        helper.make_node("Clip", ["s2", "lo", "hi"], ["skip2"], name="stem2_relu6"),
        helper.make_node("Sum", ["c", "skip", "skip2"], ["sum"], name="sum"),
        helper.make_node("Clip", ["sum", "lo", "hi"], ["y"], name="out_relu6"),
    ]
    inits["W3"] = 4 * _w(4, 3, 1, 1, tag=7)
    model = make_model(nodes, inputs, ["y"], inits)
    feeds = random_feeds(inputs)
    host = PluginHost()
    host.register(plugin(op_quantizers=[SumQuantizer]), "test_sum", "drpaiq-test-sum")
    fp32, _, summary = run_quantize(tmp_path, model, feeds, host=host)
    plan = summary.plan
    assert summary.quantized["sum"] == "Sum"
    (c_lo, _), (y_lo, y_hi) = plan.ranges["c"], plan.ranges["y"]
    k_max = plan.ranges["skip"][1] + plan.ranges["skip2"][1]
    assert c_lo < y_lo - k_max  # the branch reaches below what can still matter
    cut = plan.cuts[("sum", 0)]
    assert cut == pytest.approx((y_lo - k_max, y_hi), abs=1e-6)
    assert set(plan.cuts) == {("sum", 0)}
    assert float(plan.activations["c"].scale) == pytest.approx((cut[1] - cut[0]) / 255, rel=1e-6)
    assert ("sum", 1) not in plan.edges and ("sum", 2) not in plan.edges
    _assert_clamping_changes_nothing(tmp_path, fp32, "Sum", 0, cut, feeds)


def test_an_unclipped_sum_keeps_its_inputs_ranges(tmp_path: Path) -> None:
    """Without a clipping activation after it, an Add's output range holds every sum
    seen, so no input is cut."""
    nodes, inputs, outputs, inits = binary("Add")()
    model = make_model(nodes, inputs, outputs, inits)
    _, _, summary = run_quantize(tmp_path, model, random_feeds(inputs))
    assert summary.plan.cuts == {}
    assert not any("cut to the values" in note for note in summary.notes)


def test_concat_requantizes_a_narrow_input_that_others_read(tmp_path: Path) -> None:
    """Tied to the Concat's output, the score would take the boxes' scale (about 50
    times coarser) for the Mul that reads it too. It keeps its own scale and is
    requantized to the output's parameters on its edge into the Concat, where the tie
    still holds; an input only the Concat reads is tied directly, without a requant."""
    nodes, inputs, outputs, inits = concat_of_a_narrow_shared_tensor()
    model = make_model(nodes, inputs, outputs, inits)
    _, out, summary = run_quantize(tmp_path, model, random_feeds(inputs))
    plan = summary.plan
    score, box, y = (plan.activations[t] for t in ("score", "box", "y"))
    assert float(score.scale) < float(y.scale) / 10
    assert (float(box.scale), int(box.zero_point)) == (float(y.scale), int(y.zero_point))
    edge = plan.edges[("concat", 1)]
    assert (float(edge.scale), int(edge.zero_point)) == (float(y.scale), int(y.zero_point))
    assert ("concat", 0) not in plan.edges
    written = onnx.load(str(out))
    producers = {o: n for n in written.graph.node for o in n.output}
    by_name = {i.name: onnx.numpy_helper.to_array(i) for i in written.graph.initializer}
    concat = next(n for n in written.graph.node if n.op_type == "Concat")
    out_q = next(
        n
        for n in written.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] == concat.output[0]
    )
    for name in concat.input:
        dq = producers[name]
        assert dq.op_type == "DequantizeLinear"
        assert by_name[dq.input[1]] == by_name[out_q.input[1]]
        assert by_name[dq.input[2]] == by_name[out_q.input[2]]


def test_matmul_bias_add_gets_an_int32_bias(tmp_path: Path) -> None:
    nodes, inputs, outputs, inits = matmul_bias_add()
    model = make_model(nodes, inputs, outputs, inits)
    _, out, summary = run_quantize(tmp_path, model, random_feeds(inputs))
    written = onnx.load(str(out))
    by_name = {i.name: onnx.numpy_helper.to_array(i) for i in written.graph.initializer}
    producers = {o: n for n in written.graph.node for o in n.output}
    add = next(n for n in written.graph.node if n.op_type == "Add")
    matmul = producers[add.input[0]]
    assert matmul.op_type == "MatMul"  # no QDQ between the MatMul and its BiasAdd
    bias_dq = producers[add.input[1]]
    weight_dq = producers[matmul.input[1]]
    assert by_name[bias_dq.input[0]].dtype == np.int32
    assert by_name[weight_dq.input[0]].dtype == np.int8
    x_scale = summary.plan.activations["x"].scale
    expected = (x_scale * by_name[weight_dq.input[1]]).astype(np.float32)
    np.testing.assert_allclose(by_name[bias_dq.input[1]], expected, rtol=1e-6)
    assert summary.quantized["bias_add"] == "Add"


def test_unknown_op_stays_float_and_model_runs(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Exp", ["c"], ["y"], name="exp"),
    ]
    inputs = {"x": ["N", 2, 3, 3]}
    model = make_model(nodes, inputs, ["y"], {"W": _w(2, 2, 1, 1)})
    feeds = random_feeds(inputs)
    _, out, summary = run_quantize(tmp_path, model, feeds)
    assert summary.float_nodes["exp"] == ("Exp", "no op quantizer for Exp")
    assert "exp" in summary.to_text()
    expected = run(tmp_path / "m.onnx", feeds[0])[0]
    got = run(out, feeds[0])[0]
    assert np.max(np.abs(got - expected)) < 0.1 * np.max(np.abs(expected))


def test_maxpool_and_transpose_first_and_last_layer_are_quantized(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], name="first_transpose", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "W"], ["c"], name="conv"),
        helper.make_node("MaxPool", ["c"], ["y"], name="last_pool", kernel_shape=[2, 2]),
    ]
    inputs = {"x": ["N", 4, 4, 3]}
    model = make_model(nodes, inputs, ["y"], {"W": _w(2, 3, 1, 1)})
    _, out, summary = run_quantize(tmp_path, model, random_feeds(inputs))
    assert {"first_transpose", "last_pool"} <= set(summary.quantized)
    written = onnx.load(str(out))
    producers = {o: n for n in written.graph.node for o in n.output}
    assert producers["y"].op_type == "DequantizeLinear"  # the last MaxPool's output is QDQ
    first = next(n for n in written.graph.node if n.name == "first_transpose")
    assert producers[first.input[0]].op_type == "DequantizeLinear"
    plan = summary.plan
    assert plan.activations["t"] is plan.activations["x"]  # pass-through keeps params
    assert plan.activations["y"] is plan.activations["c"]
