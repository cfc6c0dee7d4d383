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
        tensors=True,
    )
    fixed = compare(
        [
            two_outputs(tmp_path / "a3.onnx", batch=3),
            two_outputs(tmp_path / "b3.onnx", scale=0.97, batch=3),
        ],
        dataset=data,
        host=get_plugin_host(),
        quiet=True,
        tensors=True,
    )
    assert fixed.images == dynamic.images == 7
    for mine, theirs in zip(fixed.models[0].outputs, dynamic.models[0].outputs):
        assert mine.sqnr_db == pytest.approx(theirs.sqnr_db, abs=1e-6)
    # So do the tensors, read from copies that run a batch of 3 at a time too.
    assert [t.name for t in fixed.models[0].tensors] == ["conv", "features", "pooled"]
    for mine, theirs in zip(fixed.models[0].tensors, dynamic.models[0].tensors):
        assert mine.sqnr_db == pytest.approx(theirs.sqnr_db, abs=1e-6)
        assert mine.max_abs == pytest.approx(theirs.max_abs, rel=1e-6)


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


def _with_outputs(path: Path, names: list[str], target: Path) -> Path:
    """A copy of the model at ``path`` that also outputs ``names`` (for checking)."""
    model = onnx.load(str(path))
    for name in names:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    onnx.save(model, str(target))
    return target


def qdq_copy(path: Path, target: Path, scale: float, zero_point: int) -> Path:
    """``two_outputs`` as ONNX Runtime's quantizer lays out QDQ models: the Conv output
    keeps its name and is quantized by a QuantizeLinear -> DequantizeLinear pair whose
    output the Relu reads."""
    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    relu = next(n for n in nodes if n.op_type == "Relu")
    relu.input[0] = "conv_dq"
    pair = [
        helper.make_node("QuantizeLinear", ["conv", "s", "z"], ["conv_q"]),
        helper.make_node("DequantizeLinear", ["conv_q", "s", "z"], ["conv_dq"]),
    ]
    del model.graph.node[:]
    model.graph.node.extend([nodes[0], *pair, *nodes[1:]])
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(scale, np.float32), "s"),
            numpy_helper.from_array(np.array(zero_point, np.int8), "z"),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return target


def _db(reference: np.ndarray, other: np.ndarray) -> float:
    reference, other = reference.astype(np.float64), other.astype(np.float64)
    return 10 * math.log10(float(np.sum(reference**2)) / float(np.sum((reference - other) ** 2)))


def folded_copy(path: Path, target: Path, scale: float) -> Path:
    """``two_outputs`` with its Relu folded into the quantization, as ONNX Runtime's
    quantizer does it: the Conv writes "features" and a QuantizeLinear with zero point
    -128 clips it at 0; the pool reads the DequantizeLinear output."""
    model = onnx.load(str(path))
    conv, _, pool = list(model.graph.node)
    conv.output[0] = "features"
    pool.input[0] = "features_dq"
    del model.graph.node[:]
    model.graph.node.extend(
        [
            conv,
            helper.make_node("QuantizeLinear", ["features", "s", "z"], ["features_q"]),
            helper.make_node("DequantizeLinear", ["features_q", "s", "z"], ["features_dq"]),
            pool,
        ]
    )
    model.graph.output[0].name = "features_dq"
    model.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(scale, np.float32), "s"),
            numpy_helper.from_array(np.array(-128, np.int8), "z"),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return target


def _quantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    levels = np.clip(np.round(values.astype(np.float64) / scale) + zero_point, -128, 127)
    return (levels - zero_point) * scale


