"""The calibration runner: one ONNX Runtime session over an augmented model, batches
folded into calibrator states, exact merging of chunks, errors the user can act on."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import pytest
from drpaiq_core.calibrate import (
    ActivationRunner,
    CalibrationResult,
    calibrate,
    finish,
    merge_stats,
)
from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import Batch, Calibrator, Reader, ReaderContext, TensorRange
from drpaiq_core.plugins import get_plugin_host
from onnx import helper, numpy_helper

from drpaiq_core import calibrate as calibrate_module

TENSORS = ["x", "conv", "relu", "conv2", "y"]
RNG = np.random.default_rng(7)
W1 = RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)
B1 = RNG.standard_normal(4).astype(np.float32)
W2 = RNG.standard_normal((4, 3, 1, 1)).astype(np.float32)


def conv_relu_add_model() -> onnx.ModelProto:
    """x -> Conv1x1 -> Relu -+-> Add -> y ;  x -> Conv1x1 (no bias) -+"""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["conv"], name="conv1"),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu1"),
        helper.make_node("Conv", ["x", "w2"], ["conv2"], name="conv2"),
        helper.make_node("Add", ["relu", "conv2"], ["y"], name="add1"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_relu_add",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 6, 6])],
        [
            numpy_helper.from_array(W1, "w1"),
            numpy_helper.from_array(B1, "b1"),
            numpy_helper.from_array(W2, "w2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def numpy_tensors(x: np.ndarray) -> dict[str, np.ndarray]:
    """The model's tensors computed with NumPy (1x1 convolutions are matrix products)."""
    conv = np.einsum("oc,nchw->nohw", W1[:, :, 0, 0], x) + B1[None, :, None, None]
    relu = np.maximum(conv, 0)
    conv2 = np.einsum("oc,nchw->nohw", W2[:, :, 0, 0], x)
    return {"x": x, "conv": conv, "relu": relu, "conv2": conv2, "y": relu + conv2}


class ArrayReader(Reader):
    """Yields ``images`` in batches, each sample named ``img_<index>.png``."""

    PLUGIN_NAME = "test_arrays"

    def __init__(self, images: np.ndarray, batch_size: int = 1, first_index: int = 0) -> None:
        super().__init__(ReaderContext(dataset=None, model_path=None, inputs=()))
        self.images = images
        self.batch_size = batch_size
        self.first_index = first_index
        self.passes = 0

    def __len__(self) -> int:
        return len(self.images)

    def batches(self) -> Iterator[Batch]:
        self.passes += 1
        for start in range(0, len(self.images), self.batch_size):
            chunk = self.images[start : start + self.batch_size]
            names = tuple(f"img_{self.first_index + start + i:03d}.png" for i in range(len(chunk)))
            yield Batch(feeds={"x": chunk}, sources=names)


