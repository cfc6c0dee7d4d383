"""``drpaiq quantize``: the reference tool's command line, plus drpaiq's own short form.

A reference command line works with ``python3 -m drpai_quantizer.cli_interface``
replaced by ``drpaiq quantize``::

    drpaiq quantize --input_model_path m.onnx --output_model_path m_q.onnx \\
        --calibrate_dataset ./calibrate_images --datareader_path ./nchw_datareader.py \\
        --norm_mean [0.4914, 0.4822, 0.4465] --norm_std [0.2023, 0.1994, 0.2010]

and so does the short form ``drpaiq quantize m.onnx -o m_q.onnx --norm_mean ...``.

Before click sees the arguments, :class:`ReferenceCommand` rewrites three things the
reference's parser accepted and click does not: list values written as several shell
words (``[0.4914, 0.4822, 0.4465]``, ``0.1 0.2 0.3``), the optional value of
``--preprocessed_model_output``, and advanced options given as bare ``key value``
pairs after the other options (``exclude_act_func_dir rules.csv``).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import click

from drpaiq_core.cli import AppState
from drpaiq_core.errors import UserError
from drpaiq_core.options import (
    all_option_names,
    apply_advanced,
    calibrator_name,
    find_option,
    known_option_names,
    parse_advanced,
    parse_name_list,
    parse_norm,
    parse_shape,
    plugin_options,
)

#: ``ctx.meta`` key of the advanced ``(key, value)`` pairs found on the command line.
ADVANCED_META = "drpaiq.advanced"
#: Samples ``--diagnose`` runs when ``--diagnose-samples`` is not given.
DIAGNOSE_SAMPLES = 32

_NUMBER = re.compile(r"^[\[(]*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?[\])]*,?[\])]*,?$")


def _is_number_word(word: str) -> bool:
    return bool(_NUMBER.match(word.strip())) or word.strip() in {",", "]", ")"}


def join_list_values(args: list[str], names: tuple[str, ...]) -> list[str]:
    """Join the shell words of a list value after each option in ``names`` into one
    word: ``--norm_mean [0.4914, 0.4822, 0.4465]`` (three words) becomes
    ``--norm_mean "[0.4914, 0.4822, 0.4465]"``; ``--norm_mean 0.1 0.2 0.3`` likewise."""
    out: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        name, eq, inline = word.partition("=")
        if word == "--":
            out.extend(args[i:])
            break
        if name not in names or (not eq and i + 1 >= len(args)):
            out.append(word)
            i += 1
            continue
        j = i + 1
        text = inline if eq else args[i + 1]
        if not eq:
            j += 1
        if text.lstrip().startswith(("[", "(")):
            while not re.search(r"[\])]", text) and j < len(args):
                text += " " + args[j]
                j += 1
        else:
            while j < len(args) and _is_number_word(args[j]):
                text += " " + args[j]
                j += 1
        out.extend([name, text])
        i = j
    return out


def _is_option_word(word: str) -> bool:
    """Whether a command-line word is an option name: negative numbers are not, nor
    is a list of numbers that :func:`join_list_values` joined (``"-0.5 -0.5 -0.5"``)."""
    if not word.startswith("-") or len(word) < 2:
        return False
    parts = [part for part in re.split(r"[\s,\[\]()]+", word) if part]
    return not parts or not all(_is_number_word(part) for part in parts)


#: Options of the ``drpaiq`` group itself, often misplaced after the command.
GROUP_OPTIONS = ("--reader", "--quiet", "-q", "--verbose", "-v")


def _no_such_option(name: str, known: dict[str, bool], ctx: click.Context) -> str:
    if name in GROUP_OPTIONS:
        return (
            f"{name} belongs to drpaiq itself and goes before the command: "
            f"drpaiq {name}{' NAME' if name == '--reader' else ''} {ctx.info_name} ..."
        )
    close = difflib.get_close_matches(name, [opt for opt in known if opt.startswith("--")], 1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"no such option {name}{hint} (see '{ctx.command_path} --help')"


class ReferenceCommand(click.Command):
    """A click command that accepts the reference tool's argument conventions (see
    the module doc). Positional words that name an advanced option take the next
    word as value; the other positional words are kept for the command's arguments."""

    #: Options whose value may be a list written as several shell words.
    list_options: tuple[str, ...] = ("--norm_mean", "--norm_std")
    #: Options whose value is optional (the long name is used when it is missing).
    optional_value: tuple[str, ...] = ()
    #: Whether bare ``key value`` advanced options are accepted.
    accepts_advanced: bool = True

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Rewrite ``args`` (see the class doc), then let click parse them."""
        args = join_list_values(list(args), self.list_options)
        rewritten, positional = self._split(ctx, args)
        advanced: list[tuple[str, str]] = []
        kept: list[str] = []
        i = 0
        while i < len(positional):
            word = positional[i]
            if self.accepts_advanced and find_option(word) is not None:
                if i + 1 >= len(positional):
                    raise UserError(f"advanced option {word} needs a value: {word} VALUE")
                advanced.append((word, positional[i + 1]))
                i += 2
                continue
            if self.accepts_advanced and not self._takes_word(word, rewritten, kept):
                # Not a core option and no argument slot left: a plugin's option, or a
                # mistake that the option check reports with the known names.
                if i + 1 >= len(positional):
                    raise UserError(
                        f"unexpected argument {word!r}: the model is given once, and advanced "
                        "options come as KEY VALUE pairs after all options (known keys: "
                        f"{', '.join(_known_keys(ctx))})"
                    )
                advanced.append((word, positional[i + 1]))
                i += 2
                continue
            kept.append(word)
            i += 1
        ctx.meta[ADVANCED_META] = advanced
        return super().parse_args(ctx, [*rewritten, "--", *kept] if kept else rewritten)

    def _takes_word(self, word: str, options: list[str], kept: list[str]) -> bool:
        """Whether the positional ``word`` is one of the command's arguments (after
        ``kept``), given the options on the command line (``options``); if not, it is
        an advanced option's key."""
        return self._max_positional(options) > len(kept)

    def _max_positional(self, options: list[str]) -> int:
        """How many positional words the command's arguments take, given the options
        on the command line (``options``)."""
        total = 0
        for param in self.params:
            if isinstance(param, click.Argument):
                if param.nargs < 0:
                    return 1_000_000
                total += param.nargs
        return total

    def _split(self, ctx: click.Context, args: list[str]) -> tuple[list[str], list[str]]:
        """Options (with their values) apart from positional words."""
        takes_value: dict[str, bool] = {}
        long_name: dict[str, str] = {}
        for param in self.params:
            if isinstance(param, click.Option):
                for opt in [*param.opts, *param.secondary_opts]:
                    takes_value[opt] = not (param.is_flag or param.count)
                    long_name[opt] = param.opts[0]
        for opt in ctx.help_option_names:
            takes_value[opt] = False
        optional = set(self.optional_value)
        rewritten: list[str] = []
        positional: list[str] = []
        i = 0
        while i < len(args):
            word = args[i]
            if word == "--":
                positional.extend(args[i + 1 :])
                break
            if _is_option_word(word):
                name = word.split("=", 1)[0]
                if name not in takes_value:
                    # Reported here: otherwise its value would be taken for a stray
                    # positional word and the message would blame that word.
                    raise UserError(_no_such_option(name, takes_value, ctx))
                rewritten.append(word)
                i += 1
                if "=" in word or not takes_value.get(name, False):
                    continue
                if name in optional or long_name.get(name) in optional:
                    following = args[i] if i < len(args) else None
                    if (
                        following is None
                        or (following.startswith("-") and following != "-")
                        or find_option(following) is not None
                    ):
                        rewritten[-1] = f"{long_name[name]}="
                        continue
                # As argparse does (the reference's parser): an option word is never
                # taken as a value, so "-o --skip_preprocess" does not write a model
                # named "--skip_preprocess".
                if i >= len(args) or args[i] == "--" or _is_option_word(args[i]):
                    raise UserError(
                        f"option {name} needs a value: {name} VALUE (see "
                        f"'{ctx.command_path} --help')"
                    )
                rewritten.append(args[i])
                i += 1
                continue
            positional.append(word)
            i += 1
        return rewritten, positional


