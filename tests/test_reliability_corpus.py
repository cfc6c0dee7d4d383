"""A corpus of bad inputs to ``drpaiq quantize`` (issue 7, point 1).

Every case must end in exactly one ``drpaiq: error: ...`` line on stderr (warnings
apart), exit code 2, no traceback, and leave the working folder exactly as it was: no
new file, no changed file (a previous ``out.onnx`` keeps its bytes), no temporary file
left behind, here or in the temp folder.

Cases already covered by ``tests/test_bad_input_readers.py`` (missing model, a text
file as model, output == input, side outputs over the output, a missing output folder,
missing/empty/unreadable/imageless data folders, norm values that are not three
numbers, unknown reader/calibrator/advanced option, a second positional model, an
advanced option without value, dynamic H/W without --input-shape, broken
``--datareader_path`` files, readers yielding the wrong feeds, --tvm with a datareader)
are not repeated here.

Most cases run in-process through :func:`drpaiq_core.cli.main` (the console script's
own entry point, with its ``SystemExit``); a representative subset also runs as a real
``python -m drpaiq_core`` process. The seeded fuzz loop over mutated ONNX files runs in
a child process with a time bound per case, so that a hang or a crash of native code
is reported as such instead of taking pytest down.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from drpaiq_core import cli
from tests._models import classifier, decompression_bomb, images

ROOT = Path(__file__).resolve().parents[1]

#: The bytes of an earlier output, which a failed run must leave as they are.
PREVIOUS = b"the previous output, which must survive a failed run"

NORM = ["--norm_mean", "0.5", "0.5", "0.5", "--norm_std", "0.25", "0.25", "0.25"]


# -- running the command -----------------------------------------------------------------


@dataclass
class Outcome:
    """How one ``drpaiq`` command ended."""

    code: int
    stdout: str
    stderr: str


def run_inprocess(argv: list[str]) -> Outcome:
    """``drpaiq ARGV`` through the console script's entry point, in this process."""
    out, err = io.StringIO(), io.StringIO()
    code: object = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(list(argv), prog_name="drpaiq")
        except SystemExit as exc:
            code = exc.code
    return Outcome(code if isinstance(code, int) else 1, out.getvalue(), err.getvalue())


def child_env(tmpdir: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a ``python -m drpaiq_core`` child: this checkout first on the
    path, its own temp folder (to check that nothing is left there)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return env


def start_subprocess(argv: list[str], cwd: Path, tmpdir: Path) -> subprocess.Popen[str]:
    """Start ``python -m drpaiq_core ARGV`` (several may run side by side)."""
    return subprocess.Popen(
        [sys.executable, "-m", "drpaiq_core", *argv],
        cwd=cwd,
        env=child_env(tmpdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_subprocess(process: subprocess.Popen[str], timeout: float = 120) -> Outcome:
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"drpaiq did not finish within {timeout} s") from None
    return Outcome(process.returncode, stdout, stderr)


def leftovers(tmpdir: Path) -> list[str]:
    """What a child process left in its temp folder. ``.ses`` is ONNX Runtime's own: its
    import writes (and later imports reuse) a session-id file in the temp folder."""
    return sorted(p.name for p in tmpdir.iterdir() if p.name != ".ses")


def one_error_line(outcome: Outcome, *expected: str) -> str:
    """The error line, after checking: exit code 2, no traceback, exactly one
    non-empty stderr line besides ``drpaiq: warning:`` lines, and it is the error."""
    text = outcome.stdout + outcome.stderr
    assert outcome.code == 2, (outcome.code, outcome.stdout, outcome.stderr)
    assert "Traceback" not in text, text
    lines = [
        line
        for line in outcome.stderr.splitlines()
        if line.strip() and not line.startswith("drpaiq: warning: ")
    ]
    assert len(lines) == 1, outcome.stderr
    line = lines[0]
    assert line.startswith("drpaiq: error: "), line
    for part in expected:
        assert part in line, (part, line)
    return line


# -- the working folder ------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too): relative path -> content hash
    (files), link target (symlinks) or ``dir``."""
    state: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            key = path.relative_to(folder).as_posix()
            if path.is_symlink():
                state[key] = "link:" + os.readlink(path)
            elif path.is_dir():
                state[key] = "dir"
            else:
                state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


@pytest.fixture
def work(tmp_path, monkeypatch):
    """See :func:`make_work`."""
    return make_work(tmp_path, monkeypatch)


def make_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with a small model ``m.onnx``, three images in ``cal/`` and an
    earlier output ``out.onnx``, made the current directory; Python's temp folder
    becomes a private one (``tempfile.gettempdir()``), to check for leftovers."""
    folder = tmp_path / "work"
    folder.mkdir()
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    monkeypatch.chdir(folder)
    classifier(folder / "m.onnx")
    images(folder / "cal", 3)
    (folder / "out.onnx").write_bytes(PREVIOUS)
    return folder


def quantize_args(*, model: str = "m.onnx", data: str = "cal") -> list[str]:
    """``--quiet quantize MODEL -o out.onnx --calibrate_dataset DATA`` (no norm values)."""
    return ["--quiet", "quantize", model, "-o", "out.onnx", "--calibrate_dataset", data]


def q(*extra: str, model: str = "m.onnx", data: str = "cal") -> list[str]:
    """A complete command line: :func:`quantize_args`, the norm values, then ``extra``.
    ``q()[:4] + [OUT] + q()[5:]`` writes to ``OUT`` instead of ``out.onnx``."""
    return [*quantize_args(model=model, data=data), *NORM, *extra]


# -- models ------------------------------------------------------------------------------


def _save(model: onnx.ModelProto, path: Path, *, check: bool = True) -> str:
    model.ir_version = model.ir_version or 8
    if check:
        onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path.name


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: Sequence[onnx.TensorProto] = (),
    *,
    opset: int = 13,
    domains: tuple[tuple[str, int], ...] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in domains)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def image_input(name: str = "input") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 3, 8, 8])


