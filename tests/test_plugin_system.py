"""The plugin system with real plugins: registries, discovery through entry points,
broken plugins, the environment switches, name clashes, and the ``drpaiq plugins`` listing.

Inline plugins go through :class:`PluginHost` with ``load_entry_points=False``; entry-point
discovery uses throwaway distributions written into ``tmp_path`` (a ``dist-info`` folder
with ``entry_points.txt``) and put on ``sys.path`` or ``PYTHONPATH``. Those tests switch
off the installed built-ins and any other external plugin, so they see only their own.
Tests that check the installed built-ins say so in their name.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import click
import importlib_metadata
import pytest
from click.testing import CliRunner
from drpaiq_core.cli import AppState, build_cli
from drpaiq_core.errors import PluginError, UserError
from drpaiq_core.plugins import (
    BUILTIN_DISTRIBUTIONS,
    ENTRY_POINT_GROUP,
    ENV_BLOCK,
    ENV_ONLY,
    ENV_TRACE,
    PluginHost,
    get_plugin_host,
)

from drpaiq_core import PLUGIN_API_VERSION, hookimpl
from tests._plugin_helpers import (
    MaxAbsCalibrator,
    OpTypeMatcher,
    PassThroughQuantizer,
    ZerosReader,
    isolating_env,
    make_host,
    named,
    plugin,
    run_drpaiq,
    run_python,
    warning_lines,
    write_distribution,
    write_reader_distribution,
)

# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


def isolate(
    monkeypatch: pytest.MonkeyPatch, only: tuple[str, ...] = (), block: tuple[str, ...] = ()
) -> None:
    """Load only the external plugins in ``only``; never the installed built-ins."""
    monkeypatch.delenv(ENV_TRACE, raising=False)
    for key, value in isolating_env(only, block).items():
        monkeypatch.setenv(key, value)


def installed_builtin_entry_points() -> list[importlib_metadata.EntryPoint]:
    """The built-in plugins' entry points installed in this environment."""
    return sorted(
        (
            ep
            for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP)
            if ep.dist is not None and ep.dist.name in BUILTIN_DISTRIBUTIONS
        ),
        key=lambda ep: ep.name,
    )


# ---------------------------------------------------------------------------
# Registries, with inline plugins
# ---------------------------------------------------------------------------

#: (registry attribute of the host = keyword of :func:`plugin`, kind, a class)
KINDS = [
    ("readers", "reader", named(ZerosReader, "test_frames")),
    ("calibrators", "calibrator", named(MaxAbsCalibrator, "test_maxabs")),
    ("op_quantizers", "op quantizer", PassThroughQuantizer),
    ("exclusion_matchers", "exclusion matcher", OpTypeMatcher),
]


@pytest.mark.parametrize(("registry", "kind", "cls"), KINDS, ids=[k[0] for k in KINDS])
def test_each_registry_finds_a_registered_class_by_name_in_any_case(
    registry: str, kind: str, cls: type
) -> None:
    host = make_host((plugin(**{registry: [cls]}), "inline", "drpaiq-test-inline"))
    lookup = cls.OP_TYPES[0] if registry == "op_quantizers" else cls.PLUGIN_NAME
    assert getattr(host, registry).get(lookup.upper()) is cls
    assert getattr(host, registry).names() == [lookup.lower()]
    host.load_all()
    assert host.plugins["inline"].registers == {kind: [cls.PLUGIN_NAME]}
    # Nothing leaks into the other registries.
    for other in ("readers", "calibrators", "op_quantizers", "exclusion_matchers"):
        if other != registry:
            assert getattr(host, other).names() == []


def test_aliases_select_the_same_class_and_entries_list_it_once() -> None:
    calibrator = named(MaxAbsCalibrator, "maxabs", ALIASES=("AbsMax",))
    host = make_host((plugin(calibrators=[calibrator]), "inline", "drpaiq-test-inline"))
    assert host.calibrators.names() == ["absmax", "maxabs"]
    assert host.calibrators.get("ABSMAX") is calibrator
    assert [entry.cls for entry in host.calibrators.entries()] == [calibrator]


def test_registries_call_their_hook_only_when_first_asked_and_only_once() -> None:
    calls: list[str] = []
    host = make_host((plugin(readers=[ZerosReader], calls=calls), "inline", "drpaiq-test"))
    assert calls == []
    host.readers.names()
    host.readers.get("zeros")
    host.readers.find("zeros")
    assert calls == ["drpaiq_register_readers"]
    host.calibrators.names()
    assert calls == ["drpaiq_register_readers", "drpaiq_register_calibrators"]


