"""The ``bias_correction`` advanced option: real models, real ONNX Runtime, no mocks.

The planted-error models put a known systematic error into the INT8 model: each output
channel's weights are one large value (which sets the channel's int8 scale) and many
small ones that all round the same way, so on positive inputs the INT8 layer's output
mean is off by a constant per channel. Bias correction must remove that.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from drpaiq_core.cli import build_cli
from drpaiq_core.compat import quantize_interface
from drpaiq_core.config import QuantizeConfig
from drpaiq_core.errors import UserError
from drpaiq_core.options import parse_advanced
from drpaiq_core.pipeline import quantize
from drpaiq_core.summary import Summary
from onnx import helper, numpy_helper

from tests._engine import make_model, run_quantize, session
from tests._models import (
    classifier,
    images,
    restore_drpaiq_logger,  # noqa: F401 (an autouse fixture)
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
MODEL_A = SAMPLES / "modA_resnet_nchw.onnx"
CALIBRATE = SAMPLES / "data" / "calibrate"
NORM: dict[str, tuple[float, ...]] = {"norm_mean": (0.2860,) * 3, "norm_std": (0.3530,) * 3}

ON = {"bias_correction": "True"}


# ---------------------------------------------------------------------------
# Models with a planted bias error
# ---------------------------------------------------------------------------


def planted_conv_weights(smalls: list[float], in_channels: int) -> np.ndarray:
    """3x3 weights: per output channel one 1.0 and the rest ``small``, which int8
    rounds to a whole step (or to 0) with the same sign everywhere."""
    w = np.zeros((len(smalls), in_channels, 3, 3), np.float32)
    for c, small in enumerate(smalls):
        w[c] = small
        w[c, c % in_channels, 1, 1] = 1.0
    return w


def conv_model() -> onnx.ModelProto:
    """Conv -> Relu -> Conv: two levels of biased layers."""
    return make_model(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="conv1"),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], pads=[1] * 4, name="conv2"),
        ],
        {"x": ["N", 4, 6, 6]},
        ["y"],
        {
            "w1": planted_conv_weights([0.0059, -0.0059, 0.0035], 4),
            "b1": np.array([0.1, -0.2, 0.05], np.float32),
            "w2": planted_conv_weights([-0.0061, 0.0058], 3),
            "b2": np.array([0.0, 0.3], np.float32),
        },
    )


def matmul_model() -> onnx.ModelProto:
    """MatMul + Add (a BiasAdd, channels last) on a [N, T, F] input."""
    w = np.full((16, 3), 0.0059, np.float32)
    w[:, 1] = -0.0059
    w[0], w[1, 1] = 1.0, 1.0
    return make_model(
        [
            helper.make_node("MatMul", ["x", "w"], ["mm"], name="matmul"),
            helper.make_node("Add", ["mm", "b"], ["y"], name="bias_add"),
        ],
        {"x": ["N", 5, 16]},
        ["y"],
        {"w": w, "b": np.array([0.2, 0.0, -0.1], np.float32)},
    )


def positive_feeds(shape: tuple[int, ...], batches: int = 8) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.uniform(0.5, 1.5, shape).astype(np.float32)} for _ in range(batches)]


def channel_mean_error(fp32: Path, int8: Path, x: np.ndarray, axis: int) -> np.ndarray:
    """Per output channel, the mean of INT8 output - FP32 output over ``x``."""
    diff = session(int8).run(None, {"x": x})[0] - session(fp32).run(None, {"x": x})[0]
    axis %= diff.ndim
    return diff.mean(axis=tuple(i for i in range(diff.ndim) if i != axis))


@pytest.mark.parametrize(
    ("build", "shape", "axis", "levels"),
    [(conv_model, (4, 4, 6, 6), 1, 2), (matmul_model, (4, 5, 16), -1, 1)],
    ids=["conv", "matmul_add"],
)
def test_a_planted_bias_error_is_removed(tmp_path, build, shape, axis, levels):
    model, feeds = build(), positive_feeds(shape)
    fp32, plain, _ = run_quantize(tmp_path, model, feeds, name="plain")
    _, corrected, summary = run_quantize(tmp_path, model, feeds, name="corrected", options=ON)
    x = np.concatenate([f["x"] for f in feeds])
    before = np.abs(channel_mean_error(fp32, plain, x, axis))
    after = np.abs(channel_mean_error(fp32, corrected, x, axis))
    # The planted error is real (many activation steps) ...
    assert before.max() > 0.01, before
    # ... and correction removes most of it in every channel.
    assert np.all(after <= before / 3), (before, after)
    assert after.max() < before.max() / 10, (before, after)
    note = summary.notes[-1]
    assert note.startswith("bias correction: moved")
    assert f"in {levels + 1} pass(es)" in note and f"({levels} level(s))" in note


def test_off_is_byte_identical_to_no_option(tmp_path):
    model, feeds = conv_model(), positive_feeds((4, 4, 6, 6), batches=3)
    _, absent, summary = run_quantize(tmp_path, model, feeds, name="absent")
    off = parse_advanced([("bias_correction", "False")])
    _, explicit, _ = run_quantize(tmp_path, model, feeds, name="off", options=off)
    assert absent.read_bytes() == explicit.read_bytes()
    assert not any("bias correction" in note for note in summary.notes)


def test_only_int32_bias_values_change(tmp_path):
    model, feeds = conv_model(), positive_feeds((4, 4, 6, 6), batches=3)
    _, plain, _ = run_quantize(tmp_path, model, feeds, name="plain")
    _, corrected, _ = run_quantize(tmp_path, model, feeds, name="corrected", options=ON)
    a, b = onnx.load(str(plain)), onnx.load(str(corrected))
    assert [n.SerializeToString() for n in a.graph.node] == [
        n.SerializeToString() for n in b.graph.node
    ]
    changed = [
        x.name
        for x, y in zip(a.graph.initializer, b.graph.initializer)
        if x.name != y.name or x.SerializeToString() != y.SerializeToString()
    ]
    assert sorted(changed) == ["b1_quantized", "b2_quantized"]
    assert all(
        numpy_helper.to_array(i).dtype == np.int32 for i in b.graph.initializer if i.name in changed
    )


# ---------------------------------------------------------------------------
# Readers: a get_next() object (the reference API) and an image folder
# ---------------------------------------------------------------------------


class ListReader:
    """An ONNX Runtime CalibrationDataReader-style object: get_next() until None, no
    rewind(), so drpaiq must replay its recording for the extra passes."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._items = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def test_a_get_next_reader_through_the_reference_api(tmp_path):
    model, feeds = conv_model(), positive_feeds((4, 4, 6, 6))
    fp32, via_reader, _ = run_quantize(tmp_path, model, feeds, name="reader", options=ON)
    out = tmp_path / "get_next_q.onnx"
    summary = quantize_interface(
        str(fp32),
        str(out),
        ListReader(feeds),
        calibrate_method="MinMax",
        bias_correction=True,
        quiet=True,
    )
    assert "bias correction: moved 2 of 2" in summary.notes[-1]
    # The replayed passes see the same data as a reader that re-reads: the same model.
    assert out.read_bytes() == via_reader.read_bytes()


