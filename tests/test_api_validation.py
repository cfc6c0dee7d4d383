"""The Python API's argument checks (drpaiq_core.compat, and the advanced options of
drpaiq's own QuantizeConfig): every mistake in an argument is one UserError line naming
the argument, the value given and what is accepted;
booleans given as text mean what they say; contradicting options are refused in
either order."""

from __future__ import annotations

from typing import Any

import onnx
import pytest
from drpaiq_core.compat import build_config, do_preprocess, quantize_interface
from drpaiq_core.errors import UserError
from drpaiq_plugins_calibrators.entropy import EntropyCalibrator
from drpaiq_plugins_calibrators.percentile import PercentileCalibrator

from tests._models import (
    classifier,
    images,
    restore_drpaiq_logger,  # noqa: F401 (an autouse fixture)
)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    classifier(tmp_path / "m.onnx", size=8)
    images(tmp_path / "calibrate_images", 4, size=10)
    return tmp_path


def one_line(err: pytest.ExceptionInfo[UserError], *parts: str) -> str:
    """The error's message, after checking it is one line holding every part."""
    message = str(err.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)
    return message


# -- wrong types and values ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "parts"),
    [
        ({"size_limit": "ten"}, ("size_limit", "'ten'", "whole number", "at least 0")),
        ({"size_limit": -1}, ("size_limit", "-1", "at least 0")),
        ({"batch_size": "four"}, ("batch_size", "'four'", "whole number", "at least 1")),
        ({"batch_size": 0}, ("batch_size", "at least 1")),
        ({"batch_size": True}, ("batch_size", "True")),
        ({"operate_to_exclude": 5}, ("operate_to_exclude", "5", "list of strings")),
        ({"node_to_exclude": ["Conv_1", 2]}, ("node_to_exclude", "list of strings")),
        ({"calibrate_method": 1}, ("calibrate_method", "got 1 (int)", "Entropy")),
        ({"calibrate_method": None}, ("calibrate_method", "None", "CalibrationMethod")),
        ({"norm_mean": [0.5, 0.5]}, ("norm_mean must be 3 numbers", "got 2")),
        ({"norm_mean": [0.5, "x", 0.5]}, ("norm_mean", "'x' is not a number")),
        ({"norm_mean": [float("nan")] * 3}, ("norm_mean", "finite")),
        ({"norm_std": [1, 0, 1]}, ("norm_std must not contain 0",)),
        ({"input_shape": "1,3,x,8"}, ("input_shape", "'1,3,x,8'", "whole numbers")),
        ({"summary_json": 3}, ("summary_json must be a path", "got 3 (int)")),
        ({"debug_dir": ["d"]}, ("debug_dir must be a path", "list")),
        ({"reader": 3}, ("reader must be a reader plugin's name", "datareader=")),
        ({"quiet": "maybe"}, ("quiet must be True or False", "'maybe'")),
        ({"tvm": 2}, ("tvm must be True or False", "got 2")),
        ({"skip_preprocess": "nope"}, ("skip_preprocess must be True or False", "'nope'")),
    ],
)
def test_a_wrong_argument_is_one_clear_error(kwargs, parts):
    with pytest.raises(UserError) as err:
        build_config("m.onnx", "q.onnx", object(), **kwargs)
    one_line(err, *parts)


def test_model_paths_must_be_paths():
    with pytest.raises(UserError) as err:
        build_config(5, "q.onnx", object())
    one_line(err, "input_model_path must be a path", "got 5 (int)")
    with pytest.raises(UserError) as err:
        build_config("m.onnx", None, object())
    one_line(err, "output_model_path is empty")


def test_numbers_as_text_are_accepted():
    config = build_config("m.onnx", "q.onnx", object(), size_limit="10", batch_size=" 4 ")
    assert (config.size_limit, config.batch_size) == (10, 4)
    assert build_config("m.onnx", "q.onnx", object(), size_limit=None).size_limit == 0


def _quantize_folder(**kwargs: Any) -> None:
    """quantize_interface on the work folder's model and images, plus ``kwargs``."""
    settings: dict[str, Any] = {
        "calibrate_dataset": "calibrate_images",
        "norm_mean": [0.5] * 3,
        "norm_std": [0.25] * 3,
        "quiet": True,
        **kwargs,
    }
    quantize_interface("m.onnx", "q.onnx", **settings)


def test_wrong_types_through_quantize_interface_raise_no_traceback(workdir):
    # The sweep's reproduction: these raised ValueError/TypeError from inside a run.
    for kwargs in ({"size_limit": "ten"}, {"batch_size": "four"}, {"operate_to_exclude": 5}):
        with pytest.raises(UserError):
            _quantize_folder(**kwargs)
    assert not (workdir / "q.onnx").exists()


# -- booleans given as text ------------------------------------------------------------


