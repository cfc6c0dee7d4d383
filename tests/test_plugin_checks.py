"""What drpaiq checks of a plugin before and while it uses it: each mistake a plugin
author commonly makes is reported once, naming the plugin and its distribution, and a
plugin reported as skipped contributes nothing."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
from drpaiq_core.errors import PluginError
from drpaiq_core.plugin_api import MatchReport, NodeQuantSpec, OpQuantizer, Reader
from drpaiq_core.plugins import ENV_ONLY, get_plugin_host

from drpaiq_core import hookimpl
from tests._models import classifier, images
from tests._plugin_helpers import (
    MaxAbsCalibrator,
    OpTypeMatcher,
    ZerosReader,
    isolating_env,
    make_host,
    named,
    plugin,
    run_drpaiq,
    write_distribution,
    write_reader_distribution,
)

# -- registration --------------------------------------------------------------------


class _Softplus(OpQuantizer):
    PLUGIN_NAME = "softplus_q"
    OP_TYPES = "Softplus"  # type: ignore[assignment]  # the missing comma under test

    def quantize_node(self, node, graph, options):  # type: ignore[no-untyped-def]
        return None


class _Abstract(Reader):
    """Forgets ``batches``."""

    PLUGIN_NAME = "abstract_frames"

    def __len__(self) -> int:
        return 0


@pytest.mark.parametrize(
    ("registered", "fragment"),
    [
        ({"op_quantizers": [_Softplus]}, "OP_TYPES must be a tuple of names"),
        ({"readers": [named(ZerosReader, "x", ALIASES="frames")]}, "ALIASES must be a tuple"),
        ({"readers": [named(ZerosReader, "y", OPTIONS=["k"])]}, "OPTIONS must map"),
        ({"readers": [MaxAbsCalibrator]}, "is not a subclass of drpaiq_core.plugin_api.Reader"),
        ({"readers": [_Abstract]}, "does not implement batches"),
    ],
    ids=["op-types-string", "aliases-string", "options-list", "wrong-base", "abstract"],
)
def test_a_malformed_class_skips_its_plugin_with_one_line(registered, fragment) -> None:
    host = make_host(
        (plugin(readers=[named(ZerosReader, "good_frames")]), "good", "drpaiq-test-good"),
        (plugin(**registered), "sloppy", "drpaiq-test-sloppy"),
    )
    host.load_all()
    [line] = host.broken
    assert "'sloppy'" in line and "drpaiq-test-sloppy" in line and fragment in line, line
    assert "\n" not in line
    assert host.readers.names() == ["good_frames"]
    assert host.op_quantizers.find("s") is None and host.op_quantizers.find("softplus") is None
    assert "sloppy" not in host.plugins


def test_an_instance_instead_of_a_class_is_named() -> None:
    host = make_host((plugin(readers=[]), "empty", "drpaiq-test-empty"))
    bad = types.SimpleNamespace(
        drpaiq_register_readers=hookimpl(
            lambda register: register(ZerosReader.__new__(ZerosReader))
        )
    )
    bad.drpaiq_register_readers.__name__ = "drpaiq_register_readers"
    host.register(bad, "instance", "drpaiq-test-instance")
    assert host.readers.names() == []
    [line] = host.broken
    assert "not a class; pass the class itself" in line and "drpaiq-test-instance" in line


def test_a_plugin_failing_one_hook_is_skipped_in_every_registry() -> None:
    """Its calibrator was registered before its reader hook failed: the calibrator goes
    too, as the warning says the plugin is skipped."""
    host = make_host(
        (
            plugin(
                calibrators=[named(MaxAbsCalibrator, "half_calib")],
                readers=[named(ZerosReader, "")],
            ),
            "half",
            "drpaiq-test-half",
        )
    )
    assert host.calibrators.names() == ["half_calib"]  # collected before the readers
    assert host.readers.names() == []
    assert host.calibrators.names() == []
    assert "half" not in host.plugins
    assert len(host.broken) == 1 and "PLUGIN_NAME" in host.broken[0]


def test_register_refuses_a_misspelled_hook_name() -> None:
    host = make_host()

    def drpaiq_register_reader(register: object) -> None:  # no such hook: "readers"
        raise AssertionError("never called")

    typo = types.SimpleNamespace(drpaiq_register_reader=hookimpl(drpaiq_register_reader))
    with pytest.raises(PluginError, match="did you mean drpaiq_register_readers"):
        host.register(typo, "typo", "drpaiq-test-typo")
    assert "typo" not in host.plugins


def test_an_entry_point_name_used_twice_warns_and_keeps_the_first(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in isolating_env(only=("frames",)).items():
        monkeypatch.setenv(key, value)
    write_reader_distribution(site, "drpaiq-test-alpha", "frames", "alpha_frames")
    write_reader_distribution(site, "drpaiq-test-zeta", "frames", "zeta_frames")
    host = get_plugin_host()
    names = host.readers.names()
    assert len(names) == 1
    [line] = host.broken
    assert "entry point name 'frames' is already used by" in line
    assert "drpaiq-test-alpha" in line and "drpaiq-test-zeta" in line


def test_an_external_plugin_cannot_take_a_builtin_entry_point_name(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = get_plugin_host()
    host.load()
    builtin = next(
        (name for name, info in host.plugins.items() if "readers" in info.distribution), None
    )
    if builtin is None:
        pytest.skip("drpaiq-plugins-readers is not installed")
    monkeypatch.setenv(ENV_ONLY, builtin)
    write_reader_distribution(site, "drpaiq-test-squatter", builtin, "squatter_frames")
    host = get_plugin_host()
    assert host.readers.get("nchw_image") is not None
    assert host.readers.find("squatter_frames") is None
    [line] = host.broken
    assert "drpaiq-test-squatter" in line and "drpaiq-plugins-readers" in line


# -- answers of plugin methods -------------------------------------------------------


class _Softplus2(OpQuantizer):
    PLUGIN_NAME = "softplus_out_of_range"
    OP_TYPES = ("Softplus",)

    def quantize_node(self, node, graph, options):  # type: ignore[no-untyped-def]
        return NodeQuantSpec(activations=(3,), outputs=(0,))


class _SoftplusDict(_Softplus2):
    PLUGIN_NAME = "softplus_dict"

    def quantize_node(self, node, graph, options):  # type: ignore[no-untyped-def]
        return {"activations": (0,)}


class _SoftplusNoted(_Softplus2):
    PLUGIN_NAME = "softplus_noted"

    def quantize_node(self, node, graph, options):  # type: ignore[no-untyped-def]
        return NodeQuantSpec(activations=(0,), outputs=(0,), note="a lookup table on DRP-AI")


class _GhostMatcher(OpTypeMatcher):
    PLUGIN_NAME = "ghost"

    def match(self, graph, rules):  # type: ignore[no-untyped-def]
        return [MatchReport(rule="ghost rule", nodes=["no_such_node"])]


class _StringMatcher(OpTypeMatcher):
    PLUGIN_NAME = "stringy"

    def match(self, graph, rules):  # type: ignore[no-untyped-def]
        return [MatchReport(rule="stringy rule", nodes="body/softplus")]  # type: ignore[arg-type]


def _softplus_model(path: Path) -> None:
    """Conv -> Softplus -> GlobalAveragePool: an op type no built-in quantizes."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(
        np.random.default_rng(0).normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w"
    )
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["conv"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Softplus", ["conv"], ["soft"], name="body/softplus"),
        helper.make_node("GlobalAveragePool", ["soft"], ["out"], name="pool"),
    ]
    graph = helper.make_graph(
        nodes,
        "softplus",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 1, 1])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))


