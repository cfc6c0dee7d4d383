"""The ``drpaiq`` command: a click group built by a factory from the plugin host.

Importing this module is cheap: onnx and onnxruntime are imported only inside the
commands that need them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import click

from drpaiq_core import __version__
from drpaiq_core.errors import UserError
from drpaiq_core.plugins import BUILTIN_DISTRIBUTIONS, PluginHost, PluginInfo, get_plugin_host
from drpaiq_core.progress import DETAIL, bar_class
from drpaiq_core.write import reset_written, written_files

log = logging.getLogger("drpaiq")

#: Exit code of a run that failed on a bug (a user's mistake exits with 2, Ctrl-C 130).
INTERNAL_ERROR = 1


@dataclass
class AppState:
    """What the group options decided, handed to every sub-command."""

    host: PluginHost
    reader: str | None = None
    quiet: bool = False
    verbose: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class _OneLineHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            level = "error"
        elif record.levelno >= logging.WARNING:
            level = "warning"
        elif record.levelno >= logging.INFO:
            level = "info"
        elif record.levelno >= DETAIL:
            level = "detail"
        else:
            level = "debug"
        line = f"drpaiq: {level}: {record.getMessage()}"
        bars = bar_class()
        if bars is not None:
            # Print above an active progress bar instead of through it.
            bars.write(line, file=sys.stderr)
        else:
            click.echo(line, err=True)


def configure_logging(quiet: bool, verbose: int) -> None:
    """Warnings always reach stderr; info lines unless ``--quiet``; each stage's time
    with ``-v``; debug lines with ``-vv``."""
    logger = logging.getLogger("drpaiq")
    logger.handlers[:] = [_OneLineHandler()]
    logger.propagate = False
    if quiet:
        logger.setLevel(logging.WARNING)
    elif verbose >= 2:
        logger.setLevel(logging.DEBUG)
    elif verbose == 1:
        logger.setLevel(DETAIL)
    else:
        logger.setLevel(logging.INFO)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM (how build systems, CI timeouts and
    ``docker stop`` end a process), so that it unwinds like Ctrl-C: temporary files
    removed, no partial output; the exit code is 128 + 15."""

    exit_code = 143


def _interrupted(exc: KeyboardInterrupt) -> int:
    """Say that the run was stopped and what it had written by then; the exit code
    (130 for Ctrl-C, 143 for SIGTERM)."""
    what = "terminated" if isinstance(exc, Terminated) else "interrupted"
    written = written_files()
    # From the start of the line: a signal that lands while a progress bar is being
    # drawn leaves the bar's text without its closing carriage return.
    if written:
        names = ", ".join(str(path) for path in written)
        click.echo(
            f"\rdrpaiq: {what} after writing {names} (complete); nothing else was written",
            err=True,
        )
    else:
        click.echo(f"\rdrpaiq: {what}; no output was written", err=True)
    return Terminated.exit_code if isinstance(exc, Terminated) else 130


class DrpaiqGroup(click.Group):
    """A group that turns :class:`UserError` into one line and exit code 2, and
    Ctrl-C into exit code 130 (SIGTERM: 143)."""

    def invoke(self, ctx: click.Context) -> Any:
        reset_written()
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"drpaiq: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            ctx.exit(_interrupted(exc))


def build_cli(host: PluginHost | None = None) -> click.Group:
    """Build the ``drpaiq`` click group.

    :param host: the plugin host to use; a new one (loading entry points lazily) when
        omitted. Tests pass a host with their own plugins registered.
    """

    @click.group(cls=DrpaiqGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.option(
        "--reader",
        metavar="NAME",
        default=None,
        help="Data reader plugin for calibration/evaluation (e.g. nchw_image, nhwc_image).",
    )
    @click.option("--quiet", "-q", is_flag=True, help="No progress bars or info lines.")
    @click.option("--verbose", "-v", count=True, help="Each stage's time; -vv adds debug lines.")
    @click.version_option(__version__, prog_name="drpaiq")
    @click.pass_context
    def cli(ctx: click.Context, reader: str | None, quiet: bool, verbose: int) -> None:
        """drpaiq: INT8 post-training quantization of ONNX CNNs for INT8-only accelerators."""
        configure_logging(quiet, verbose)
        ctx.obj = AppState(
            host=ctx.obj or host or get_plugin_host(), reader=reader, quiet=quiet, verbose=verbose
        )

    @cli.command("plugins")
    @click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
    @click.pass_obj
    def plugins_command(state: AppState, as_json: bool) -> None:
        """List installed plugins and what each registers."""
        state.host.load_all()
        # The advanced options each plugin's classes read, with their help.
        options: dict[str, dict[str, str]] = {}
        for registry in state.host.iter_registry():
            for entry in registry.entries():
                for key, text in dict(getattr(entry.cls, "OPTIONS", {}) or {}).items():
                    options.setdefault(entry.plugin.name, {}).setdefault(str(key), str(text))
        rows = [
            {
                "name": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "registers": {kind: sorted(names) for kind, names in info.registers.items()},
                "options": dict(sorted(options.get(info.name, {}).items())),
            }
            for info in sorted(state.host.plugins.values(), key=lambda i: i.name)
        ]
        if as_json:
            click.echo(json.dumps({"plugins": rows, "broken": state.host.broken}, indent=2))
            return
        if not rows:
            click.echo(
                "No plugins are installed. The built-ins come in drpaiq-plugins-readers, "
                "drpaiq-plugins-ops and drpaiq-plugins-calibrators (pip install them)."
            )
            return
        headers = ("plugin", "distribution", "version", "registers")
        table = [
            (
                info.name,
                info.distribution,
                info.version,
                "; ".join(
                    f"{kind}: {', '.join(sorted(names))}" for kind, names in info.registers.items()
                )
                or "-",
            )
            for info in sorted(state.host.plugins.values(), key=lambda i: i.name)
        ]
        widths = [max(len(str(r[i])) for r in [headers, *table]) for i in range(3)]
        for row in [headers, *table]:
            click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + row[3])
        declared = [
            (key, info.name, text)
            for info in sorted(state.host.plugins.values(), key=lambda i: i.name)
            for key, text in sorted(options.get(info.name, {}).items())
        ]
        if declared:
            click.echo("\nadvanced options of plugins (KEY VALUE after the other options):")
            for key, name, text in declared:
                click.echo(f"  {key} ({name}): {text}")

    from drpaiq_core.cli_evaluate import compare_command, evaluate_command
    from drpaiq_core.cli_quantize import quantize_command

    cli.add_command(quantize_command)
    cli.add_command(evaluate_command)
    cli.add_command(compare_command)

    _add_plugin_commands(cli, host)
    return cli


