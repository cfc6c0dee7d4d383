"""The user guide and the migration page cannot drift from the command line.

- Every ``drpaiq ...`` line in a fenced ``bash`` block of docs/user-guide.md and
  docs/migration.md parses as drpaiq parses it (click's checks and callbacks, the
  reference-style list values and advanced ``key value`` pairs), and the reader,
  calibrator and advanced option names it uses exist. Nothing is run.
- Every flag in a ``drpaiq`` column of the migration page's tables exists (an option of
  ``drpaiq`` or ``drpaiq quantize``, or an advanced option), every ``drpaiq ...`` command
  and ``from drpaiq_core ... import`` there works, and every flag of the reference tool
  has a row.
- Every advanced option is in both pages' key tables, and every ``drpaiq quantize``
  option is in the user guide.
- The Python blocks compile and their drpaiq imports exist; the guide's example
  ``--datareader_path`` file quantizes a small model.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from drpaiq_core.cli import build_cli
from drpaiq_core.cli_quantize import ADVANCED_META
from drpaiq_core.errors import UserError
from drpaiq_core.options import (
    ADVANCED_OPTIONS,
    calibrator_name,
    find_option,
    parse_advanced,
    parse_number_list,
    parse_shape,
    plugin_options,
)
from drpaiq_core.plugins import PluginHost, get_plugin_host

from tests._models import classifier, images
from tests._plugin_helpers import REPO
from tests._reference import REFERENCE_FLAGS

GUIDE = REPO / "docs" / "user-guide.md"
MIGRATION = REPO / "docs" / "migration.md"
PAGES = (GUIDE, MIGRATION)


pytestmark = pytest.mark.skipif(
    any(
        importlib.util.find_spec(name) is None
        for name in ("drpaiq_plugins_readers", "drpaiq_plugins_calibrators")
    ),
    reason="the doc examples name the built-in readers and calibrators",
)


# ---------------------------------------------------------------------------
# Reading the Markdown
# ---------------------------------------------------------------------------


def code_blocks(markdown: str, language: str) -> list[str]:
    """The bodies of the fenced code blocks of ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```$", markdown, flags=re.MULTILINE | re.DOTALL)


def shell_lines(block: str) -> Iterator[str]:
    """The command lines of a shell block: continuation lines joined, comments and
    blank lines dropped."""
    for line in block.replace("\\\n", " ").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            yield line


def drpaiq_commands(path: Path) -> list[list[str]]:
    """The words of every ``drpaiq ...`` line in the page's ``bash`` blocks."""
    commands = []
    for block in code_blocks(path.read_text(encoding="utf-8"), "bash"):
        for line in shell_lines(block):
            words = shlex.split(line)
            if words[0] == "drpaiq":
                commands.append(words)
    return commands


def table_cells(line: str) -> list[str]:
    """The cells of a Markdown table row (``\\|`` inside a cell is a literal bar)."""
    inner = line.strip().strip("|")
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def tables(markdown: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every table of the page as (header cells, body rows)."""
    found: list[tuple[list[str], list[list[str]]]] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = table_cells(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(table_cells(lines[i]))
                i += 1
            found.append((header, rows))
        else:
            i += 1
    return found


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# ---------------------------------------------------------------------------
# Parsing a command line as drpaiq does, without running it
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return get_plugin_host()


@pytest.fixture(scope="module")
def cli(host: PluginHost) -> click.Group:
    return build_cli(host)


def option_names(command: click.Command) -> set[str]:
    names = {"-h", "--help"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def check_command(cli: click.Group, host: PluginHost, words: list[str]) -> None:
    """Parse ``drpaiq ARGS`` with the real parsers and check the names it uses; raises
    click's usage errors or drpaiq's UserError on any mistake."""
    assert words[0] == "drpaiq"
    with cli.make_context("drpaiq", list(words[1:])) as group_ctx:
        protected = group_ctx.__dict__.get("_protected_args")
        if protected is None:  # click < 8.2
            protected = group_ctx.protected_args
        rest = [*protected, *group_ctx.args]
        if not rest:
            raise click.UsageError(f"no command in {shlex.join(words)}")
        name, command, args = cli.resolve_command(group_ctx, rest)
        if command is None or name is None:
            raise click.UsageError(f"unknown command in {shlex.join(words)}")
        if group_ctx.params["reader"]:
            host.readers.get(group_ctx.params["reader"])
        with command.make_context(name, list(args), parent=group_ctx) as ctx:
            check_values(host, ctx.params, ctx.meta.get(ADVANCED_META, []))


def check_values(host: PluginHost, params: dict[str, Any], advanced: list[Any]) -> None:
    """The checks drpaiq makes on values before it touches a file."""
    parse_advanced(advanced, lambda: plugin_options(host))
    if params.get("calibrate_method"):
        host.calibrators.get(calibrator_name(params["calibrate_method"]))
    for flag in ("norm_mean", "norm_std"):
        if params.get(flag) is not None:
            numbers = parse_number_list(params[flag], f"--{flag}")
            if len(numbers) != 3:
                raise UserError(f"--{flag} needs 3 numbers, got {params[flag]!r}")
    if params.get("input_shape"):
        parse_shape(params["input_shape"])


def page_commands() -> list[Any]:
    return [
        pytest.param(words, id=f"{path.name}:{shlex.join(words)[:60]}")
        for path in PAGES
        for words in drpaiq_commands(path)
    ]


def test_the_pages_have_commands() -> None:
    for path in PAGES:
        commands = drpaiq_commands(path)
        assert len(commands) >= 8, f"{path.name}: bash blocks not found"
        assert {words[1] for words in commands} & {"quantize", "--reader"}


@pytest.mark.parametrize("words", page_commands())
def test_every_documented_command_parses(cli, host, words) -> None:
    check_command(cli, host, words)


def test_the_checker_catches_mistakes(cli, host) -> None:
    """The command check fails on the mistakes it is there to catch."""
    bad = [
        "drpaiq quantize m.onnx -o q.onnx --reader nchw_image",  # group option misplaced
        "drpaiq quantize m.onnx -o q.onnx --calibrate-dataset calib",  # wrong spelling
        "drpaiq quantize m.onnx -o q.onnx -cm Entropie",  # unknown calibrator
        "drpaiq quantize m.onnx -o q.onnx num_bin 10",  # unknown advanced option
        "drpaiq quantize m.onnx -o q.onnx --norm_mean 0.1 0.2",  # two numbers
        "drpaiq --reader nchw_imag quantize m.onnx -o q.onnx",  # unknown reader
        "drpaiq quantize m.onnx -o q.onnx --activation-type int4",  # bad value
        "drpaiq evaluate m.onnx --nchw",  # --dataset is required
    ]
    for line in bad:
        with pytest.raises((click.ClickException, UserError)):
            check_command(cli, host, shlex.split(line))


# ---------------------------------------------------------------------------
# The migration tables
# ---------------------------------------------------------------------------


def migration_tables() -> list[tuple[list[str], list[list[str]]]]:
    return tables(MIGRATION.read_text(encoding="utf-8"))


def test_every_flag_in_the_drpaiq_column_exists(cli, host) -> None:
    quantize = cli.commands["quantize"]
    flags = option_names(cli) | option_names(quantize)
    checked = 0
    for header, rows in migration_tables():
        columns = [i for i, title in enumerate(header) if title == "drpaiq"]
        columns += [i for i, title in enumerate(header) if "advanced-option" in title]
        for row in rows:
            for column in columns:
                for span in code_spans(row[column]):
                    check_span(cli, host, span, flags, advanced_only=column != columns[0])
                    checked += 1
    assert checked >= 40, "the migration tables were not found"


def check_span(
    cli: click.Group, host: PluginHost, span: str, flags: set[str], *, advanced_only: bool
) -> None:
    """A code span of a drpaiq column: a whole command, an import, a flag, or an
    advanced option (``key value``)."""
    if span.startswith("drpaiq "):
        check_command(cli, host, shlex.split(span))
        return
    if span.startswith("from drpaiq_core"):
        check_imports(span)
        return
    first = span.split()[0].split("=", 1)[0]
    if first.startswith("-") and not advanced_only:
        assert first in flags, f"{first} is not an option of drpaiq or drpaiq quantize"
        return
    assert find_option(first) is not None, f"{span!r}: neither a flag nor an advanced option"


def test_every_reference_flag_has_a_row() -> None:
    rows = next(r for h, r in migration_tables() if h and h[0] == "reference flag")
    listed = set()
    for row in rows:
        for cell in row[:2]:
            listed.update(span.split()[0] for span in code_spans(cell))
    missing = [flag for flag in REFERENCE_FLAGS if flag not in listed]
    assert not missing, f"reference flags without a migration row: {missing}"


def test_every_advanced_option_is_in_the_key_tables() -> None:
    """Every core option has a row; the other rows are options the built-in plugins
    declare (the Entropy calibrator's entropy_max_clip)."""
    from drpaiq_core.options import plugin_options
    from drpaiq_core.plugins import get_plugin_host

    names = {option.name for option in ADVANCED_OPTIONS}
    declared = set(plugin_options(get_plugin_host()))
    assert "entropy_max_clip" in declared
    for path in PAGES:
        keys: set[str] = set()
        for header, rows in tables(path.read_text(encoding="utf-8")):
            if header and header[0] == "key":
                keys.update(code_spans(row[0])[0] for row in rows)
        assert names <= keys, f"{path.name}: key table lacks {sorted(names - keys)}"
        assert keys - names == declared, f"{path.name}: plugin keys {sorted(keys - names)}"


def test_every_quantize_option_is_in_the_user_guide(cli) -> None:
    text = GUIDE.read_text(encoding="utf-8")
    for param in cli.commands["quantize"].params:
        if isinstance(param, click.Option):
            assert any(f"`{opt}" in text for opt in param.opts), f"{param.opts} undocumented"
    for param in cli.commands["evaluate"].params:
        if isinstance(param, click.Option):
            assert any(opt in text for opt in param.opts), f"evaluate {param.opts} undocumented"