def quantize_sample(out: Path, **options: str) -> Summary:
    return quantize(
        QuantizeConfig(
            input_model=MODEL_A,
            output_model=out,
            reader="nchw_image",
            calibrate_dataset=CALIBRATE,
            calibrate_method="minmax",
            size_limit=64,
            quiet=True,
            options=dict(options),
            **NORM,
        )
    )


@pytest.mark.skipif(not MODEL_A.is_file() or not CALIBRATE.is_dir(), reason="no samples")
def test_an_image_folder_on_the_sample_is_deterministic_and_valid(tmp_path):
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    summary = quantize_sample(first, **ON)
    quantize_sample(second, **ON)
    assert first.read_bytes() == second.read_bytes()
    onnx.checker.check_model(onnx.load(str(first)), full_check=True)
    note = summary.notes[-1]
    assert note.startswith("bias correction: moved") and "level(s)" in note
    # It runs, and answers as the FP32 model does on a calibration image.
    plain = tmp_path / "plain.onnx"
    quantize_sample(plain)
    assert plain.read_bytes() != first.read_bytes()
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    fp32 = session(MODEL_A).run(None, {session(MODEL_A).get_inputs()[0].name: x})[0]
    int8 = session(first).run(None, {session(first).get_inputs()[0].name: x})[0]
    assert int8.shape == fp32.shape and np.all(np.isfinite(int8))


