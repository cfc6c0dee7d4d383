"""Bad input to ``drpaiq quantize``/``evaluate``: one clear line, exit code 2, no
traceback, nothing overwritten (issue 5, point 7)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from drpaiq_core.cli import build_cli

from tests._models import (
    classifier,
    color_classifier,
    color_dataset,
    corrupt_image,
    images,
    restore_drpaiq_logger,  # noqa: F401 (an autouse fixture)
)

PREVIOUS = b"the previous output, which must survive"

NORM = ["--norm_mean", "0.5", "0.5", "0.5", "--norm_std", "0.25", "0.25", "0.25"]


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    classifier(tmp_path / "m.onnx")
    images(tmp_path / "cal", 3)
    (tmp_path / "out.onnx").write_bytes(PREVIOUS)
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def fails(result, *expected: str) -> str:
    """The error line, after checking exit code 2, one error line, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    line = errors[0]
    assert result.stderr.rstrip().endswith(line)  # the error is the last word
    for text in expected:
        assert text in line, (text, line)
    return line


def untouched(work) -> None:
    assert (work / "out.onnx").read_bytes() == PREVIOUS
    leftovers = [p.name for p in work.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers


def quantize(*args: str, reader: str | None = None):
    group = ["--reader", reader] if reader else []
    return run(*group, "quantize", *args)


# -- the model and the output ---------------------------------------------------


def test_float16_model_is_refused(work):
    """A model exported after .half(): refused in one line instead of written with its
    float16 weights behind QuantizeLinear nodes."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load("m.onnx")
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype("float16"), init.name)
            )
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.save(model, "half.onnx")
    fails(
        quantize("half.onnx", "-o", "out.onnx", "--calibrate_dataset", "cal", *NORM),
        "half.onnx is a float16 model",
        "export the model in float32",
    )
    untouched(work)


def test_missing_model(work):
    fails(quantize("nope.onnx", "-o", "out.onnx", *NORM), "nope.onnx", "does not exist")
    untouched(work)


def test_model_that_is_not_onnx(work):
    (work / "text.onnx").write_text("hello, I am not a model")
    fails(
        quantize("--input_model_path", "text.onnx", "--output_model_path", "out.onnx", *NORM),
        "text.onnx",
    )
    untouched(work)


def test_output_equal_to_input(work):
    before = (work / "m.onnx").read_bytes()
    fails(quantize("m.onnx", "-o", "./m.onnx", *NORM), "is the input model")
    assert (work / "m.onnx").read_bytes() == before


def test_side_outputs_must_not_overwrite_the_output(work):
    fails(quantize("m.onnx", "-o", "out.onnx", "-pmo", "out.onnx", *NORM), "also the output model")
    fails(quantize("m.onnx", "-o", "out.onnx", "--summary-json", "m.onnx", *NORM), "input model")
    untouched(work)


def test_output_in_a_missing_folder(work):
    fails(quantize("m.onnx", "-o", "missing/q.onnx", *NORM), "missing", "does not exist")


# -- the data folder -------------------------------------------------------------


def test_missing_dataset_folder(work):
    fails(
        quantize("m.onnx", "-o", "out.onnx", "--calibrate_dataset", "nowhere", *NORM),
        "nowhere",
        "--calibrate_dataset",
    )
    untouched(work)


def test_missing_default_dataset_folder(work):
    fails(quantize("m.onnx", "-o", "out.onnx", *NORM), "calibrate_images", "does not exist")
    untouched(work)


def test_empty_dataset_folder(work):
    (work / "empty").mkdir()
    fails(
        quantize("m.onnx", "-o", "out.onnx", "--calibrate_dataset", "empty", *NORM),
        "empty",
        "is empty",
    )
    untouched(work)


def test_folder_with_no_readable_image(work):
    (work / "bad").mkdir()
    corrupt_image(work / "bad" / "one.png")
    corrupt_image(work / "bad" / "two.jpg")
    result = quantize("m.onnx", "-o", "out.onnx", "--calibrate_dataset", "bad", *NORM)
    fails(result, "no readable image", "bad")
    assert "one.png" in result.stderr and "two.jpg" in result.stderr  # each one warned
    untouched(work)


def test_folder_without_images(work):
    (work / "docs").mkdir()
    (work / "docs" / "readme.txt").write_text("no images here")
    fails(
        quantize("m.onnx", "-o", "out.onnx", "--calibrate_dataset", "docs", *NORM),
        "no image files",
        "readme.txt",
    )
    untouched(work)


def test_a_corrupt_image_is_skipped_with_a_warning(work):
    corrupt_image(work / "cal" / "broken.png")
    result = quantize("m.onnx", "-o", "q.onnx", "--calibrate_dataset", "cal", *NORM)
    assert result.exit_code == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "broken.png" in line]
    assert len(warning) == 1 and "warning" in warning[0]
    assert "3 samples" in result.stdout


@pytest.mark.parametrize(
    ("flag", "values", "expected"),
    [
        ("--norm_mean", ["[0.5,", "0.5]"], "--norm_mean must be 3 numbers"),
        ("--norm_std", ["1", "1", "1", "1"], "--norm_std must be 3 numbers"),
        ("--norm_mean", ["[a,", "b,", "c]"], "is not a number"),
        ("--norm_std", ["[1,", "0,", "1]"], "must not contain 0"),
    ],
)
def test_norm_values_not_three_numbers(work, flag, values, expected):
    other = "--norm_std" if flag == "--norm_mean" else "--norm_mean"
    args = ["m.onnx", "-o", "out.onnx", "--calibrate_dataset", "cal", flag, *values, other]
    fails(quantize(*args, "1", "1", "1"), expected)
    untouched(work)


# -- plugin names -------------------------------------------------------------------


def test_unknown_reader_lists_the_installed_ones(work):
    line = fails(quantize("m.onnx", "-o", "out.onnx", *NORM, reader="nhcw_image"))
    assert "unknown reader 'nhcw_image'" in line and "nchw_image, nhwc_image" in line
    assert "did you mean" in line and "'nhwc_image'" in line
    untouched(work)


def test_unknown_calibrator_lists_the_installed_ones(work):
    line = fails(quantize("m.onnx", "-o", "out.onnx", "-cm", "KL", *NORM))
    assert "unknown calibrator 'kl'" in line and "entropy, minmax, mse, percentile" in line
    untouched(work)


def test_unknown_advanced_option(work):
    line = fails(quantize("m.onnx", "-o", "out.onnx", *NORM, "num_bin", "4096"))
    assert "unknown advanced option 'num_bin'" in line and "num_bins" in line
    untouched(work)


def test_a_second_model(work):
    line = fails(quantize("m.onnx", "other.onnx", "-o", "out.onnx", *NORM))
    assert "unexpected argument 'other.onnx'" in line and "exclude_act_func_dir" in line
    untouched(work)


def test_the_model_given_both_ways(work):
    """The same path as MODEL and --input_model_path is one model; two different paths
    are named as two models, not taken for an advanced option."""
    ok = quantize(
        "m.onnx",
        "--input_model_path",
        "m.onnx",
        "-o",
        "new.onnx",
        "--calibrate_dataset",
        "cal",
        *NORM,
    )
    assert ok.exit_code == 0, ok.stderr
    assert (work / "new.onnx").is_file()
    (work / "other.onnx").write_bytes((work / "m.onnx").read_bytes())
    line = fails(quantize("other.onnx", "--input_model_path", "m.onnx", "-o", "out.onnx", *NORM))
    assert "two models given: other.onnx and --input_model_path m.onnx" in line
    untouched(work)


def test_unexpected_word_lists_plugin_options_too(work):
    """After --input_model_path a bare word is an advanced key; the error lists the
    plugins' keys (the Entropy calibrator's entropy_max_clip) beside the core's."""
    line = fails(quantize("--input_model_path", "m.onnx", "-o", "out.onnx", *NORM, "bogus"))
    assert "unexpected argument 'bogus'" in line
    assert "num_bins" in line and "entropy_max_clip" in line
    untouched(work)


