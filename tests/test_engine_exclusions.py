"""Exclusions through the whole pipeline: excluded nodes run in float between
DequantizeLinear and QuantizeLinear, and every rule reports what it matched."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from tests._engine import make_model, random_feeds, run, run_quantize

pytest.importorskip("drpaiq_plugins_ops.exclusions")
pytest.importorskip("drpaiq_plugins_calibrators.minmax")


def _mish_model() -> onnx.ModelProto:
    weight = np.random.default_rng(3).normal(size=(4, 3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Softplus", ["c"], ["sp"], name="softplus"),
        helper.make_node("Tanh", ["sp"], ["th"], name="tanh"),
        helper.make_node("Mul", ["c", "th"], ["m"], name="mish_mul"),
        helper.make_node("Add", ["m", "c"], ["y"], name="residual_add"),
    ]
    return make_model(nodes, {"x": ["N", 3, 4, 4]}, ["y"], {"W": weight})


def _producers(path: Path) -> dict[str, onnx.NodeProto]:
    model = onnx.load(str(path))
    return {o: n for n in model.graph.node for o in n.output}


def test_pattern_csv_excludes_only_the_chain(tmp_path: Path) -> None:
    rules = tmp_path / "rules.csv"
    rules.write_text("Softplus, Tanh, ^Mul\n", encoding="utf-8")
    feeds = random_feeds({"x": ["N", 3, 4, 4]})
    fp32, out, summary = run_quantize(
        tmp_path, _mish_model(), feeds, options={"exclude_act_func_dir": str(rules)}
    )
    assert set(summary.float_nodes) == {"tanh", "softplus"}
    assert {"mish_mul", "residual_add", "conv"} <= set(summary.quantized)
    assert summary.rules == {"rules.csv:1 'Softplus, Tanh, ^Mul'": ["softplus", "tanh"]}
    written = onnx.load(str(out))
    producers = _producers(out)
    tanh = next(n for n in written.graph.node if n.name == "tanh")
    # The excluded chain reads a dequantized value ...
    softplus = next(n for n in written.graph.node if n.name == "softplus")
    assert producers[softplus.input[0]].op_type == "DequantizeLinear"
    # ... and its result is quantized again where a quantized node reads it.
    mul = next(n for n in written.graph.node if n.name == "mish_mul")
    assert producers[mul.input[1]].op_type == "DequantizeLinear"
    assert producers[producers[mul.input[1]].input[0]].op_type == "QuantizeLinear"
    assert tanh.output[0] not in {
        i for n in written.graph.node for i in n.input if n.name == "mish_mul"
    }
    expected = run(fp32, feeds[0])[0]
    assert np.max(np.abs(run(out, feeds[0])[0] - expected)) < 0.1 * np.max(np.abs(expected))


def test_rules_report_counts_and_a_rule_matching_nothing_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("drpaiq")
    logger.setLevel(logging.INFO)
    with caplog.at_level(logging.INFO, logger="drpaiq"):
        _, _, summary = run_quantize(
            tmp_path,
            _mish_model(),
            random_feeds({"x": ["N", 3, 4, 4]}),
            op_types_to_exclude=("tanh", "Sigmoid"),
            nodes_to_exclude=("residual_add",),
        )
    assert summary.float_nodes["tanh"][1] == "excluded by op type 'tanh'"
    assert summary.float_nodes["residual_add"][1].startswith("excluded by node name")
    assert "op type 'tanh'" in caplog.text and "matched 1 node" in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'Sigmoid'" in w and "matched no node" in w for w in warnings)