def test_tensors_are_read_where_each_model_holds_them(tmp_path: Path) -> None:
    fp32 = two_outputs(tmp_path / "fp32.onnx")
    scale, zero_point = 0.05, -3
    # Other weights too, so that the tensor's own rounding differs from its whole error.
    qdq = qdq_copy(
        two_outputs(tmp_path / "w.onnx", scale=1.02), tmp_path / "qdq.onnx", scale, zero_point
    )
    data = images(tmp_path / "images", 6, size=SIZE)
    host = get_plugin_host()
    result = compare([fp32, qdq], dataset=data, host=host, quiet=True, tensors=True)
    tensors = {t.name: t for t in result.models[0].tensors}
    assert list(tensors) == ["conv", "features", "pooled"]
    assert tensors["features"].op_type == "Relu"

    x = _feeds(data)
    seen = _with_outputs(fp32, ["conv"], tmp_path / "seen.onnx")
    conv = session(seen).run(["conv"], {"image": x})[0]
    seen_qdq = _with_outputs(qdq, ["conv", "conv_dq"], tmp_path / "seen_qdq.onnx")
    unrounded, dequantized = session(seen_qdq).run(["conv", "conv_dq"], {"image": x})
    np.testing.assert_allclose(dequantized, _quantize(unrounded, scale, zero_point), atol=1e-6)
    # In the QDQ model "conv" is the float Conv output; the Relu reads the dequantized one.
    assert tensors["conv"].sqnr_db == pytest.approx(_db(conv, dequantized), abs=1e-3)
    assert tensors["conv"].quantized
    assert tensors["conv"].own_db == pytest.approx(_db(unrounded, dequantized), abs=1e-3)
    assert abs(tensors["conv"].own_db - tensors["conv"].sqnr_db) > 1.0
    features, mine = np.maximum(conv, 0), np.maximum(dequantized, 0)
    assert tensors["features"].sqnr_db == pytest.approx(_db(features, mine), abs=1e-3)
    assert tensors["features"].max_abs == pytest.approx(
        float(np.max(np.abs(features - mine))), rel=1e-4
    )
    assert not tensors["features"].quantized and math.isnan(tensors["features"].own_db)

    # The outputs' figures are the models' own, with or without the tensors.
    plain = compare([fp32, qdq], dataset=data, host=host, quiet=True)
    for with_tensors, without in zip(result.models[0].outputs, plain.models[0].outputs):
        assert with_tensors.sqnr_db == pytest.approx(without.sqnr_db, abs=1e-9)
    assert plain.models[0].tensors == [] and "tensors of" not in plain.to_text()
    text = result.to_text()
    assert f"tensors of {qdq}" in text and "lowest own SQNR: conv (Conv, " in text
    document = result.to_dict()["models"][0]["tensors"]
    assert document["conv"]["op_type"] == "Conv" and document["features"]["own_db"] is None
    assert document["conv"]["own_db"] == pytest.approx(tensors["conv"].own_db, abs=1e-3)


def test_an_activation_folded_into_the_quantization(tmp_path: Path) -> None:
    """Where the Relu became the QuantizeLinear's clipping, "features" is read at the
    DequantizeLinear output and has no own rounding figure: its float value is the
    Conv's, before the Relu."""
    fp32 = two_outputs(tmp_path / "fp32.onnx")
    folded = folded_copy(fp32, tmp_path / "folded.onnx", 0.04)
    data = images(tmp_path / "images", 5, size=SIZE)
    result = compare([fp32, folded], dataset=data, host=get_plugin_host(), quiet=True, tensors=True)
    tensors = {t.name: t for t in result.models[0].tensors}
    assert list(tensors) == ["features", "pooled"]  # "conv" is not in the folded model
    x = _feeds(data)
    conv = session(_with_outputs(fp32, ["conv"], tmp_path / "seen.onnx")).run(
        ["conv"], {"image": x}
    )[0]
    expected = _db(np.maximum(conv, 0), _quantize(conv, 0.04, -128))
    assert tensors["features"].sqnr_db == pytest.approx(expected, abs=1e-3)
    assert not tensors["features"].quantized


