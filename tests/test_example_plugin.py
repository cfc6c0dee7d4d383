"""The example third-party plugin under docs/examples, installed as users install it.

pip installs it (non-editable, from a copy so the repository stays clean) into a
temporary folder; fresh interpreters with that folder on ``PYTHONPATH`` then find it
through its entry point in the group ``drpaiq``, exactly as an installed plugin.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from drpaiq_core.plugins import BUILTIN_DISTRIBUTIONS, ENV_BLOCK, ENV_ONLY
from onnx import TensorProto, helper, numpy_helper

from tests._plugin_helpers import (
    REPO,
    require_distributions,
    run_drpaiq,
    run_python,
    subprocess_env,
)

EXAMPLE = REPO / "docs" / "examples" / "drpaiq-example-plugin"


def _build_isolation() -> list[str]:
    """``--no-build-isolation`` (fast, offline) when this environment can build a wheel
    itself: setuptools 70.1 or newer, or an older one with ``wheel``. A fresh venv has
    neither, and pip then builds in an isolated environment of its own."""
    try:
        setuptools = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return []
    major, minor = (int(part) for part in re.findall(r"\d+", setuptools)[:2])
    try:
        importlib.metadata.version("wheel")
        has_wheel = True
    except importlib.metadata.PackageNotFoundError:
        has_wheel = False
    return ["--no-build-isolation"] if (major, minor) >= (70, 1) or has_wheel else []


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(site, source)``: the folder pip installed the example into, and the copy of
    its source (with its tests) that pip built from."""
    root = tmp_path_factory.mktemp("example")
    source = root / "drpaiq-example-plugin"
    shutil.copytree(
        EXAMPLE,
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".*"),
    )
    site = root / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", *_build_isolation(), "--target", str(site), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not (site / "drpaiq_example_plugin" / "tests").exists()
    assert list(site.glob("drpaiq_example_plugin-0.1.0.dist-info/entry_points.txt"))
    return site, source


def _only_example() -> dict[str, str]:
    # Other external plugins that happen to be installed stay out of the listing.
    return {ENV_ONLY: "example"}


def test_drpaiq_plugins_json_finds_the_example_through_its_entry_point(installed) -> None:
    site, _ = installed
    result = run_drpaiq("plugins", "--json", pythonpath=[site], switches=_only_example())
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    [example] = [p for p in listing["plugins"] if p["name"] == "example"]
    assert example == {
        "name": "example",
        "distribution": "drpaiq-example-plugin",
        "version": "0.1.0",
        "registers": {"exclusion matcher": ["yolov5_postprocess"]},
        "options": {
            "exclude_preset": "exclusion presets, comma separated; yolov5: "
            "YOLOv5's box-decoding tail"
        },
    }
    assert not [line for line in listing["broken"] if "example" in line]


def test_drpaiq_plugins_table_has_a_row_for_the_example(installed) -> None:
    site, _ = installed
    result = run_drpaiq("plugins", pythonpath=[site], switches=_only_example())
    assert result.returncode == 0, result.stderr
    [row] = [line for line in result.stdout.splitlines() if line.startswith("example ")]
    assert row.split() == [
        "example", "drpaiq-example-plugin", "0.1.0", "exclusion", "matcher:", "yolov5_postprocess"
    ]  # fmt: skip


def test_blocking_the_example_removes_it_and_its_command(installed) -> None:
    site, _ = installed
    switches = {ENV_BLOCK: "example"}
    listing = run_drpaiq("plugins", "--json", pythonpath=[site], switches=switches)
    assert "example" not in [p["name"] for p in json.loads(listing.stdout)["plugins"]]
    help_text = run_drpaiq("--help", pythonpath=[site], switches=switches)
    assert "list-ops" not in help_text.stdout


def _small_model(path: Path) -> Path:
    weight = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("Relu", ["c"], ["r"], name="relu1"),
            helper.make_node("Relu", ["r"], ["y"], name="relu2"),
        ],
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_the_example_command_runs_through_drpaiq(installed, tmp_path: Path) -> None:
    site, _ = installed
    model = _small_model(tmp_path / "small.onnx")
    help_text = run_drpaiq("--help", pythonpath=[site], switches=_only_example())
    assert "list-ops" in help_text.stdout
    result = run_drpaiq("list-ops", str(model), pythonpath=[site], switches=_only_example())
    assert result.returncode == 0, result.stderr
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["op", "type", "nodes"], ["Relu", "2"], ["Conv", "1"], ["total", "3"]
    ]  # fmt: skip
    missing = run_drpaiq(
        "list-ops", str(tmp_path / "missing.onnx"), pythonpath=[site], switches=_only_example()
    )
    assert missing.returncode == 2
    assert missing.stderr.startswith("drpaiq: error: model ")


