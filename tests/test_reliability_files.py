"""Files drpaiq reads and writes (issue 7, points 2 to 6, in-process parts).

- Non-finite activations are left out of the statistics with one warning per tensor,
  and no written scale is NaN, Inf or zero (point 3).
- External data is read only from inside the model's folder, and the output's goes
  next to the output (point 4).
- Writes are atomic and give ordinary file modes; an unwritable destination fails
  before any work (point 2).
- The same inputs give the same bytes (point 5; the cross-process check is in
  test_reliability_signals.py).
- A ``--datareader_path`` file is imported only when the flag is given (point 6).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from drpaiq_core.config import QuantizeConfig
from drpaiq_core.errors import UserError
from drpaiq_core.load import load_model
from drpaiq_core.pipeline import quantize
from drpaiq_core.plugin_api import Calibrator, TensorRange
from drpaiq_core.plugins import get_plugin_host
from drpaiq_core.verify import check_parameters
from onnx import TensorProto, helper, numpy_helper

from drpaiq_core import write as write_module
from tests._models import classifier
from tests._plugin_helpers import plugin
from tests.test_reliability_corpus import (
    NORM,
    PREVIOUS,
    make_work,
    one_error_line,
    q,
    run_inprocess,
    snapshot,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """The corpus's working folder (see ``make_work``)."""
    return make_work(tmp_path, monkeypatch)


def qdq_scales(path: Path) -> dict[str, np.ndarray]:
    """Scale of every QuantizeLinear/DequantizeLinear of a written model, by node."""
    model = onnx.load(str(path))
    inits = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return {
        node.name or node.output[0]: inits[node.input[1]]
        for node in model.graph.node
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[1] in inits
    }


def run_model(path: Path, feed: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: feed})


# -- point 3: non-finite activations ----------------------------------------------------


