"""Docs that cannot drift: every hook has a section in docs/hooks.md whose example runs,
every public class of the plugin API is documented, and the plugin guide quotes the
example plugin verbatim."""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
from pathlib import Path

import pytest
from click.testing import CliRunner
from drpaiq_core.cli import build_cli
from drpaiq_core.plugins import ENV_BLOCK, ENV_ONLY, ENV_TRACE, PluginHost

from drpaiq_core import hookspecs, plugin_api
from tests._plugin_helpers import REPO

DOCS = REPO / "docs"
HOOKS_MD = DOCS / "hooks.md"
GUIDE_MD = DOCS / "writing-plugins.md"


def hook_specs() -> dict[str, inspect.Signature]:
    """Name -> signature of every hook spec in :mod:`drpaiq_core.hookspecs`."""
    return {
        name: inspect.signature(function)
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("drpaiq_")
    }


def sections(markdown: str) -> dict[str, str]:
    """``## heading`` -> the text up to the next heading of level 2 or higher."""
    found: dict[str, str] = {}
    parts = re.split(r"^## (.+)$", markdown, flags=re.MULTILINE)
    for heading, body in zip(parts[1::2], parts[2::2]):
        found[heading.strip()] = re.split(r"^# ", body, flags=re.MULTILINE)[0]
    return found


