"""Calibration debug output: the JSON, one PNG per tensor, safe names, no matplotlib."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import Calibrator, TensorRange
from drpaiq_plugins_calibrators.debug_plots import REPORT_NAME, safe_file_stem
from drpaiq_plugins_calibrators.entropy import EntropyCalibrator
from drpaiq_plugins_calibrators.minmax import MinMaxCalibrator
from drpaiq_plugins_calibrators.mse import MSECalibrator
from drpaiq_plugins_calibrators.percentile import PercentileCalibrator

NAMES = ["conv1/out:0", "../../escape", "relu", ".hidden", ""]


def ranges_for(calibrator: Calibrator) -> dict[str, TensorRange]:
    rng = np.random.default_rng(0)
    data = {
        "conv1/out:0": rng.laplace(size=20_000),
        "../../escape": rng.standard_normal(5_000) * 3,
        "relu": np.maximum(rng.standard_normal(5_000), 0),
        ".hidden": np.full(10, 0.5),
        "": np.zeros(0),
    }
    out = {}
    for name in NAMES:
        state = calibrator.collect(calibrator.new_state(), data[name].astype(np.float32), 0)
        out[name] = calibrator.compute(state)
    return out


def test_safe_file_stems() -> None:
    stems = [safe_file_stem(i, name) for i, name in enumerate(NAMES)]
    assert stems == [
        "0000_conv1_out_0",
        "0001_____escape",
        "0002_relu",
        "0003_hidden",
        "0004_tensor",
    ]
    for stem in stems:
        assert "/" not in stem and "\\" not in stem and ".." not in stem
    assert len(safe_file_stem(0, "x" * 1000)) <= 85


def test_entropy_report_writes_plots_and_json(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    calibrator = EntropyCalibrator()
    ranges = ranges_for(calibrator)
    calibrator.report(ranges, tmp_path / "debug")
    folder = tmp_path / "debug"
    document = json.loads((folder / REPORT_NAME).read_text())
    assert document["method"] == "entropy"
    assert document["settings"] == {"num_bins": 2048, "num_quantized_bins": 128}
    assert list(document["tensors"]) == NAMES
    conv = document["tensors"]["conv1/out:0"]
    assert conv["threshold_high"] == ranges["conv1/out:0"].details["threshold_high"]
    assert conv["threshold_low"] == ranges["conv1/out:0"].details["threshold_low"]
    assert conv["rmax"] == ranges["conv1/out:0"].rmax
    assert conv["histogram_bins"] > 2048 and conv["bin_width"] > 0
    assert "threshold_low" not in document["tensors"]["relu"]
    # Levels per side: all 255 steps for the one-sided ReLU output, a split for signed.
    assert document["tensors"]["relu"]["levels_high"] == 255
    assert conv["levels_high"] + conv["levels_low"] == 255
    assert document["tensors"][""]["empty"] is True
    pngs = sorted(p.name for p in folder.iterdir() if p.suffix == ".png")
    # One plot per tensor that had values; every file stays inside the folder.
    assert pngs == [
        "0000_conv1_out_0.png",
        "0001_____escape.png",
        "0002_relu.png",
        "0003_hidden.png",
    ]
    assert all((folder / p).read_bytes().startswith(b"\x89PNG") for p in pngs)
    assert not list(tmp_path.glob("escape*")) and not list(folder.glob(".*"))
    first = {p: (folder / p).read_bytes() for p in [*pngs, REPORT_NAME]}
    calibrator.report(ranges, folder)
    assert first == {p: (folder / p).read_bytes() for p in [*pngs, REPORT_NAME]}


def test_entropy_debug_option_is_used_without_debug_dir(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    calibrator = EntropyCalibrator({"entropy_debug": str(tmp_path / "opt")})
    calibrator.report({"relu": ranges_for(calibrator)["relu"]}, None)
    assert (tmp_path / "opt" / REPORT_NAME).is_file()
    assert (tmp_path / "opt" / "0000_relu.png").is_file()


def test_without_matplotlib_the_json_is_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A None entry in sys.modules makes the import fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    calibrator = EntropyCalibrator()
    with caplog.at_level(logging.WARNING, logger="drpaiq"):
        calibrator.report(ranges_for(calibrator), tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert 'pip install "drpaiq-core[plot]"' in warnings[0]
    assert (tmp_path / REPORT_NAME).is_file()
    assert not list(tmp_path.glob("*.png"))


def test_percentile_and_minmax_reports(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    percentile = PercentileCalibrator({"percentile_value": 99.9})
    percentile.report(ranges_for(percentile), tmp_path / "p")
    document = json.loads((tmp_path / "p" / REPORT_NAME).read_text())
    assert document["settings"]["percentile_value"] == 99.9
    assert (tmp_path / "p" / "0000_conv1_out_0.png").is_file()
    minmax = MinMaxCalibrator()
    minmax.report(ranges_for(minmax), tmp_path / "m")
    document = json.loads((tmp_path / "m" / REPORT_NAME).read_text())
    assert document["tensors"]["relu"]["rmin"] == 0.0
    assert not list((tmp_path / "m").glob("*.png"))
    minmax.report(ranges_for(minmax), None)  # no folder, nothing written, no error
    mse = MSECalibrator()
    mse.report(ranges_for(mse), tmp_path / "e")
    document = json.loads((tmp_path / "e" / REPORT_NAME).read_text())
    assert document["method"] == "mse"
    assert all(t["expected_error"] >= 0 for t in document["tensors"].values() if "min" in t)
    assert (tmp_path / "e" / "0000_conv1_out_0.png").is_file()


def test_debug_folder_that_is_a_file_is_a_user_error(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        MinMaxCalibrator().report({}, target)