def quantize_on_the_command_line(folder: Path, images_count: int, *extra: str):
    """``drpaiq quantize m.onnx -o q.onnx`` on a small classifier and ``images_count``
    images, run from ``folder``, with ``extra`` words appended."""
    classifier(folder / "m.onnx")
    images(folder / "cal", images_count)
    return CliRunner().invoke(
        build_cli(),
        ["quantize", "m.onnx", "-o", "q.onnx", "--calibrate_dataset", "cal", *extra],
        catch_exceptions=False,
    )


def test_the_cli_takes_the_option_and_reports_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = quantize_on_the_command_line(
        tmp_path, 4,
        "--norm_mean", "0.5", "0.5", "0.5", "--norm_std", "0.25", "0.25", "0.25",
        "--summary-json", "s.json", "bias_correction", "on",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    notes = json.loads((tmp_path / "s.json").read_text())["notes"]
    assert any(n.startswith("bias correction: moved") for n in notes), notes


def test_nan_outputs_leave_the_bias_as_planned(tmp_path):
    model, feeds = conv_model(), positive_feeds((4, 4, 6, 6), batches=3)
    feeds[1]["x"][0, 0, 0, 0] = np.nan  # conv1 (and so conv2) output NaN near it
    _, plain, _ = run_quantize(tmp_path, model, feeds, name="plain")
    _, corrected, summary = run_quantize(tmp_path, model, feeds, name="corrected", options=ON)
    assert plain.read_bytes() == corrected.read_bytes()
    assert "left as planned: 2 with NaN/Inf outputs" in summary.notes[-1]


# ---------------------------------------------------------------------------
# User mistakes: one line
# ---------------------------------------------------------------------------


def test_a_bad_value_on_the_command_line_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = quantize_on_the_command_line(tmp_path, 2, "bias_correction", "maybe")
    assert result.exit_code == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert "bias_correction must be True or False" in errors[0]
    assert errors[0].endswith("got 'maybe'")
    assert not (tmp_path / "q.onnx").exists()


def test_a_bad_value_from_python_is_a_user_error(tmp_path):
    fp32 = tmp_path / "m.onnx"
    onnx.save(conv_model(), str(fp32))
    with pytest.raises(UserError, match=r"bias_correction must be True or False .*got 'maybe'"):
        quantize_interface(str(fp32), str(tmp_path / "q.onnx"), ListReader([]),
                           bias_correction="maybe")  # fmt: skip
    # A config built by hand is checked before any work, too.
    config = QuantizeConfig(
        fp32, tmp_path / "q.onnx", reader_object=ListReader([]), options={"bias_correction": "?"}
    )
    with pytest.raises(UserError, match="bias_correction must be True or False"):
        quantize(config)
    assert not (tmp_path / "q.onnx").exists()


# ---------------------------------------------------------------------------
# A level's pass runs only what that level depends on
# ---------------------------------------------------------------------------


def test_a_level_pass_keeps_only_the_nodes_its_outputs_depend_on():
    """Two branches from one input: measuring the first keeps its nodes and
    initializers only, and no graph outputs (the runner adds the measured ones); the
    reduced model runs and gives the same values as the whole one."""
    from drpaiq_core.bias_correction import _keep_upstream

    model = make_model(
        [
            helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a"),
            helper.make_node("Relu", ["a"], ["ra"], name="relu_a"),
            helper.make_node("Conv", ["x", "wb"], ["b"], name="conv_b"),
            helper.make_node("Add", ["ra", "b"], ["y"], name="join"),
        ],
        {"x": ["N", 2, 4, 4]},
        ["y"],
        {
            "wa": np.full((3, 2, 1, 1), 0.5, np.float32),
            "wb": np.full((3, 2, 1, 1), -0.25, np.float32),
        },
    )
    whole = onnx.ModelProto()
    whole.CopyFrom(model)
    _keep_upstream(model, ["ra"])
    assert [n.name for n in model.graph.node] == ["conv_a", "relu_a"]
    assert [i.name for i in model.graph.initializer] == ["wa"]
    assert [i.name for i in model.graph.input] == ["x"]
    assert not model.graph.output
    model.graph.output.add().name = "ra"
    whole.graph.output.add().name = "ra"
    x = np.random.default_rng(1).normal(size=(2, 2, 4, 4)).astype(np.float32)
    got = session(model.SerializeToString()).run(["ra"], {"x": x})[0]
    np.testing.assert_array_equal(got, session(whole.SerializeToString()).run(["ra"], {"x": x})[0])


def test_a_model_with_subgraphs_is_left_whole():
    """An If's branches may read tensors of the outer graph that no node input names."""
    from drpaiq_core.bias_correction import _keep_upstream

    branch = helper.make_graph(
        [helper.make_node("Identity", ["side"], ["out"])],
        "branch",
        [],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)],
    )
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["side"], name="relu"),
            helper.make_node("Constant", [], ["cond"], name="cond", value_int=1),
            helper.make_node("Cast", ["cond"], ["flag"], name="cast", to=onnx.TensorProto.BOOL),
            helper.make_node(
                "If", ["flag"], ["y"], name="if", then_branch=branch, else_branch=branch
            ),
        ],
        {"x": ["N", 3]},
        ["y"],
    )
    names = [n.name for n in model.graph.node]
    _keep_upstream(model, ["y"])
    assert [n.name for n in model.graph.node] == names
    assert [o.name for o in model.graph.output] == ["y"]


