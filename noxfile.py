"""Nox sessions: each distribution on its own and together, lint, types and wheels.

    nox -l                          list the sessions
    nox -s core                     drpaiq-core alone: no plugin distribution installed
    nox -s plugin-readers           one plugin distribution with the core
    nox -s plugin-ops               (likewise)
    nox -s plugin-calibrators       (likewise)
    nox -s all                      the four distributions together: the whole suite
    nox -s lint mypy build          ruff, mypy on all four, one wheel per distribution

Distributions are installed non-editable (pip builds a wheel and installs it), so their
entry points and package data are exercised as users get them. Pytest runs from the
repository's top folder against the installed packages; arguments after ``--`` go to
pytest (``nox -s all -- -x -k plugins``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nox

nox.options.sessions = [
    "lint",
    "mypy",
    "core",
    "plugin-readers",
    "plugin-ops",
    "plugin-calibrators",
    "all",
    "build",
]

CORE = "./drpaiq_core"
PLUGINS = {
    "readers": "./drpaiq_plugins_readers",
    "ops": "./drpaiq_plugins_ops",
    "calibrators": "./drpaiq_plugins_calibrators",
}
DISTRIBUTIONS = (CORE, *PLUGINS.values())

#: What the tests need besides the distributions (the root pyproject's "dev" extra
#: holds these and the tools of the other sessions).
TEST_TOOLS = ("pytest>=7.4", "pytest-timeout>=2.2", "hypothesis>=6.90")

#: Core tests that need no plugin distribution; tests that need one skip without it.
CORE_TESTS = ("tests/test_core_alone.py", "tests/test_plugin_system.py", "tests/test_docs.py")


def _dev_requirements() -> list[str]:
    """The root pyproject's development dependencies, so the two lists cannot drift."""
    return list(nox.project.load_toml("pyproject.toml")["project"]["optional-dependencies"]["dev"])


def _clean_build_dirs() -> None:
    """Remove setuptools' scratch ``build/`` folders: pip builds local folders in place,
    and a module deleted from ``src/`` would live on in a stale ``build/lib`` and be
    packed into the next wheel."""
    for distribution in DISTRIBUTIONS:
        shutil.rmtree(Path(distribution) / "build", ignore_errors=True)


def _install(session: nox.Session, *requirements: str) -> None:
    _clean_build_dirs()
    session.install(*requirements)


def _pytest(session: nox.Session, *paths: str) -> None:
    session.run("python", "-m", "pytest", *paths, *session.posargs)


@nox.session
def core(session: nox.Session) -> None:
    """The core alone, no plugin distribution installed.

    ``drpaiq plugins`` says none are installed, and asking for a built-in name says which
    distribution provides it."""
    _install(session, CORE, *TEST_TOOLS)
    session.run("drpaiq", "--help", silent=True)
    session.run("drpaiq", "plugins", env={"DRPAIQ_PLUGINS": ""})
    _pytest(session, *CORE_TESTS)


def _plugin_with_core(session: nox.Session, kind: str) -> None:
    # The calibrators' debug plots use matplotlib from the core's "plot" extra.
    core = f"{CORE}[plot]" if kind == "calibrators" else CORE
    _install(session, core, PLUGINS[kind], *TEST_TOOLS)
    session.run("drpaiq", "plugins", env={"DRPAIQ_PLUGINS": ""})
    _pytest(session, f"{PLUGINS[kind]}/tests", "tests/test_plugin_system.py")


@nox.session(name="plugin-readers")
def plugin_readers(session: nox.Session) -> None:
    """drpaiq-plugins-readers with the core: its own tests and the plugin-system checks."""
    _plugin_with_core(session, "readers")


@nox.session(name="plugin-ops")
def plugin_ops(session: nox.Session) -> None:
    """drpaiq-plugins-ops with the core: its own tests and the plugin-system checks."""
    _plugin_with_core(session, "ops")


@nox.session(name="plugin-calibrators")
def plugin_calibrators(session: nox.Session) -> None:
    """drpaiq-plugins-calibrators with the core: its own tests and the plugin-system checks."""
    _plugin_with_core(session, "calibrators")


@nox.session(name="all")
def all_distributions(session: nox.Session) -> None:
    """The four distributions together (non-editable): the whole test suite."""
    # A setuptools that builds wheels by itself lets tests/test_example_plugin.py build the
    # example plugin without an isolated (downloaded) build environment.
    _install(session, f"{CORE}[plot]", *PLUGINS.values(), *_dev_requirements(), "setuptools>=70.1")
    session.run("drpaiq", "plugins")
    _pytest(session)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting, everywhere."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def mypy(session: nox.Session) -> None:
    """mypy on the core and the three plugin distributions (the files and settings
    are in the root pyproject.toml)."""
    _install(session, *DISTRIBUTIONS, "mypy>=1.10")
    session.run("mypy")


@nox.session
def build(session: nox.Session) -> None:
    """One wheel per distribution, into dist/."""
    _install(session, "build>=1.0")
    for distribution in DISTRIBUTIONS:
        session.run("python", "-m", "build", "--wheel", "--outdir", "dist", distribution)