def _add_plugin_commands(cli: click.Group, host: PluginHost | None) -> None:
    # Plugin commands must be known before click parses argv, so only this hook
    # loads entry points eagerly; plugin modules keep heavy imports inside functions.
    target = host or get_plugin_host()
    target.load()
    before = set(cli.commands)
    for impl in target.pm.hook.drpaiq_register_commands.get_hookimpls():
        scratch = click.Group()
        try:
            impl.function(scratch)
            target.trace(
                f"drpaiq_register_commands of plugin {impl.plugin_name!r} added "
                f"{', '.join(scratch.commands) or 'nothing'}"
            )
        except Exception as exc:
            info = target.plugins.get(impl.plugin_name)
            target.skip(impl.plugin_name, info.distribution if info else "?", exc)
            continue
        for name, command in scratch.commands.items():
            if name in before or name in cli.commands:
                info = target.plugins.get(impl.plugin_name)
                log.warning(
                    f"plugin {impl.plugin_name!r} from {info.distribution if info else '?'}: "
                    f"its command {name!r} is skipped, drpaiq already has a command of that "
                    "name; give the plugin's command another name"
                )
                continue
            cli.add_command(command, name)
    cli.context_settings["obj"] = target


def main(argv: list[str] | None = None, prog_name: str = "drpaiq") -> None:
    """Entry point of the ``drpaiq`` console script.

    Usage mistakes (an unknown option, a missing argument) become one line and exit
    code 2, like every other user error; Ctrl-C exits with 130 and SIGTERM with 143,
    both after removing temporary files. Anything else is a bug of drpaiq or of a
    plugin: one line and exit code 1 (the traceback with ``-vv``).
    """
    with _sigterm_unwinds():
        _main(argv, prog_name)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While the command runs, SIGTERM raises :class:`Terminated` (in the main thread
    only: Python runs signal handlers there, and only there can it set them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None, prog_name: str) -> None:
    reset_written()
    # Before the plugins load: their warnings are one line like every other. The
    # group's own options (-q, -v) set the level again once they are parsed.
    configure_logging(quiet=False, verbose=0)
    cli: click.Group | None = None
    try:
        # Inside the try: plugin loading may raise a UserError, and a Ctrl-C while the
        # plugins import must not end in a traceback either.
        cli = build_cli()
        code = cli.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except UserError as exc:
        click.echo(f"drpaiq: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"drpaiq: error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"drpaiq: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt as exc:
        sys.exit(_interrupted(exc))
    except click.Abort as exc:
        # click turns an interrupt outside the command (while parsing) into Abort.
        cause = exc.__cause__
        sys.exit(
            _interrupted(cause if isinstance(cause, KeyboardInterrupt) else KeyboardInterrupt())
        )
    except Exception as exc:
        if logging.getLogger("drpaiq").isEnabledFor(logging.DEBUG):
            raise
        text = str(exc).strip()
        detail = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
        host = cli.context_settings.get("obj") if cli is not None else None
        culprit = _plugin_at_fault(exc, host) if isinstance(host, PluginHost) else None
        if culprit is not None:
            info, where = culprit
            click.echo(
                f"drpaiq: error: internal error in plugin {info.name!r} from "
                f"{info.distribution} ({detail}, at {where}); this is a bug in that plugin: "
                f"rerun with -vv for the traceback and report it, or disable the plugin "
                f"with DRPAIQ_BLOCK_PLUGINS={info.name}",
                err=True,
            )
            sys.exit(INTERNAL_ERROR)
        click.echo(
            f"drpaiq: error: internal error ({detail}); this is a bug "
            "in drpaiq or a plugin: rerun with -vv for the traceback and report it",
            err=True,
        )
        sys.exit(INTERNAL_ERROR)
    sys.exit(code if isinstance(code, int) else 0)


def _plugin_at_fault(exc: BaseException, host: PluginHost) -> tuple[PluginInfo, str] | None:
    """The external plugin whose code raised ``exc`` (the innermost frame of the
    traceback that belongs to a loaded plugin's package) and ``file:line`` there; None
    when no external plugin's code is on the traceback (then drpaiq is at fault)."""
    import os.path
    import traceback

    found = None
    for frame, line in traceback.walk_tb(exc.__traceback__):
        module = str(frame.f_globals.get("__name__", ""))
        info = host.owner_of(module) if module else None
        if info is not None and info.distribution not in BUILTIN_DISTRIBUTIONS:
            found = (info, f"{os.path.basename(frame.f_code.co_filename)}:{line}")
    return found