def _quantize_with(tmp_path: Path, host_plugin: object) -> tuple[int, str, Path]:
    """Quantize a Softplus model with the built-ins plus ``host_plugin``, in-process."""
    from click.testing import CliRunner
    from drpaiq_core.cli import build_cli

    _softplus_model(tmp_path / "act.onnx")
    images(tmp_path / "cal", 3, size=8)
    host = get_plugin_host()
    host.register(host_plugin, "extra", "drpaiq-test-extra")
    result = CliRunner().invoke(
        build_cli(host),
        [
            "-q",
            "--reader",
            "zeros" if host.readers.find("zeros") else "nchw_image",
            "quantize",
            str(tmp_path / "act.onnx"),
            "-o",
            str(tmp_path / "q.onnx"),
            "--calibrate_dataset",
            str(tmp_path / "cal"),
            *NORM,
            "--summary-json",
            str(tmp_path / "s.json"),
        ],
        catch_exceptions=False,
    )
    return result.exit_code, result.stderr, tmp_path / "s.json"


@pytest.mark.parametrize(
    ("registered", "fragments"),
    [
        (
            {"op_quantizers": [_Softplus2]},
            ("'softplus_out_of_range'", "drpaiq-test-extra", "index 3", "has 1 input(s)"),
        ),
        ({"op_quantizers": [_SoftplusDict]}, ("must return a NodeQuantSpec or None, got dict",)),
        ({"exclusion_matchers": [_GhostMatcher]}, ("does not have", "'no_such_node'")),
        ({"exclusion_matchers": [_StringMatcher]}, ("give a list of node names",)),
    ],
    ids=["index", "dict", "unknown-node", "string-nodes"],
)
def test_a_malformed_answer_is_one_error_line_naming_the_plugin(
    tmp_path: Path, registered, fragments
) -> None:
    code, stderr, summary = _quantize_with(tmp_path, plugin(**registered))
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("drpaiq: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "q.onnx").exists() and not summary.exists()


def test_a_quantizers_note_reaches_the_summary(tmp_path: Path) -> None:
    code, stderr, summary = _quantize_with(tmp_path, plugin(op_quantizers=[_SoftplusNoted]))
    assert code == 0, stderr
    notes = json.loads(summary.read_text())["notes"]
    assert any(n.startswith("Softplus (a lookup table on DRP-AI): 1 node(s)") for n in notes), notes


# -- the real command: load-time warnings and a plugin's own bug ----------------------

CRASHING_CALIBRATOR = """
from drpaiq_core import hookimpl
from drpaiq_core.plugin_api import Calibrator, TensorRange


class Crashing(Calibrator):
    PLUGIN_NAME = "crashing"

    def new_state(self):
        return 0.0

    def collect(self, state, values, pass_index):
        return state

    def merge(self, a, b):
        return a

    def compute(self, state):
        return (0.0, 1.0)[5]


@hookimpl
def drpaiq_register_calibrators(register):
    register(Crashing)

"""


#: The normalization every run here uses.
NORM = ["--norm_mean", "0", "0", "0", "--norm_std", "1", "1", "1"]

NO_COMMANDS = """
from drpaiq_core import hookimpl


@hookimpl
def drpaiq_register_commands(cli):
    raise RuntimeError("no commands today")
"""


def test_load_warnings_are_one_line_and_a_plugins_bug_is_named(tmp_path: Path) -> None:
    site = tmp_path / "cli-site"
    write_distribution(
        site,
        "drpaiq-test-crash",
        "0.1.0",
        {"crash": "drpaiq_test_crash"},
        {"drpaiq_test_crash.py": CRASHING_CALIBRATOR},
    )
    write_distribution(
        site,
        "drpaiq-test-nocmd",
        "0.1.0",
        {"nocmd": "drpaiq_test_nocmd"},
        {"drpaiq_test_nocmd.py": NO_COMMANDS},
    )
    classifier(tmp_path / "m.onnx", size=8)
    images(tmp_path / "cal", 3, size=8)
    switches = {ENV_ONLY: "crash,nocmd"}
    result = run_drpaiq("plugins", pythonpath=[site], switches=switches)
    assert result.returncode == 0, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("drpaiq: warning: plugin 'nocmd' from drpaiq-test-nocmd"), line
    assert "RuntimeError: no commands today" in line
    assert "nocmd" not in result.stdout and "crash" in result.stdout
    result = run_drpaiq(
        "quantize",
        "m.onnx",
        "-o",
        "q.onnx",
        "--calibrate_dataset",
        "cal",
        "-cm",
        "crashing",
        *NORM,
        pythonpath=[site],
        switches=switches,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert "internal error in plugin 'crash' from drpaiq-test-crash" in errors[0]
    assert "IndexError" in errors[0] and "drpaiq_test_crash.py:" in errors[0]
    assert "DRPAIQ_BLOCK_PLUGINS=crash" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "q.onnx").exists()
