"""``quantize --diagnose``: each suspect's score is what its model really gives, the
suggestion is what ``-exn`` really gives, and the diagnosis changes nothing written."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from drpaiq_core.cli import build_cli
from drpaiq_core.config import QuantizeConfig
from drpaiq_core.datasource import SpreadReader
from drpaiq_core.errors import UserError
from drpaiq_core.pipeline import quantize
from drpaiq_core.plugins import get_plugin_host
from onnx import helper, numpy_helper

from tests._engine import make_model, random_feeds, run_quantize, session
from tests._models import (
    classifier,
    images,
    restore_drpaiq_logger,  # noqa: F401 (an autouse fixture)
)

pytest.importorskip("drpaiq_plugins_ops.quantizers")
pytest.importorskip("drpaiq_plugins_calibrators.minmax")

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
CALIBRATE = SAMPLES / "data" / "calibrate"

INPUTS: dict[str, list[int | str]] = {"x": ["N", 3, 6, 6]}


def _residual_model() -> onnx.ModelProto:
    """Conv -> Relu -> Conv, plus a skip Add, then a Gemm head: activations, weights,
    a narrowed Conv and a shared scale to diagnose."""
    rng = np.random.default_rng(3)
    init = {
        "w1": rng.normal(0, 0.5, (3, 3, 3, 3)).astype(np.float32),
        "b1": rng.normal(0, 0.1, (3,)).astype(np.float32),
        "w2": rng.normal(0, 0.5, (3, 3, 3, 3)).astype(np.float32),
        "b2": rng.normal(0, 0.1, (3,)).astype(np.float32),
        "wf": rng.normal(0, 0.5, (4, 3)).astype(np.float32),
        "bf": np.zeros(4, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "x"], ["s"], name="add"),
        helper.make_node("GlobalAveragePool", ["s"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    return make_model(nodes, INPUTS, ["y"], init)


def _sqnr(reference: list[np.ndarray], produced: list[np.ndarray]) -> float:
    """The diagnosis's measure, computed here on whole outputs: the mean over outputs
    of noise power over signal power, in dB."""
    ratios = [
        float(np.sum((p.astype(np.float64) - r) ** 2) / np.sum(r.astype(np.float64) ** 2))
        for r, p in zip(reference, produced)
    ]
    return -10.0 * math.log10(sum(ratios) / len(ratios))


def _outputs(model: onnx.ModelProto | Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    source = model if isinstance(model, Path) else model.SerializeToString()
    runner = session(source)
    runs = [runner.run(None, feed) for feed in feeds]
    return [np.concatenate(parts) for parts in zip(*runs)]


def _without_pair(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """The written model with ``tensor``'s QuantizeLinear/DequantizeLinear pair cut out
    (the float value goes straight to the readers)."""
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    nodes = list(edited.graph.node)
    dq = next(n for n in nodes if n.op_type == "DequantizeLinear" and n.output[0] == tensor)
    q = next(n for n in nodes if n.op_type == "QuantizeLinear" and n.output[0] == dq.input[0])
    kept = [n for n in nodes if n is not dq and n is not q]
    kept.insert(nodes.index(q), helper.make_node("Identity", [q.input[0]], [tensor]))
    del edited.graph.node[:]
    edited.graph.node.extend(kept)
    return edited


def _with_float_weight(model: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    """The written model with the weight ``name``'s DequantizeLinear replaced by the
    float weight."""
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    inits = {i.name for i in edited.graph.initializer}
    dq = next(
        n
        for n in edited.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and n.input[0].startswith(name)
    )
    edited.graph.initializer.append(numpy_helper.from_array(value, f"{name}_float_value"))
    dq.op_type = "Identity"
    del dq.input[:]
    dq.input.append(f"{name}_float_value")
    dq.ClearField("attribute")
    return edited


def test_each_score_is_what_that_model_gives(tmp_path: Path) -> None:
    model = _residual_model()
    feeds = random_feeds(INPUTS, batches=3, batch=2, seed=5)
    fp32, out, summary = run_quantize(tmp_path, model, feeds, diagnose_samples=4)
    diagnosis = summary.diagnosis
    assert diagnosis.samples == 4
    used = [feeds[0], feeds[2]]  # 4 of the 6 samples, spread: the first and last batch
    reference = _outputs(fp32, used)
    written = onnx.load(str(out))
    assert diagnosis.quantized.sqnr_db == pytest.approx(
        _sqnr(reference, _outputs(out, used)), abs=1e-3
    )

    suspects = {(s.kind, s.tensor): s for s in diagnosis.suspects}
    plan = summary.plan
    activations = {t for t in plan.activations if t not in plan.constant_activations}
    weights = {w.source for w in plan.constants.values() if w.params.dtype == "int8"}
    assert set(suspects) == {("activation", t) for t in activations} | {
        ("weights", w) for w in weights
    }
    gains = [diagnosis.gain(s.score) for s in diagnosis.suspects]
    assert gains == sorted(gains, reverse=True)

    relu = suspects[("activation", "r1")]
    alone = _sqnr(reference, _outputs(_without_pair(written, "r1"), used))
    assert relu.score.sqnr_db == pytest.approx(alone, abs=1e-3)
    # The Relu's output is conv1's narrowed output: both go, and conv2 that reads it.
    assert relu.nodes == ("relu1", "conv1", "conv2")

    initial = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    conv2 = suspects[("weights", "w2")]
    alone = _sqnr(reference, _outputs(_with_float_weight(written, "w2", initial["w2"]), used))
    assert conv2.score.sqnr_db == pytest.approx(alone, abs=1e-3)
    assert conv2.nodes == ("conv2",)
    # conv1's weights: excluding conv1 alone would quantize its output before the Relu.
    assert suspects[("weights", "w1")].nodes == ("conv1", "relu1")

    as_json = json.loads(summary.to_json())["diagnosis"]
    assert len(as_json["suspects"]) == len(diagnosis.suspects)
    assert as_json["quantized"]["sqnr_db"] == pytest.approx(diagnosis.quantized.sqnr_db, abs=1e-3)


@pytest.fixture(scope="module")
def mod_b(tmp_path_factory: pytest.TempPathFactory):
    """modB quantized with an 8-sample diagnosis: (model path, summary, config)."""
    pytest.importorskip("drpaiq_plugins_readers.images")
    model = SAMPLES / "modB_resnet_nhwc.onnx"
    if not model.exists() or not CALIBRATE.is_dir():
        pytest.skip("the modB sample is not in this checkout")
    folder = tmp_path_factory.mktemp("modb")
    config = QuantizeConfig(
        input_model=model,
        output_model=folder / "diagnosed.onnx",
        reader="nhwc_image",
        calibrate_dataset=CALIBRATE,
        norm_mean=(0.0, 0.0, 0.0),
        norm_std=(1.0, 1.0, 1.0),
        diagnose_samples=8,
        save_ranges=folder / "ranges.json",
        quiet=True,
    )
    return model, quantize(config), config


def test_the_suggestion_is_what_node_exclusion_gives(mod_b, tmp_path: Path) -> None:
    from drpaiq_core.datasource import open_reader

    model, summary, config = mod_b
    diagnosis = summary.diagnosis
    assert diagnosis.suggested, diagnosis.to_text()
    assert diagnosis.steps[0].kept
    assert diagnosis.gain(diagnosis.suggested_score) >= 0.1
    excluded = dataclasses.replace(
        config,
        output_model=tmp_path / "excluded.onnx",
        nodes_to_exclude=diagnosis.suggested,
        diagnose_samples=0,
    )
    quantize(excluded)
    reader = open_reader(excluded, get_plugin_host(), onnx.load(str(model)), model)
    feeds = [batch.feeds for batch in SpreadReader(reader, diagnosis.samples).batches()]
    measured = _sqnr(_outputs(model, feeds), _outputs(excluded.output_model, feeds))
    assert diagnosis.suggested_score.sqnr_db == pytest.approx(measured, abs=0.01)


def test_the_saved_ranges_cover_the_suggestion(mod_b, tmp_path: Path) -> None:
    """The run with the suggested exclusions needs no calibration when it loads the
    diagnosing run's ranges: no data folder at all, the same bytes as calibrating."""
    _, summary, config = mod_b
    suggested = dataclasses.replace(
        config, nodes_to_exclude=summary.diagnosis.suggested, diagnose_samples=0, save_ranges=None
    )
    calibrated = dataclasses.replace(suggested, output_model=tmp_path / "calibrated.onnx")
    quantize(calibrated)
    loaded = dataclasses.replace(
        suggested,
        output_model=tmp_path / "loaded.onnx",
        calibrate_dataset=tmp_path / "no data",
        load_ranges=config.save_ranges,
    )
    assert quantize(loaded).samples == 0
    assert loaded.output_model.read_bytes() == calibrated.output_model.read_bytes()