def nonfinite_model(path: Path) -> Path:
    """Three branches off the input, each into a Conv (so their tensors are calibrated):
    ``inv = 1 / Relu(x)`` is +Inf wherever x <= 0; ``log = Log(x)`` is NaN wherever
    x < 0; ``allnan = Sqrt(-1 - x*x)`` is NaN everywhere."""
    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(-1.0, np.float32), "minus_one"),
    ]
    nodes = [
        helper.make_node("Relu", ["input"], ["relu"], name="relu"),
        helper.make_node("Div", ["one", "relu"], ["inv"], name="div"),
        helper.make_node("Log", ["input"], ["log"], name="log"),
        helper.make_node("Mul", ["input", "input"], ["square"], name="square"),
        helper.make_node("Sub", ["minus_one", "square"], ["negative"], name="sub"),
        helper.make_node("Sqrt", ["negative"], ["allnan"], name="sqrt"),
    ]
    outputs = []
    for branch in ("inv", "log", "allnan"):
        weight = rng.normal(0, 0.5, (2, 3, 1, 1)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w_{branch}"))
        nodes.append(
            helper.make_node(
                "Conv", [branch, f"w_{branch}"], [f"conv_{branch}"], name=f"conv_{branch}"
            )
        )
        outputs.append(
            helper.make_tensor_value_info(f"conv_{branch}", TensorProto.FLOAT, ["N", 2, 8, 8])
        )
    graph = helper.make_graph(
        nodes,
        "nonfinite",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile", "mse"])
def test_nonfinite_activations_are_left_out_with_one_warning_per_tensor(work, method):
    nonfinite_model(work / "nf.onnx")
    # mean 0.5: about half of the pixels become negative (Log: NaN) or <= 0 (1/x: Inf).
    argv = [*q(model="nf.onnx")[:4], "q.onnx", *q()[5:], "-cm", method, "--summary-json", "s.json"]
    outcome = run_inprocess(argv)
    assert outcome.code == 0, outcome.stderr
    warned = [line for line in outcome.stderr.splitlines() if "were NaN or Inf" in line]
    tensors = [line.split("'")[1] for line in warned]
    assert len(tensors) == len(set(tensors)), "a tensor was warned about twice"
    assert {"inv", "log", "allnan"} <= set(tensors), outcome.stderr
    assert all(line.startswith("drpaiq: warning: tensor ") for line in warned)
    placeholder = [line for line in warned if "placeholder range [0, 0]" in line]
    assert {line.split("'")[1] for line in placeholder} == {"allnan", "conv_allnan"}
    scales = qdq_scales(work / "q.onnx")
    assert scales, "nothing was quantized"
    for name, scale in scales.items():
        assert np.all(np.isfinite(scale)) and np.all(scale > 0), (name, scale)
    # The written model runs, also on the input that makes the activations non-finite.
    feed = np.linspace(-2, 2, 3 * 8 * 8, dtype=np.float32).reshape(1, 3, 8, 8)
    run_model(work / "q.onnx", feed)


class _FixedRangeCalibrator(Calibrator):
    """Gives every tensor the same range, whatever the data: a broken third-party
    calibrator, to show that the check before writing catches what it returns."""

    PLUGIN_NAME = "fixed_range_test"
    RANGE = (0.0, 0.0)

    def new_state(self) -> None:
        return None

    def collect(self, state: None, values: np.ndarray, pass_index: int) -> None:
        return None

    def merge(self, a: None, b: None) -> None:
        return None

    def compute(self, state: None) -> TensorRange:
        return TensorRange(*self.RANGE)


def _fixed_range_run(work: Path, bad_range: tuple[float, float], model: str) -> None:
    """Quantize ``model`` with a calibrator that answers ``bad_range`` for every tensor;
    it must fail with a UserError and leave the folder as it was."""
    calibrator = type("BadRange", (_FixedRangeCalibrator,), {"RANGE": bad_range})
    host = get_plugin_host()
    host.register(plugin(calibrators=[calibrator]), "bad-range-test")
    config = QuantizeConfig(
        input_model=Path(model),
        output_model=Path("out.onnx"),
        calibrate_dataset=Path("cal"),
        calibrate_method="fixed_range_test",
        norm_mean=(0.5, 0.5, 0.5),
        norm_std=(0.25, 0.25, 0.25),
        summary_json=Path("s.json"),
        quiet=True,
    )
    quantize(config, host=host)


@pytest.mark.parametrize(
    "bad_range",
    [(float("nan"), float("nan")), (0.0, float("inf")), (float("-inf"), 1.0), (0.0, 1e300)],
    ids=["nan", "inf", "minus-inf", "beyond-float32"],
)
def test_a_calibrator_range_without_a_finite_scale_is_refused(work, bad_range):
    before = snapshot(work)
    with pytest.raises(UserError, match="no finite float32 scale can represent; nothing was"):
        _fixed_range_run(work, bad_range, "m.onnx")
    assert snapshot(work) == before


# qparams computes the product in float64 and casts it to float32, which overflows
# with a RuntimeWarning before the check refuses the model.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_a_scale_that_overflows_is_refused_before_writing(work):
    # Each range and weight has a finite scale, but the Gemm bias's scale, their
    # product, overflows float32: the check of the finished model refuses it.
    classifier(work / "huge.onnx", weights=np.full((4, 4), 1e37, np.float32))
    before = snapshot(work)
    with pytest.raises(UserError, match="NaN, Inf or zero scale; nothing was written"):
        _fixed_range_run(work, (0.0, 3e38), "huge.onnx")
    assert snapshot(work) == before


def test_a_calibrator_range_of_zero_width_gets_a_finite_scale(work):
    host = get_plugin_host()
    host.register(plugin(calibrators=[_FixedRangeCalibrator]), "zero-range-test")
    config = QuantizeConfig(
        input_model=Path("m.onnx"),
        output_model=Path("q.onnx"),
        calibrate_dataset=Path("cal"),
        calibrate_method="fixed_range_test",
        norm_mean=(0.5, 0.5, 0.5),
        norm_std=(0.25, 0.25, 0.25),
        quiet=True,
    )
    quantize(config, host=host)
    for name, scale in qdq_scales(work / "q.onnx").items():
        assert np.all(np.isfinite(scale)) and np.all(scale > 0), (name, scale)


def _qdq_model(scale: float) -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant"),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dequant"),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[
            numpy_helper.from_array(np.array(scale, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), float("-inf"), 0.0])
def test_check_parameters_refuses_a_bad_scale(scale):
    with pytest.raises(UserError, match="NaN, Inf or zero scale"):
        check_parameters(_qdq_model(scale))


def test_check_parameters_accepts_a_good_scale():
    check_parameters(_qdq_model(0.02))


# -- point 4: external data ---------------------------------------------------------------


def with_external_data(work: Path, location: str) -> Path:
    """``ext/model.onnx`` whose weights are external at ``location`` (relative to
    ``ext/``), with the data really written there (wherever that is)."""
    folder = work / "ext"
    folder.mkdir(exist_ok=True)
    model = onnx.load(str(work / "m.onnx"))
    onnx.save_model(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.data",
        size_threshold=0,
    )
    if location != "weights.data":
        target = Path(location) if os.path.isabs(location) else folder / location
        target.parent.mkdir(parents=True, exist_ok=True)
        (folder / "weights.data").replace(target)
        model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        (folder / "model.onnx").write_bytes(model.SerializeToString())
    return folder / "model.onnx"


def test_external_data_inside_the_model_folder_is_read(work):
    model = with_external_data(work, "sub/weights.data")
    assert len(load_model(model).graph.initializer) == 4
    outcome = run_inprocess([*q(model=str(model))[:4], "q.onnx", *q()[5:]])
    assert outcome.code == 0, outcome.stderr


@pytest.mark.parametrize("kind", ["absolute", "dot-dot", "symlink"])
def test_external_data_outside_the_model_folder_is_refused(work, kind):
    if kind == "absolute":
        model = with_external_data(work, str(work / "elsewhere" / "weights.data"))
    elif kind == "dot-dot":
        model = with_external_data(work, "../elsewhere/weights.data")
    else:
        model = with_external_data(work, "weights.data")
        outside = work / "elsewhere" / "weights.data"
        outside.parent.mkdir()
        (model.parent / "weights.data").replace(outside)
        (model.parent / "weights.data").symlink_to(outside)
    with pytest.raises(UserError, match=r"weights\.data") as info:
        load_model(model)
    assert "absolute" in str(info.value) or "outside the model's folder" in str(info.value)
    before = snapshot(work)
    line = one_error_line(run_inprocess(q(model=str(model))))
    assert "refusing" in line or "absolute" in line, line
    assert snapshot(work) == before


def test_output_external_data_goes_next_to_the_output(work, monkeypatch):
    # 300 classes: the int8 Gemm weight and int32 bias (1200 bytes each) are over
    # onnx's 1 KiB limit for moving a tensor out of the model file.
    classifier(work / "wide.onnx", classes=300)
    outcome = run_inprocess([*q(model="wide.onnx")[:4], "inline.onnx", *q()[5:]])
    assert outcome.code == 0, outcome.stderr
    monkeypatch.setattr(write_module, "EXTERNAL_DATA_THRESHOLD", 1000)
    (work / "result").mkdir()
    outcome = run_inprocess([*q(model="wide.onnx")[:4], "result/q.onnx", *q()[5:]])
    assert outcome.code == 0, outcome.stderr
    assert sorted(p.name for p in (work / "result").iterdir()) == ["q.onnx", "q.onnx.data"]
    shell = onnx.load(str(work / "result" / "q.onnx"), load_external_data=False)
    locations = {
        entry.value
        for tensor in shell.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    assert locations == {"q.onnx.data"}
    assert (work / "result" / "q.onnx").stat().st_size < (work / "inline.onnx").stat().st_size
    feed = np.random.default_rng(0).normal(0, 1, (2, 3, 8, 8)).astype(np.float32)
    external = run_model(work / "result" / "q.onnx", feed)
    inline = run_model(work / "inline.onnx", feed)
    np.testing.assert_array_equal(external[0], inline[0])
    # The model with its data loads from anywhere: the location is relative to it.
    onnx.checker.check_model(onnx.load(str(work / "result" / "q.onnx")))
    # Into the current folder too (onnx checks its location relative to that folder,
    # where the reserved temporary data file once made it refuse to write).
    args = [*q(model="wide.onnx")[:4], "here.onnx", *q()[5:], "--summary-json", "s.json"]
    outcome = run_inprocess(args)
    assert outcome.code == 0, outcome.stderr
    assert (work / "here.onnx.data").is_file()
    np.testing.assert_array_equal(run_model(work / "here.onnx", feed)[0], inline[0])
    # The size counts the data file too.
    sizes = json.loads((work / "s.json").read_text())
    on_disk = (work / "here.onnx").stat().st_size + (work / "here.onnx.data").stat().st_size
    assert sizes["size_after"] == on_disk


def test_write_model_leaves_the_model_as_it_was(tmp_path):
    """The weights move out one tensor at a time and come back from the written file."""
    classifier(tmp_path / "wide.onnx", classes=300)
    model = onnx.load(str(tmp_path / "wide.onnx"))
    before = model.SerializeToString(deterministic=True)
    write_module.write_model(model, tmp_path / "out.onnx", external=("w.bin", 0))
    assert model.SerializeToString(deterministic=True) == before
    written = onnx.load(str(tmp_path / "out.onnx"))
    for mine, theirs in zip(model.graph.initializer, written.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(mine), numpy_helper.to_array(theirs))


# -- point 2: atomic writes, file modes, unwritable destinations --------------------------


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_outputs_get_ordinary_file_modes(work, umask_022):
    outcome = run_inprocess([*q()[:4], "q.onnx", *q()[5:], "--summary-json", "s.json"])
    assert outcome.code == 0, outcome.stderr
    for name in ("q.onnx", "s.json"):
        assert stat.S_IMODE((work / name).stat().st_mode) == 0o644, name
    # Replacing a file keeps its mode.
    os.chmod(work / "out.onnx", 0o640)
    outcome = run_inprocess(q())
    assert outcome.code == 0, outcome.stderr
    assert stat.S_IMODE((work / "out.onnx").stat().st_mode) == 0o640


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_interrupted_write_leaves_the_previous_file_and_no_temporary(work, error):
    target = work / "out.onnx"
    with pytest.raises(error), write_module.atomic_path(target) as tmp:
        tmp.write_bytes(b"half a model")
        raise error()
    assert target.read_bytes() == PREVIOUS
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]


def test_write_model_replaces_the_previous_file(work):
    model = onnx.load(str(work / "m.onnx"))
    write_module.write_model(model, work / "out.onnx")
    assert (work / "out.onnx").read_bytes() == model.SerializeToString(deterministic=True)
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]


