"""``drpaiq quantize``: the manual's command lines, every reference flag, the short form."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from drpaiq_core.cli import build_cli
from drpaiq_core.cli_quantize import join_list_values

from tests._models import (
    activation_model,
    classifier,
    images,
    reference_reader_file,
    restore_drpaiq_logger,  # noqa: F401 (an autouse fixture)
)
from tests._reference import REFERENCE_FLAGS

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"


def drpaiq(*args: str) -> object:
    """Run ``drpaiq ARGS`` in-process; the result has exit_code, stdout, stderr."""
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def manual(line: str) -> object:
    """Run a command line of the manual with ``python3 -m drpai_quantizer.cli_interface``
    replaced by ``drpaiq quantize`` (split as a POSIX shell splits it)."""
    return drpaiq("quantize", *shlex.split(line))


def runs(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.zeros(shape, np.float32)})[0]


def zero_point_types(path: Path) -> set[int]:
    model = onnx.load(str(path))
    zero_points = {n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    return {i.data_type for i in model.graph.initializer if i.name in zero_points}


def qdq_count(path: Path) -> int:
    return sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder laid out as in the manual: models, ./calibrate_images, reader files."""
    monkeypatch.chdir(tmp_path)
    classifier(tmp_path / "modA_resnet18.onnx", size=8)
    classifier(tmp_path / "modB_resnet18.onnx", size=8, layout="NHWC", input_name="input_1")
    images(tmp_path / "calibrate_images", 6, size=10)
    reference_reader_file(tmp_path / "nchw_datareader.py", "NCHW")
    reference_reader_file(tmp_path / "nhwc_datareader.py", "NHWC")
    return tmp_path


def test_manual_example_modA_nchw(workdir):
    result = manual(
        "--input_model_path modA_resnet18.onnx --output_model_path modA_resnet18_q.onnx "
        "--calibrate_dataset ./calibrate_images --datareader_path ./nchw_datareader.py "
        "--norm_mean [0.4914, 0.4822, 0.4465] --norm_std [0.2023, 0.1994, 0.2010]"
    )
    assert result.exit_code == 0, result.stderr
    assert "modA_resnet18_q.onnx" in result.stdout
    assert "NCHWDataReader" in result.stderr  # says which class of the file it used
    assert qdq_count(workdir / "modA_resnet18_q.onnx") > 0
    assert runs(workdir / "modA_resnet18_q.onnx", (1, 3, 8, 8)).shape == (1, 4)


def test_manual_example_modB_nhwc(workdir):
    result = manual(
        "--input_model_path modB_resnet18.onnx --output_model_path modB_resnet18_q.onnx "
        "--calibrate_dataset ./calibrate_images --datareader_path ./nhwc_datareader.py "
        "--norm_mean [0, 0, 0] --norm_std [1, 1, 1]"
    )
    assert result.exit_code == 0, result.stderr
    assert runs(workdir / "modB_resnet18_q.onnx", (1, 8, 8, 3)).shape == (1, 4)


def test_builtin_reader_gives_the_same_model_as_the_users_reader(workdir):
    """The reference reader file and drpaiq's nchw_image read the same data."""
    norm = ["--norm_mean", "[0.4914,", "0.4822,", "0.4465]", "--norm_std", "0.2", "0.2", "0.2"]
    base = ["--input_model_path", "modA_resnet18.onnx", "--calibrate_dataset", "calibrate_images"]
    first = drpaiq(
        "quantize",
        *base,
        "--output_model_path",
        "a.onnx",
        *norm,
        "--datareader_path",
        "nchw_datareader.py",
    )
    second = drpaiq(
        "--reader", "nchw_image", "quantize", *base, "--output_model_path", "b.onnx", *norm
    )
    assert first.exit_code == 0 and second.exit_code == 0, first.stderr + second.stderr
    assert (workdir / "a.onnx").read_bytes() == (workdir / "b.onnx").read_bytes()