def test_advanced_option_without_value(work):
    fails(quantize("m.onnx", "-o", "out.onnx", *NORM, "num_bins"), "num_bins needs a value")
    untouched(work)


def test_dynamic_size_without_input_shape(work):
    classifier(work / "dyn.onnx", height="h", width="w")
    fails(
        quantize("dyn.onnx", "-o", "out.onnx", "--calibrate_dataset", "cal", *NORM),
        "dynamic height or width",
        "--input-shape",
    )
    untouched(work)


# -- --datareader_path ------------------------------------------------------------


def datareader(work, body: str) -> str:
    (work / "reader.py").write_text(body, encoding="utf-8")
    return "reader.py"


def with_reader(path: str):
    return quantize(
        "--input_model_path", "m.onnx", "--output_model_path", "out.onnx",
        "--calibrate_dataset", "cal", "--datareader_path", path, *NORM,
    )  # fmt: skip


def test_datareader_file_missing(work):
    fails(with_reader("missing_reader.py"), "missing_reader.py", "does not exist")
    untouched(work)


def test_datareader_with_a_syntax_error(work):
    path = datareader(work, "import numpy\n\nclass NCHWDataReader(:\n    pass\n")
    fails(with_reader(path), "reader.py:3", "SyntaxError")
    untouched(work)