def _unwritable_folder() -> Path | None:
    """A folder even root cannot create files in (sysfs), if this system has one."""
    folder = Path("/sys")
    if not folder.is_dir():
        return None
    try:
        fd = os.open(folder / ".drpaiq-probe", os.O_CREAT | os.O_WRONLY, 0o600)
    except OSError:
        return folder
    os.close(fd)
    os.unlink(folder / ".drpaiq-probe")
    return None


def test_an_unwritable_output_folder_fails_before_any_work(work):
    folder = _unwritable_folder()
    if folder is None:
        pytest.skip("no folder here refuses new files")
    line = one_error_line(run_inprocess([*q()[:4], str(folder / "q.onnx"), *q()[5:]]))
    assert f"cannot write to folder {folder}" in line, line
    with pytest.raises(UserError, match=f"cannot write {folder}"):
        write_module.write_text(folder / "summary.json", "{}")


# -- point 5: the same inputs give the same bytes -----------------------------------------


def _without_paths(document: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in document.items() if k not in ("input_model", "output_model")}


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile", "mse"])
def test_two_runs_write_the_same_bytes(work, method):
    documents = []
    for run in ("a", "b"):
        argv = [*q()[:4], f"{run}.onnx", *q()[5:], "-cm", method]
        argv += ["--summary-json", f"{run}.json", "--debug-dir", f"debug_{run}"]
        argv += ["--save-ranges", f"{run}_ranges.json"]
        outcome = run_inprocess(argv)
        assert outcome.code == 0, outcome.stderr
        document = json.loads((work / f"{run}.json").read_text())
        # The notes name the ranges file, the one thing each run names differently.
        document["notes"] = [note.replace(f"{run}_ranges", "R") for note in document["notes"]]
        documents.append(document)
    assert (work / "a.onnx").read_bytes() == (work / "b.onnx").read_bytes()
    assert (work / "a_ranges.json").read_bytes() == (work / "b_ranges.json").read_bytes()
    assert _without_paths(documents[0]) == _without_paths(documents[1])
    debug_a, debug_b = snapshot(work / "debug_a"), snapshot(work / "debug_b")
    assert debug_a and debug_a == debug_b