def test_manual_example_exclude_operate_mish(workdir):
    activation_model(workdir / "yolov4.onnx", "mish")
    result = manual(
        "--input_model_path yolov4.onnx --output_model_path yolov4_q.onnx "
        "--exclude_operate exp,add,log,tanh --summary-json summary.json"
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    floats = {v["op_type"] for v in summary["float_nodes"].values()}
    assert {"Exp", "Add", "Log", "Tanh"} <= floats
    assert "Conv" in summary["quantized_by_op_type"]


def test_manual_example_exclude_operate_clip(workdir):
    activation_model(workdir / "mobilenet.onnx", "relu6")
    result = manual(
        "--input_model_path mobilenet.onnx --output_model_path m_q.onnx "
        "--exclude_operate clip --summary-json s.json"
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads((workdir / "s.json").read_text())
    assert "Clip_1" in summary["float_nodes"]


@pytest.mark.parametrize("spelling", ["-ex Clip", "--operate_to_exclude CLIP", "-ex=clip"])
def test_exclusion_spellings(workdir, spelling):
    activation_model(workdir / "m.onnx", "relu6")
    result = manual(f"m.onnx -o q.onnx {spelling} --summary-json s.json")
    assert result.exit_code == 0, result.stderr
    assert "Clip_1" in json.loads((workdir / "s.json").read_text())["float_nodes"]


def test_node_to_exclude(workdir):
    activation_model(workdir / "m.onnx", "mish")
    result = manual(
        "m.onnx -o q.onnx -exn Tanh_4,Mul_5 --node_to_exclude Log_3 --summary-json s.json"
    )
    assert result.exit_code == 0, result.stderr
    floats = json.loads((workdir / "s.json").read_text())["float_nodes"]
    assert {"Tanh_4", "Mul_5", "Log_3"} <= set(floats)


def test_short_form_with_drpaiq_options(workdir):
    result = manual(
        "modA_resnet18.onnx -o q.onnx --calibrate_dataset calibrate_images "
        "--norm_mean 0.5,0.5,0.5 --norm_std 0.25 0.25 0.25 -cm entropy --activation-type uint8 "
        "--batch-size 4 --size-limit 5 --summary-json s.json"
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads((workdir / "s.json").read_text())
    assert summary["calibrate_method"] == "entropy" and summary["samples"] == 5
    # Weights stay int8; only activations can have uint8 zero points.
    assert onnx.TensorProto.UINT8 in zero_point_types(workdir / "q.onnx")
    assert drpaiq("quantize", "modA_resnet18.onnx", "-o", "q8.onnx").exit_code == 0
    assert onnx.TensorProto.UINT8 not in zero_point_types(workdir / "q8.onnx")


@pytest.mark.parametrize("method", ["MinMax", "Entropy", "Percentile", "minmax"])
def test_calibrate_method_spellings(workdir, method):
    result = manual(f"modA_resnet18.onnx -o q.onnx -cm {method} --summary-json s.json")
    assert result.exit_code == 0, result.stderr
    assert json.loads((workdir / "s.json").read_text())["calibrate_method"] == method.lower()


def test_advanced_options_after_all_options(workdir):
    (workdir / "rules.csv").write_text("Tanh\n", encoding="utf-8")
    activation_model(workdir / "m.onnx", "mish")
    debug = workdir / "debug"
    result = manual(
        "--input_model_path m.onnx --output_model_path q.onnx --calibrate_method Entropy "
        f"--summary-json s.json exclude_act_func_dir rules.csv activation_zeropoint False "
        f"num_bins 512 num_quantized_bins 64 entropy_debug {debug} optimize_model False"
    )
    assert result.exit_code == 0, result.stderr
    floats = json.loads((workdir / "s.json").read_text())["float_nodes"]
    assert "Tanh_4" in floats
    # Symmetric activations: each side was searched with num_quantized_bins levels.
    tensors = json.loads((debug / "calibration.json").read_text())["tensors"].values()
    sides = [t[k] for t in tensors for k in ("levels_low", "levels_high") if k in t]
    assert sides and set(sides) == {64}
    model = onnx.load(str(workdir / "q.onnx"))
    # activation_zeropoint False: symmetric activations, every int8 zero point is 0.
    for init in model.graph.initializer:
        if "zero_point" in init.name and init.data_type == onnx.TensorProto.INT8:
            assert not onnx.numpy_helper.to_array(init).any(), init.name


def error_line(result) -> str:
    """The one error line of a run that failed as a user's mistake (exit code 2)."""
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("drpaiq: error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "pair",
    [
        "activation_zeropoint True activation_symmetric True",
        "activation_symmetric True activation_zeropoint True",
        "activation_symmetric False activation_zeropoint False",
        "activation_zeropoint False activation_symmetric False",
        "--activation-symmetric activation_zeropoint True",
        "--activation-type int8 activation_type QUInt8",
    ],
)
def test_contradicting_options_fail_in_either_order(workdir, pair):
    line = error_line(manual(f"modA_resnet18.onnx -o q.onnx {pair}"))
    assert "contradicts" in line and "give only one" in line
    assert not (workdir / "q.onnx").exists()


def test_consistent_symmetry_options_are_fine(workdir):
    result = manual(
        "modA_resnet18.onnx -o q.onnx activation_zeropoint False activation_symmetric True"
    )
    assert result.exit_code == 0, result.stderr
    model = onnx.load(str(workdir / "q.onnx"))
    zero_points = [i for i in model.graph.initializer if "zero_point" in i.name]
    assert zero_points and not any(onnx.numpy_helper.to_array(i).any() for i in zero_points)


@pytest.mark.parametrize(
    "paths",
    [
        "modA_resnet18.onnx -o a.onnx --output_model_path b.onnx",
        "modA_resnet18.onnx --output a.onnx -o b.onnx",
        "--input_model_path modA_resnet18.onnx --input_model_path modB_resnet18.onnx -o a.onnx",
    ],
)
def test_two_different_paths_for_one_file_are_refused(workdir, paths):
    line = error_line(manual(paths))
    first, second = (("a.onnx", "b.onnx") if "b.onnx" in paths else
                     ("modA_resnet18.onnx", "modB_resnet18.onnx"))  # fmt: skip
    assert f"{first} and {second}" in line and "give one" in line
    assert not (workdir / "a.onnx").exists()


def test_one_path_given_under_two_spellings_is_fine(workdir):
    result = manual("modA_resnet18.onnx -o q.onnx --output_model_path ./q.onnx")
    assert result.exit_code == 0, result.stderr
    assert qdq_count(workdir / "q.onnx") > 0


@pytest.mark.parametrize(
    ("options", "parts"),
    [
        (
            "-cm Entropy num_bins 128",
            ("num_quantized_bins - 1) = 510", "raise num_bins", "2048", "num_quantized_bins to"),
        ),
        (
            "-cm Entropy num_bins 512 num_quantized_bins 1024",
            ("num_quantized_bins - 1) = 4094", "lower num_quantized_bins to 128"),
        ),
        ("-cm Entropy num_bins 0", ("at least 16", "2 x num_quantized_bins", "2048")),
        ("-cm Percentile num_bins 100000", ("Percentile", "65536", "2048")),
    ],
)
def test_num_bins_errors_say_why_and_how_to_fix(workdir, options, parts):
    line = error_line(manual(f"modA_resnet18.onnx -o q.onnx {options}"))
    for part in parts:
        assert part in line, (part, line)


def test_preprocessing_flags(workdir):
    kept = workdir / "pre.onnx"
    result = manual(f"modA_resnet18.onnx -o q.onnx -ppm default -pmo {kept}")
    assert result.exit_code == 0, result.stderr
    assert onnx.load(str(kept)).graph.node
    result = manual("modA_resnet18.onnx -o q2.onnx --preprocessed_model_output")
    assert result.exit_code == 0, result.stderr
    assert (workdir / "modA_resnet18_preprocessed.onnx").is_file()
    result = manual("modA_resnet18.onnx -o q3.onnx --skip_preprocess")
    assert result.exit_code == 0, result.stderr


def test_tvm_without_recorded_data(workdir):
    result = manual(
        "--input_model_path modA_resnet18.onnx --output_model_path q.onnx "
        "--tvm --calibrate_dataset nothing_here"
    )
    assert result.exit_code == 0, result.stderr
    assert "random frames" in result.stderr and "mean nothing" in result.stderr
    assert qdq_count(workdir / "q.onnx") > 0


def test_tvm_with_recorded_tensors(workdir):
    recorded = workdir / "tvm_inputs"
    recorded.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(recorded / f"{i}.npy", rng.normal(size=(3, 8, 8)).astype(np.float32))
    result = manual(
        "modA_resnet18.onnx -o q.onnx --tvm --calibrate_dataset tvm_inputs --summary-json s.json"
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads((workdir / "s.json").read_text())["samples"] == 3


def test_quiet_prints_nothing_but_warnings(workdir):
    argv = ["-q", "quantize", "modA_resnet18.onnx", "-o", "q.onnx"]
    norm = ["--norm_mean", "0", "0", "0", "--norm_std", "1", "1", "1"]
    few = drpaiq(*argv, *norm)
    assert few.exit_code == 0, few.stderr
    # Six calibration images: the one line is the warning that they are too few.
    assert few.stdout == ""
    assert few.stderr.splitlines() == [
        "drpaiq: warning: calibrated on 6 sample(s): ranges measured on fewer than 20 rarely "
        "hold for real data; calibrate on 100 to 1000 images like those the model will see"
    ]
    images(workdir / "calibrate_images", 20, size=10)
    result = drpaiq(*argv, *norm)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""


def test_help_lists_every_reference_flag():
    text = drpaiq("quantize", "--help").stdout
    for flag in [
        *REFERENCE_FLAGS,
        "--exclude_operate",
        "--activation-type",
        "--activation-symmetric",
        "--per-tensor",
        "--batch-size",
        "--size-limit",
        "--input-shape",
        "--debug-dir",
        "--summary-json",
        "--exclude-patterns",
    ]:
        assert flag in text, flag
    assert "exclude_act_func_dir" in text  # named in the help's prose, not as a flag
    assert "num_quantized_bins" not in text


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--norm_mean", "[0.4914,", "0.4822,", "0.4465]", "-o", "x"],
            ["--norm_mean", "[0.4914, 0.4822, 0.4465]", "-o", "x"],
        ),
        (["--norm_std", "0.1", "0.2", "0.3", "m.onnx"], ["--norm_std", "0.1 0.2 0.3", "m.onnx"]),
        (["--norm_mean", "-0.5", "0", "1e-2", "--tvm"], ["--norm_mean", "-0.5 0 1e-2", "--tvm"]),
        (["--norm_mean=[1,", "2,", "3]"], ["--norm_mean", "[1, 2, 3]"]),
        (["--norm_mean", "[", "1,", "2,", "3", "]"], ["--norm_mean", "[ 1, 2, 3 ]"]),
        (
            ["--norm_mean", "0.1,0.2,0.3", "num_bins", "8"],
            ["--norm_mean", "0.1,0.2,0.3", "num_bins", "8"],
        ),
    ],
)
def test_list_values_as_several_shell_words(argv, expected):
    assert join_list_values(argv, ("--norm_mean", "--norm_std")) == expected


def test_python_dash_m_drpaiq_core(workdir):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "drpaiq_core",
            "-q",
            "quantize",
            "--input_model_path",
            "modA_resnet18.onnx",
            "--output_model_path",
            "q.onnx",
            "--norm_mean",
            "[0,",
            "0,",
            "0]",
            "--norm_std",
            "[1,",
            "1,",
            "1]",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert qdq_count(workdir / "q.onnx") > 0


@pytest.mark.skipif(
    not (SAMPLES / "modA_resnet_nchw.onnx").is_file()
    or not (SAMPLES / "data" / "calibrate").is_dir(),
    reason="the shipped samples are not built",
)
def test_samples_reference_command_lines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reference_reader_file(tmp_path / "nchw_datareader.py", "NCHW")
    reference_reader_file(tmp_path / "nhwc_datareader.py", "NHWC")
    calib = SAMPLES / "data" / "calibrate"
    result = manual(
        f"--input_model_path {SAMPLES / 'modA_resnet_nchw.onnx'} --output_model_path a_q.onnx "
        f"--calibrate_dataset {calib} --datareader_path ./nchw_datareader.py "
        "--norm_mean [0.2860, 0.2860, 0.2860] --norm_std [0.3530, 0.3530, 0.3530]"
    )
    assert result.exit_code == 0, result.stderr
    if (SAMPLES / "modB_resnet_nhwc.onnx").is_file():
        result = manual(
            f"--input_model_path {SAMPLES / 'modB_resnet_nhwc.onnx'} --output_model_path b_q.onnx "
            f"--calibrate_dataset {calib} --datareader_path ./nhwc_datareader.py "
            "--norm_mean [0, 0, 0] --norm_std [1, 1, 1]"
        )
        assert result.exit_code == 0, result.stderr


def test_negative_norm_values_as_bare_numbers(workdir):
    """A list whose first value is negative, as several words or comma-joined, is a
    value and not an option name: the same model as the bracketed form."""
    forms = {
        "words.onnx": ["-0.5", "-0.25", "-0.5"],
        "commas.onnx": ["-0.5,-0.25,-0.5"],
        "brackets.onnx": ["[-0.5, -0.25, -0.5]"],
    }
    for out, mean in forms.items():
        result = drpaiq(
            "-q",
            "quantize",
            "modA_resnet18.onnx",
            "-o",
            out,
            "--norm_mean",
            *mean,
            "--norm_std",
            "1",
            "1",
            "1",
        )
        assert result.exit_code == 0, result.stderr
    first = (workdir / "words.onnx").read_bytes()
    assert all((workdir / out).read_bytes() == first for out in forms)


def test_verbose_times_each_stage_and_debug_dir_is_named(workdir):
    """-v adds one line per stage with its time; the debug folder's info line names
    the folder the user gave (not the staging folder, gone after the run)."""
    argv = ["quantize", "modA_resnet18.onnx", "-o", "q.onnx", "-cm", "entropy"]
    norm = ["--norm_mean", "0", "0", "0", "--norm_std", "1", "1", "1"]
    plain = drpaiq(*argv, *norm, "--debug-dir", "dbg")
    assert plain.exit_code == 0, plain.stderr
    assert "detail:" not in plain.stderr
    files = sum(1 for p in (workdir / "dbg").rglob("*") if p.is_file())
    assert f"calibration debug output ({files} file(s)) written to dbg" in plain.stderr
    assert "drpaiq-" not in plain.stderr  # no temporary folder named
    verbose = drpaiq("-v", *argv, *norm)
    assert verbose.exit_code == 0, verbose.stderr
    stages = [
        line.split(": ")[2]
        for line in verbose.stderr.splitlines()
        if line.startswith("drpaiq: detail: ")
    ]
    expected = ["load", "pre-process", "select", "calibrate", "plan", "emit and verify", "write"]
    assert stages == expected, verbose.stderr


def test_initializers_listed_as_inputs_are_not_fed(workdir):
    """An export with keep_initializers_as_inputs=True lists every weight as a graph
    input too; the reader feeds only the real input, as for the same model without."""
    model = onnx.load("modA_resnet18.onnx")
    listed = {value.name for value in model.graph.input}
    for init in model.graph.initializer:
        if init.name not in listed:
            model.graph.input.append(
                onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
    onnx.save(model, "kiai.onnx")
    norm = ["--norm_mean", "0", "0", "0", "--norm_std", "1", "1", "1"]
    result = drpaiq("-q", "quantize", "kiai.onnx", "-o", "q.onnx", *norm)
    assert result.exit_code == 0, result.stderr
    plain = drpaiq("-q", "quantize", "modA_resnet18.onnx", "-o", "plain.onnx", *norm)
    assert plain.exit_code == 0, plain.stderr
    feed = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)

    def run(path: str) -> np.ndarray:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(None, {"input": feed})[0]

    np.testing.assert_array_equal(run("q.onnx"), run("plain.onnx"))


@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_opset10_resize_keeps_its_coordinates(workdir, mode):
    """Raising an opset-10 model to 13 must not move its Resize by half a pixel (the
    version converter and ONNX Runtime's pre-processing leave opset 11's half_pixel
    default in place): the pre-processed model and the per-tensor prepared one compute
    what the original computes."""
    from drpaiq_core.prepare import upgrade_opset
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Resize", ["c", "scales"], ["y"], mode=mode, name="resize"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 12, 12])],
        [
            numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([1, 1, 1.5, 1.5], np.float32), "scales"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    onnx.save(model, "r10.onnx")
    feed = rng.random((2, 3, 8, 8)).astype(np.float32)

    def run(source) -> np.ndarray:
        data = source if isinstance(source, bytes) else str(source)
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return session.run(None, {"input": feed})[0]

    reference = run(workdir / "r10.onnx")
    norm = ["--norm_mean", "0", "0", "0", "--norm_std", "1", "1", "1"]
    result = drpaiq("-q", "quantize", "r10.onnx", "-o", "q.onnx", "-pmo", "pre.onnx", *norm)
    assert result.exit_code == 0, result.stderr
    np.testing.assert_allclose(run(workdir / "pre.onnx"), reference, atol=1e-5)
    raised = upgrade_opset(onnx.load("r10.onnx"), 13)
    np.testing.assert_allclose(run(raised.SerializeToString()), reference, atol=1e-5)


def test_a_training_mode_export_gets_a_warning(workdir):
    """BatchNormalization with its running statistics as outputs (an export in training
    mode) normalizes with batch statistics: the run says to re-export after eval()."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    channels = 4
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (channels, 3, 3, 3)).astype(np.float32), "w"),
        *(
            numpy_helper.from_array(value.astype(np.float32), name)
            for name, value in [
                ("gamma", np.ones(channels)),
                ("beta", np.zeros(channels)),
                ("mean", np.zeros(channels)),
                ("var", np.ones(channels)),
            ]
        ),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node(
            "BatchNormalization",
            ["c", "gamma", "beta", "mean", "var"],
            ["y", "running_mean", "running_var"],
            name="bn",
            training_mode=1,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, 8, 8])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), "bn.onnx")
    norm = ["--norm_mean", "0", "0", "0", "--norm_std", "1", "1", "1"]
    result = drpaiq("quantize", "bn.onnx", "-o", "q.onnx", "--skip_preprocess", *norm)
    assert result.exit_code == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "training mode" in line]
    assert len(warned) == 1, result.stderr
    assert "'bn'" in warned[0] and "model.eval()" in warned[0]