def no_inputs_model(work: Path) -> str:
    value = numpy_helper.from_array(np.ones((1, 4), np.float32), "v")
    model = _model(
        [
            helper.make_node("Constant", [], ["c"], value=value),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return _save(model, work / "noinput.onnx")


def inputs_all_initializers_model(work: Path) -> str:
    # An input that an initializer feeds is a weight, not something to calibrate with.
    model = _model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.ones((1, 4), np.float32), "x")],
    )
    return _save(model, work / "initinput.onnx")


def two_image_inputs_model(work: Path) -> str:
    model = _model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [image_input("a"), image_input("b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])],
    )
    return _save(model, work / "two.onnx")


def opset_model(opset: int) -> Callable[[Path], str]:
    def build(work: Path) -> str:
        return classifier(work / f"opset{opset}.onnx", opset=opset).name

    return build


def weights_model(value: float) -> Callable[[Path], str]:
    def build(work: Path) -> str:
        weights = np.ones((4, 4), np.float32)
        weights[1, 2] = value
        return classifier(work / "badweights.onnx", weights=weights).name

    return build


def unknown_op_model(work: Path) -> str:
    model = _model(
        [helper.make_node("NoSuchOperator", ["input"], ["y"])],
        [image_input()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])],
    )
    return _save(model, work / "unknown_op.onnx", check=False)


def custom_domain_model(work: Path) -> str:
    # A custom-domain op passes onnx.checker but no ONNX Runtime kernel exists for it.
    model = _model(
        [
            helper.make_node("Relu", ["input"], ["r"]),
            helper.make_node("Frobnicate", ["r"], ["y"], domain="com.example"),
        ],
        [image_input()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])],
        domains=(("com.example", 1),),
    )
    return _save(model, work / "custom.onnx")


def runtime_failure_model(work: Path) -> str:
    # Valid for onnx.checker, but no 3x8x8 image fits the Reshape: ONNX Runtime fails
    # on the first calibration batch.
    model = _model(
        [helper.make_node("Reshape", ["input", "shape"], ["y"])],
        [image_input()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 100])],
        [numpy_helper.from_array(np.array([1, 100], np.int64), "shape")],
    )
    return _save(model, work / "reshape.onnx")


def int_input_model(work: Path) -> str:
    model = _model(
        [helper.make_node("Cast", ["input"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("Relu", ["f"], ["y"])],
        [helper.make_tensor_value_info("input", TensorProto.INT64, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])],
    )  # fmt: skip
    return _save(model, work / "int_input.onnx")


def rank2_input_model(work: Path) -> str:
    model = _model(
        [helper.make_node("Relu", ["input"], ["y"])],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
    )
    return _save(model, work / "rank2.onnx")


def missing_external_data_model(work: Path) -> str:
    model = onnx.load(str(work / "m.onnx"))
    tensor = next(t for t in model.graph.initializer if t.name == "conv_w")
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", "432")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return _save(model, work / "ext.onnx", check=False)


def ir_too_new_model(work: Path) -> str:
    model = onnx.load(str(work / "m.onnx"))
    model.ir_version = 99
    return _save(model, work / "ir99.onnx", check=False)


def unsorted_model(work: Path) -> str:
    model = onnx.load(str(work / "m.onnx"))
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    return _save(model, work / "unsorted.onnx", check=False)


def truncated_model(fraction: float) -> Callable[[Path], str]:
    def build(work: Path) -> str:
        data = (work / "m.onnx").read_bytes()
        (work / "cut.onnx").write_bytes(data[: int(len(data) * fraction)])
        return "cut.onnx"

    return build


def bytes_model(data: bytes, name: str = "bytes.onnx") -> Callable[[Path], str]:
    def build(work: Path) -> str:
        (work / name).write_bytes(data)
        return name

    return build


def png_as_model(work: Path) -> str:
    (work / "cal" / "img_000.png").replace(work / "picture.onnx")
    return "picture.onnx"


def folder_as_model(work: Path) -> str:
    (work / "folder.onnx").mkdir()
    return "folder.onnx"


# -- image folders -----------------------------------------------------------------------


def image_folder(fill: Callable[[Path], None]) -> Callable[[Path], str]:
    def build(work: Path) -> str:
        folder = work / "bad_images"
        folder.mkdir()
        fill(folder)
        return "bad_images"

    return build


def zero_byte_images(folder: Path) -> None:
    (folder / "a.png").write_bytes(b"")
    (folder / "b.jpg").write_bytes(b"")


def bomb_images(folder: Path) -> None:
    decompression_bomb(folder / "bomb.png", side=50_000)


def truncated_pngs(folder: Path) -> None:
    images(folder, 2, size=64)
    for path in folder.iterdir():
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])


