"""``--save-ranges`` / ``--load-ranges``: a saved calibration reproduces the run without
the data, a file's ranges are the ones written, only the tensors it lacks are
calibrated, and every mistake in a file is one line naming it."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from drpaiq_core.cli import build_cli
from drpaiq_core.config import QuantizeConfig
from drpaiq_core.errors import UserError
from drpaiq_core.pipeline import quantize
from drpaiq_core.qparams import activation_params
from onnx import numpy_helper

from tests._models import restore_drpaiq_logger  # noqa: F401 (an autouse fixture)

pytest.importorskip("drpaiq_plugins_ops.quantizers")
pytest.importorskip("drpaiq_plugins_calibrators.minmax")
pytest.importorskip("drpaiq_plugins_readers.images")

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "samples" / "modB_resnet_nhwc.onnx"
CALIBRATE = ROOT / "samples" / "data" / "calibrate"
STEM = "/stem/Clip_output_0"

pytestmark = pytest.mark.skipif(
    not MODEL.exists() or not CALIBRATE.is_dir(), reason="the modB sample is not in this checkout"
)


def _config(folder: Path, name: str, **changes: object) -> QuantizeConfig:
    config = QuantizeConfig(
        input_model=MODEL,
        output_model=folder / f"{name}.onnx",
        reader="nhwc_image",
        calibrate_dataset=CALIBRATE,
        norm_mean=(0.0, 0.0, 0.0),
        norm_std=(1.0, 1.0, 1.0),
        size_limit=24,
        quiet=True,
    )
    return dataclasses.replace(config, **changes)


def _activation_params(path: Path) -> dict[str, tuple[float, int]]:
    """Tensor -> (scale, zero point) of every activation QuantizeLinear in a file."""
    model = onnx.load(str(path))
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0].endswith("_float"):
            tensor = node.input[0].removesuffix("_float")
            found[tensor] = (float(values[node.input[1]]), int(values[node.input[2]]))
    return found


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """modB quantized once with --save-ranges: (folder, ranges file, summary dict)."""
    folder = tmp_path_factory.mktemp("ranges")
    config = _config(folder, "calibrated", save_ranges=folder / "ranges.json")
    summary = quantize(config)
    return folder, folder / "ranges.json", summary.to_dict()


def test_saved_ranges_are_the_calibrated_ones(saved: tuple[Path, Path, dict]) -> None:
    _, ranges_path, summary = saved
    document = json.loads(ranges_path.read_text())
    assert document["format"] == "drpaiq-ranges" and document["version"] == 1
    assert document["calibrate_method"] == "minmax" and document["samples"] == 24
    assert document["activation_symmetric"] is False
    planned = summary["plan"]["ranges"]
    assert document["ranges"], "no range saved"
    # Every saved range is exactly what the plan used, read back from text.
    for tensor, (lo, hi) in document["ranges"].items():
        assert planned[tensor] == [lo, hi], tensor
    assert STEM in document["ranges"]


def test_a_saved_calibration_reproduces_the_run_without_data(
    saved: tuple[Path, Path, dict], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder, ranges_path, _ = saved
    config = _config(
        tmp_path,
        "from_file",
        calibrate_dataset=tmp_path / "no such folder",
        load_ranges=ranges_path,
        save_ranges=tmp_path / "again.json",
        debug_dir=tmp_path / "debug",
    )
    with caplog.at_level(logging.WARNING, logger="drpaiq"):
        summary = quantize(config)
    assert "no calibration ran (ranges file" in caplog.text
    assert config.output_model.read_bytes() == (folder / "calibrated.onnx").read_bytes()
    assert summary.samples == 0 and summary.ranges_file == ranges_path
    assert not (tmp_path / "debug").exists()
    assert summary.to_text().startswith(f"wrote {config.output_model} (ranges from ")
    assert any(note.endswith(", 0 calibrated") for note in summary.notes)
    # Saved again from the file alone: the same bytes (method and samples carried over).
    assert (tmp_path / "again.json").read_bytes() == ranges_path.read_bytes()


def test_only_the_tensors_the_file_lacks_are_calibrated(
    saved: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    _, ranges_path, _ = saved
    # Leaving the stem's Clip in float makes its Conv's output a boundary to quantize.
    fresh = _config(tmp_path, "fresh", nodes_to_exclude=("/stem/Clip",))
    quantize(fresh)
    loaded = _config(
        tmp_path,
        "loaded",
        nodes_to_exclude=("/stem/Clip",),
        calibrate_dataset=tmp_path / "no such folder",
        load_ranges=ranges_path,
    )
    # The missing range needs the data, and says so.
    with pytest.raises(UserError, match="no such folder"):
        quantize(loaded)
    loaded = dataclasses.replace(loaded, calibrate_dataset=CALIBRATE, save_ranges=tmp_path / "r")
    summary = quantize(loaded)
    assert loaded.output_model.read_bytes() == fresh.output_model.read_bytes()
    expected = f"ranges: 17 read from {ranges_path}, 1 calibrated"
    assert expected in summary.notes
    before = json.loads(ranges_path.read_text())["ranges"]
    after = json.loads((tmp_path / "r").read_text())["ranges"]
    assert set(after) - set(before) == {"/stem/conv/Conv_output_0"}


def test_a_pinned_range_is_the_one_written(saved: tuple[Path, Path, dict], tmp_path: Path) -> None:
    folder, _, _ = saved
    pin = tmp_path / "pin.json"
    # As a Windows editor may save it: with a byte-order mark.
    pin.write_text(json.dumps({"ranges": {STEM: [0, 3]}}), encoding="utf-8-sig")
    config = _config(tmp_path, "pinned", load_ranges=pin)
    summary = quantize(config)
    written = _activation_params(config.output_model)
    expected = activation_params(0.0, 3.0, "int8", False)
    assert written[STEM] == (float(expected.scale), int(expected.zero_point))
    assert written[STEM][0] == pytest.approx(3.0 / 255)
    # Every other tensor is calibrated as without the file.
    calibrated = _activation_params(folder / "calibrated.onnx")
    assert calibrated[STEM][0] == pytest.approx(6.0 / 255)
    others = {t for t in calibrated if t != STEM}
    assert {t: written[t] for t in others} == {t: calibrated[t] for t in others}
    assert summary.samples == 24


def test_a_file_for_another_model_or_method_warns(
    saved: tuple[Path, Path, dict], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, ranges_path, _ = saved
    document = json.loads(ranges_path.read_text())
    document["model_sha256"] = "0" * 64
    other = tmp_path / "other.json"
    other.write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING, logger="drpaiq"):
        quantize(_config(tmp_path, "other", load_ranges=other, calibrate_method="Entropy"))
    text = caplog.text
    assert "saved for another model file" in text
    assert "holds minmax ranges; entropy measures only the tensors it lacks" in text
    assert "asymmetric activations" not in text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="drpaiq"):
        quantize(_config(tmp_path, "symmetric", load_ranges=ranges_path, activation_symmetric=True))
    assert "was calibrated for asymmetric activations" in caplog.text
    assert "another model file" not in caplog.text


def _bad(ranges: object) -> str:
    return json.dumps({"ranges": ranges})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{ranges", r"line 1: not JSON"),
        ("[]", r'has no "ranges" object'),
        (json.dumps({"format": "trt-cache", "ranges": {}}), r"of format 'trt-cache'"),
        (json.dumps({"version": 2, "ranges": {}}), r"of version 2; .*upgrade drpaiq"),
        (_bad({STEM: [3, 0]}), r"tensor '/stem/Clip_output_0' has range \[3, 0\]; min is above"),
        (_bad({STEM: [0, "6"]}), r"has range \[0, \"6\"\]; give two numbers"),
        (_bad({STEM: [0]}), r"give two numbers"),
        (_bad({STEM: [0, True]}), r"give two numbers"),
        ('{"ranges": {"/stem/Clip_output_0": [0, NaN]}}', r"give finite numbers"),
        (_bad({"/stem/Clip_output": [0, 6]}), r"'/stem/Clip_output' is not a tensor of the model"),
        (_bad({"onnx::Conv_126": [0, 6]}), r"'onnx::Conv_126' is a weight or constant"),
    ],
)
def test_a_bad_file_is_one_line_naming_it(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    output = tmp_path / "out.onnx"
    with pytest.raises(UserError, match=message) as caught:
        quantize(_config(tmp_path, "out", load_ranges=path))
    assert str(path) in str(caught.value)
    assert not output.exists()


def test_cli_flags_and_their_mistakes(saved: tuple[Path, Path, dict], tmp_path: Path) -> None:
    folder, ranges_path, _ = saved
    base = [
        "--reader",
        "nhwc_image",
        "quantize",
        str(MODEL),
        "--calibrate_dataset",
        str(CALIBRATE),
        *["--norm_mean", "0", "0", "0", "--norm_std", "1", "1", "1", "--size-limit", "24"],
    ]
    runner = CliRunner()
    out = tmp_path / "cli.onnx"
    # The file read can be the file written: it is replaced at the end.
    copy = tmp_path / "ranges.json"
    copy.write_bytes(ranges_path.read_bytes())
    result = runner.invoke(
        build_cli(), [*base, "-o", str(out), "--load-ranges", str(copy), "--save-ranges", str(copy)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == (folder / "calibrated.onnx").read_bytes()
    assert copy.read_bytes() == ranges_path.read_bytes()
    count = len(json.loads(copy.read_text())["ranges"])
    assert f"ranges of {count} tensor(s) saved to {copy}" in result.output

    # The advanced-option spelling, after all other options, is the same as the flag.
    keyed = tmp_path / "keyed.onnx"
    result = runner.invoke(build_cli(), [*base, "-o", str(keyed), "load_ranges", str(copy)])
    assert result.exit_code == 0, result.output
    assert keyed.read_bytes() == out.read_bytes()
    result = runner.invoke(
        build_cli(),
        [*base, "-o", str(keyed), "--load-ranges", str(copy), "load_ranges", str(ranges_path)],
    )
    assert result.exit_code == 2 and "contradicts --load-ranges" in result.output

    for extra, message in [
        (["--load-ranges", str(tmp_path / "none.json")], "does not exist"),
        (["--save-ranges", str(out)], "is also the output model"),
        (["--save-ranges", str(tmp_path / "no" / "r.json")], "does not exist; create it"),
    ]:
        result = runner.invoke(build_cli(), [*base, "-o", str(out), *extra])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], result.output
        assert "Traceback" not in result.output


def test_saved_floats_read_back_exactly(tmp_path: Path) -> None:
    from drpaiq_core.plugin_api import TensorRange
    from drpaiq_core.ranges_file import ranges_document, read_ranges

    rng = np.random.default_rng(0)
    values = rng.normal(0, 10, (50, 2)).astype(np.float32)
    ranges = {
        f"t{i}": TensorRange(float(min(a, b)), float(max(a, b))) for i, (a, b) in enumerate(values)
    }
    path = tmp_path / "r.json"
    path.write_text(
        ranges_document(
            ranges,
            ["t7", "t3"],
            model_path=MODEL,
            model_sha256="x",
            calibrate_method="minmax",
            activation_symmetric=False,
            samples=1,
        )
    )
    loaded = read_ranges(path)
    assert list(loaded.ranges)[:2] == ["t7", "t3"]
    assert loaded.ranges == {name: (r.rmin, r.rmax) for name, r in ranges.items()}
