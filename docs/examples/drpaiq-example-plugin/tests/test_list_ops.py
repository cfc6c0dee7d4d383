"""``drpaiq list-ops`` through the real ``drpaiq`` command group."""

from __future__ import annotations

import json

import onnx
from click.testing import CliRunner
from drpaiq_core.cli import build_cli
from drpaiq_example_plugin.list_ops import count_op_types
from onnx import TensorProto, helper


def test_counts_are_most_frequent_first_then_by_name(models) -> None:
    assert count_op_types(models.yolo()) == [
        ("Mul", 10), ("Conv", 4), ("Reshape", 4), ("Sigmoid", 4), ("Concat", 3), ("Add", 2),
        ("Pow", 2), ("Split", 2), ("Sub", 2), ("Transpose", 2), ("MaxPool", 1),
    ]  # fmt: skip


def test_nodes_inside_subgraphs_and_other_domains_count() -> None:
    branch = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "branch",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=branch),
            helper.make_node("Gelu", ["x"], ["g"], domain="com.microsoft"),
        ],
        "main",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
    )  # fmt: skip
    model = helper.make_model(graph)
    assert count_op_types(model) == [("Relu", 2), ("If", 1), ("com.microsoft:Gelu", 1)]


def test_list_ops_prints_a_table_and_json(models, host, tmp_path) -> None:
    path = tmp_path / "detector.onnx"
    onnx.save(models.yolo(), path)
    runner = CliRunner()
    table = runner.invoke(build_cli(host), ["list-ops", str(path)])
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["op", "type", "nodes"]
    assert lines[1].split() == ["Mul", "10"]
    assert lines[-1].split() == ["total", "36"]

    as_json = runner.invoke(build_cli(host), ["list-ops", "--json", str(path)])
    listing = json.loads(as_json.stdout)
    assert listing["nodes"] == 36
    assert list(listing["op_types"])[:2] == ["Mul", "Conv"]


def test_a_missing_or_broken_model_is_one_error_line(host, tmp_path) -> None:
    runner = CliRunner()
    missing = runner.invoke(build_cli(host), ["list-ops", str(tmp_path / "nope.onnx")])
    assert missing.exit_code == 2
    assert missing.stderr.splitlines() == [
        f"drpaiq: error: model {tmp_path / 'nope.onnx'} does not exist or is not a file; "
        "check the path"
    ]
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\x00 not a protobuf")
    broken = runner.invoke(build_cli(host), ["list-ops", str(junk)])
    assert broken.exit_code == 2
    [line] = broken.stderr.splitlines()
    assert line.startswith(f"drpaiq: error: model {junk} is not a readable ONNX file")