def images(count: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Per-image spread varies, so histogram grids widen as batches arrive.
    scales = 10.0 ** rng.uniform(-1, 1, size=(count, 1, 1, 1))
    return (rng.standard_t(3, size=(count, 3, 6, 6)) * scales).astype(np.float32)


def builtin(name: str, **options: Any) -> Calibrator:
    return get_plugin_host().calibrators.get(name)(options)


def assert_same_result(a: CalibrationResult, b: CalibrationResult) -> None:
    assert list(a.ranges) == list(b.ranges)
    for name in a.ranges:
        ra, rb = a.ranges[name], b.ranges[name]
        assert (ra.rmin, ra.rmax) == (rb.rmin, rb.rmax), name
        for key, value in ra.details.items():
            np.testing.assert_array_equal(np.asarray(value), np.asarray(rb.details[key]))
    assert a.nonfinite == b.nonfinite


# ---------------------------------------------------------------------------
# Ranges, shapes, samples
# ---------------------------------------------------------------------------


def test_minmax_ranges_match_numpy_and_shapes_are_observed() -> None:
    data = images(20)
    model = conv_relu_add_model()
    before = model.SerializeToString()
    result = calibrate(model, TENSORS, ArrayReader(data, 8), builtin("minmax"), quiet=True)
    assert model.SerializeToString() == before  # the caller's model is left as it was
    reference = numpy_tensors(data)
    assert list(result.ranges) == TENSORS
    for name in TENSORS:
        got = result.ranges[name]
        np.testing.assert_allclose(
            [got.rmin, got.rmax], [reference[name].min(), reference[name].max()], rtol=1e-5
        )
    assert result.ranges["relu"].rmin == 0.0
    assert result.samples == 20
    # Batches of 8, 8 and 4: the batch dimension differs, the others are fixed.
    assert result.shapes == {name: (None, 4, 6, 6) for name in TENSORS[1:]} | {"x": (None, 3, 6, 6)}
    assert result.nonfinite == {}


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile", "mse"])
def test_batch_size_and_order_do_not_change_the_ranges(method: str) -> None:
    data = images(32)
    model = conv_relu_add_model()
    calibrator = builtin(method, num_bins=512)
    reference = calibrate(model, TENSORS, ArrayReader(data, 1), calibrator, quiet=True)
    for batch_size in (8, 32):
        got = calibrate(model, TENSORS, ArrayReader(data, batch_size), calibrator, quiet=True)
        assert_same_result(got, reference)
    shuffled = data[np.random.default_rng(3).permutation(len(data))]
    got = calibrate(model, TENSORS, ArrayReader(shuffled, 4), calibrator, quiet=True)
    assert_same_result(got, reference)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile", "mse"])
def test_chunks_from_several_readers_merge_to_one_pass(method: str) -> None:
    data = images(30)
    model = conv_relu_add_model()
    calibrator = builtin(method)
    one_pass = calibrate(model, TENSORS, ArrayReader(data, 5), calibrator, quiet=True)
    chunks = [(0, 7), (7, 8), (8, 30)]
    with ActivationRunner(model, TENSORS) as runner:
        parts = [
            runner.run_pass(
                ArrayReader(data[a:b], 3, first_index=a),
                calibrator,
                runner.new_stats(calibrator),
                quiet=True,
            )
            for a, b in chunks
        ]
    merged = merge_stats(calibrator, merge_stats(calibrator, parts[2], parts[0]), parts[1])
    result = finish(calibrator, merged, quiet=True)
    assert_same_result(result, one_pass)
    assert result.samples == 30
    assert result.shapes["y"] == (None, 4, 6, 6)


def test_small_batches_of_a_dynamic_batch_model_are_stacked() -> None:
    # 24 samples: enough for runs of several at once (a few are spread over more runs).
    data = images(24)
    result = calibrate(conv_relu_add_model(), ["y"], ArrayReader(data, 1), builtin("minmax"))
    # Runs of several samples at once: the batch dimension varies and is reported so.
    assert result.shapes["y"] == (None, 4, 6, 6)
    reference = numpy_tensors(data)["y"]
    np.testing.assert_allclose(
        [result.ranges["y"].rmin, result.ranges["y"].rmax],
        [reference.min(), reference.max()],
        rtol=1e-5,
    )


def test_a_few_samples_are_spread_over_several_runs() -> None:
    calibrator = builtin("minmax")
    with ActivationRunner(conv_relu_add_model(), ["y"]) as runner:
        stats = runner.run_pass(
            ArrayReader(images(16), 1), calibrator, runner.new_stats(calibrator), quiet=True
        )
        # The first sample runs alone, the other 15 in runs of 2: at least 8 runs.
        assert runner._group_samples == 2
    assert stats.samples == 16


def batch_unsafe_model(batch_dim: str | int) -> onnx.ModelProto:
    """x -> Reshape [1, -1] -> Softmax: stacking samples would mix them in the softmax."""
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["x", "shape"], ["flat"], name="flatten"),
            helper.make_node("Softmax", ["flat"], ["soft"], name="softmax", axis=1),
        ],
        "unsafe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch_dim, 3, 6, 6])],
        [helper.make_tensor_value_info("soft", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("batch_dim", ["N", 1])
def test_a_model_that_is_not_batch_safe_runs_one_batch_at_a_time(batch_dim: str | int) -> None:
    data = images(5)
    result = calibrate(
        batch_unsafe_model(batch_dim), ["soft"], ArrayReader(data, 1), builtin("minmax")
    )
    flat = data.reshape(5, -1).astype(np.float64)
    soft = np.exp(flat - flat.max(axis=1, keepdims=True))
    soft /= soft.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(
        [result.ranges["soft"].rmin, result.ranges["soft"].rmax],
        [soft.min(), soft.max()],
        rtol=1e-4,
    )
    assert result.samples == 5


# ---------------------------------------------------------------------------
# Passes and progress
# ---------------------------------------------------------------------------


class AboveHalfCalibrator(Calibrator):
    """Two passes: the largest magnitude first, then how many values exceed half of it."""

    PLUGIN_NAME = "above_half"
    PASSES: ClassVar[int] = 2

    def new_state(self) -> dict[str, float]:
        return {"absmax": 0.0, "above": 0, "pass": 0}

    def collect(self, state: dict[str, Any], values: np.ndarray, pass_index: int) -> Any:
        assert pass_index == state["pass"]
        if pass_index == 0:
            state["absmax"] = max(state["absmax"], float(np.abs(values).max(initial=0)))
        else:
            state["above"] += int(np.count_nonzero(np.abs(values) > state["absmax"] / 2))
        return state

    def merge(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return {
            "absmax": max(a["absmax"], b["absmax"]),
            "above": a["above"] + b["above"],
            "pass": a["pass"],
        }

    def next_pass(self, state: dict[str, Any], pass_index: int) -> dict[str, Any]:
        return dict(state, **{"pass": pass_index})

    def compute(self, state: dict[str, Any]) -> TensorRange:
        return TensorRange(-state["absmax"], state["absmax"], {"above": state["above"]})


def test_two_pass_calibrator_sees_the_data_twice(capsys: pytest.CaptureFixture[str]) -> None:
    data = images(12)
    reader = ArrayReader(data, 5)
    result = calibrate(conv_relu_add_model(), ["conv", "y"], reader, AboveHalfCalibrator())
    assert reader.passes == 2
    reference = numpy_tensors(data)
    for name in ("conv", "y"):
        absmax = np.abs(reference[name]).max()
        np.testing.assert_allclose(result.ranges[name].rmax, absmax, rtol=1e-5)
        expected = np.count_nonzero(np.abs(reference[name]) > result.ranges[name].rmax / 2)
        assert abs(result.ranges[name].details["above"] - expected) <= 1
    assert result.samples == 12
    err = capsys.readouterr().err
    assert "calibrate pass 1/2" in err and "calibrate pass 2/2" in err
    assert "searching ranges" in err


def test_quiet_draws_no_progress(capsys: pytest.CaptureFixture[str]) -> None:
    calibrate(conv_relu_add_model(), ["y"], ArrayReader(images(4)), builtin("minmax"), quiet=True)
    assert capsys.readouterr().err == ""


class ShrinkingReader(ArrayReader):
    """Yields one sample fewer on every pass: a broken reader."""

    def batches(self) -> Iterator[Batch]:
        self.images = self.images[: len(self.images) - self.passes]
        yield from super().batches()


def test_a_reader_that_changes_between_passes_is_an_error() -> None:
    with pytest.raises(UserError, match="11 samples in pass 2 but 12 in pass 1"):
        calibrate(
            conv_relu_add_model(),
            ["y"],
            ShrinkingReader(images(12), 4),
            AboveHalfCalibrator(),
            quiet=True,
        )


class FailingCalibrator(Calibrator):
    """Fails while folding its second run."""

    PLUGIN_NAME = "failing"

    def new_state(self) -> list[int]:
        return [0]

    def collect(self, state: list[int], values: np.ndarray, pass_index: int) -> list[int]:
        state[0] += 1
        if state[0] == 2:
            raise UserError("bad batch")
        return state

    def merge(self, a: list[int], b: list[int]) -> list[int]:
        return [a[0] + b[0]]

    def compute(self, state: list[int]) -> TensorRange:
        return TensorRange(0.0, 1.0)


def test_an_error_while_folding_reaches_the_caller() -> None:
    # Runs of 1, 16, 16 and 7 samples: the second fails.
    with pytest.raises(UserError, match="bad batch"):
        calibrate(
            conv_relu_add_model(),
            ["y"],
            ArrayReader(images(40), 1),
            FailingCalibrator(),
            quiet=True,
        )


# ---------------------------------------------------------------------------
# Non-finite values
# ---------------------------------------------------------------------------


def log_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("Log", ["x"], ["log"], name="log"),
            helper.make_node("Relu", ["log"], ["out"], name="relu"),
        ],
        "log",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_nonfinite_values_are_left_out_and_warned_once_per_tensor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = images(10)
    data[0, 0, 0, 0] = 0.0  # log(0) = -inf
    bad = int(np.count_nonzero(data <= 0))
    with caplog.at_level(logging.WARNING, logger="drpaiq"):
        result = calibrate(
            log_model(), ["log", "out"], ArrayReader(data, 3), builtin("minmax"), quiet=True
        )
    assert result.nonfinite == {"log": bad, "out": int(np.count_nonzero(data < 0))}
    positive = data[data > 0]
    np.testing.assert_allclose(
        [result.ranges["log"].rmin, result.ranges["log"].rmax],
        [np.log(positive).min(), np.log(positive).max()],
        rtol=1e-5,
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert f"tensor 'log': {bad} of {data.size} calibration values were NaN or Inf" in warnings[0]


def test_huge_finite_values_are_kept() -> None:
    data = images(4)
    data[:, 0, 0, 0] = 3e38  # their sum overflows to inf; each value is finite
    result = calibrate(
        conv_relu_add_model(), ["x"], ArrayReader(data, 2), builtin("minmax"), quiet=True
    )
    assert result.nonfinite == {}
    assert result.ranges["x"].rmax == np.float32(3e38)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_wrong_input_shape_names_the_input_and_the_sample() -> None:
    model = conv_relu_add_model()
    data = np.zeros((2, 3, 5, 5), dtype=np.float32)
    with pytest.raises(UserError) as info:
        calibrate(model, ["y"], ArrayReader(data, 1, first_index=7), builtin("minmax"), quiet=True)
    message = str(info.value)
    assert "\n" not in message
    assert "sample img_007.png" in message
    assert "fed x [1, 3, 5, 5] float32" in message
    assert "the model expects x [?, 3, 6, 6]" in message


def test_missing_feed_and_empty_reader_are_user_errors() -> None:
    class Renamed(ArrayReader):
        def batches(self) -> Iterator[Batch]:
            for batch in super().batches():
                yield Batch(feeds={"input": batch.feeds["x"]}, sources=batch.sources)

    model = conv_relu_add_model()
    with pytest.raises(UserError, match=r"sample img_000\.png has no value for model input 'x'"):
        calibrate(model, ["y"], Renamed(images(2)), builtin("minmax"), quiet=True)
    with pytest.raises(UserError, match="yielded no samples"):
        calibrate(model, ["y"], ArrayReader(images(0)), builtin("minmax"), quiet=True)


def test_unknown_tensor_and_unloadable_model() -> None:
    with pytest.raises(ValueError, match="'nope'"):
        calibrate(conv_relu_add_model(), ["nope"], ArrayReader(images(2)), builtin("minmax"))
    model = conv_relu_add_model()
    model.graph.node[1].op_type = "NoSuchOp"
    with pytest.raises(UserError, match="ONNX Runtime cannot load the model for calibration"):
        calibrate(model, ["y"], ArrayReader(images(2)), builtin("minmax"), quiet=True)


# ---------------------------------------------------------------------------
# Large models and debug output
# ---------------------------------------------------------------------------


def spy_on_workdir(calibrator: Calibrator, workdir: Path) -> list[list[str]]:
    """Make ``calibrator`` record the files under ``workdir`` at every fold (the session
    is open then); returns the list the records go to."""
    seen: list[list[str]] = []
    collect = calibrator.collect

    def spying(state: Any, values: np.ndarray, pass_index: int) -> Any:
        seen.append(sorted(p.name for p in workdir.rglob("*") if p.is_file()))
        return collect(state, values, pass_index)

    calibrator.collect = spying  # type: ignore[method-assign]
    return seen


def test_large_models_run_from_a_file_with_external_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = images(8)
    model = conv_relu_add_model()
    in_memory = calibrate(model, TENSORS, ArrayReader(data, 4), builtin("entropy"), quiet=True)
    # Treat every model as too large for one protobuf buffer.
    monkeypatch.setattr(calibrate_module, "SESSION_FROM_FILE_BYTES", 0)
    workdir = tmp_path / "work"
    workdir.mkdir()
    calibrator = builtin("entropy")
    seen = spy_on_workdir(calibrator, workdir)
    from_file = calibrate(
        model, TENSORS, ArrayReader(data, 4), calibrator, quiet=True, workdir=workdir
    )
    assert seen and all(files == ["augmented.onnx", "augmented.onnx.data"] for files in seen)
    assert list(workdir.iterdir()) == []  # removed when calibration is done
    assert_same_result(from_file, in_memory)
    assert len(model.graph.initializer[0].raw_data) == W1.nbytes  # weights untouched


def test_weights_of_every_kind_reach_the_session_unchanged() -> None:
    """Large initializers go to ONNX Runtime as arrays, small ones and types NumPy does
    not hold (bfloat16) inside the model: the outputs equal a plain session's."""
    import onnxruntime

    rng = np.random.default_rng(5)
    table = rng.standard_normal((300, 8)).astype(np.float32)  # 9.6 KB: as an array
    half = rng.standard_normal((8, 8)).astype(np.float16)  # 128 B: stays in the model
    big_half = rng.standard_normal((64, 8)).astype(np.float16)  # 1 KB: as an array
    rows = rng.integers(0, 300, size=200).astype(np.int64)  # 1.6 KB of int64
    scale = helper.make_tensor(  # 1 KB of bfloat16 ones: stays in the model
        "scale", onnx.TensorProto.BFLOAT16, [512], np.full(512, 0x3F80, "<u2").tobytes(), raw=True
    )
    nodes = [
        helper.make_node("Gather", ["table", "rows"], ["picked"]),  # [200, 8]
        helper.make_node("Cast", ["half"], ["half32"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Cast", ["big_half"], ["big32"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Cast", ["scale"], ["scale32"], to=onnx.TensorProto.FLOAT),
        helper.make_node("MatMul", ["x", "half32"], ["y0"]),  # [N, 8]
        helper.make_node("ReduceMean", ["picked"], ["sum"], axes=[0], keepdims=1),
        helper.make_node("ReduceMean", ["big32"], ["sum2"], axes=[0], keepdims=1),
        helper.make_node("Add", ["y0", "sum"], ["y1"]),
        helper.make_node("Add", ["y1", "sum2"], ["y2"]),
        helper.make_node("ReduceMean", ["scale32"], ["one"], axes=[0], keepdims=1),
        helper.make_node("Mul", ["y2", "one"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "kinds",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 8])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(half, "half"),
            numpy_helper.from_array(big_half, "big_half"),
            numpy_helper.from_array(rows, "rows"),
            scale,
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = rng.standard_normal((3, 8)).astype(np.float32)
    plain = onnx.ModelProto()
    plain.CopyFrom(model)
    plain.graph.output.add().name = "y1"
    expected = onnxruntime.InferenceSession(
        plain.SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(["y1", "y"], {"x": x})
    before = model.SerializeToString()
    with ActivationRunner(model, ["y1", "y"]) as runner:
        got = runner.session.run(["y1", "y"], {"x": x})
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert model.SerializeToString() == before  # the caller's model is untouched


def test_debug_dir_reaches_the_calibrator(tmp_path: Path) -> None:
    calibrate(
        conv_relu_add_model(),
        TENSORS,
        ArrayReader(images(6), 3),
        builtin("entropy"),
        quiet=True,
        debug_dir=tmp_path / "debug",
    )
    document = json.loads((tmp_path / "debug" / "calibration.json").read_text())
    assert list(document["tensors"]) == TENSORS
    assert len(list((tmp_path / "debug").glob("*.png"))) == len(TENSORS)