def test_exclude_suggested_writes_the_suggestion(mod_b, tmp_path: Path) -> None:
    """With exclude_suggested the model written is the one -exn with the suggested
    nodes gives, byte for byte, and the summary says what was excluded."""
    _, summary, config = mod_b
    suggested = summary.diagnosis.suggested
    applied = dataclasses.replace(
        config, output_model=tmp_path / "applied.onnx", exclude_suggested=True, save_ranges=None
    )
    result = quantize(applied)
    by_hand = dataclasses.replace(
        config,
        output_model=tmp_path / "by_hand.onnx",
        nodes_to_exclude=suggested,
        diagnose_samples=0,
        save_ranges=None,
    )
    quantize(by_hand)
    assert applied.output_model.read_bytes() == by_hand.output_model.read_bytes()
    assert applied.output_model.read_bytes() != config.output_model.read_bytes()
    assert result.diagnosis.suggested == suggested
    assert set(suggested) <= set(result.float_nodes)
    assert not set(suggested) & set(result.quantized)
    note = next(n for n in result.notes if n.startswith("exclude-suggested: "))
    assert f"left {len(suggested)} more node(s) in float, as -exn {','.join(suggested)}" in note


def test_the_diagnosis_changes_nothing_written(mod_b, tmp_path: Path) -> None:
    _, _, config = mod_b
    plain = dataclasses.replace(config, output_model=tmp_path / "plain.onnx", diagnose_samples=0)
    assert quantize(plain).diagnosis is None
    assert plain.output_model.read_bytes() == config.output_model.read_bytes()