class QuantizeCommand(ReferenceCommand):
    """``drpaiq quantize``'s parser: ``-pmo`` may come without a value, and when
    ``--input_model_path`` is given, MODEL takes a positional word only if it names an
    ``.onnx`` file (the model given twice, which :func:`build_config` then checks);
    the reference form's other positional words are advanced options."""

    optional_value = ("--preprocessed_model_output",)

    def _takes_word(self, word: str, options: list[str], kept: list[str]) -> bool:
        if any(opt.split("=", 1)[0] == "--input_model_path" for opt in options):
            return not kept and word.lower().endswith(".onnx")
        return super()._takes_word(word, options, kept)


def _known_keys(ctx: click.Context) -> list[str]:
    """The advanced option names, the installed plugins' included when the command
    runs under the ``drpaiq`` group (which holds the plugin host)."""
    state = ctx.find_object(AppState)
    if state is None:
        return known_option_names()
    return all_option_names(plugin_options(state.host))


def _existing_file(path: Path, what: str, flag: str) -> Path:
    if not path.exists():
        raise UserError(f"{what} {path} does not exist; check {flag}")
    if not path.is_file():
        raise UserError(f"{what} {path} is not a file; check {flag}")
    return path


def _norm(value: str | None, flag: str) -> tuple[float, ...] | None:
    """``--norm_mean``/``--norm_std``: three finite numbers, or None (kept for
    ``drpaiq evaluate``, which reads them the same way)."""
    return parse_norm(value, flag)