def dangling_symlinks(folder: Path) -> None:
    (folder / "gone.png").symlink_to(folder / "does_not_exist.png")


def folders_named_like_images(folder: Path) -> None:
    (folder / "sub.png").mkdir()


def dataset_is_a_file(work: Path) -> str:
    (work / "list.txt").write_text("img_000.png\n")
    return "list.txt"


# -- pattern files -----------------------------------------------------------------------


def pattern_file(data: bytes | None, *, as_option: bool = False) -> Callable[[Path], list[str]]:
    """A pattern file with ``data`` (a folder when None) given with --exclude-patterns,
    or as the advanced option ``exclude_act_func_dir``."""

    def build(work: Path) -> list[str]:
        path = work / "rules.csv"
        if data is None:
            path.mkdir()
        else:
            path.write_bytes(data)
        if as_option:
            return q("exclude_act_func_dir", "rules.csv")
        return q("--exclude-patterns", "rules.csv")

    return build


# -- the corpus --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad input: ``argv`` builds the files it needs in the working folder and
    returns the command line; ``expected`` are parts of the error line."""

    id: str
    argv: Callable[[Path], list[str]]
    expected: tuple[str, ...]


def with_model(build: Callable[[Path], str]) -> Callable[[Path], list[str]]:
    return lambda work: q(model=build(work))


def with_data(build: Callable[[Path], str]) -> Callable[[Path], list[str]]:
    return lambda work: q(data=build(work))


def fixed(*argv: str) -> Callable[[Path], list[str]]:
    return lambda work: list(argv)


def linked_output(kind: str) -> Callable[[Path], list[str]]:
    def build(work: Path) -> list[str]:
        (work / "out.onnx").unlink()
        if kind == "hard":
            os.link(work / "m.onnx", work / "out.onnx")
        else:
            (work / "out.onnx").symlink_to(work / "m.onnx")
        return q()

    return build


def _garbage(seed: int, size: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


CASES = [
    # The model file.
    Case("model-zero-bytes", with_model(bytes_model(b"")), ("bytes.onnx", "no graph nodes")),
    Case("model-truncated-10pc", with_model(truncated_model(0.1)), ("cut.onnx",)),
    Case("model-truncated-50pc", with_model(truncated_model(0.5)), ("cut.onnx",)),
    Case("model-truncated-99pc", with_model(truncated_model(0.99)), ("cut.onnx",)),
    Case("model-random-bytes", with_model(bytes_model(_garbage(1, 4096))), ("bytes.onnx",)),
    Case("model-png-renamed", with_model(png_as_model), ("picture.onnx",)),
    Case("model-is-a-folder", with_model(folder_as_model), ("folder.onnx", "not a file")),
    Case("model-no-inputs", with_model(no_inputs_model), ("noinput.onnx", "no inputs")),
    Case(
        "model-inputs-are-initializers",
        with_model(inputs_all_initializers_model),
        ("initinput.onnx", "no inputs"),
    ),
    Case(
        "model-two-image-inputs",
        with_model(two_image_inputs_model),
        ("nchw_image", "2 inputs", "'a', 'b'"),
    ),
    Case("model-opset-9", with_model(opset_model(9)), ("opset 9", "opset 10 or newer")),
    Case("model-opset-7", with_model(opset_model(7)), ("opset 7", "opset 10 or newer")),
    Case("model-nan-weights", with_model(weights_model(float("nan"))), ("'gemm_w'", "NaN")),
    Case("model-inf-weights", with_model(weights_model(float("inf"))), ("'gemm_w'", "Inf")),
    Case("model-unknown-op", with_model(unknown_op_model), ("unknown_op.onnx", "NoSuchOperator")),
    Case("model-custom-op-without-kernel", with_model(custom_domain_model), ("Frobnicate",)),
    Case("model-fails-at-run-time", with_model(runtime_failure_model), ("Reshape", "input")),
    Case("model-int64-input", with_model(int_input_model), ("'input'", "int64")),
    Case("model-rank-2-input", with_model(rank2_input_model), ("'input'",)),
    Case(
        "model-external-data-missing",
        with_model(missing_external_data_model),
        ("'conv_w'", "weights.bin", "missing"),
    ),
    Case("model-ir-version-99", with_model(ir_too_new_model), ("ir99.onnx",)),
    Case("model-nodes-unsorted", with_model(unsorted_model), ("unsorted.onnx",)),
    # The calibration images.
    Case(
        "images-zero-bytes",
        with_data(image_folder(zero_byte_images)),
        ("no readable image", "bad_images"),
    ),
    Case(
        "images-decompression-bomb",
        with_data(image_folder(bomb_images)),
        ("no readable image", "bad_images"),
    ),
    Case(
        "images-truncated-png",
        with_data(image_folder(truncated_pngs)),
        ("no readable image", "bad_images"),
    ),
    Case(
        "images-dangling-symlink",
        with_data(image_folder(dangling_symlinks)),
        ("no readable image", "bad_images"),
    ),
    Case(
        "images-folders-named-png",
        with_data(image_folder(folders_named_like_images)),
        ("bad_images",),
    ),
    Case("dataset-is-a-file", with_data(dataset_is_a_file), ("list.txt", "not a folder")),
    Case("reader-numpy-on-images", fixed("--reader", "numpy", *q()[1:]), ("cal",)),
    # Pattern (CSV) files.
    Case("csv-empty", pattern_file(b""), ("rules.csv", "no pattern")),
    Case("csv-comments-only", pattern_file(b"# Mish\n\n# nothing\n"), ("rules.csv", "no pattern")),
    Case("csv-not-utf8", pattern_file("Tanh, Müll\n".encode("latin-1")), ("rules.csv:1", "UTF-8")),
    Case("csv-binary", pattern_file(_garbage(2, 300)), ("rules.csv",)),
    Case("csv-unknown-op", pattern_file(b"Softplus, Tanhh, ^Mul\n"), ("rules.csv:1", "'Tanhh'")),
    Case(
        "csv-unknown-op-advanced",
        pattern_file(b"Exp, Add, Logg\n", as_option=True),
        ("rules.csv:1", "'Logg'"),
    ),
    Case("csv-is-a-folder", pattern_file(None), ("rules.csv",)),
    Case("csv-missing", fixed(*q("--exclude-patterns", "nope.csv")), ("nope.csv",)),
    Case(
        "csv-missing-advanced",
        fixed(*q("exclude_act_func_dir", "nope.csv")),
        ("nope.csv", "does not exist"),
    ),
    # Options without their value, or with a wrong one.
    Case(
        "advanced-exclude_act_func_dir-without-value",
        fixed(*q("exclude_act_func_dir")),
        ("exclude_act_func_dir needs a value",),
    ),
    Case(
        "advanced-pair-missing-value-after-others",
        fixed(*q("num_bins", "128", "percentile_value")),
        ("percentile_value needs a value",),
    ),
    Case("advanced-num_bins-text", fixed(*q("num_bins", "many")), ("num_bins", "many")),
    Case("advanced-num_bins-negative", fixed(*q("num_bins", "-5")), ("num_bins", "-5")),
    Case("norm-mean-without-value", fixed(*quantize_args(), "--norm_mean"), ("--norm_mean",)),
    Case(
        "output-without-value", fixed("--quiet", "quantize", "m.onnx", "-o"), ("-o needs a value",)
    ),
    Case(
        "output-followed-by-an-option",
        fixed(*q()[:4], "--skip_preprocess", *q()[5:]),
        ("-o needs a value",),
    ),
    Case("calibrate-method-without-value", fixed(*q("-cm")), ("-cm needs a value",)),
    Case("no-output-given", fixed("--quiet", "quantize", "m.onnx", *NORM), ("-o OUT",)),
    Case("batch-size-zero", fixed(*q("--batch-size", "0")), ("--batch-size",)),
    Case("batch-size-text", fixed(*q("--batch-size", "four")), ("--batch-size", "four")),
    Case("size-limit-negative", fixed(*q("--size-limit", "-1")), ("--size-limit",)),
    Case("input-shape-not-numbers", fixed(*q("--input-shape", "1,3,x,8")), ("--input-shape",)),
    Case(
        "activation-type-int4",
        fixed(*q("--activation-type", "int4")),
        ("--activation-type", "int8"),
    ),
    Case("preprocess-mode-unknown", fixed(*q("-ppm", "fast")), ("fast", "default")),
    Case(
        "unknown-flag", fixed(*q("--nrom_mean", "1")), ("--nrom_mean", "did you mean --norm_mean")
    ),
    Case(
        "norm-mean-nan",
        fixed(*quantize_args(), "--norm_mean", "nan,nan,nan", "--norm_std", "1", "1", "1"),
        ("norm_mean", "finite"),
    ),
    Case(
        "norm-std-inf",
        fixed(*quantize_args(), "--norm_mean", "0", "0", "0", "--norm_std", "inf", "1", "1"),
        ("norm_std", "finite"),
    ),
    Case(
        "two-different-models",
        fixed(*q("--input_model_path", "other.onnx")),
        ("two models given", "m.onnx", "--input_model_path other.onnx"),
    ),
    # Where the output goes.
    Case("output-is-a-folder", fixed(*q()[:4], "cal", *q()[5:]), ("cal", "is a folder")),
    Case("output-hard-link-to-input", linked_output("hard"), ("is the input model",)),
    Case("output-symlink-to-input", linked_output("soft"), ("is the input model",)),
    Case("summary-json-is-a-folder", fixed(*q("--summary-json", "cal")), ("cal", "folder")),
    Case(
        "summary-json-in-missing-folder",
        fixed(*q("--summary-json", "nowhere/s.json")),
        ("nowhere", "does not exist"),
    ),
    Case(
        "debug-dir-of-a-failed-run",
        lambda work: [*q(model=truncated_model(0.5)(work)), "--debug-dir", "debug"],
        ("cut.onnx",),
    ),
    Case(
        "debug-dir-is-a-file",
        fixed(*q("--debug-dir", "cal/img_000.png")),
        ("img_000.png", "is a file"),
    ),
    Case(
        "debug-dir-is-the-model",
        fixed(*q("--debug-dir", "m.onnx")),
        ("m.onnx", "is the path of the input model"),
    ),
    Case(
        "debug-dir-parent-missing",
        fixed(*q("--debug-dir", "nowhere/debug")),
        ("nowhere", "does not exist"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, work):
    argv = case.argv(work)
    before = snapshot(work)
    outcome = run_inprocess(argv)
    one_error_line(outcome, *case.expected)
    assert snapshot(work) == before
    assert (work / "out.onnx").read_bytes() == PREVIOUS or case.id.startswith("output-")
    assert not list(Path(tempfile.gettempdir()).iterdir()), "temp files left behind"


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 30


#: Cases also run as a real process: the command line, the import of the plugins and
#: the exit code as a shell sees them.
SUBPROCESS_CASES = [
    "model-truncated-50pc",
    "model-nan-weights",
    "images-decompression-bomb",
    "csv-not-utf8",
    "norm-mean-without-value",
    # ONNX Runtime fails on it: its own log lines must not reach the terminal.
    "model-custom-op-without-kernel",
    "model-fails-at-run-time",
]


def test_bad_input_as_a_real_process(tmp_path):
    by_id = {case.id: case for case in CASES}
    started = []
    for case_id in SUBPROCESS_CASES:
        folder = tmp_path / case_id
        folder.mkdir()
        private_tmp = tmp_path / f"{case_id}.tmp"
        private_tmp.mkdir()
        classifier(folder / "m.onnx")
        images(folder / "cal", 3)
        (folder / "out.onnx").write_bytes(PREVIOUS)
        argv = by_id[case_id].argv(folder)
        before = snapshot(folder)
        started.append(
            (case_id, folder, private_tmp, before, start_subprocess(argv, folder, private_tmp))
        )
    for case_id, folder, private_tmp, before, process in started:
        outcome = finish_subprocess(process)
        one_error_line(outcome, *by_id[case_id].expected)
        assert snapshot(folder) == before, case_id
        assert not leftovers(private_tmp), case_id


# -- inputs that must work -----------------------------------------------------------------


def test_onnx_runtime_log_lines_do_not_reach_the_terminal(tmp_path):
    """A weight no node uses makes ONNX Runtime log a warning while pre-processing;
    drpaiq keeps its own output to its own lines (nothing at all with --quiet)."""
    model = onnx.load(str(classifier(tmp_path / "m.onnx")))
    model.graph.initializer.append(numpy_helper.from_array(np.ones(3, np.float32), "unused"))
    onnx.save(model, str(tmp_path / "unused.onnx"))
    images(tmp_path / "cal", 20)  # enough not to be warned of too few
    argv = [*q(model="unused.onnx")[:4], "q.onnx", *q()[5:]]
    outcome = finish_subprocess(start_subprocess(argv, tmp_path, tmp_path))
    assert outcome.code == 0, outcome.stderr
    assert outcome.stderr == "" and outcome.stdout == ""


def succeeds(outcome: Outcome) -> None:
    assert outcome.code == 0, outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert all(line.startswith("drpaiq: warning: ") for line in outcome.stderr.splitlines())


def runs_in_onnxruntime(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.zeros(shape, np.float32)})[0]


@pytest.mark.parametrize("batch", ["N", "batch_size", None, 1])
def test_a_dynamic_or_fixed_batch_works(work, batch):
    model = classifier(work / "b.onnx", batch=batch if batch is not None else "N")
    if batch is None:
        # A dimension with neither a value nor a name, as some exporters write it.
        proto = onnx.load(str(model))
        proto.graph.input[0].type.tensor_type.shape.dim[0].Clear()
        proto.graph.output[0].type.tensor_type.shape.dim[0].Clear()
        onnx.save(proto, str(model))
    outcome = run_inprocess([*q(model="b.onnx")[:4], "q.onnx", *q()[5:]])
    succeeds(outcome)
    assert (work / "out.onnx").read_bytes() == PREVIOUS
    runs_in_onnxruntime(work / "q.onnx", (1, 3, 8, 8))
    if batch != 1:
        # The batch stays dynamic in the quantized model.
        assert runs_in_onnxruntime(work / "q.onnx", (5, 3, 8, 8)).shape[0] == 5


def test_a_fixed_batch_larger_than_the_data(work):
    classifier(work / "b4.onnx", batch=4)
    outcome = run_inprocess(q(model="b4.onnx"))
    # Three images cannot fill one batch of four: a clear error, not an empty model.
    line = one_error_line(outcome)
    assert "no samples" in line or "no data" in line or "batch" in line, line
    assert (work / "out.onnx").read_bytes() == PREVIOUS


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("zero.png", lambda path: path.write_bytes(b"")),
        ("bomb.png", lambda path: decompression_bomb(path, side=50_000)),
        ("text.jpg", lambda path: path.write_text("not an image")),
    ],
)
def test_one_bad_image_among_good_ones_is_skipped_with_a_warning(work, name, make):
    make(work / "cal" / name)
    outcome = run_inprocess([*q()[:4], "q.onnx", *q()[5:], "--summary-json", "s.json"])
    succeeds(outcome)
    warnings = [line for line in outcome.stderr.splitlines() if name in line]
    assert len(warnings) == 1 and warnings[0].startswith("drpaiq: warning: "), outcome.stderr
    assert json.loads((work / "s.json").read_text())["samples"] == 3


# -- fuzzing: byte-mutated and truncated ONNX files ----------------------------------------

#: Mutations tried, their seed, the time bound of each (load + a whole CLI run; a case
#: takes about 0.03 s) and of the whole loop (a hang inside native code, which no alarm
#: interrupts, is caught by this one).
FUZZ_CASES = 300
FUZZ_SEED = 20240607
FUZZ_SECONDS_PER_CASE = 15.0
FUZZ_SECONDS_IN_ALL = 300.0


class _CaseTimeout(BaseException):
    """Raised by the per-case alarm; a BaseException so that no ``except Exception``
    in the code under test swallows it."""


def _raw_spans(data: bytes, model: onnx.ModelProto) -> list[tuple[int, int]]:
    spans = []
    for init in model.graph.initializer:
        start = data.find(init.raw_data) if init.raw_data else -1
        if start >= 0:
            spans.append((start, start + len(init.raw_data)))
    return spans


def mutate(data: bytes, rng: np.random.Generator, structure: list[int]) -> tuple[str, bytes]:
    """One seeded mutation of a serialized model: its kind and the new bytes. Half of
    the positions are drawn from ``structure`` (bytes outside the raw weights), where a
    change alters the protobuf structure rather than a weight value."""

    def position() -> int:
        if structure and rng.random() < 0.5:
            return int(structure[rng.integers(len(structure))])
        return int(rng.integers(len(data)))

    buffer = bytearray(data)
    kind = str(rng.choice(["truncate", "flip", "byte", "insert", "delete", "duplicate", "ff"]))
    if kind == "truncate":
        buffer = buffer[: position()]
    elif kind == "flip":
        for _ in range(int(rng.integers(1, 5))):
            buffer[position()] ^= 1 << int(rng.integers(8))
    elif kind == "byte":
        for _ in range(int(rng.integers(1, 4))):
            buffer[position()] = int(rng.integers(256))
    elif kind == "insert":
        at = position()
        buffer[at:at] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
    elif kind == "delete":
        at = position()
        del buffer[at : at + int(rng.integers(1, 17))]
    elif kind == "duplicate":
        at = position()
        buffer[at:at] = buffer[at : at + int(rng.integers(1, 33))]
    else:
        # 0xff runs make varints (lengths, counts, dimensions) enormous.
        at = position()
        buffer[at : at + int(rng.integers(1, 10))] = b"\xff" * int(rng.integers(1, 10))
    return kind, bytes(buffer)


#: Op types a structural mutation may give a node (a made-up one included).
_OP_TYPES = (
    "Relu", "Add", "Mul", "Conv", "Gemm", "MatMul", "Softmax", "Reshape", "Transpose",
    "Identity", "Flatten", "Sigmoid", "Concat", "MaxPool", "GlobalAveragePool", "Bogus",
)  # fmt: skip


def mutate_proto(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One or two seeded structural changes of the parsed model (an op type, an edge,
    a weight's shape or type, an attribute, an input's shape or type, the opset, a
    dropped or duplicated node): files that parse, but that the checker, the shape
    inference, the pre-processing, ONNX Runtime or the quantizer itself must cope with."""
    model = onnx.load_from_string(data)
    graph = model.graph
    kinds = []
    for _ in range(int(rng.integers(1, 3))):
        kind = str(
            rng.choice(
                ["op_type", "edge", "drop_init", "dims", "dtype", "attribute", "input_shape",
                 "input_type", "opset", "drop_node", "dup_node", "output", "empty_input",
                 "dup_output"]
            )
        )  # fmt: skip
        kinds.append(kind)
        nodes = list(graph.node)
        node = nodes[int(rng.integers(len(nodes)))] if nodes else None
        inits = list(graph.initializer)
        init = inits[int(rng.integers(len(inits)))] if inits else None
        names = [n for nd in nodes for n in [*nd.input, *nd.output]] + ["input", "nowhere"]
        if kind == "op_type" and node is not None:
            node.op_type = str(rng.choice(_OP_TYPES))
        elif kind == "edge" and node is not None and node.input:
            node.input[int(rng.integers(len(node.input)))] = str(rng.choice(names))
        elif kind == "drop_init" and init is not None:
            graph.initializer.remove(init)
        elif kind == "dims" and init is not None and init.dims:
            axis = int(rng.integers(len(init.dims)))
            init.dims[axis] = int(rng.choice([0, 1, 2, 3, 7, 1 << 20]))
        elif kind == "dtype" and init is not None:
            init.data_type = int(rng.choice([2, 3, 6, 7, 10, 11, 16]))
        elif kind == "attribute" and node is not None and node.attribute:
            attr = node.attribute[int(rng.integers(len(node.attribute)))]
            if attr.ints:
                attr.ints[int(rng.integers(len(attr.ints)))] = int(rng.choice([-3, 0, 5, 99]))
            else:
                attr.i = int(rng.choice([-1, 0, 2, 7]))
        elif kind == "input_shape":
            dims = graph.input[0].type.tensor_type.shape.dim
            dim = dims[int(rng.integers(len(dims)))]
            choice = int(rng.integers(4))
            if choice == 0:
                dim.dim_param = "free"
            else:
                dim.dim_value = (1, 0, 5)[choice - 1]
        elif kind == "input_type":
            graph.input[0].type.tensor_type.elem_type = int(rng.choice([2, 6, 7, 10, 11]))
        elif kind == "opset":
            model.opset_import[0].version = int(rng.integers(1, 26))
        elif kind == "drop_node" and node is not None:
            graph.node.remove(node)
        elif kind == "dup_node" and node is not None:
            graph.node.add().CopyFrom(node)
        elif kind == "output":
            graph.output[0].name = str(rng.choice(names))
        elif kind == "empty_input" and node is not None and node.input:
            node.input[int(rng.integers(len(node.input)))] = ""
        elif kind == "dup_output" and node is not None and node.output:
            node.output[0] = str(rng.choice(names))
    return "proto:" + "+".join(kinds), model.SerializeToString()


