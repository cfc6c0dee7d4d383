"""drpaiq-core without its plugin distributions: what a user who installed only the core
sees.

The first group runs only where no built-in plugin distribution is installed (the nox
session ``core``). The second group checks the same messages in any environment by
switching the built-ins off with ``DRPAIQ_BLOCK_PLUGINS`` in a fresh interpreter.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from drpaiq_core.plugins import BUILTIN_DISTRIBUTIONS, ENV_BLOCK, ENV_ONLY
from onnx import TensorProto, helper, numpy_helper

from tests._plugin_helpers import run_drpaiq, run_python


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


INSTALLED_BUILTINS = sorted(d for d in BUILTIN_DISTRIBUTIONS if _installed(d))
core_alone = pytest.mark.skipif(
    bool(INSTALLED_BUILTINS),
    reason=f"built-in plugins are installed ({', '.join(INSTALLED_BUILTINS)}); "
    "the nox session 'core' runs these",
)

#: No external plugin either, so that only the core is seen.
NO_EXTERNAL = {ENV_ONLY: ""}
#: Every built-in switched off, as if only the core were installed.
AS_IF_ALONE = {ENV_ONLY: "", ENV_BLOCK: "builtin_readers,builtin_ops,builtin_calibrators"}

_LOOKUP = """
    from drpaiq_core.errors import PluginError
    from drpaiq_core.plugins import get_plugin_host

    host = get_plugin_host()
    for registry, name in [(host.readers, "nchw_image"), (host.calibrators, "MinMax"),
                           (host.exclusion_matchers, "op_type")]:
        try:
            registry.get(name)
        except PluginError as exc:
            print(exc)
        else:
            print("found", name)
"""


def _assert_points_to_distributions(stdout: str) -> None:
    reader, calibrator, matcher = stdout.splitlines()
    assert reader.startswith("unknown reader 'nchw_image'")
    assert "'nchw_image' is provided by drpaiq-plugins-readers" in reader
    assert "pip install drpaiq-plugins-readers" in reader
    assert "pip install drpaiq-plugins-calibrators" in calibrator
    assert "pip install drpaiq-plugins-ops" in matcher


# ---------------------------------------------------------------------------
# Only the core is installed
# ---------------------------------------------------------------------------


@core_alone
def test_drpaiq_plugins_says_none_are_installed_and_where_the_builtins_are() -> None:
    result = run_drpaiq("plugins", switches=NO_EXTERNAL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("No plugins are installed.")
    for distribution in sorted(BUILTIN_DISTRIBUTIONS):
        assert distribution in result.stdout
    assert result.stderr == ""


@core_alone
def test_asking_for_a_builtin_name_says_which_distribution_provides_it() -> None:
    result = run_python(_LOOKUP, switches=NO_EXTERNAL)
    assert result.returncode == 0, result.stderr
    _assert_points_to_distributions(result.stdout)


@core_alone
def test_the_core_alone_imports_no_plugin_package() -> None:
    result = run_python(
        """
        import sys
        from drpaiq_core.cli import main
        try:
            main(["plugins"])
        except SystemExit:
            pass
        print(sorted(m for m in sys.modules if m.startswith("drpaiq_plugins")))
        """,
        switches=NO_EXTERNAL,
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------
# Any environment: the built-ins switched off
# ---------------------------------------------------------------------------


def test_with_the_builtins_blocked_drpaiq_plugins_says_none_are_installed() -> None:
    result = run_drpaiq("plugins", switches=AS_IF_ALONE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("No plugins are installed.")
    assert result.stderr == ""


def test_with_the_builtins_blocked_a_lookup_says_which_distribution_provides_it() -> None:
    result = run_python(_LOOKUP, switches=AS_IF_ALONE)
    assert result.returncode == 0, result.stderr
    _assert_points_to_distributions(result.stdout)


def test_with_only_the_readers_blocked_the_reader_lookup_names_its_distribution() -> None:
    result = run_python(_LOOKUP, switches={ENV_ONLY: "", ENV_BLOCK: "builtin_readers"})
    assert result.returncode == 0, result.stderr
    reader = result.stdout.splitlines()[0]
    assert "unknown reader 'nchw_image'" in reader
    assert "pip install drpaiq-plugins-readers" in reader


def _quantize_command_ready() -> bool:
    result = run_drpaiq("quantize", "--help", switches=AS_IF_ALONE)
    return result.returncode == 0 and "--calibrate_dataset" in result.stdout


def test_quantize_with_a_reader_from_a_missing_distribution_is_one_error_line(
    tmp_path: Path,
) -> None:
    if not _quantize_command_ready():
        pytest.skip("drpaiq quantize does not take --calibrate_dataset yet")
    weight = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["output"], name="conv")],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 2, 4, 4])],
        [weight],
    )
    model = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), model)
    data = tmp_path / "calibrate"
    data.mkdir()
    (data / "one.png").write_bytes(b"")
    result = run_drpaiq(
        "--reader", "nchw_image", "quantize", str(model), "-o", str(tmp_path / "out.onnx"),
        "--calibrate_dataset", str(data),
        switches={ENV_ONLY: "", ENV_BLOCK: "builtin_readers"},
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("drpaiq: error:")]
    if len(INSTALLED_BUILTINS) == len(BUILTIN_DISTRIBUTIONS):
        # Only the readers are missing, so the reader is what the error is about.
        assert "unknown reader 'nchw_image'" in line
        assert "pip install drpaiq-plugins-readers" in line
    else:
        # The core alone: the first missing built-in stops the run, named with its home.
        assert re.search(r"pip install drpaiq-plugins-(readers|ops|calibrators)", line), line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out.onnx").exists()