def _one_path(values: tuple[str, ...], what: str, flags: str) -> str | None:
    """The one path an option given several times (under any of its spellings) names;
    different paths are a :class:`UserError` naming them all."""
    distinct = list(dict.fromkeys(values))
    if len({Path(v) for v in distinct}) > 1:
        raise UserError(
            f"two {what} paths given: {' and '.join(distinct)} (through {flags}); give one"
        )
    return distinct[0] if distinct else None


def build_config(state: AppState, params: dict[str, Any], advanced: list[tuple[str, str]]) -> Any:
    """The :class:`~drpaiq_core.config.QuantizeConfig` of a ``drpaiq quantize`` command
    line, after the checks that need no heavy work (paths, names, numbers)."""
    from drpaiq_core.config import QuantizeConfig
    from drpaiq_core.datasource import DEFAULT_READER
    from drpaiq_core.preprocess import check_mode
    from drpaiq_core.write import check_output_path

    model_arg = params["model"]
    model_opt = _one_path(params["input_model_path"], "input model", "--input_model_path")
    output = _one_path(params["output"], "output model", "-o/--output/--output_model_path")
    if model_arg and model_opt and Path(model_arg) != Path(model_opt):
        raise UserError(
            f"two models given: {model_arg} and --input_model_path {model_opt}; give one"
        )
    model = model_arg or model_opt
    if not model:
        raise UserError(
            "no model given: drpaiq quantize MODEL -o OUT (or --input_model_path MODEL "
            "--output_model_path OUT)"
        )
    if not output:
        raise UserError("no output path given: add -o OUT.onnx (or --output_model_path OUT.onnx)")
    input_path, output_path = Path(model), Path(output)
    _existing_file(input_path, "model", "the model path")
    check_output_path(output_path, (input_path,))

    host = state.host
    method = calibrator_name(params["calibrate_method"])
    host.calibrators.get(method)
    if params["tvm"] and params["datareader_path"]:
        raise UserError(
            "--tvm uses the built-in TVM data reader; do not give --datareader_path with it"
        )
    datareader = Path(params["datareader_path"]) if params["datareader_path"] else None
    if datareader is not None:
        _existing_file(datareader, "datareader file", "--datareader_path")
    elif not params["tvm"]:
        host.readers.get(state.reader or DEFAULT_READER)

    preprocessed: Path | None = None
    if params["preprocessed_model_output"] is not None:
        if params["skip_preprocess"]:
            raise UserError(
                "--preprocessed_model_output keeps the pre-processed model, but "
                "--skip_preprocess skips pre-processing; give one of them"
            )
        given = params["preprocessed_model_output"]
        preprocessed = (
            Path(given) if given else output_path.parent / f"{input_path.stem}_preprocessed.onnx"
        )

    dataset = params["calibrate_dataset"]
    config = QuantizeConfig(
        input_model=input_path,
        output_model=output_path,
        reader=state.reader,
        calibrate_dataset=Path(dataset) if dataset else None,
        calibrate_method=method,
        norm_mean=parse_norm(params["norm_mean"], "--norm_mean"),
        norm_std=parse_norm(params["norm_std"], "--norm_std", nonzero=True),
        op_types_to_exclude=parse_name_list(params["operate_to_exclude"]),
        nodes_to_exclude=parse_name_list(params["node_to_exclude"]),
        pattern_file=Path(params["exclude_patterns"]) if params["exclude_patterns"] else None,
        activation_type=params["activation_type"] or "int8",
        activation_symmetric=params["activation_symmetric"],
        per_channel=not params["per_tensor"],
        skip_preprocess=params["skip_preprocess"],
        preprocess_mode=check_mode(params["preprocess_mode"]),
        preprocessed_model_output=preprocessed,
        size_limit=params["size_limit"],
        batch_size=params["batch_size"] or 1,
        input_shape=parse_shape(params["input_shape"]) if params["input_shape"] else None,
        debug_dir=Path(params["debug_dir"]) if params["debug_dir"] else None,
        summary_json=Path(params["summary_json"]) if params["summary_json"] else None,
        load_ranges=Path(params["load_ranges"]) if params["load_ranges"] else None,
        save_ranges=Path(params["save_ranges"]) if params["save_ranges"] else None,
        diagnose_samples=params["diagnose_samples"]
        or (DIAGNOSE_SAMPLES if params["diagnose"] or params["exclude_suggested"] else 0),
        exclude_suggested=params["exclude_suggested"],
        quiet=state.quiet,
        tvm=params["tvm"],
        datareader_path=datareader,
    )
    apply_advanced(
        config, parse_advanced(advanced, lambda: plugin_options(host)), _flags_given(params)
    )
    if config.pattern_file is not None:
        _existing_file(config.pattern_file, "exclusion pattern file", "the pattern file path")
    # The side outputs' paths (--summary-json, -pmo) are checked by quantize() itself,
    # before any work, for the Python API as for this command.
    if config.debug_dir is not None and not config.debug_dir.parent.resolve().is_dir():
        raise UserError(f"debug folder {config.debug_dir}: its parent folder does not exist")
    return config