def test_unknown_name_is_one_line_listing_installed_names_and_the_closest_match() -> None:
    readers = [named(ZerosReader, n) for n in ("nchw_image", "nhwc_image", "numpy", "tvm")]
    host = make_host((plugin(readers=readers), "inline", "drpaiq-test-inline"))
    with pytest.raises(PluginError) as raised:
        host.readers.get("nhcw_image")
    message = str(raised.value)
    assert isinstance(raised.value, UserError)
    assert "\n" not in message
    assert "unknown reader 'nhcw_image'" in message
    assert "installed: nchw_image, nhwc_image, numpy, tvm" in message
    # "nhcw" is one transposition away from both "nchw" and "nhwc"; the suggestion
    # must include nchw_image (the layout the user most likely meant).
    suggestion = message.split("did you mean", 1)[1].split(";")[0]
    assert "'nchw_image'" in suggestion


def test_unknown_name_without_any_close_match_still_lists_the_installed_names() -> None:
    host = make_host((plugin(readers=[ZerosReader]), "inline", "drpaiq-test-inline"))
    with pytest.raises(PluginError, match=r"unknown reader 'webcam'; installed: zeros$"):
        host.readers.get("webcam")


def test_unknown_builtin_name_on_an_empty_host_names_the_distribution_to_install() -> None:
    host = make_host()
    with pytest.raises(PluginError) as raised:
        host.readers.get("nchw_image")
    message = str(raised.value)
    assert "no reader plugins are installed" in message
    assert "pip install drpaiq-plugins-readers" in message
    with pytest.raises(PluginError, match="pip install drpaiq-plugins-calibrators"):
        host.calibrators.get("Entropy")


def test_two_plugins_claiming_one_name_is_an_error_naming_both_distributions() -> None:
    first, second = named(ZerosReader, "nchw_image"), named(ZerosReader, "NCHW_Image")
    host = make_host(
        (plugin(readers=[first]), "one", "drpaiq-test-one"),
        (plugin(readers=[second]), "two", "drpaiq-test-two"),
    )
    with pytest.raises(PluginError) as raised:
        host.readers.get("nchw_image")
    message = str(raised.value)
    assert "drpaiq-test-one" in message
    assert "drpaiq-test-two" in message
    assert "nchw_image" in message.lower()
    assert ENV_BLOCK in message


def test_two_op_quantizers_claiming_one_op_type_is_an_error_naming_both_distributions() -> None:
    other = named(PassThroughQuantizer, "other_identity")
    host = make_host(
        (plugin(op_quantizers=[PassThroughQuantizer]), "one", "drpaiq-test-one"),
        (plugin(op_quantizers=[other]), "two", "drpaiq-test-two"),
    )
    with pytest.raises(PluginError, match="'Identity'") as raised:
        host.op_quantizers.names()
    assert "drpaiq-test-one" in str(raised.value)
    assert "drpaiq-test-two" in str(raised.value)


def test_a_plugin_whose_hook_raises_costs_one_warning_and_the_others_keep_working() -> None:
    def drpaiq_register_readers(register: object) -> None:
        raise RuntimeError("camera driver missing")

    bad = types.SimpleNamespace(drpaiq_register_readers=hookimpl(drpaiq_register_readers))
    host = make_host(
        (plugin(readers=[ZerosReader]), "good", "drpaiq-test-good"),
        (bad, "bad", "drpaiq-test-bad"),
    )
    assert host.readers.names() == ["zeros"]
    assert len(host.broken) == 1
    line = host.broken[0]
    assert "'bad'" in line
    assert "drpaiq-test-bad" in line
    assert "RuntimeError: camera driver missing" in line
    assert f"{ENV_BLOCK}=bad" in line


def test_a_registered_class_without_plugin_name_costs_one_warning_and_the_rest_works() -> None:
    class Nameless(ZerosReader):
        PLUGIN_NAME = ""

    host = make_host(
        (plugin(readers=[ZerosReader]), "good", "drpaiq-test-good"),
        (plugin(readers=[Nameless]), "sloppy", "drpaiq-test-sloppy"),
    )
    assert host.readers.names() == ["zeros"]
    assert len(host.broken) == 1
    assert "drpaiq-test-sloppy" in host.broken[0]
    assert "PLUGIN_NAME" in host.broken[0]