def code_blocks(markdown: str, language: str) -> list[str]:
    """The bodies of the fenced code blocks of ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```$", markdown, flags=re.MULTILINE | re.DOTALL)


def heading(name: str, signature: inspect.Signature) -> str:
    return f"{name}({', '.join(signature.parameters)})"


HOOKS = hook_specs()


def test_the_hook_specs_are_found() -> None:
    assert "drpaiq_register_readers" in HOOKS
    assert "drpaiq_register_commands" in HOOKS
    for name in HOOKS:
        assert hasattr(getattr(hookspecs, name), "drpaiq_spec"), f"{name} is not a hook spec"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_spec_has_a_section_titled_with_its_full_signature(name: str) -> None:
    titles = sections(HOOKS_MD.read_text(encoding="utf-8"))
    expected = heading(name, HOOKS[name])
    assert expected in titles, f"docs/hooks.md has no section '## {expected}'"
    assert code_blocks(titles[expected], "python"), f"'## {expected}' has no python example"


def test_every_hook_section_names_an_existing_hook_with_its_current_signature() -> None:
    current = {heading(name, signature) for name, signature in HOOKS.items()}
    for title in sections(HOOKS_MD.read_text(encoding="utf-8")):
        if title.startswith("drpaiq_"):
            assert title in current, f"docs/hooks.md documents '{title}', which is not a hook"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_spec_documents_each_parameter_and_the_return_value(name: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    for parameter in HOOKS[name].parameters:
        assert f":param {parameter}:" in doc, f"{name} does not document {parameter}"
    assert ":returns:" in doc


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_the_example_of_each_hook_section_is_a_working_plugin(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for switch in (ENV_ONLY, ENV_BLOCK, ENV_TRACE):
        monkeypatch.delenv(switch, raising=False)
    body = sections(HOOKS_MD.read_text(encoding="utf-8"))[heading(name, HOOKS[name])]
    source = code_blocks(body, "python")[0]
    module = types.ModuleType(f"drpaiq_docs_example_{name}")
    exec(compile(source, f"docs/hooks.md ({name})", "exec"), module.__dict__)
    host = PluginHost(load_entry_points=False)
    host.register(module, "docs_example", "docs")
    assert [c.name for c in host.pm.get_hookcallers(module)] == [name]
    if name == "drpaiq_register_commands":
        cli = build_cli(host)
        added = set(cli.commands) - set(build_cli(PluginHost(load_entry_points=False)).commands)
        assert added, "the example adds no command"
        for command in sorted(added):
            result = CliRunner().invoke(cli, [command, "--help"])
            assert result.exit_code == 0, result.output
        return
    registry = {
        "drpaiq_register_readers": host.readers,
        "drpaiq_register_calibrators": host.calibrators,
        "drpaiq_register_op_quantizers": host.op_quantizers,
        "drpaiq_register_exclusion_matchers": host.exclusion_matchers,
    }[name]
    [entry] = registry.entries()
    assert not inspect.isabstract(entry.cls), f"{entry.cls.__name__} leaves methods abstract"
    assert entry.cls.__doc__, f"{entry.cls.__name__} in the example has no docstring"
    assert entry.cls.DESCRIPTION
    assert host.broken == []


def test_the_reader_example_yields_repeatable_batches() -> None:
    body = sections(HOOKS_MD.read_text(encoding="utf-8"))["drpaiq_register_readers(register)"]
    namespace: dict[str, object] = {}
    exec(code_blocks(body, "python")[0], namespace)
    import numpy as np

    reader_cls = namespace["RandomUniformReader"]
    context = plugin_api.ReaderContext(
        dataset=None,
        model_path=None,
        inputs=[plugin_api.InputSpec("x", (None, 3, 4, 4), np.dtype(np.float32))],
        size_limit=5,
        batch_size=2,
    )
    reader = reader_cls(context)  # type: ignore[operator]
    first, second = list(reader.batches()), list(reader.batches())
    assert len(reader) == 5
    assert [b.feeds["x"].shape for b in first] == [(2, 3, 4, 4), (2, 3, 4, 4), (1, 3, 4, 4)]
    assert all(np.array_equal(a.feeds["x"], b.feeds["x"]) for a, b in zip(first, second))
    assert first[0].feeds["x"].dtype == np.float32


def public_classes() -> list[type]:
    return [obj for name in plugin_api.__all__ if inspect.isclass(obj := getattr(plugin_api, name))]


@pytest.mark.parametrize("cls", public_classes(), ids=lambda c: c.__name__)
def test_every_public_class_of_the_plugin_api_and_its_methods_have_docstrings(cls: type) -> None:
    assert cls.__doc__ and cls.__doc__.strip(), f"plugin_api.{cls.__name__} has no docstring"
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    for name, member in vars(cls).items():
        if name.startswith("_") or name in fields:
            continue
        function = member.fget if isinstance(member, property) else member
        if inspect.isfunction(function):
            assert function.__doc__, f"plugin_api.{cls.__name__}.{name} has no docstring"


def test_the_plugin_guide_quotes_the_example_plugin_verbatim() -> None:
    guide = GUIDE_MD.read_text(encoding="utf-8")
    quoted = 0
    for block in code_blocks(guide, r"\w+"):
        first, _, rest = block.partition("\n")
        marker = re.fullmatch(r"# file: (\S+)", first.strip())
        if not marker:
            continue
        path = REPO / marker.group(1)
        assert path.is_file(), f"writing-plugins.md quotes {marker.group(1)}, which is missing"
        assert rest in path.read_text(encoding="utf-8"), (
            f"writing-plugins.md quotes {marker.group(1)} but the file no longer contains:\n{rest}"
        )
        quoted += 1
    assert quoted >= 8


def test_the_plugin_guide_covers_the_switches_and_the_test_host() -> None:
    guide = GUIDE_MD.read_text(encoding="utf-8")
    for needle in (
        ENV_ONLY,
        ENV_BLOCK,
        ENV_TRACE,
        "PLUGIN_API_VERSION",
        "PluginHost(load_entry_points=False)",
        "PLUGIN_NAME",
        "[project.entry-points.drpaiq]",
        "drpaiq-core>=0.1,<0.2",
    ):
        assert needle in guide, f"writing-plugins.md does not mention {needle}"


@pytest.mark.parametrize(
    "document",
    [HOOKS_MD, GUIDE_MD, REPO / "README.md", DOCS / "examples/drpaiq-example-plugin/README.md"],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_relative_links_point_to_existing_files(document: Path) -> None:
    if not document.exists():
        pytest.skip(f"{document.name} is not written yet")
    text = document.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        assert (document.parent / target).exists(), f"{document.name} links to missing {target}"