def _flags_given(params: dict[str, Any]) -> dict[str, str]:
    """The config fields that drpaiq's own flags set on this command line, each with
    its flag: an advanced option must not contradict them (see
    :func:`~drpaiq_core.options.apply_advanced`)."""
    flags = {
        "pattern_file": ("exclude_patterns", "--exclude-patterns"),
        "activation_type": ("activation_type", "--activation-type"),
        "activation_symmetric": ("activation_symmetric", "--activation-symmetric"),
        "per_channel": ("per_tensor", "--per-tensor"),
        "debug_dir": ("debug_dir", "--debug-dir"),
        "load_ranges": ("load_ranges", "--load-ranges"),
        "save_ranges": ("save_ranges", "--save-ranges"),
    }
    return {field: flag for field, (param, flag) in flags.items() if params[param]}


_ACTIVATION_TYPES = {"int8": "int8", "qint8": "int8", "uint8": "uint8", "quint8": "uint8"}


def _activation_type(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    found = _ACTIVATION_TYPES.get(value.strip().lower())
    if found is None:
        raise click.BadParameter("use int8 or uint8 (QInt8/QUInt8)")
    return found


@click.command("quantize", cls=QuantizeCommand, context_settings={"show_default": True})
@click.argument("model", required=False, metavar="[MODEL]")
@click.option(
    "--input_model_path",
    "input_model_path",
    multiple=True,
    metavar="PATH",
    help="FP32 ONNX model.",
)
@click.option(
    "--output_model_path",
    "-o",
    "--output",
    "output",
    multiple=True,
    metavar="PATH",
    help="INT8 ONNX model to write.",
)
@click.option(
    "--calibrate_dataset",
    "calibrate_dataset",
    metavar="PATH",
    default=None,
    help="Folder of calibration images (or data for --reader). [default: ./calibrate_images]",
)
@click.option(
    "--calibrate_method",
    "-cm",
    "calibrate_method",
    default="MinMax",
    metavar="NAME",
    help="Calibrator: MinMax, Entropy, Percentile, MSE or any installed one (any case).",
)
@click.option(
    "--datareader_path",
    "datareader_path",
    metavar="FILE",
    help="A .py file defining the reader class (e.g. NCHWDataReader); imported and run.",
)
@click.option(
    "--operate_to_exclude",
    "-ex",
    "--exclude_operate",
    "operate_to_exclude",
    multiple=True,
    metavar="A,B",
    help="Op types to leave in float, e.g. Softplus,Tanh (any case).",
)
@click.option(
    "--node_to_exclude",
    "-exn",
    "node_to_exclude",
    multiple=True,
    metavar="A,B",
    help="Node names to leave in float, e.g. Concat_264,Concat_285.",
)
@click.option(
    "--norm_mean",
    "norm_mean",
    metavar="R G B",
    help="Per-channel mean subtracted from pixel/255, e.g. 0.485 0.456 0.406.",
)
@click.option(
    "--norm_std",
    "norm_std",
    metavar="R G B",
    help="Per-channel std divided after the mean, e.g. 0.229 0.224 0.225.",
)
@click.option("--skip_preprocess", "skip_preprocess", is_flag=True, help="Skip pre-processing.")
@click.option(
    "--preprocess_mode",
    "-ppm",
    "preprocess_mode",
    default="default",
    metavar="MODE",
    help="Pre-processing mode; 'default' is post-training quantization.",
)
@click.option(
    "--preprocessed_model_output",
    "-pmo",
    "preprocessed_model_output",
    default=None,
    metavar="[PATH]",
    help="Keep the pre-processed model (at PATH, or <model>_preprocessed.onnx by the output).",
)
@click.option("--tvm", "tvm", is_flag=True, help="TVM flow: built-in TVM data reader.")
@click.option(
    "--activation-type",
    "activation_type",
    default=None,
    callback=_activation_type,
    metavar="int8|uint8",
    help="Activation type.  [default: int8]",
)
@click.option(
    "--activation-symmetric",
    "activation_symmetric",
    is_flag=True,
    help="Symmetric activations (zero point 0).",
)
@click.option("--per-tensor", "per_tensor", is_flag=True, help="Per-tensor weights.")
@click.option(
    "--batch-size",
    "batch_size",
    type=click.IntRange(min=1),
    default=None,
    help="Calibration samples per batch.  [default: 1]",
)
@click.option(
    "--size-limit",
    "size_limit",
    type=click.IntRange(min=0),
    default=0,
    help="Use at most this many calibration samples (0 = all).",
)
@click.option(
    "--input-shape",
    "input_shape",
    metavar="N,C,H,W",
    help="Input shape for models with a dynamic height/width, e.g. 1,3,224,224.",
)
@click.option(
    "--debug-dir",
    "debug_dir",
    metavar="DIR",
    help="Write calibration debug output (histograms, thresholds) here.",
)
@click.option("--summary-json", "summary_json", metavar="FILE", help="Write the summary as JSON.")
@click.option(
    "--save-ranges",
    "save_ranges",
    metavar="FILE",
    help="Write the calibrated ranges to this JSON file, for --load-ranges.",
)
@click.option(
    "--load-ranges",
    "load_ranges",
    metavar="FILE",
    help="Take the ranges of the tensors this JSON file names (from --save-ranges, or "
    "written by hand); calibrate only the others.",
)
@click.option(
    "--diagnose",
    "diagnose",
    is_flag=True,
    help="Then find where the error comes from: each quantized tensor and weight in float "
    "in turn, on calibration samples spread over the data.",
)
@click.option(
    "--diagnose-samples",
    "diagnose_samples",
    type=click.IntRange(min=1),
    default=None,
    help=f"Samples the diagnosis runs (implies --diagnose).  [default: {DIAGNOSE_SAMPLES}]",
)
@click.option(
    "--exclude-suggested",
    "exclude_suggested",
    is_flag=True,
    help="Write the model with the diagnosis's suggested -exn list applied (implies --diagnose).",
)
@click.option(
    "--exclude-patterns",
    "exclude_patterns",
    metavar="CSV",
    help="Activation-function patterns to leave in float (like exclude_act_func_dir).",
)
@click.pass_obj
def quantize_command(state: AppState, **params: Any) -> None:
    """Quantize an FP32 ONNX model into an INT8 QDQ model.

    Reference form: --input_model_path M --output_model_path OUT ...; short form:
    MODEL -o OUT. Advanced options go after all others as bare KEY VALUE pairs
    (e.g. exclude_act_func_dir rules.csv); the data reader is chosen with
    `drpaiq --reader NAME quantize ...` (default nchw_image).
    """
    ctx = click.get_current_context()
    config = build_config(state, params, list(ctx.meta.get(ADVANCED_META, [])))
    from drpaiq_core.pipeline import quantize

    summary = quantize(config, host=state.host)
    if not state.quiet:
        click.echo(summary.to_text())