def test_cli_prints_and_writes_the_diagnosis(tmp_path: Path) -> None:
    model = classifier(tmp_path / "tiny.onnx")
    data = images(tmp_path / "calib", 6)
    out, summary = tmp_path / "tiny_q.onnx", tmp_path / "summary.json"
    argv = ["quantize", str(model), "-o", str(out), "--calibrate_dataset", str(data)]
    result = CliRunner().invoke(
        build_cli(),
        [*argv, "--diagnose-samples", "3", "--summary-json", str(summary)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    assert "diagnosis on 3 calibration samples" in result.stdout
    assert "(weights)" in result.stdout
    document = json.loads(summary.read_text())["diagnosis"]
    assert document["samples"] == 3
    # --exclude-suggested runs the diagnosis by itself and says what it excluded.
    applied = CliRunner().invoke(
        build_cli(),
        [*argv[:2], "-o", str(tmp_path / "applied.onnx"), *argv[4:], "--exclude-suggested"],
        catch_exceptions=False,
    )
    assert applied.exit_code == 0, applied.stderr
    assert "diagnosis on 6 calibration samples" in applied.stdout
    assert "exclude-suggested: " in applied.stdout
    assert {s["tensor"] for s in document["suspects"]} >= {"conv_w", "gemm_w", "logits"}


def test_a_zero_sample_count_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from drpaiq_core.cli import main

    model = classifier(tmp_path / "tiny.onnx")
    argv = ["quantize", str(model), "-o", str(tmp_path / "q.onnx"), "--diagnose-samples", "0"]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--diagnose-samples" in lines[0], lines


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"diagnose_samples": -1}, "diagnose_samples is -1"),
        ({"exclude_suggested": True}, "exclude_suggested applies the diagnosis's suggestion"),
    ],
)
def test_a_diagnosis_setting_the_run_cannot_follow_is_refused(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    model = classifier(tmp_path / "tiny.onnx")
    config = QuantizeConfig(
        input_model=model,
        output_model=tmp_path / "out.onnx",
        calibrate_dataset=images(tmp_path / "calib", 2),
        quiet=True,
    )
    config = dataclasses.replace(config, **changes)
    with pytest.raises(UserError, match=message):
        quantize(config)
    assert not config.output_model.exists()


def test_nodes_quantized_as_one_leave_int8_together(tmp_path: Path) -> None:
    """MatMul + Add(constant) is one layer with an int32 bias, and the Relu after it
    narrows its output: the three are excluded together, whichever the suspect is."""
    rng = np.random.default_rng(4)
    init = {
        "w1": rng.normal(0, 0.5, (5, 6)).astype(np.float32),
        "b1": rng.normal(0, 0.1, (6,)).astype(np.float32),
        "w2": rng.normal(0, 0.5, (6, 3)).astype(np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="bias1"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["y"], name="mm2"),
    ]
    inputs: dict[str, list[int | str]] = {"x": ["N", 5]}
    model = make_model(nodes, inputs, ["y"], init)
    feeds = random_feeds(inputs, batches=2, batch=4, seed=1)
    _, _, summary = run_quantize(tmp_path, model, feeds, diagnose_samples=4)
    suspects = {(s.kind, s.tensor): s for s in summary.diagnosis.suspects}
    assert suspects[("weights", "w1")].nodes == ("mm1", "bias1", "relu1")
    assert suspects[("activation", "r1")].nodes == ("relu1", "bias1", "mm1", "mm2")
    assert suspects[("weights", "w2")].nodes == ("mm2",)


def test_the_report_is_the_same_from_run_to_run(tmp_path: Path) -> None:
    model = _residual_model()
    feeds = random_feeds(INPUTS, batches=3, batch=2, seed=5)
    reports = []
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
        _, _, summary = run_quantize(tmp_path / run, model, feeds, diagnose_samples=4)
        reports.append(summary.diagnosis.to_dict())
    assert reports[0] == reports[1]
    assert reports[0]["suspects"]
