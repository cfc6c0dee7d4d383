"""Helpers for tests of the plugin system: inline test plugins and throwaway distributions.

Two ways to give a :class:`~drpaiq_core.plugins.PluginHost` plugins in a test:

* inline: :func:`plugin` builds an object with hook implementations that register the
  given classes; :func:`make_host` registers such objects on a host that loads no entry
  points, so the test sees exactly its own plugins;
* through real entry points: :func:`write_distribution` writes an installed-looking
  distribution (a ``dist-info`` folder with ``METADATA`` and ``entry_points.txt``, plus its
  modules) into a folder that the test puts on ``sys.path`` or ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from drpaiq_core.plugin_api import (
    Batch,
    Calibrator,
    ExclusionMatcher,
    ExclusionRules,
    GraphView,
    MatchReport,
    NodeQuantSpec,
    OpQuantizer,
    QuantOptions,
    Reader,
    TensorRange,
)
from drpaiq_core.plugins import (
    BUILTIN_DISTRIBUTIONS,
    ENV_BLOCK,
    ENV_ONLY,
    ENV_TRACE,
    PluginHost,
)

from drpaiq_core import hookimpl

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------
# Small but working plugin classes
# ---------------------------------------------------------------------------


class ZerosReader(Reader):
    """Yields ``size_limit`` (default 2) all-zero samples for every model input."""

    PLUGIN_NAME = "zeros"
    DESCRIPTION = "all-zero feeds (tests)"

    def __len__(self) -> int:
        return self.context.size_limit or 2

    def batches(self) -> Iterator[Batch]:
        for _ in range(len(self)):
            yield Batch(
                feeds={
                    spec.name: np.zeros((1, *(d or 1 for d in spec.shape[1:])), dtype=spec.dtype)
                    for spec in self.context.inputs
                }
            )


class MaxAbsCalibrator(Calibrator):
    """Symmetric range from the largest absolute value seen."""

    PLUGIN_NAME = "maxabs"

    def new_state(self) -> float:
        return 0.0

    def collect(self, state: float, values: np.ndarray, pass_index: int) -> float:
        return max(state, float(np.abs(values).max(initial=0.0)))

    def merge(self, a: float, b: float) -> float:
        return max(a, b)

    def compute(self, state: float) -> TensorRange:
        return TensorRange(-state, state)


class PassThroughQuantizer(OpQuantizer):
    """Quantizes input 0 and output 0 with shared parameters."""

    PLUGIN_NAME = "pass_through"
    OP_TYPES = ("Identity",)

    def quantize_node(
        self, node: Any, graph: GraphView, options: QuantOptions
    ) -> NodeQuantSpec | None:
        return NodeQuantSpec(activations=(0,), outputs=(0,), same_params=((("in", 0), ("out", 0)),))


class OpTypeMatcher(ExclusionMatcher):
    """Leaves nodes of the user's op types in float."""

    PLUGIN_NAME = "test_op_type"

    def match(self, graph: GraphView, rules: ExclusionRules) -> list[MatchReport]:
        wanted = {t.lower() for t in rules.op_types}
        return [
            MatchReport(
                rule=f"op type {op}",
                nodes=[n.name for n in graph.nodes if n.op_type.lower() == op.lower()],
            )
            for op in sorted(wanted)
        ]


def named(base: type, name: str, **attrs: Any) -> type:
    """A subclass of ``base`` that declares ``PLUGIN_NAME = name`` (and ``attrs``).

    The class gets a module of its own name so that error messages naming it are
    recognisable.
    """
    ident = re.sub(r"\W", "_", name)
    cls = type(f"{base.__name__}_{ident}", (base,), {"PLUGIN_NAME": name, **attrs})
    cls.__module__ = f"testplugin.{ident}"
    return cls


# ---------------------------------------------------------------------------
# Inline plugins
# ---------------------------------------------------------------------------


def plugin(
    *,
    readers: Iterable[type] = (),
    calibrators: Iterable[type] = (),
    op_quantizers: Iterable[type] = (),
    exclusion_matchers: Iterable[type] = (),
    commands: Callable[[Any], None] | None = None,
    calls: list[str] | None = None,
) -> types.SimpleNamespace:
    """A plugin object whose hook implementations register the given classes.

    :param commands: called with the ``click.Group`` by ``drpaiq_register_commands``.
    :param calls: when given, each hook appends its name here when called (to test
        laziness and call counts).
    """
    hooks: dict[str, Callable[..., None]] = {}

    def registering(hook: str, classes: list[type]) -> Callable[..., None]:
        def implementation(register: Callable[[type], None]) -> None:
            if calls is not None:
                calls.append(hook)
            for cls in classes:
                register(cls)

        implementation.__name__ = hook
        return hookimpl(implementation)

    for hook, classes in (
        ("drpaiq_register_readers", list(readers)),
        ("drpaiq_register_calibrators", list(calibrators)),
        ("drpaiq_register_op_quantizers", list(op_quantizers)),
        ("drpaiq_register_exclusion_matchers", list(exclusion_matchers)),
    ):
        if classes or calls is not None:
            hooks[hook] = registering(hook, classes)
    if commands is not None:

        @hookimpl
        def drpaiq_register_commands(cli: Any) -> None:
            commands(cli)

        hooks["drpaiq_register_commands"] = drpaiq_register_commands
    return types.SimpleNamespace(**hooks)