# -- point 6: --datareader_path is imported only when given -------------------------------

MARKER_READER = """\
import pathlib

pathlib.Path(__file__).with_name("IMPORTED").write_text("the reader file was imported")


class NCHWDataReader:
    def __init__(self, folder, mean, std, model):
        import numpy as np

        self.left = [np.zeros((1, 3, 8, 8), np.float32)]

    def get_next(self):
        return {"input": self.left.pop()} if self.left else None
"""


def test_a_datareader_file_is_imported_only_with_the_flag(work):
    # The reader sits beside the model and the data, under the names the reference's
    # examples use, where an eager look-up would find it.
    for name in ("reader.py", "nchw_datareader.py"):
        (work / name).write_text(MARKER_READER)
    (work / "calibrate_images").symlink_to(work / "cal")
    runs = [
        q(),
        ["--quiet", "quantize", "m.onnx", "-o", "out.onnx", *NORM],
        ["quantize", "--help"],
        ["plugins"],
        # A run that stops at a check before calibration does not import it either.
        [*q("--datareader_path", "reader.py")[:4], "missing/q.onnx", *q()[5:]],
    ]
    for argv in runs:
        run_inprocess(argv)
        assert not (work / "IMPORTED").exists(), argv
    outcome = run_inprocess(q("--datareader_path", "reader.py"))
    assert outcome.code == 0, outcome.stderr
    assert (work / "IMPORTED").exists()