def test_datareader_raising_on_import(work):
    path = datareader(work, "x = 1\nraise RuntimeError('no GPU found')\n")
    fails(with_reader(path), "reader.py:2", "RuntimeError: no GPU found")
    untouched(work)


def test_datareader_written_for_the_vendor_package(work):
    body = "from drpai_quantizer.quantization import CalibrationDataReader\n"
    line = fails(with_reader(datareader(work, body)), "reader.py:1", "ModuleNotFoundError")
    assert "onnxruntime.quantization" in line
    untouched(work)


def test_datareader_without_a_reader_class(work):
    path = datareader(work, "class Helper:\n    def read(self):\n        return None\n")
    fails(with_reader(path), "defines no reader class", "get_next")
    untouched(work)


def test_datareader_constructor_failing(work):
    body = (
        "class NCHWDataReader:\n"
        "    def __init__(self, folder, mean, std, model):\n"
        "        self.data = open('/nonexistent/labels.txt')\n"
        "    def get_next(self):\n"
        "        return None\n"
    )
    fails(with_reader(datareader(work, body)), "reader.py:3", "FileNotFoundError")
    untouched(work)


def test_datareader_get_next_failing(work):
    body = (
        "class NCHWDataReader:\n"
        "    def __init__(self, folder, mean, std, model):\n"
        "        self.count = 0\n"
        "    def get_next(self):\n"
        "        return {'input': self.count / 0}\n"
    )
    fails(with_reader(datareader(work, body)), "reader.py:5", "ZeroDivisionError")
    untouched(work)


@pytest.mark.parametrize(
    ("feed", "expected"),
    [
        ("np.zeros((1, 3, 8, 8))", ["'input'", "expected float32 [N,3,8,8]", "got float64"]),
        (
            "np.zeros((1, 8, 8, 3), np.float32)",
            ["'input'", "got float32 [1,8,8,3]", "channels-last (NHWC)"],
        ),
        ("np.zeros((3, 8, 8), np.float32)", ["'input'", "4 dimensions", "got float32 [3,8,8]"]),
    ],
)
def test_reader_yielding_the_wrong_shape_or_dtype(work, feed, expected):
    body = (
        "import numpy as np\n"
        "class NCHWDataReader:\n"
        "    def __init__(self, folder, mean, std, model):\n"
        "        self.left = 2\n"
        "    def get_next(self):\n"
        "        self.left -= 1\n"
        f"        return {{'input': {feed}}} if self.left >= 0 else None\n"
    )
    fails(with_reader(datareader(work, body)), *expected)
    untouched(work)


def test_reader_yielding_the_wrong_input_name(work):
    body = (
        "import numpy as np\n"
        "class NCHWDataReader:\n"
        "    def __init__(self, *args):\n"
        "        self.done = False\n"
        "    def get_next(self):\n"
        "        if self.done:\n"
        "            return None\n"
        "        self.done = True\n"
        "        return {'data': np.zeros((1, 3, 8, 8), np.float32)}\n"
    )
    fails(with_reader(datareader(work, body)), "'data'", "not a model input", "input")
    untouched(work)


def test_tvm_with_a_datareader(work):
    path = datareader(work, "class NCHWDataReader:\n    def get_next(self):\n        return None\n")
    result = quantize("m.onnx", "-o", "out.onnx", "--tvm", "--datareader_path", path)
    fails(result, "--tvm", "--datareader_path")
    untouched(work)


# -- evaluate ---------------------------------------------------------------------


def test_evaluate_missing_dataset(work):
    color_classifier(work / "c.onnx")
    fails(run("evaluate", "c.onnx", "--dataset", "nowhere"), "nowhere", "does not exist")


def test_evaluate_folder_without_classes(work):
    color_classifier(work / "c.onnx")
    fails(run("evaluate", "c.onnx", "--dataset", "cal"), "no class sub-folders")


def test_evaluate_model_with_too_few_classes(work):
    color_dataset(work / "ds")
    classifier(work / "two.onnx", classes=2)
    fails(run("evaluate", "two.onnx", "--dataset", "ds"), "scores 2 classes", "3 class folders")


def test_evaluate_missing_model_and_both_layouts(work):
    color_dataset(work / "ds")
    fails(run("evaluate", "nope.onnx", "--dataset", "ds"), "nope.onnx", "does not exist")
    fails(run("evaluate", "m.onnx", "--dataset", "ds", "--nchw", "--nhwc"), "not both")
