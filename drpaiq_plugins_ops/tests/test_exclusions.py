"""The exclusion matchers on real ONNX graphs and real pattern files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from drpaiq_core.errors import UserError
from drpaiq_core.graph import ModelGraph
from drpaiq_core.plugin_api import ExclusionMatcher, ExclusionRules
from drpaiq_plugins_ops.exclusions import (
    EXCLUSION_MATCHERS,
    ActFuncPatternMatcher,
    NodeNameMatcher,
    OpTypeMatcher,
    read_pattern_file,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

# ---------------------------------------------------------------------------
# Graphs
# ---------------------------------------------------------------------------


def _model(nodes, inits, inputs, outputs, opset=18) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _fvalue(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def yolo_block() -> onnx.ModelProto:
    """Conv, a Softplus-form Mish, an Exp-form Mish, a residual Add, a scaling Mul, a
    lone Tanh and a Mish op: the shapes of activation a YOLOv4 head mixes.

    x -> conv -> [sp1 -> th1 -> mul1(c, th1)] -> [exp2 -> add2(+1) -> log2 -> th2 ->
    mul2(m1, th2)] -> res_add(m2, m1) -> scale_mul(*2) -> lone_tanh -> mish_op -> y
    """
    shape = [1, 4, 8, 8]
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Softplus", ["c"], ["sp1"], name="sp1"),
        helper.make_node("Tanh", ["sp1"], ["th1"], name="th1"),
        # Mish's closing Mul also reads the chain's input: the chain fans out.
        helper.make_node("Mul", ["c", "th1"], ["m1"], name="mul1"),
        helper.make_node("Exp", ["m1"], ["e2"], name="exp2"),
        helper.make_node("Add", ["e2", "one"], ["a2"], name="add2"),
        helper.make_node("Log", ["a2"], ["l2"], name="log2"),
        helper.make_node("Tanh", ["l2"], ["th2"], name="th2"),
        helper.make_node("Mul", ["m1", "th2"], ["m2"], name="mul2"),
        helper.make_node("Add", ["m2", "m1"], ["r"], name="res_add"),
        helper.make_node("Mul", ["r", "two"], ["s"], name="scale_mul"),
        helper.make_node("Tanh", ["s"], ["t"], name="lone_tanh"),
        helper.make_node("Mish", ["t"], ["y"], name="mish_op"),
    ]
    return _model(nodes, inits, [_fvalue("x", [1, 3, 8, 8])], [_fvalue("y", shape)])


def two_mish() -> onnx.ModelProto:
    """Two Softplus-form Mish blocks in a row, plus a Clip and an unnamed Relu."""
    nodes = []
    current = "x"
    for k in (1, 2):
        nodes += [
            helper.make_node("Softplus", [current], [f"sp{k}"], name=f"sp{k}"),
            helper.make_node("Tanh", [f"sp{k}"], [f"th{k}"], name=f"th{k}"),
            helper.make_node("Mul", [current, f"th{k}"], [f"m{k}"], name=f"mul{k}"),
        ]
        current = f"m{k}"
    nodes += [
        helper.make_node("Clip", [current], ["cl"], name="clip"),
        helper.make_node("Relu", ["cl"], ["y"]),  # unnamed on purpose
    ]
    return _model(nodes, [], [_fvalue("x", [1, 4])], [_fvalue("y", [1, 4])], opset=13)


@pytest.fixture(scope="module")
def yolo() -> ModelGraph:
    return ModelGraph(yolo_block())


@pytest.fixture(scope="module")
def mish2() -> ModelGraph:
    return ModelGraph(two_mish())


def _csv(tmp_path: Path, text: str | bytes, name: str = "rules.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)  # bytes: no newline translation, CRLF stays CRLF
    return path


def _patterns(graph: ModelGraph, path: Path) -> dict[str, list[str]]:
    reports = ActFuncPatternMatcher().match(graph, ExclusionRules(pattern_file=path))
    return {r.rule: r.nodes for r in reports}


def _one_line_error(exc: pytest.ExceptionInfo[UserError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------


def test_matchers_tuple_names_and_bases() -> None:
    assert (OpTypeMatcher, NodeNameMatcher, ActFuncPatternMatcher) == EXCLUSION_MATCHERS
    assert [m.PLUGIN_NAME for m in EXCLUSION_MATCHERS] == [
        "op_type",
        "node_name",
        "act_func_pattern",
    ]
    for matcher in EXCLUSION_MATCHERS:
        assert issubclass(matcher, ExclusionMatcher)
        assert matcher.DESCRIPTION


def test_importing_the_module_does_not_import_onnx() -> None:
    code = (
        "import sys, drpaiq_plugins_ops.exclusions as m; "
        "assert m.EXCLUSION_MATCHERS; print('onnx' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plugin_module_registers_the_matchers() -> None:
    import drpaiq_plugins_ops.plugin as ops_plugin
    from drpaiq_core.plugins import PluginHost

    host = PluginHost(load_entry_points=False)
    host.register(ops_plugin, name="builtin_ops", distribution="drpaiq-plugins-ops")
    assert host.exclusion_matchers.get("op_type") is OpTypeMatcher
    assert host.exclusion_matchers.get("node_name") is NodeNameMatcher
    assert host.exclusion_matchers.get("act_func_pattern") is ActFuncPatternMatcher


@pytest.mark.parametrize("matcher", EXCLUSION_MATCHERS)
def test_no_rules_no_reports(matcher, yolo) -> None:
    assert matcher().match(yolo, ExclusionRules()) == []


# ---------------------------------------------------------------------------
# By op type
# ---------------------------------------------------------------------------


def test_op_type_is_case_insensitive_and_keeps_user_spelling(mish2) -> None:
    reports = OpTypeMatcher().match(mish2, ExclusionRules(op_types=("clip", "TANH")))
    assert [(r.rule, r.nodes) for r in reports] == [
        ("op type 'clip'", ["clip"]),
        ("op type 'TANH'", ["th1", "th2"]),
    ]


def test_op_type_comma_lists_duplicates_and_misses(yolo) -> None:
    rules = ExclusionRules(op_types=("exp,add, log,tanh", "Exp", "Sigmoid"))
    reports = OpTypeMatcher().match(yolo, rules)
    assert [(r.rule, r.nodes) for r in reports] == [
        ("op type 'exp'", ["exp2"]),
        ("op type 'add'", ["add2", "res_add"]),
        ("op type 'log'", ["log2"]),
        ("op type 'tanh'", ["th1", "th2", "lone_tanh"]),
        ("op type 'Sigmoid'", []),  # matched nothing: still reported, the engine warns
    ]


def test_op_type_names_unnamed_nodes_like_the_engine(mish2) -> None:
    reports = OpTypeMatcher().match(mish2, ExclusionRules(op_types=("Relu",)))
    assert reports[0].nodes == ["Relu_7"]


@pytest.mark.parametrize("entry", ["", " , ", "Conv Relu", "Conv;Relu", "3x"])
def test_op_type_malformed_entry_is_user_error(entry, yolo) -> None:
    with pytest.raises(UserError) as exc:
        OpTypeMatcher().match(yolo, ExclusionRules(op_types=(entry,)))
    assert "--operate_to_exclude" in _one_line_error(exc)


# ---------------------------------------------------------------------------
# By node name
# ---------------------------------------------------------------------------


def test_node_name_exact(yolo) -> None:
    rules = ExclusionRules(node_names=("th2", "Th2", "mul1", "th2", "nope"))
    reports = NodeNameMatcher().match(yolo, rules)
    assert [(r.rule, r.nodes) for r in reports] == [
        ("node name 'th2'", ["th2"]),
        ("node name 'Th2'", []),  # names are exact
        ("node name 'mul1'", ["mul1"]),
        ("node name 'nope'", []),
    ]


def test_node_name_comma_lists_unless_the_comma_is_part_of_a_name() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="Concat_264"),
        helper.make_node("Relu", ["a"], ["b"], name="odd,name"),
        helper.make_node("Relu", ["b"], ["y"], name="Concat_285"),
    ]
    graph = ModelGraph(_model(nodes, [], [_fvalue("x", [2])], [_fvalue("y", [2])], opset=13))
    rules = ExclusionRules(node_names=("Concat_264, Concat_285", "odd,name"))
    reports = NodeNameMatcher().match(graph, rules)
    assert [(r.rule, r.nodes) for r in reports] == [
        ("node name 'Concat_264'", ["Concat_264"]),
        ("node name 'Concat_285'", ["Concat_285"]),
        ("node name 'odd,name'", ["odd,name"]),
    ]


@pytest.mark.parametrize("entry", ["", " , "])
def test_node_name_empty_entry_is_user_error(entry, yolo) -> None:
    with pytest.raises(UserError) as exc:
        NodeNameMatcher().match(yolo, ExclusionRules(node_names=(entry,)))
    assert "--node_to_exclude: empty node name" in _one_line_error(exc)


def test_node_name_shared_by_two_nodes_excludes_both() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="act"),
        helper.make_node("Sigmoid", ["a"], ["y"], name="act"),
    ]
    graph = ModelGraph(_model(nodes, [], [_fvalue("x", [2])], [_fvalue("y", [2])], opset=13))
    reports = NodeNameMatcher().match(graph, ExclusionRules(node_names=("act",)))
    assert reports[0].nodes == ["act", "act"]


def test_node_name_matches_engine_name_of_unnamed_node(mish2) -> None:
    reports = NodeNameMatcher().match(mish2, ExclusionRules(node_names=("Relu_7",)))
    assert reports[0].nodes == ["Relu_7"]


# ---------------------------------------------------------------------------
# By activation-function pattern
# ---------------------------------------------------------------------------


def test_reference_example_file(tmp_path, yolo) -> None:
    path = _csv(tmp_path, "Mish\nSoftplus, Tanh, ^Mul\nExp, Add, Log, Tanh, ^Mul\n")
    assert _patterns(yolo, path) == {
        "rules.csv:1 'Mish'": ["mish_op"],
        "rules.csv:2 'Softplus, Tanh, ^Mul'": ["sp1", "th1"],
        "rules.csv:3 'Exp, Add, Log, Tanh, ^Mul'": ["exp2", "add2", "log2", "th2"],
    }


def test_unmarked_closing_mul_is_excluded_but_not_other_adds_and_muls(tmp_path, yolo) -> None:
    path = _csv(tmp_path, "Softplus,Tanh,Mul\nExp,Add,Log,Tanh,Mul\n")
    found = _patterns(yolo, path)
    assert found == {
        "rules.csv:1 'Softplus,Tanh,Mul'": ["sp1", "th1", "mul1"],
        "rules.csv:2 'Exp,Add,Log,Tanh,Mul'": ["exp2", "add2", "log2", "th2", "mul2"],
    }
    excluded = {name for nodes in found.values() for name in nodes}
    # The residual Add, the scaling Mul and the Tanh outside any chain stay quantized.
    assert not excluded & {"res_add", "scale_mul", "lone_tanh", "conv"}


def test_case_insensitive_ops_reported_with_file_spelling(tmp_path, yolo) -> None:
    path = _csv(tmp_path, "softplus , TANH,^ mul\n")
    assert _patterns(yolo, path) == {"rules.csv:1 'softplus , TANH,^ mul'": ["sp1", "th1"]}


def test_every_chain_of_a_line_matches(tmp_path, mish2) -> None:
    path = _csv(tmp_path, "Softplus, Tanh, ^Mul\n")
    assert _patterns(mish2, path) == {
        "rules.csv:1 'Softplus, Tanh, ^Mul'": ["sp1", "th1", "sp2", "th2"]
    }


def test_chains_cross_block_boundaries_only_in_order(tmp_path, mish2) -> None:
    # mul1 feeds sp2 (and mul2): Mul -> Softplus is a chain; Tanh -> Softplus is not.
    path = _csv(tmp_path, "^Mul, Softplus\nTanh, Softplus\nMul, Clip, ^Relu\n")
    assert _patterns(mish2, path) == {
        "rules.csv:1 '^Mul, Softplus'": ["sp2"],
        "rules.csv:2 'Tanh, Softplus'": [],
        "rules.csv:3 'Mul, Clip, ^Relu'": ["mul2", "clip"],
    }


def test_broken_chain_does_not_match(tmp_path) -> None:
    nodes = [
        helper.make_node("Softplus", ["x"], ["sp"], name="sp"),
        helper.make_node("Relu", ["sp"], ["r"], name="relu"),
        helper.make_node("Tanh", ["r"], ["t"], name="tanh"),
        helper.make_node("Mul", ["x", "t"], ["y"], name="mul"),
    ]
    graph = ModelGraph(_model(nodes, [], [_fvalue("x", [3])], [_fvalue("y", [3])], opset=13))
    path = _csv(tmp_path, "Softplus, Tanh, Mul\n")
    assert _patterns(graph, path) == {"rules.csv:1 'Softplus, Tanh, Mul'": []}


def test_overlapping_positions_exclude_when_any_is_unmarked(tmp_path) -> None:
    # Add -> Add -> Add against '^Add, Add': a1 sits only at the marked position, a2 and
    # a3 sit at the unmarked one in some chain.
    nodes = [
        helper.make_node("Add", ["x", "x"], ["a1"], name="a1"),
        helper.make_node("Add", ["a1", "x"], ["a2"], name="a2"),
        helper.make_node("Add", ["a2", "x"], ["y"], name="a3"),
    ]
    graph = ModelGraph(_model(nodes, [], [_fvalue("x", [3])], [_fvalue("y", [3])], opset=13))
    path = _csv(tmp_path, "^Add, Add\nAdd, ^Add\n")
    assert _patterns(graph, path) == {
        "rules.csv:1 '^Add, Add'": ["a2", "a3"],
        "rules.csv:2 'Add, ^Add'": ["a1", "a2"],
    }


def test_crlf_bom_comments_and_blank_lines(tmp_path, yolo) -> None:
    text = "\ufeff# Mish, two spellings\r\n\r\nSoftplus, Tanh, ^Mul\r\n   \r\n  # done\r\nMish"
    path = _csv(tmp_path, text)
    assert _patterns(yolo, path) == {
        "rules.csv:3 'Softplus, Tanh, ^Mul'": ["sp1", "th1"],
        "rules.csv:6 'Mish'": ["mish_op"],
    }


def test_spreadsheet_csv_padding_and_quotes(tmp_path, yolo) -> None:
    """As a spreadsheet program saves the reference example: rows padded with empty
    fields to the longest row, fields quoted, an empty row of commas."""
    text = '"Softplus","Tanh","^Mul",,\r\n,,,,\r\nMish,,,,\r\n'
    path = _csv(tmp_path, text)
    assert _patterns(yolo, path) == {
        'rules.csv:1 \'"Softplus","Tanh","^Mul",,\'': ["sp1", "th1"],
        "rules.csv:3 'Mish,,,,'": ["mish_op"],
    }


def test_pattern_file_from_the_advanced_option(tmp_path, yolo) -> None:
    path = _csv(tmp_path, "Mish\n", name="act.csv")
    rules = ExclusionRules(options={"exclude_act_func_dir": str(path)})
    reports = ActFuncPatternMatcher().match(yolo, rules)
    assert [(r.rule, r.nodes) for r in reports] == [("act.csv:1 'Mish'", ["mish_op"])]


def test_custom_domain_op_of_the_model_is_known(tmp_path) -> None:
    nodes = [
        helper.make_node("Softplus", ["x"], ["sp"], name="sp"),
        helper.make_node("FancyAct", ["sp"], ["y"], name="fancy", domain="example.custom"),
    ]
    graph = helper.make_graph(nodes, "g", [_fvalue("x", [3])], [_fvalue("y", [3])])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("example.custom", 1)],
    )
    path = _csv(tmp_path, "Softplus, fancyact\n")
    assert _patterns(ModelGraph(model), path) == {
        "rules.csv:1 'Softplus, fancyact'": ["sp", "fancy"]
    }


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("Mish\nExp,,Log\n", 2, "op 2 of 'Exp,,Log' is empty"),
        (",Softplus, Tanh\n", 1, "op 1 of ',Softplus, Tanh' is empty"),
        ("# c\n\nExp, 3x, Log\n", 3, "'3x' in 'Exp, 3x, Log' is not an op type name"),
        ("Mish\nSoftplus Tanh\n", 2, "'Softplus Tanh'"),
        ("Softplus, ^, Mul\n", 1, "'^' without an op type"),
        ("Mish\nMish\n^Softplus, ^Tanh\n", 3, "every op of '^Softplus, ^Tanh' is marked '^'"),
        ("Mish\nSoftplu, Tanh, ^Mul\n", 2, "unknown op type 'Softplu' (did you mean 'Softplus'?)"),
        ("Exp, Add, Log, Tanh, ^Mul\nSilu\n", 2, "unknown op type 'Silu'"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, yolo, text, line, fragment) -> None:
    path = _csv(tmp_path, text)
    with pytest.raises(UserError) as exc:
        ActFuncPatternMatcher().match(yolo, ExclusionRules(pattern_file=path))
    message = _one_line_error(exc)
    assert message.startswith(f"{path}:{line}: ")
    assert fragment in message


def test_unknown_op_suggestion_is_case_insensitive(tmp_path) -> None:
    path = _csv(tmp_path, "softplus, tanhh\n")
    with pytest.raises(UserError) as exc:
        read_pattern_file(path)
    assert "unknown op type 'tanhh' (did you mean 'Tanh'?)" in _one_line_error(exc)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\r\n   \r\n"])
def test_file_without_patterns_is_user_error(tmp_path, yolo, text) -> None:
    path = _csv(tmp_path, text)
    with pytest.raises(UserError) as exc:
        ActFuncPatternMatcher().match(yolo, ExclusionRules(pattern_file=path))
    message = _one_line_error(exc)
    assert message.startswith(f"{path}: no pattern in the file")


def test_non_utf8_file_names_the_line(tmp_path, yolo) -> None:
    path = _csv(tmp_path, "Mish\nSoftplus, Tanh\nExp, Add\xe9, Log\n".encode("latin-1"))
    with pytest.raises(UserError) as exc:
        ActFuncPatternMatcher().match(yolo, ExclusionRules(pattern_file=path))
    message = _one_line_error(exc)
    assert message.startswith(f"{path}:3: not UTF-8 text (byte 0xe9 at column 9)")


def test_missing_file_and_folder(tmp_path, yolo) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(UserError) as exc:
        ActFuncPatternMatcher().match(yolo, ExclusionRules(pattern_file=missing))
    assert _one_line_error(exc).startswith(f"{missing}: activation-function pattern file not")
    with pytest.raises(UserError) as exc:
        ActFuncPatternMatcher().match(yolo, ExclusionRules(pattern_file=tmp_path))
    assert "is a folder" in _one_line_error(exc)


# ---------------------------------------------------------------------------
# The chain search against brute force on random graphs
# ---------------------------------------------------------------------------

_KINDS = ("Relu", "Sigmoid", "Add")


@st.composite
def _dags(draw):
    """A random DAG of Relu/Sigmoid/Add nodes over one input; every node reads earlier
    tensors, so branches and joins both occur."""
    count = draw(st.integers(1, 9))
    nodes = []
    tensors = ["x"]
    for i in range(count):
        kind = draw(st.sampled_from(_KINDS))
        arity = 2 if kind == "Add" else 1
        inputs = [draw(st.sampled_from(tensors)) for _ in range(arity)]
        nodes.append(helper.make_node(kind, inputs, [f"t{i}"], name=f"n{i}"))
        tensors.append(f"t{i}")
    pattern = draw(
        st.lists(st.tuples(st.sampled_from(_KINDS), st.booleans()), min_size=1, max_size=4)
    )
    if all(marked for _, marked in pattern):
        pattern[0] = (pattern[0][0], False)
    return nodes, pattern


def _brute_force(nodes, pattern) -> list[str]:
    """Enumerate every chain explicitly."""
    excluded: set[int] = set()

    def extend(chain: list[int]) -> None:
        if len(chain) == len(pattern):
            excluded.update(i for i, (_, marked) in zip(chain, pattern) if not marked)
            return
        outputs = set(nodes[chain[-1]].output)
        for j, node in enumerate(nodes):
            if node.op_type == pattern[len(chain)][0] and outputs & set(node.input):
                extend([*chain, j])

    for i, node in enumerate(nodes):
        if node.op_type == pattern[0][0]:
            extend([i])
    return [nodes[i].name for i in sorted(excluded)]


@settings(max_examples=150, deadline=None)
@given(_dags())
def test_chain_search_equals_brute_force(tmp_path_factory, case) -> None:
    nodes, pattern = case
    graph = helper.make_graph(nodes, "g", [_fvalue("x", [2])], [_fvalue(nodes[-1].output[0], [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    line = ", ".join(("^" if marked else "") + kind for kind, marked in pattern)
    path = _csv(tmp_path_factory.mktemp("p"), line + "\n")
    reports = ActFuncPatternMatcher().match(ModelGraph(model), ExclusionRules(pattern_file=path))
    assert reports[0].nodes == _brute_force(nodes, pattern)