def _captured_cli(argv: list[str], scratch: Path) -> Outcome:
    """:func:`run_inprocess`, also catching what native code writes to the file
    descriptors 1 and 2 (ONNX Runtime logs there, past ``sys.stderr``)."""
    saved = os.dup(1), os.dup(2)
    with open(scratch / "fd_out", "w+b") as fd_out, open(scratch / "fd_err", "w+b") as fd_err:
        os.dup2(fd_out.fileno(), 1)
        os.dup2(fd_err.fileno(), 2)
        try:
            outcome = run_inprocess(argv)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        fd_out.seek(0)
        fd_err.seek(0)
        outcome.stdout += fd_out.read().decode("utf-8", "replace")
        outcome.stderr += fd_err.read().decode("utf-8", "replace")
    return outcome


def _fuzz_one(index: int, kind: str, data: bytes, work: Path) -> dict[str, object]:
    """Run one mutant through :func:`drpaiq_core.load.load_model` and the whole CLI;
    the result says what happened and, under ``problem``, what was wrong."""
    from drpaiq_core.errors import UserError
    from drpaiq_core.load import load_model

    model = work / "fuzz.onnx"
    model.write_bytes(data)
    result: dict[str, object] = {"case": index, "kind": kind, "size": len(data), "problem": None}
    try:
        load_model(model)
        result["load"] = "ok"
    except UserError as exc:
        result["load"] = "error"
        result["detail"] = str(exc)[:200]
    except Exception as exc:
        result["load"] = "crash"
        result["problem"] = f"load_model raised {type(exc).__name__}: {str(exc)[:200]}"
        return result
    before = snapshot(work)
    argv = [*q(model=str(model), data=str(work / "cal"))[:4], str(work / "out.onnx")]
    argv += [*q()[5:6], str(work / "cal"), *NORM]
    outcome = _captured_cli(argv, work.parent)
    result["cli"] = outcome.code
    if outcome.code == 2:
        try:
            one_error_line(outcome)
        except AssertionError:
            result["problem"] = f"not one clean error line: {outcome.stderr[-500:]!r}"
        if snapshot(work) != before:
            result["problem"] = "a failed run changed the working folder"
    elif outcome.code == 0:
        import onnxruntime as ort

        try:
            ort.InferenceSession(str(work / "out.onnx"), providers=["CPUExecutionProvider"])
        except Exception as exc:
            result["problem"] = f"the written model does not load: {str(exc)[:200]}"
        if "Traceback" in outcome.stderr:
            result["problem"] = "a traceback on stderr"
        (work / "out.onnx").write_bytes(PREVIOUS)
    else:
        result["problem"] = f"exit code {outcome.code}: {outcome.stderr[-500:]!r}"
    return result