def test_the_docs_say_that_a_datareader_file_is_run():
    guide = (ROOT / "docs" / "user-guide.md").read_text(encoding="utf-8")
    sections = [part for part in guide.split("\n#") if "--datareader_path" in part]
    assert any("trust" in part and " run" in part for part in sections), (
        "docs/user-guide.md must say plainly that --datareader_path runs the file's code"
    )


# -- outputs besides the model: written only by a run that succeeds --------------------


def test_a_failed_run_leaves_the_preprocessed_model_and_debug_folder_alone(work):
    """``-pmo`` and ``--debug-dir`` are outputs too: a run that fails after
    pre-processing (here: its reader fails during calibration) must not replace the old
    pre-processed model nor leave debug files behind."""
    (work / "pre.onnx").write_bytes(PREVIOUS)
    # A reader that fails on its second sample: after pre-processing, during calibration.
    shape = [
        d.dim_value or 1 for d in onnx.load("m.onnx").graph.input[0].type.tensor_type.shape.dim
    ]
    (work / "failing.py").write_text(
        "import numpy as np\n"
        "class NCHWDataReader:\n"
        "    def __init__(self, *args):\n        self.n = 0\n"
        "    def get_next(self):\n"
        "        self.n += 1\n"
        "        if self.n == 2:\n            raise OSError('camera unplugged')\n"
        f"        return {{'input': np.ones({shape}, np.float32)}}\n"
    )
    extra = ("-ppm", "default", "-pmo", "pre.onnx", "--debug-dir", "dbg", "-cm", "Entropy")
    failed = run_inprocess(q(*extra, "--datareader_path", "failing.py"))
    one_error_line(failed, "camera unplugged")
    assert (work / "pre.onnx").read_bytes() == PREVIOUS
    assert (work / "out.onnx").read_bytes() == PREVIOUS
    assert not (work / "dbg").exists()
    # The same command on real data writes all three.
    done = run_inprocess(q(*extra))
    assert done.code == 0, done.stderr
    assert onnx.load(str(work / "pre.onnx")).graph.node
    assert (work / "dbg" / "calibration.json").is_file()
    assert not [p for p in work.iterdir() if p.name.startswith(".")], "a temp file was left"


def test_a_debug_folder_at_an_output_files_path_is_refused_before_any_work(work):
    before = snapshot(work)
    for flags in (("-o", "out.onnx"), ("--summary-json", "s.json"), ("-pmo", "p.onnx")):
        argv = q("--debug-dir", flags[1], "-cm", "Entropy")
        if flags[0] != "-o":
            argv += list(flags)
        line = one_error_line(run_inprocess(argv), f"debug folder {flags[1]} is the path of")
        assert "folder of its own" in line
        assert snapshot(work) == before


def test_an_interrupt_says_which_outputs_were_already_written(work, capsys):
    """A Ctrl-C that lands after the model was renamed into place must not claim that
    nothing was written."""
    from drpaiq_core import cli

    write_module.reset_written()
    cli._interrupted(KeyboardInterrupt())
    assert capsys.readouterr().err == "\rdrpaiq: interrupted; no output was written\n"
    write_module.write_text(work / "s.json", "{}")
    assert cli._interrupted(cli.Terminated()) == 143
    assert capsys.readouterr().err == (
        f"\rdrpaiq: terminated after writing {work / 's.json'} (complete); "
        "nothing else was written\n"
    )
    write_module.reset_written()


def test_the_preprocessed_model_never_replaces_the_input_or_another_output(work):
    """``-pmo`` is written at the end of the run: its path is checked at the start,
    through the Python API as on the command line (the API once replaced the input)."""
    from drpaiq_core.compat import quantize_interface

    before = snapshot(work)
    common = {
        "calibrate_dataset": "cal",
        "norm_mean": [0.5] * 3,
        "norm_std": [0.25] * 3,
        "skip_preprocess": False,
        "quiet": True,
    }
    with pytest.raises(UserError, match=r"m\.onnx is the input model"):
        quantize_interface("m.onnx", "q.onnx", preprocessed_model_output="m.onnx", **common)
    with pytest.raises(UserError, match=r"-pmo q\.onnx is also the output model"):
        quantize_interface("m.onnx", "q.onnx", preprocessed_model_output="q.onnx", **common)
    line = one_error_line(run_inprocess(q("--summary-json", "out.onnx")))
    assert "--summary-json out.onnx is also the output model" in line
    assert snapshot(work) == before