# ---------------------------------------------------------------------------
# Python blocks
# ---------------------------------------------------------------------------


def check_imports(source: str) -> int:
    """Import every ``from drpaiq_core... import NAME`` of ``source``; the count."""
    count = 0
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("drpaiq_core"):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert getattr(module, alias.name, None) is not None, (
                    f"{node.module} has no {alias.name}"
                )
                count += 1
    return count


def test_python_blocks_compile_and_their_imports_exist() -> None:
    imported = 0
    for path in PAGES:
        for block in code_blocks(path.read_text(encoding="utf-8"), "python"):
            compile(block, str(path), "exec")
            imported += check_imports(block)
    assert imported >= 8


def test_the_datareader_example_quantizes(tmp_path, monkeypatch) -> None:
    """The guide's --datareader_path file, on a small NCHW model and a few images."""
    source = next(
        block
        for block in code_blocks(GUIDE.read_text(encoding="utf-8"), "python")
        if block.startswith("# file: letterbox_reader.py")
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "letterbox_reader.py").write_text(source, encoding="utf-8")
    classifier(tmp_path / "model.onnx", size=8)
    images(tmp_path / "calib", 5, size=12)
    result = CliRunner().invoke(
        build_cli(),
        [
            "-q",
            "quantize",
            "model.onnx",
            "-o",
            "model_int8.onnx",
            "--calibrate_dataset",
            "calib",
            "--datareader_path",
            "letterbox_reader.py",
            "--norm_mean",
            "0.485 0.456 0.406",
            "--norm_std",
            "0.229 0.224 0.225",
            "--skip_preprocess",
            "--summary-json",
            "summary.json",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["samples"] == 5