def test_the_means_come_from_the_spread_samples_only(tmp_path):
    """bias_correction_samples 4 of 16 one-sample batches: the same corrections as a
    run whose calibration data is those 4 samples, read in full."""
    from drpaiq_core.bias_correction import correct_biases
    from drpaiq_core.datasource import SpreadReader

    from tests._engine import ArrayReader

    model = conv_model()
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.uniform(0.0, 2.0, (1, 4, 6, 6)).astype(np.float32)} for _ in range(16)]
    _, _, summary = run_quantize(tmp_path, model, feeds, name="planned")
    picked = [batch.feeds for batch in SpreadReader(ArrayReader(feeds), 4).batches()]
    assert len(picked) == 4

    def corrected(reader, samples):
        plan = dataclasses.replace(
            summary.plan,
            constants={
                k: dataclasses.replace(w, values=w.values.copy())
                for k, w in summary.plan.constants.items()
            },
        )
        correct_biases(model, plan, reader, samples=samples, quiet=True)
        return {k: w.values for k, w in plan.constants.items() if w.params.dtype == "int32"}

    capped = corrected(ArrayReader(feeds), 4)
    subset = corrected(ArrayReader(picked), 0)
    everything = corrected(ArrayReader(feeds), 0)
    assert capped.keys() == subset.keys() and capped
    for key in capped:
        np.testing.assert_array_equal(capped[key], subset[key])
    # The cap made a difference: these biases are not those of all 16 samples.
    assert any(not np.array_equal(capped[k], everything[k]) for k in capped)


def test_the_spread_samples_are_read_once_when_they_fit(tmp_path):
    """Later passes hand on the kept batches; over the budget, the reader is read again."""
    from drpaiq_core.datasource import SpreadReader

    from tests._engine import ArrayReader

    class Counting(ArrayReader):
        passes = 0

        def batches(self):
            type(self).passes += 1
            yield from super().batches()

    feeds = [{"x": np.full((1, 3), float(i), np.float32)} for i in range(10)]
    kept = SpreadReader(Counting(feeds), 4, keep_bytes=1024)
    first = [b.feeds["x"][0, 0] for b in kept.batches()]
    again = [b.feeds["x"][0, 0] for b in kept.batches()]
    assert first == again == [0.0, 3.0, 5.0, 8.0]
    assert Counting.passes == 1
    Counting.passes = 0
    over = SpreadReader(Counting(feeds), 4, keep_bytes=20)  # 12 bytes a batch: two fit
    assert [b.feeds["x"][0, 0] for b in over.batches()] == first
    assert [b.feeds["x"][0, 0] for b in over.batches()] == first
    assert Counting.passes == 2


def test_a_bad_sample_count_is_a_user_error(tmp_path):
    for value in ("-1", "many", "2.5"):
        with pytest.raises(UserError, match="bias_correction_samples"):
            parse_advanced([("bias_correction_samples", value)])