def test_tensors_of_models_with_external_weights(tmp_path: Path) -> None:
    """The copies that output the tensors read the weights from beside each model."""
    data = images(tmp_path / "images", 4, size=SIZE)
    inline = [two_outputs(tmp_path / "a.onnx"), two_outputs(tmp_path / "b.onnx", scale=0.9)]
    external = []
    for path in inline:
        folder = tmp_path / f"ext_{path.stem}"
        folder.mkdir()
        model = onnx.load(str(path))
        target = folder / path.name
        onnx.save(model, str(target), save_as_external_data=True, size_threshold=0)
        assert (folder / f"{path.name}.data").exists() or len(list(folder.iterdir())) > 1
        external.append(target)
    host = get_plugin_host()
    expected = compare(inline, dataset=data, host=host, quiet=True, tensors=True)
    got = compare(external, dataset=data, host=host, quiet=True, tensors=True)
    for mine, theirs in zip(got.models[0].tensors, expected.models[0].tensors):
        assert mine.name == theirs.name
        assert mine.sqnr_db == pytest.approx(theirs.sqnr_db, abs=1e-9)


def test_tensors_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from drpaiq_core.cli import main

    data = images(tmp_path / "images", 3, size=SIZE)
    fp32 = two_outputs(tmp_path / "fp32.onnx")
    qdq = qdq_copy(fp32, tmp_path / "qdq.onnx", 0.05, 0)
    with pytest.raises(SystemExit) as done:
        main(["-q", "compare", str(fp32), str(qdq), "-d", str(data), "--tensors"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "lowest own SQNR: conv (Conv, " in out
    with pytest.raises(SystemExit) as done:
        main(["-q", "compare", str(fp32), str(qdq), "-d", str(data), "--tensors", "--json"])
    assert set(json.loads(capsys.readouterr().out)["models"][0]["tensors"]) == {
        "conv",
        "features",
        "pooled",
    }


def test_each_model_is_compared_on_the_tensors_it_shares_with_the_first(tmp_path: Path) -> None:
    """A model that lacks a name (the folded copy has no "conv") does not take it away
    from the others: drpaiq's and ONNX Runtime's models side by side."""
    fp32 = two_outputs(tmp_path / "fp32.onnx")
    qdq = qdq_copy(fp32, tmp_path / "qdq.onnx", 0.05, 0)
    folded = folded_copy(fp32, tmp_path / "folded.onnx", 0.04)
    data = images(tmp_path / "images", 4, size=SIZE)
    host = get_plugin_host()
    together = compare([fp32, qdq, folded], dataset=data, host=host, quiet=True, tensors=True)
    assert [t.name for t in together.models[0].tensors] == ["conv", "features", "pooled"]
    assert [t.name for t in together.models[1].tensors] == ["features", "pooled"]
    alone = compare([fp32, qdq], dataset=data, host=host, quiet=True, tensors=True)
    for mine, theirs in zip(together.models[0].tensors, alone.models[0].tensors):
        assert mine.sqnr_db == pytest.approx(theirs.sqnr_db, abs=1e-9)
        assert mine.own_db == pytest.approx(theirs.own_db, abs=1e-9, nan_ok=True)


def test_constants_are_not_listed(tmp_path: Path) -> None:
    """A Constant node's output is the same for every image: it is not a tensor to
    compare, whether or not the other model kept it as a node."""
    fp32 = two_outputs(tmp_path / "fp32.onnx")
    model = onnx.load(str(fp32))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.input[0] = "shifted"
    value = numpy_helper.from_array(np.full((1, 4, 1, 1), 0.1, np.float32), "shift")
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(
        [
            nodes[0],
            helper.make_node("Constant", [], ["shift"], value=value),
            helper.make_node("Add", ["conv", "shift"], ["shifted"]),
            *nodes[1:],
        ]
    )
    onnx.save(model, str(tmp_path / "with_constant.onnx"))
    data = images(tmp_path / "images", 2, size=SIZE)
    result = compare(
        [tmp_path / "with_constant.onnx", tmp_path / "with_constant.onnx"],
        dataset=data,
        host=get_plugin_host(),
        quiet=True,
        tensors=True,
    )
    assert [t.name for t in result.models[0].tensors] == ["conv", "shifted", "features", "pooled"]