def make_host(*plugins: tuple[object, str, str]) -> PluginHost:
    """A host that loads no entry points, with ``(plugin, name, distribution)`` registered."""
    host = PluginHost(load_entry_points=False)
    for obj, name, distribution in plugins:
        host.register(obj, name, distribution)
    return host


# ---------------------------------------------------------------------------
# Throwaway distributions discovered through real entry points
# ---------------------------------------------------------------------------


def write_distribution(
    site: Path,
    name: str,
    version: str,
    entry_points: Mapping[str, str],
    files: Mapping[str, str],
) -> Path:
    """Write an installed distribution into ``site``, as pip would lay it out.

    :param name: the distribution name (``drpaiq-test-alpha``).
    :param entry_points: entry point name -> module, all in the group ``drpaiq``.
    :param files: path relative to ``site`` -> source text (dedented).
    :returns: the ``.dist-info`` folder.
    """
    site.mkdir(parents=True, exist_ok=True)
    for relative, source in files.items():
        path = site / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    dist_info = site / f"{re.sub(r'[-_.]+', '_', name)}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = ["[drpaiq]", *(f"{ep} = {module}" for ep, module in entry_points.items())]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dist_info


def reader_plugin_source(*reader_names: str) -> str:
    """Source of a plugin module registering one tiny reader class per name."""
    classes = "\n".join(
        f"""
class Reader{i}(Reader):
    PLUGIN_NAME = {name!r}

    def __len__(self):
        return 0

    def batches(self):
        return iter(())
"""
        for i, name in enumerate(reader_names)
    )
    register = "\n".join(f"    register(Reader{i})" for i in range(len(reader_names)))
    return (
        "from drpaiq_core import hookimpl\n"
        "from drpaiq_core.plugin_api import Reader\n"
        f"{classes}\n\n"
        "@hookimpl\n"
        "def drpaiq_register_readers(register):\n"
        f"{register or '    pass'}\n"
    )


def write_reader_distribution(
    site: Path, dist: str, entry_point: str, *reader_names: str, version: str = "1.0.0"
) -> str:
    """A distribution whose one plugin module registers readers; returns the module name."""
    module = re.sub(r"\W", "_", dist)
    write_distribution(
        site,
        dist,
        version,
        {entry_point: f"{module}.plugin"},
        {f"{module}/__init__.py": "", f"{module}/plugin.py": reader_plugin_source(*reader_names)},
    )
    return module


# ---------------------------------------------------------------------------
# Environment isolation and subprocesses
# ---------------------------------------------------------------------------


def isolating_env(only: Iterable[str] = (), block: Iterable[str] = ()) -> dict[str, str]:
    """Switches that make a host see only the test's own external plugins: the built-in
    distributions are blocked, and only the external plugins in ``only`` load."""
    return {
        ENV_ONLY: ",".join(only),
        ENV_BLOCK: ",".join([*sorted(BUILTIN_DISTRIBUTIONS), *block]),
    }


def subprocess_env(
    pythonpath: Iterable[Path] = (), switches: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The current environment without drpaiq switches, plus ``switches`` and
    ``pythonpath`` in front of ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV_ONLY, ENV_BLOCK, ENV_TRACE)}
    paths = [str(p) for p in pythonpath]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(switches or {})
    return env


def run_drpaiq(
    *args: str,
    pythonpath: Iterable[Path] = (),
    switches: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m drpaiq_core ARGS`` in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "drpaiq_core", *args],
        env=subprocess_env(pythonpath, switches),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def run_python(
    code: str,
    pythonpath: Iterable[Path] = (),
    switches: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -c CODE`` (dedented) in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=subprocess_env(pythonpath, switches),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def require_distributions(*names: str) -> None:
    """Skip the calling test unless every named distribution is installed.

    Checks the installed metadata, not ``import``: from the repository's top folder the
    plugin folders (``drpaiq_plugins_ops/``) import as empty namespace packages even
    when the distribution is not installed.
    """
    import importlib.metadata

    import pytest

    for name in names:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"{name} is not installed")


def warning_lines(stderr: str, needle: str) -> list[str]:
    """The stderr lines that mention ``needle``."""
    return [line for line in stderr.splitlines() if needle in line]