@pytest.mark.parametrize("key", ["skip_preprocess", "quiet", "tvm"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [("False", False), ("false", False), ("0", False), ("True", True), ("yes", True)],
)
def test_boolean_text_means_what_it_says(key, value, expected):
    assert getattr(build_config("m.onnx", "q.onnx", object(), **{key: value}), key) is expected


def test_skip_preprocess_false_as_text_does_preprocess(workdir):
    _quantize_folder(quiet="True", skip_preprocess="False", preprocessed_model_output="pre.onnx")
    assert onnx.load(str(workdir / "pre.onnx")).graph.node  # the step ran
    assert (workdir / "q.onnx").is_file()


def test_do_preprocess_checks_its_arguments(workdir):
    with pytest.raises(UserError) as err:
        do_preprocess("m.onnx", "p.onnx", do_optimization="maybe")
    one_line(err, "do_optimization must be True or False", "'maybe'")
    with pytest.raises(UserError) as err:
        do_preprocess("m.onnx", "p.onnx", verbose="loud")
    one_line(err, "verbose must be a whole number", "'loud'")
    out = do_preprocess("m.onnx", "copy.onnx", skip_preprocess="True")
    assert onnx.load(str(out)).graph == onnx.load("m.onnx").graph


# -- contradicting options -------------------------------------------------------------


@pytest.mark.parametrize(
    "pair",
    [
        {"activation_zeropoint": True, "activation_symmetric": True},
        {"activation_symmetric": True, "activation_zeropoint": True},
        {"activation_symmetric": False, "activation_zeropoint": False},
        {"activation_zeropoint": "False", "activation_symmetric": "False"},
    ],
)
def test_contradicting_symmetry_options_in_either_order(pair):
    with pytest.raises(UserError) as err:
        build_config("m.onnx", "q.onnx", object(), **pair)
    one_line(err, "contradicts", "give only one", *pair)


@pytest.mark.parametrize(
    ("pair", "symmetric"),
    [
        ({"activation_zeropoint": False, "activation_symmetric": True}, True),
        ({"activation_symmetric": False, "activation_zeropoint": True}, False),
    ],
)
def test_consistent_symmetry_options_are_fine(pair, symmetric):
    assert build_config("m.onnx", "q.onnx", object(), **pair).activation_symmetric is symmetric


# -- ONNX Runtime's spellings ----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "spelling"),
    [
        ({"nodes_to_exclude": ["Conv_1"]}, "node_to_exclude="),
        ({"op_types_to_exclude": ["Conv"]}, "operate_to_exclude="),
        ({"extra_options": {"ActivationSymmetric": True}}, "**{'ActivationSymmetric': True}"),
        ({"calibration_data_reader": object()}, "datareader="),
    ],
)
def test_onnx_runtime_spellings_name_drpaiqs(kwargs, spelling):
    with pytest.raises(UserError) as err:
        build_config("m.onnx", "q.onnx", object(), **kwargs)
    one_line(err, "ONNX Runtime's spelling", spelling)


# -- the calibrators' histogram sizes --------------------------------------------------


def test_entropy_num_bins_says_why_and_how_to_fix():
    with pytest.raises(UserError) as err:
        EntropyCalibrator({"num_bins": "128"})
    one_line(
        err,
        "num_bins 128",
        "2 x (2 x num_quantized_bins - 1) = 510",
        "raise num_bins to 510",
        "lower num_quantized_bins to 32",
        "default is 2048",
    )
    with pytest.raises(UserError) as err:
        EntropyCalibrator({"num_bins": "512", "num_quantized_bins": "1024"})
    one_line(err, "num_quantized_bins - 1) = 4094", "num_quantized_bins is 1024", "to 128")
    assert EntropyCalibrator({"num_bins": "510"}).num_bins == 510


def test_num_bins_below_the_core_minimum_says_why():
    with pytest.raises(UserError) as err:
        build_config("m.onnx", "q.onnx", object(), calibrate_method="Entropy", num_bins=0)
    one_line(err, "num_bins must be at least 16", "2 x num_quantized_bins", "2048")


def test_percentile_num_bins_says_why():
    with pytest.raises(UserError) as err:
        PercentileCalibrator({"num_bins": "100000"})
    one_line(err, "between 16 and 65536", "Percentile", "default is 2048")


# -- advanced options given to QuantizeConfig directly -----------------------------------


def _native(workdir, **fields: Any):
    """Quantize m.onnx with drpaiq's own API (QuantizeConfig + pipeline.quantize)."""
    from pathlib import Path

    from drpaiq_core.config import QuantizeConfig
    from drpaiq_core.pipeline import quantize

    config = QuantizeConfig(
        input_model=Path("m.onnx"),
        output_model=Path("q.onnx"),
        reader="nchw_image",
        calibrate_dataset=Path("calibrate_images"),
        norm_mean=(0.5, 0.5, 0.5),
        norm_std=(0.25, 0.25, 0.25),
        quiet=True,
        **fields,
    )
    return config, quantize(config)


def _activation_zero_points(path) -> set[tuple[int, int]]:
    """(dtype, zero point) of every activation QuantizeLinear in the written model."""
    model = onnx.load(str(path))
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return {
        (int(constants[n.input[2]].dtype.num), int(constants[n.input[2]]))
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in constants
    }


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"activation_type": "QUInt8"}, "uint8"),
        ({"ActivationSymmetric": "True"}, "symmetric"),
        ({"activation_zeropoint": "False"}, "symmetric"),
    ],
)
def test_advanced_options_in_quantize_config_take_effect(workdir, options, expected):
    """Given in ``QuantizeConfig.options``, an option that stands for a field sets it, as
    on the command line; the caller's config object is left as it was."""
    import numpy as np

    config, summary = _native(workdir, options=dict(options))
    found = _activation_zero_points(workdir / "q.onnx")
    if expected == "uint8":
        assert {dtype for dtype, _ in found} == {np.dtype(np.uint8).num}
    else:
        assert {zero for _, zero in found} == {0}
        assert summary.plan.activations  # something was quantized
    assert config.options == options and config.activation_type == "int8"
    assert config.activation_symmetric is False


def test_an_unknown_option_in_quantize_config_is_one_clear_error(workdir):
    with pytest.raises(UserError) as err:
        _native(workdir, options={"activation_symetric": "True"})
    one_line(err, "activation_symetric")
    assert not (workdir / "q.onnx").exists()


def test_an_option_contradicting_a_quantize_config_field_is_an_error(workdir):
    with pytest.raises(UserError) as err:
        _native(workdir, activation_symmetric=True, options={"activation_zeropoint": "True"})
    one_line(err, "activation_zeropoint True", "contradicts")
    assert not (workdir / "q.onnx").exists()