def fuzz_main(folder: str, cases: int, seed: int, seconds: float) -> None:
    """The fuzz loop, run in a child process: one JSON line per case on stdout (the
    last line before a crash names the culprit), each case under a ``seconds`` alarm."""
    import signal

    root = Path(folder)
    work = root / "work"
    work.mkdir(parents=True)
    tempfile.tempdir = str(root)
    original = classifier(root / "original.onnx").read_bytes()
    images(work / "cal", 2)
    (work / "out.onnx").write_bytes(PREVIOUS)
    proto = onnx.load_from_string(original)
    raw = _raw_spans(original, proto)
    structure = [i for i in range(len(original)) if not any(a <= i < b for a, b in raw)]
    rng = np.random.default_rng(seed)

    def alarm(signum: int, frame: object) -> None:
        raise _CaseTimeout()

    signal.signal(signal.SIGALRM, alarm)
    for index in range(cases):
        if rng.random() < 0.5:
            kind, data = mutate(original, rng, structure)
        else:
            kind, data = mutate_proto(original, rng)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            result = _fuzz_one(index, kind, data, work)
        except _CaseTimeout:
            result = {"case": index, "kind": kind, "problem": f"took over {seconds} s"}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        print(json.dumps(result), flush=True)


def test_fuzzed_onnx_files_end_in_an_error_line_or_a_valid_model(tmp_path):
    """Seeded mutations of a small real model, half of them on the bytes (bit flips,
    byte changes, insertions, deletions, duplicated spans, 0xff runs, truncations), half
    on the parsed structure (:func:`mutate_proto`), each through load_model and
    the whole ``drpaiq quantize``: an error line with exit code 2 and nothing written,
    or a model that ONNX Runtime loads. Never a traceback, a crash or a hang."""
    code = (
        "import sys; from tests.test_reliability_corpus import fuzz_main; "
        "fuzz_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))"
    )
    argv = [str(tmp_path / "fuzz"), str(FUZZ_CASES), str(FUZZ_SEED), str(FUZZ_SECONDS_PER_CASE)]
    process = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        cwd=ROOT,
        env=child_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    outcome = finish_subprocess(process, timeout=FUZZ_SECONDS_IN_ALL)
    results = [json.loads(line) for line in outcome.stdout.splitlines() if line.startswith("{")]
    last = results[-1] if results else None
    assert outcome.code == 0, f"the fuzz child died ({outcome.code}) after {last}: {outcome.stderr}"
    assert len(results) == FUZZ_CASES
    problems = [r for r in results if r["problem"]]
    assert not problems, problems[:5]
    loads = {r.get("load") for r in results}
    exits = {r.get("cli") for r in results}
    # The loop is worth something only if mutants both fail and pass.
    assert {"ok", "error"} <= loads and {0, 2} <= exits, (loads, exits)
