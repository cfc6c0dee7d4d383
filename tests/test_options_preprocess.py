"""Advanced options and argument values (drpaiq_core.options), the quantize command's
argument rewriting, and the pre-processing step (drpaiq_core.preprocess)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from drpaiq_core.cli import AppState
from drpaiq_core.cli_quantize import ADVANCED_META, quantize_command
from drpaiq_core.compat import do_preprocess
from drpaiq_core.config import QuantizeConfig
from drpaiq_core.errors import UserError
from drpaiq_core.hookspecs import hookimpl
from drpaiq_core.options import (
    apply_advanced,
    known_option_names,
    parse_advanced,
    parse_bool,
    parse_count,
    parse_name_list,
    parse_number_list,
    parse_path,
    parse_shape,
    plugin_options,
)
from drpaiq_core.plugin_api import Calibrator, TensorRange
from drpaiq_core.plugins import PluginHost, get_plugin_host
from drpaiq_core.preprocess import REFERENCE_FAILURE, preprocess_model, preprocess_settings
from onnx import TensorProto, helper, numpy_helper

from tests._models import (
    classifier,
    restore_drpaiq_logger,  # noqa: F401 (an autouse fixture)
)

# -- values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "[0.4914, 0.4822, 0.4465]",
        "0.4914,0.4822,0.4465",
        "0.4914 0.4822 0.4465",
        "(0.4914; 0.4822; 0.4465)",
    ],
)
def test_number_lists(text):
    assert parse_number_list(text, "--norm_mean") == (0.4914, 0.4822, 0.4465)


def test_number_lists_from_python_and_errors():
    assert parse_number_list([0, 1, 2.5], "x") == (0.0, 1.0, 2.5)
    assert parse_number_list(np.array([1, 2, 3]), "x") == (1.0, 2.0, 3.0)
    with pytest.raises(UserError, match="'abc' is not a number"):
        parse_number_list("[abc, 1, 2]", "--norm_mean")
    with pytest.raises(UserError, match="needs numbers"):
        parse_number_list("[]", "--norm_std")


def test_shapes_and_names():
    assert parse_shape("1,3,224,224") == parse_shape("1x3x224x224") == (1, 3, 224, 224)
    assert parse_shape([1, 224, 224, 3]) == (1, 224, 224, 3)
    with pytest.raises(UserError, match="positive whole numbers"):
        parse_shape("1,3,0,224")
    with pytest.raises(UserError, match="whole numbers"):
        parse_shape("1,3,a,b")
    with pytest.raises(UserError, match="whole numbers"):
        parse_shape("1,3,x,8")
    assert parse_shape("1 x 3 X 8 x 8") == (1, 3, 8, 8)
    assert parse_name_list("Softplus, Tanh,,") == ("Softplus", "Tanh")
    assert parse_name_list(["a,b", "c"]) == ("a", "b", "c")
    assert parse_name_list(None) == ()
    with pytest.raises(UserError, match=r"node_to_exclude must be names .* got 5 \(int\)"):
        parse_name_list(5, "node_to_exclude")
    with pytest.raises(UserError, match="input_shape must be whole numbers"):
        parse_shape(object(), "input_shape")


def test_counts_paths_and_booleans():
    assert parse_count("12", "size_limit", minimum=0, meaning="samples") == 12
    assert parse_count(np.int64(3), "batch_size", minimum=1, meaning="per batch") == 3
    for bad in ("ten", 2.5, True, -1, None):
        with pytest.raises(UserError, match="size_limit must be a whole number, at least 0"):
            parse_count(bad, "size_limit", minimum=0, meaning="samples")
    assert parse_path(Path("a"), "summary_json") == Path("a")
    assert parse_path("", "summary_json") is None
    with pytest.raises(UserError, match="summary_json must be a path"):
        parse_path(3.5, "summary_json")
    assert parse_bool("FALSE", "quiet") is False and parse_bool("on", "quiet") is True
    with pytest.raises(UserError, match="quiet must be True or False"):
        parse_bool("False-ish", "quiet")


# -- advanced options ------------------------------------------------------------------


def test_spellings_and_canonical_values():
    options = parse_advanced(
        [("ActivationType", "QUInt8"), ("activation-zeropoint", "false"),
         ("NUM_BINS", "4096"), ("percentile_value", "99.99"), ("optimize_model", "1")]
    )  # fmt: skip
    assert options == {
        "activation_type": "uint8",
        "activation_zeropoint": "False",
        "num_bins": "4096",
        "percentile_value": "99.99",
        "optimize_model": "True",
    }


def test_apply_maps_onto_config_fields():
    config = QuantizeConfig(Path("m.onnx"), Path("q.onnx"))
    apply_advanced(config, parse_advanced([
        ("exclude_act_func_dir", "rules.csv"), ("activation_zeropoint", "False"),
        ("per_channel", "False"), ("entropy_debug", "dbg"), ("num_bins", "64"),
    ]))  # fmt: skip
    assert config.pattern_file == Path("rules.csv")
    assert config.activation_symmetric is True
    assert config.per_channel is False
    assert config.debug_dir == Path("dbg")
    assert config.options["num_bins"] == "64"


def test_contradictions_are_refused():
    config = QuantizeConfig(Path("m.onnx"), Path("q.onnx"), activation_symmetric=True)
    with pytest.raises(UserError, match="contradicts"):
        apply_advanced(config, parse_advanced([("activation_zeropoint", "True")]))
    config = QuantizeConfig(Path("m.onnx"), Path("q.onnx"), activation_symmetric=True)
    apply_advanced(config, parse_advanced([("activation_zeropoint", "False")]))  # agrees


@pytest.mark.parametrize(
    "pairs",
    [
        [("activation_zeropoint", "True"), ("activation_symmetric", "True")],
        [("activation_symmetric", "True"), ("activation_zeropoint", "True")],
        [("activation_symmetric", "False"), ("activation_zeropoint", "False")],
        [("activation_zeropoint", "False"), ("activation_symmetric", "False")],
    ],
)
def test_contradicting_advanced_options_in_either_order(pairs):
    config = QuantizeConfig(Path("m.onnx"), Path("q.onnx"))
    with pytest.raises(UserError) as err:
        apply_advanced(config, parse_advanced(pairs))
    message = str(err.value)
    for key, value in pairs:
        assert f"{key} {value}" in message
    assert "symmetric activations" in message and "asymmetric activations" in message


def test_consistent_advanced_options_agree():
    config = QuantizeConfig(Path("m.onnx"), Path("q.onnx"))
    apply_advanced(
        config, parse_advanced([("activation_zeropoint", "False"), ("activation_symmetric", "1")])
    )
    assert config.activation_symmetric is True


def test_a_flag_given_at_its_default_still_counts():
    config = QuantizeConfig(Path("m.onnx"), Path("q.onnx"))
    with pytest.raises(UserError, match="contradicts --activation-type"):
        apply_advanced(
            config,
            parse_advanced([("activation_type", "QUInt8")]),
            {"activation_type": "--activation-type"},
        )


def test_unknown_option_lists_the_known_ones():
    with pytest.raises(UserError) as err:
        parse_advanced([("reduce_range", "True")])
    for name in known_option_names():
        assert name in str(err.value)


def test_options_declared_by_plugins_are_accepted():
    class Knobbed(Calibrator):
        PLUGIN_NAME = "knobbed"
        OPTIONS = {"smoothing_window": "frames averaged"}

        def new_state(self):
            return None

        def collect(self, state, values, pass_index):
            return state

        def merge(self, a, b):
            return a

        def compute(self, state):
            return TensorRange(0.0, 1.0)

    class Plugin:
        @hookimpl
        def drpaiq_register_calibrators(self, register):
            register(Knobbed)

    host = PluginHost(load_entry_points=False)
    host.register(Plugin(), "knobs")
    assert plugin_options(host) == {"smoothing_window": "frames averaged"}
    found = parse_advanced([("smoothing_window", "5")], lambda: plugin_options(host))
    assert found == {"smoothing_window": "5"}
    with pytest.raises(UserError, match="smoothing_window"):  # listed among the known
        parse_advanced([("smoothing", "5")], lambda: plugin_options(host))


# -- the quantize command's argument rewriting ----------------------------------------


def parsed(*argv: str):
    ctx = quantize_command.make_context(
        "quantize", list(argv), obj=AppState(host=get_plugin_host())
    )
    return ctx.params, ctx.meta[ADVANCED_META]


def test_model_and_advanced_pairs_are_told_apart():
    params, advanced = parsed("m.onnx", "-o", "q.onnx", "num_bins", "128", "-cm", "Entropy")
    assert params["model"] == "m.onnx" and params["calibrate_method"] == "Entropy"
    assert advanced == [("num_bins", "128")]
    params, advanced = parsed("--input_model_path", "m.onnx", "mystery_key", "1")
    assert params["model"] is None and advanced == [("mystery_key", "1")]


def test_preprocessed_model_output_value_is_optional():
    assert parsed("m.onnx", "-pmo")[0]["preprocessed_model_output"] == ""
    assert parsed("m.onnx", "-pmo", "p.onnx")[0]["preprocessed_model_output"] == "p.onnx"
    params, advanced = parsed("m.onnx", "-pmo", "optimize_model", "False")
    assert params["preprocessed_model_output"] == ""
    assert advanced == [("optimize_model", "False")]
    assert parsed("m.onnx", "-pmo", "--tvm")[0]["tvm"] is True


def test_repeated_and_spelled_exclusions():
    params, _ = parsed("m.onnx", "-ex", "Tanh", "--exclude_operate", "exp,log", "-exn", "Conv_1")
    assert params["operate_to_exclude"] == ("Tanh", "exp,log")
    assert params["node_to_exclude"] == ("Conv_1",)


# -- pre-processing ---------------------------------------------------------------------


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def drpaiq_log():
    handler = Lines()
    logger = logging.getLogger("drpaiq")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def conv_bn_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")]
    for name in ("scale", "bias", "mean"):
        inits.append(numpy_helper.from_array(rng.normal(size=4).astype(np.float32), name))
    inits.append(numpy_helper.from_array(np.ones(4, np.float32), "var"))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]),
         helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"])],
        "conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
        initializer=inits,
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_preprocess_optimizes_and_infers_shapes(tmp_path):
    source = conv_bn_model(tmp_path / "m.onnx")
    out = preprocess_model(source, tmp_path / "pre.onnx")
    model = onnx.load(str(out))
    assert [n.op_type for n in model.graph.node] == ["Conv"]  # BatchNormalization folded
    # ONNX Runtime's optimizer declares every domain it knows (ai.onnx.ml,
    # com.microsoft.nchwc, ...); the model keeps only what it uses or declared.
    assert [entry.domain for entry in model.opset_import] == [""]
    kept = preprocess_model(source, tmp_path / "pre2.onnx", optimization=False)
    model = onnx.load(str(kept))
    assert "BatchNormalization" in [n.op_type for n in model.graph.node]
    assert any(v.name == "c" for v in model.graph.value_info)  # shapes inferred
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "pre.onnx", "pre2.onnx"]


def test_symbolic_failure_falls_back_with_a_warning(tmp_path, drpaiq_log, monkeypatch):
    monkeypatch.chdir(tmp_path)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("Mystery", ["r"], ["y"], domain="com.example")],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)]
    )
    onnx.save(model, str(tmp_path / "custom.onnx"))
    out = preprocess_model(tmp_path / "custom.onnx", tmp_path / "pre.onnx")
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["Relu", "Mystery"]
    domains = {entry.domain for entry in onnx.load(str(out)).opset_import}
    assert domains == {"", "com.example"}
    assert any("symbolic shape inference failed" in line for line in drpaiq_log)
    # ONNX Runtime's leftover "sym_shape_infer_temp.onnx" did not land in the cwd.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["custom.onnx", "pre.onnx"]


def test_preprocess_does_not_import_pytorch(tmp_path):
    """ONNX Runtime's tools package imports torch whenever it is installed (1.2 s and
    300 MB per run for users who export from PyTorch); pre-processing must not. A
    stand-in torch package on the path records being imported."""
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    marker = tmp_path / "torch_was_imported"
    (fake / "__init__.py").write_text(
        f"open({str(marker)!r}, 'a').close()\n"
        "def __getattr__(name):\n    raise AttributeError(name)\n"
    )
    source = conv_bn_model(tmp_path / "m.onnx")
    script = (
        "import sys\n"
        "from drpaiq_core.preprocess import preprocess_model\n"
        f"preprocess_model({str(source)!r}, {str(tmp_path / 'pre.onnx')!r})\n"
        "assert 'torch' not in sys.modules, 'pre-processing imported torch'\n"
        "assert not [n for n in sys.modules if n.startswith('onnxruntime.tools')]\n"
        "import onnxruntime.tools\n"  # the user's own import still runs the package
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), *sys.path]))
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "pre.onnx").is_file()
    # The stand-in was visible: ONNX Runtime's own package import did load it, after.
    assert marker.exists()


def test_failure_gives_the_reference_message(tmp_path):
    # The step itself (the pipeline loads and checks the model before it).
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf model")
    with pytest.raises(UserError) as err:
        preprocess_model(tmp_path / "broken.onnx", tmp_path / "pre.onnx")
    message = str(err.value)
    assert message.startswith(REFERENCE_FAILURE)
    assert "--skip_preprocess" in message and "skip_preprocess=True" in message
    assert "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx"]  # no leftovers


def test_do_preprocess_on_a_file_that_is_no_model_says_so(tmp_path):
    # Skipping pre-processing would not help: the file is no model. do_preprocess loads
    # the model first, as a quantize run does, and says that.
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf model")
    for skip in (False, True):
        with pytest.raises(UserError) as err:
            do_preprocess(tmp_path / "broken.onnx", tmp_path / "pre.onnx", skip_preprocess=skip)
        message = str(err.value)
        assert "is not a readable ONNX file" in message and "\n" not in message
        assert REFERENCE_FAILURE not in message and "skip_preprocess" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx"]


def test_preprocess_refuses_to_overwrite_its_input(tmp_path):
    source = classifier(tmp_path / "m.onnx")
    with pytest.raises(UserError, match="is the input model"):
        preprocess_model(source, source)


def test_settings_from_a_run_config():
    config = QuantizeConfig(Path("m.onnx"), Path("q.onnx"))
    assert preprocess_settings(config) == {"mode": "default", "optimization": True}
    config.options["optimize_model"] = "False"
    assert preprocess_settings(config)["optimization"] is False
    config.skip_preprocess = True
    assert preprocess_settings(config) is None