def test_the_example_keeps_help_free_of_onnx_and_onnxruntime(installed) -> None:
    site, _ = installed
    code = """
        import sys
        from drpaiq_core.cli import main
        try:
            main(["--help"])
        except SystemExit:
            pass
        print(sorted(m for m in ("onnx", "onnxruntime") if m in sys.modules))
    """
    # Block the built-ins (when installed) so that only the example's imports count.
    switches = {ENV_ONLY: "example", ENV_BLOCK: ",".join(sorted(BUILTIN_DISTRIBUTIONS))}
    result = run_python(code, pythonpath=[site], switches=switches)
    assert result.returncode == 0, result.stderr
    assert "list-ops" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def _detector(path: Path) -> Path:
    """A one-head YOLOv5-shaped model: Conv, then Reshape/Sigmoid/Mul/Pow/Concat."""
    inits = [
        numpy_helper.from_array(
            np.linspace(-1, 1, 14 * 3, dtype=np.float32).reshape(14, 3, 1, 1), "w"
        ),
        numpy_helper.from_array(np.array([1, 2, 7, 4, 4]), "shape"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], name="head"),
        helper.make_node("Reshape", ["c", "shape"], ["r"], name="reshape"),
        helper.make_node("Sigmoid", ["r"], ["s"], name="sigmoid"),
        helper.make_node("Mul", ["s", "two"], ["m"], name="mul"),
        helper.make_node("Pow", ["m", "two"], ["p"], name="pow"),
        helper.make_node("Concat", ["m", "p"], ["output"], name="concat", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "detector",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, 7, 4, 4])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


TAIL = ["reshape", "sigmoid", "mul", "pow", "concat"]


def test_a_plugin_host_finds_and_runs_the_installed_matcher(installed, tmp_path: Path) -> None:
    site, _ = installed
    model = _detector(tmp_path / "detector.onnx")
    code = f"""
        import json
        import onnx
        from drpaiq_core.graph import ModelGraph
        from drpaiq_core.plugin_api import ExclusionRules
        from drpaiq_core.plugins import get_plugin_host

        host = get_plugin_host()
        matcher = host.exclusion_matchers.get("YOLOv5_PostProcess")()
        rules = ExclusionRules(options={{"exclude_preset": "yolov5"}})
        [report] = matcher.match(ModelGraph(onnx.load({str(model)!r})), rules)
        print(json.dumps({{"rule": report.rule, "nodes": report.nodes,
                          "from": host.plugins["example"].distribution}}))
    """
    result = run_python(code, pythonpath=[site], switches=_only_example())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "rule": "exclude_preset yolov5",
        "nodes": TAIL,
        "from": "drpaiq-example-plugin",
    }


def _quantize(site: Path, tmp_path: Path, *extra: str, switches: dict[str, str]):
    data = tmp_path / "calibrate.npy"
    np.save(data, np.random.default_rng(0).random((3, 3, 4, 4), dtype=np.float32))
    return run_drpaiq(
        "-q", "--reader", "numpy", "quantize", str(_detector(tmp_path / "detector.onnx")),
        "-o", str(tmp_path / "detector_int8.onnx"), "--calibrate_dataset", str(data),
        "--skip_preprocess", "--summary-json", str(tmp_path / "summary.json"), *extra,
        pythonpath=[site], switches=switches,
    )  # fmt: skip


def test_drpaiq_quantize_accepts_the_plugin_option_and_leaves_the_tail_in_float(
    installed, tmp_path: Path
) -> None:
    require_distributions(*sorted(BUILTIN_DISTRIBUTIONS))
    site, _ = installed
    result = _quantize(site, tmp_path, "exclude_preset", "yolov5", switches=_only_example())
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert summary["exclusion_rules"] == {"exclude_preset yolov5": TAIL}
    assert sorted(summary["float_nodes"]) == sorted(TAIL)
    assert list(summary["quantized_nodes"]) == ["head"]


def test_without_the_plugin_its_option_is_an_unknown_advanced_option(
    installed, tmp_path: Path
) -> None:
    require_distributions("drpaiq-plugins-readers")
    site, _ = installed
    result = _quantize(site, tmp_path, "exclude_preset", "yolov5", switches={ENV_BLOCK: "example"})
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("drpaiq: error: ")
    assert "exclude_preset" in line
    assert not (tmp_path / "detector_int8.onnx").exists()


def test_the_example_passes_its_own_tests_when_installed(installed) -> None:
    site, source = installed
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(source / "tests")],
        cwd=source,
        env=subprocess_env([site]),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout
