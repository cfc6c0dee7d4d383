"""``drpaiq compare``: each output's SQNR against the first model's, computed here from
ONNX Runtime's outputs; fixed batch sizes; the user's mistakes in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from drpaiq_core.compare import compare, sqnr_db
from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import InputSpec, ReaderContext
from drpaiq_core.plugins import get_plugin_host
from onnx import TensorProto, helper, numpy_helper

from tests._engine import session
from tests._models import (
    classifier,
    images,
    restore_drpaiq_logger,  # noqa: F401 (an autouse fixture)
)

pytest.importorskip("drpaiq_plugins_readers.images")

SIZE = 8


def two_outputs(path: Path, *, scale: float = 1.0, batch: int | str = "N") -> Path:
    """Conv + Relu, with two outputs: the feature map and its global average pool.
    ``scale`` multiplies the Conv weight (a stand-in for a quantized copy)."""
    rng = np.random.default_rng(7)
    weight = (rng.normal(0, 0.5, (4, 3, 3, 3)) * scale).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["features"]),
            helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        ],
        "two_outputs",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, 4, SIZE, SIZE]),
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [batch, 4, 1, 1]),
        ],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _feeds(folder: Path) -> np.ndarray:
    """The folder's images as the nchw_image reader makes them (pixel/255)."""
    context = ReaderContext(
        dataset=folder,
        model_path=None,
        inputs=(InputSpec("image", (None, 3, SIZE, SIZE), np.dtype(np.float32)),),
        batch_size=64,
    )
    reader = get_plugin_host().readers.get("nchw_image")(context)
    return np.concatenate([batch.feeds["image"] for batch in reader.batches()])


def test_each_output_is_measured_against_the_first_model(tmp_path: Path) -> None:
    fp32 = two_outputs(tmp_path / "fp32.onnx")
    other = two_outputs(tmp_path / "other.onnx", scale=1.02)
    data = images(tmp_path / "images", 7, size=SIZE)
    result = compare([fp32, other, fp32], dataset=data, host=get_plugin_host(), quiet=True)
    assert result.images == 7

    x = _feeds(data)
    first = session(fp32).run(None, {"image": x})
    theirs = session(other).run(None, {"image": x})
    expected = []
    for entry, a, b in zip(result.models[0].outputs, first, theirs):
        a, b = a.astype(np.float64), b.astype(np.float64)
        signal, noise = float(np.sum(a**2)), float(np.sum((a - b) ** 2))
        assert entry.sqnr_db == pytest.approx(10 * math.log10(signal / noise), abs=1e-6)
        assert entry.max_abs == pytest.approx(float(np.max(np.abs(a - b))), rel=1e-6)
        expected.append(noise / signal)
    model_sqnr = -10 * math.log10(sum(expected) / len(expected))
    assert result.models[0].sqnr_db == pytest.approx(model_sqnr, abs=1e-6)
    # The first model against itself: no noise at all.
    assert math.isinf(result.models[1].sqnr_db)
    document = result.to_dict()
    assert [m["sqnr_db"] for m in document["models"]][1] is None
    assert set(document["models"][0]["outputs"]) == {"features", "pooled"}
    text = result.to_text()
    assert "exact" in text and "features" in text and "pooled" in text


def test_a_fixed_batch_size_sees_every_image(tmp_path: Path) -> None:
    """A model fixed to batches of 3 on 7 images: the last batch is filled up and its
    copies dropped, so the numbers equal those of the dynamic-batch model."""
    data = images(tmp_path / "images", 7, size=SIZE)
    dynamic = compare(
        [two_outputs(tmp_path / "a.onnx"), two_outputs(tmp_path / "b.onnx", scale=0.97)],
        dataset=data,
        host=get_plugin_host(),
        quiet=True,
    )
    fixed = compare(
        [
            two_outputs(tmp_path / "a3.onnx", batch=3),
            two_outputs(tmp_path / "b3.onnx", scale=0.97, batch=3),
        ],
        dataset=data,
        host=get_plugin_host(),
        quiet=True,
    )
    assert fixed.images == dynamic.images == 7
    for mine, theirs in zip(fixed.models[0].outputs, dynamic.models[0].outputs):
        assert mine.sqnr_db == pytest.approx(theirs.sqnr_db, abs=1e-6)


def test_mistakes(tmp_path: Path) -> None:
    data = images(tmp_path / "images", 2, size=SIZE)
    host = get_plugin_host()
    fp32 = two_outputs(tmp_path / "fp32.onnx")
    with pytest.raises(UserError, match="two models or more"):
        compare([fp32], dataset=data, host=host)
    wider = classifier(tmp_path / "wider.onnx", size=SIZE * 2)
    with pytest.raises(UserError, match="other inputs"):
        compare([fp32, wider], dataset=data, host=host)
    one_output = classifier(tmp_path / "one.onnx", size=SIZE, input_name="image")
    with pytest.raises(UserError, match="1 output"):
        compare([fp32, one_output], dataset=data, host=host)


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from drpaiq_core.cli import main

    data = images(tmp_path / "images", 3, size=SIZE)
    fp32 = two_outputs(tmp_path / "fp32.onnx")
    other = two_outputs(tmp_path / "other.onnx", scale=1.05)
    direct = compare([fp32, other], dataset=data, host=get_plugin_host(), quiet=True)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["-q", "compare", str(fp32), str(other), "-d", str(data), "--json"])
    assert done.value.code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["images"] == 3 and document["base"] == str(fp32)
    assert document["models"][0]["sqnr_db"] == pytest.approx(direct.models[0].sqnr_db, abs=1e-3)
    with pytest.raises(SystemExit) as done:
        main(["compare", str(fp32), "-d", str(data)])
    assert done.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "two models or more" in lines[0], lines


def test_sqnr_of_several_outputs() -> None:
    """The mean of the noise-to-signal ratios, not of the decibels."""
    assert sqnr_db([1.0, 0.0], [100.0, 4.0]) == pytest.approx(10 * math.log10(200.0))
    assert math.isinf(sqnr_db([0.0, 0.0], [1.0, 0.0]))
    assert sqnr_db([1.0], [0.0]) == -math.inf