def test_trace_switch_writes_every_hook_call_to_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(ENV_TRACE, "1")
    host = make_host((plugin(readers=[ZerosReader]), "inline", "drpaiq-test-inline"))
    assert capsys.readouterr().err == ""
    host.readers.names()
    assert "drpaiq_register_readers" in capsys.readouterr().err


def test_plugin_api_version_is_major_dot_minor() -> None:
    major, minor = PLUGIN_API_VERSION.split(".")
    assert int(major) >= 1
    assert int(minor) >= 0


# ---------------------------------------------------------------------------
# The click command, with inline plugins
# ---------------------------------------------------------------------------


def test_plugins_command_lists_each_plugin_as_a_table_and_as_json() -> None:
    host = make_host(
        (
            plugin(readers=[named(ZerosReader, "test_frames")], exclusion_matchers=[OpTypeMatcher]),
            "inline",
            "drpaiq-test-inline",
        )
    )
    cli = build_cli(host)
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == ["plugin", "distribution", "version", "registers"]
    assert row.split()[:2] == ["inline", "drpaiq-test-inline"]
    # Kinds in registry order: readers, calibrators, op quantizers, exclusion matchers.
    assert row.endswith("reader: test_frames; exclusion matcher: test_op_type")

    result = CliRunner().invoke(build_cli(host), ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    assert listing["broken"] == []
    [entry] = listing["plugins"]
    assert entry["name"] == "inline"
    assert entry["distribution"] == "drpaiq-test-inline"
    assert entry["registers"] == {"reader": ["test_frames"], "exclusion matcher": ["test_op_type"]}


def test_plugin_commands_are_added_and_a_taken_name_keeps_the_builtin() -> None:
    def add(cli: click.Group) -> None:
        @cli.command("hello")
        @click.argument("who")
        def hello(who: str) -> None:
            """Say hello."""
            click.echo(f"hello {who}")

        @cli.command("plugins")
        def impostor() -> None:
            click.echo("impostor")

    host = make_host((plugin(commands=add), "inline", "drpaiq-test-inline"))
    cli = build_cli(host)
    runner = CliRunner()
    assert runner.invoke(cli, ["hello", "world"]).stdout == "hello world\n"
    assert "hello" in runner.invoke(cli, ["--help"]).stdout
    listing = runner.invoke(cli, ["plugins", "--json"])
    assert listing.exit_code == 0
    assert "impostor" not in listing.stdout


def test_reader_option_with_an_unknown_name_is_one_error_line_and_exit_code_2() -> None:
    def add(cli: click.Group) -> None:
        @cli.command("which-reader")
        @click.pass_obj
        def which_reader(state: AppState) -> None:
            assert state.reader is not None
            click.echo(state.host.readers.get(state.reader).__name__)

    readers = [named(ZerosReader, "nchw_image"), named(ZerosReader, "nhwc_image")]
    host = make_host((plugin(readers=readers, commands=add), "inline", "drpaiq-test-inline"))
    runner = CliRunner()
    ok = runner.invoke(build_cli(host), ["--reader", "NHWC_image", "which-reader"])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.strip() == readers[1].__name__

    bad = runner.invoke(build_cli(host), ["--reader", "nhcw_image", "which-reader"])
    assert bad.exit_code == 2
    [line] = bad.stderr.splitlines()
    assert line.startswith("drpaiq: error: unknown reader 'nhcw_image'")
    assert "installed: nchw_image, nhwc_image" in line
    assert "Traceback" not in bad.output


# ---------------------------------------------------------------------------
# Discovery through real entry points (throwaway distributions on sys.path)
# ---------------------------------------------------------------------------


def test_entry_point_plugin_is_imported_only_when_a_registry_is_first_asked(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolate(monkeypatch, only=("alpha",))
    module = write_reader_distribution(
        site, "drpaiq-test-alpha", "alpha", "alpha_frames", version="1.2.3"
    )
    host = get_plugin_host()
    assert f"{module}.plugin" not in sys.modules
    assert host.readers.get("alpha_frames").__module__ == f"{module}.plugin"
    assert f"{module}.plugin" in sys.modules
    host.load_all()
    info = host.plugins["alpha"]
    assert (info.distribution, info.version, info.module) == (
        "drpaiq-test-alpha",
        "1.2.3",
        f"{module}.plugin",
    )
    assert info.registers == {"reader": ["alpha_frames"]}
    assert host.broken == []


def test_plugin_that_fails_to_import_costs_one_warning_and_the_others_keep_working(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolate(monkeypatch, only=("alpha", "broken"))
    write_reader_distribution(site, "drpaiq-test-alpha", "alpha", "alpha_frames")
    write_distribution(
        site,
        "drpaiq-test-broken",
        "0.3.0",
        {"broken": "drpaiq_test_broken.plugin"},
        {
            "drpaiq_test_broken/__init__.py": "",
            "drpaiq_test_broken/plugin.py": "raise ImportError('needs libfoo 2.0')\n",
        },
    )
    host = get_plugin_host()
    assert host.readers.names() == ["alpha_frames"]
    assert sorted(host.plugins) == ["alpha"]
    [line] = host.broken
    assert "'broken'" in line
    assert "drpaiq-test-broken" in line
    assert "ImportError: needs libfoo 2.0" in line
    assert f"{ENV_BLOCK}=broken" in line


@pytest.mark.parametrize(
    ("hook", "named"),
    [
        # A misspelled argument.
        ("drpaiq_register_readers(registr)", ("'typo'", "registr")),
        # A misspelled hook name: without a check, pluggy accepts an implementation of a
        # hook that does not exist and the plugin silently registers nothing.
        ("drpaiq_register_reader(register)", ("drpaiq_register_reader",)),
    ],
    ids=["argument", "hook-name"],
)
def test_a_misspelled_hook_implementation_costs_one_warning_line(
    site: Path, monkeypatch: pytest.MonkeyPatch, hook: str, named: tuple[str, ...]
) -> None:
    isolate(monkeypatch, only=("alpha", "typo"))
    write_reader_distribution(site, "drpaiq-test-alpha", "alpha", "alpha_frames")
    write_distribution(
        site,
        "drpaiq-test-typo",
        "0.1.0",
        {"typo": "drpaiq_test_typo"},
        {
            "drpaiq_test_typo.py": f"""
                from drpaiq_core import hookimpl

                @hookimpl
                def {hook}:
                    pass
            """
        },
    )
    host = get_plugin_host()
    assert host.readers.names() == ["alpha_frames"]
    [line] = host.broken
    assert "\n" not in line
    assert "drpaiq-test-typo" in line
    for text in named:
        assert text in line
    assert f"{ENV_BLOCK}=typo" in line


def _alpha_and_beta(site: Path) -> None:
    write_reader_distribution(site, "drpaiq-test-alpha", "alpha", "alpha_frames")
    write_reader_distribution(site, "drpaiq-test-beta", "beta", "beta_frames")


@pytest.mark.parametrize(
    ("only", "expected"),
    [("alpha", ["alpha"]), ("beta, alpha", ["alpha", "beta"]), ("", []), (" , ", [])],
    ids=["one", "two", "empty", "blank"],
)
def test_plugins_switch_loads_only_the_named_external_plugins(
    site: Path, monkeypatch: pytest.MonkeyPatch, only: str, expected: list[str]
) -> None:
    isolate(monkeypatch)
    monkeypatch.setenv(ENV_ONLY, only)
    _alpha_and_beta(site)
    host = get_plugin_host()
    host.load_all()
    assert sorted(host.plugins) == expected
    assert host.broken == []


@pytest.mark.parametrize("blocked", ["beta", "drpaiq-test-beta"], ids=["by-name", "by-dist"])
def test_block_switch_skips_the_named_plugin(
    site: Path, monkeypatch: pytest.MonkeyPatch, blocked: str
) -> None:
    isolate(monkeypatch, only=("alpha", "beta"), block=(blocked,))
    _alpha_and_beta(site)
    host = get_plugin_host()
    assert host.readers.names() == ["alpha_frames"]
    assert "drpaiq_test_beta.plugin" not in sys.modules


def test_two_distributions_claiming_one_name_is_an_error_naming_both(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolate(monkeypatch, only=("alpha", "gamma"))
    write_reader_distribution(site, "drpaiq-test-alpha", "alpha", "frames")
    write_reader_distribution(site, "drpaiq-test-gamma", "gamma", "Frames")
    with pytest.raises(PluginError) as raised:
        get_plugin_host().readers.get("frames")
    assert "drpaiq-test-alpha" in str(raised.value)
    assert "drpaiq-test-gamma" in str(raised.value)
    # Blocking one of them resolves the clash, as the message says.
    monkeypatch.setenv(ENV_BLOCK, f"{','.join(BUILTIN_DISTRIBUTIONS)},gamma")
    assert get_plugin_host().readers.get("frames").__module__ == "drpaiq_test_alpha.plugin"


def test_installed_builtins_load_even_when_no_external_plugin_may(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builtins = installed_builtin_entry_points()
    if not builtins:
        pytest.skip("no built-in plugin distribution is installed")
    monkeypatch.delenv(ENV_BLOCK, raising=False)
    monkeypatch.setenv(ENV_ONLY, "")
    _alpha_and_beta(site)
    host = get_plugin_host()
    host.load()
    assert "alpha" not in host.plugins
    assert "beta" not in host.plugins
    for ep in builtins:
        assert ep.name in host.plugins or any(f"'{ep.name}'" in b for b in host.broken)
    assert {info.distribution for info in host.plugins.values()} <= BUILTIN_DISTRIBUTIONS


def test_installed_builtins_load_and_register_without_warnings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builtins = installed_builtin_entry_points()
    if not builtins:
        pytest.skip("no built-in plugin distribution is installed")
    monkeypatch.delenv(ENV_BLOCK, raising=False)
    monkeypatch.setenv(ENV_ONLY, "")
    host = PluginHost()
    host.load_all()
    assert host.broken == []
    for ep in builtins:
        assert host.plugins[ep.name].registers, f"{ep.name} registers nothing"


# ---------------------------------------------------------------------------
# The real command in a fresh interpreter
# ---------------------------------------------------------------------------

ALPHA_PLUGIN = """
from drpaiq_core import hookimpl
from drpaiq_core.plugin_api import ExclusionMatcher, Reader


class AlphaReader(Reader):
    PLUGIN_NAME = "alpha_frames"
    OPTIONS = {"alpha_gain": "gain the alpha reader applies (default 1)"}

    def __len__(self):
        return 0

    def batches(self):
        return iter(())


class AlphaMatcher(ExclusionMatcher):
    PLUGIN_NAME = "alpha_tail"

    def match(self, graph, rules):
        return []


@hookimpl
def drpaiq_register_readers(register):
    register(AlphaReader)


@hookimpl
def drpaiq_register_exclusion_matchers(register):
    register(AlphaMatcher)
"""


@pytest.fixture
def alpha_site(tmp_path: Path) -> Path:
    """A folder with one well-behaved and two broken throwaway distributions."""
    site = tmp_path / "cli-site"
    write_distribution(
        site,
        "drpaiq-test-alpha",
        "1.2.3",
        {"alpha": "drpaiq_test_alpha_cli"},
        {"drpaiq_test_alpha_cli.py": ALPHA_PLUGIN},
    )
    write_distribution(
        site,
        "drpaiq-test-broken",
        "0.3.0",
        {"broken": "drpaiq_test_broken_cli"},
        {"drpaiq_test_broken_cli.py": "import drpaiq_test_no_such_module\n"},
    )
    write_distribution(
        site,
        "drpaiq-test-typo",
        "0.1.0",
        {"typo": "drpaiq_test_typo_cli"},
        {
            "drpaiq_test_typo_cli.py": (
                "from drpaiq_core import hookimpl\n\n\n"
                "@hookimpl\ndef drpaiq_register_readers(registr):\n    pass\n"
            )
        },
    )
    return site


def test_drpaiq_plugins_prints_a_table_and_warns_once_per_broken_plugin(alpha_site: Path) -> None:
    result = run_drpaiq(
        "plugins",
        pythonpath=[alpha_site],
        switches=isolating_env(only=("alpha", "broken", "typo")),
    )
    assert result.returncode == 0, result.stderr
    header, row, blank, title, option = result.stdout.splitlines()
    assert header.split() == ["plugin", "distribution", "version", "registers"]
    assert row.split()[:3] == ["alpha", "drpaiq-test-alpha", "1.2.3"]
    assert (blank, title) == (
        "",
        "advanced options of plugins (KEY VALUE after the other options):",
    )
    assert option == "  alpha_gain (alpha): gain the alpha reader applies (default 1)"
    assert row.endswith("reader: alpha_frames; exclusion matcher: alpha_tail")
    # One line per broken plugin, each naming plugin, distribution, error and the fix.
    for name, dist, error in [
        ("broken", "drpaiq-test-broken", "No module named 'drpaiq_test_no_such_module'"),
        ("typo", "drpaiq-test-typo", "registr"),
    ]:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        mentioning = [line for line in lines if dist in line]
        assert len(mentioning) == 1, result.stderr
        assert f"'{name}'" in mentioning[0]
        assert error in mentioning[0]
        assert f"{ENV_BLOCK}={name}" in mentioning[0]
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 2, result.stderr


def test_drpaiq_plugins_json_lists_plugins_and_broken_ones(alpha_site: Path) -> None:
    result = run_drpaiq(
        "plugins",
        "--json",
        pythonpath=[alpha_site],
        switches=isolating_env(only=("alpha", "broken")),
    )
    assert result.returncode == 0, result.stderr
    listing = json.loads(result.stdout)
    assert listing["plugins"] == [
        {
            "name": "alpha",
            "distribution": "drpaiq-test-alpha",
            "version": "1.2.3",
            "registers": {"reader": ["alpha_frames"], "exclusion matcher": ["alpha_tail"]},
            "options": {"alpha_gain": "gain the alpha reader applies (default 1)"},
        }
    ]
    [broken] = listing["broken"]
    assert "drpaiq-test-broken" in broken
    assert len(warning_lines(result.stderr, "drpaiq-test-broken")) == 1


def test_drpaiq_plugins_with_every_plugin_switched_off_says_none_are_installed(
    alpha_site: Path,
) -> None:
    result = run_drpaiq("plugins", pythonpath=[alpha_site], switches=isolating_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("No plugins are installed.")
    assert "pip install" in result.stdout
    assert result.stderr == ""


def test_trace_switch_traces_hook_calls_of_the_real_command(alpha_site: Path) -> None:
    switches = {**isolating_env(only=("alpha",)), ENV_TRACE: "1"}
    result = run_drpaiq("plugins", pythonpath=[alpha_site], switches=switches)
    assert result.returncode == 0, result.stderr
    traced = [line for line in result.stderr.splitlines() if line.startswith("drpaiq trace:")]
    assert any("drpaiq_register_readers" in line and "alpha" in line for line in traced)


# ---------------------------------------------------------------------------
# Startup stays light (checks the installed built-ins)
# ---------------------------------------------------------------------------

_IMPORTED_AFTER = """
import json, sys
from drpaiq_core.cli import main
try:
    main({argv!r})
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = [m for m in ("onnxruntime", "onnx", "PIL", "matplotlib", "scipy") if m in sys.modules]
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
"""


def _heavy_after(argv: list[str], switches: dict[str, str] | None = None) -> tuple[int, list[str]]:
    result = run_python(_IMPORTED_AFTER.format(argv=argv), switches=switches)
    report = json.loads(result.stderr.strip().splitlines()[-1])
    return report["code"], report["heavy"]


@pytest.mark.parametrize("argv", [["--help"], ["plugins"], ["plugins", "--json"]])
def test_help_and_plugins_do_not_import_onnxruntime_with_the_installed_builtins(
    argv: list[str],
) -> None:
    code, heavy = _heavy_after(argv)
    assert code == 0
    assert "onnxruntime" not in heavy


@pytest.mark.parametrize("argv", [["--help"], ["plugins"]])
def test_the_core_alone_imports_neither_onnx_nor_onnxruntime_for_help_and_plugins(
    argv: list[str],
) -> None:
    code, heavy = _heavy_after(argv, switches=isolating_env())
    assert code == 0
    assert "onnxruntime" not in heavy
    assert "onnx" not in heavy


_BUILTINS = installed_builtin_entry_points()


@pytest.mark.parametrize(
    "entry_point",
    _BUILTINS or [pytest.param(None, marks=pytest.mark.skip(reason="no built-in installed"))],
    ids=[ep.name for ep in _BUILTINS] or ["none"],
)
def test_each_installed_builtin_plugin_registers_without_importing_heavy_libraries(
    entry_point: importlib_metadata.EntryPoint,
) -> None:
    others = [ep.name for ep in _BUILTINS if ep.name != entry_point.name]
    code = """
        import json, sys
        from drpaiq_core.plugins import PluginHost
        host = PluginHost()
        host.load_all()
        heavy = [m for m in ("onnxruntime", "onnx", "PIL") if m in sys.modules]
        print(json.dumps({"heavy": heavy, "broken": host.broken,
                          "loaded": sorted(host.plugins)}))
    """
    result = run_python(code, switches={ENV_ONLY: "", ENV_BLOCK: ",".join(others)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["broken"] == []
    assert report["loaded"] == [entry_point.name]
    assert report["heavy"] == [], (
        f"built-in plugin {entry_point.name} ({entry_point.value}) imports {report['heavy']} "
        "while registering; import them inside the functions that need them"
    )
