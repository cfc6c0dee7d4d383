"""User options shared by the command line and the reference-compatible Python API.

The reference tool takes *advanced options* as bare ``key value`` pairs after all
other options on its command line (``exclude_act_func_dir rules.csv``) and as keyword
arguments of ``quantize_interface``. :data:`ADVANCED_OPTIONS` is the one list of
them; both front ends parse with :func:`parse_advanced` and apply the result to a
:class:`~drpaiq_core.config.QuantizeConfig` with :func:`apply_advanced`.

Keys match without regard to case, ``_`` or ``-``, so ONNX Runtime's spellings
(``ActivationType``) work beside the reference's (``activation_type``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from numbers import Integral
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drpaiq_core.errors import UserError

if TYPE_CHECKING:
    from drpaiq_core.plugins import PluginHost


@dataclass(frozen=True)
class AdvancedOption:
    """One advanced option.

    :ivar name: its canonical spelling (the key in ``QuantizeConfig.options``).
    :ivar kind: ``bool``, ``int``, ``float``, ``path``, ``quant_type``, or ``plugin``
        (declared by a plugin's ``OPTIONS``; the value is passed on unchecked).
    :ivar help: one line for documentation and error messages.
    :ivar aliases: other accepted spellings.
    :ivar minimum: smallest accepted value (numbers).
    :ivar maximum: largest accepted value (numbers).
    :ivar field: the ``QuantizeConfig`` field the option sets, if any.
    :ivar bounds: why ``minimum``/``maximum`` are what they are and what to give
        instead; added to the error line of a value out of bounds.
    """

    name: str
    kind: str
    help: str
    aliases: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    field: str | None = None
    bounds: str = ""


#: Every advanced option drpaiq knows, in documentation order.
ADVANCED_OPTIONS: tuple[AdvancedOption, ...] = (
    AdvancedOption(
        "exclude_act_func_dir",
        "path",
        "CSV file of activation-function patterns left in float (one pattern per line)",
        field="pattern_file",
    ),
    AdvancedOption(
        "activation_zeropoint",
        "bool",
        "True (default): asymmetric activations with a zero point; False: symmetric",
        field="activation_symmetric",
    ),
    AdvancedOption(
        "activation_symmetric",
        "bool",
        "True: symmetric activations (ONNX Runtime's ActivationSymmetric)",
        field="activation_symmetric",
    ),
    AdvancedOption(
        "activation_type",
        "quant_type",
        "QInt8 (default) or QUInt8 activations",
        field="activation_type",
    ),
    AdvancedOption("weight_type", "quant_type", "QInt8 only: weights are signed and symmetric"),
    AdvancedOption(
        "per_channel", "bool", "per-channel weights (default True)", field="per_channel"
    ),
    AdvancedOption(
        "optimize_model", "bool", "graph optimization in the preprocessing step (default True)"
    ),
    AdvancedOption(
        "percentile_value",
        "float",
        "Percentile calibration's percentile, above 50 and at most 100 (default 99.999)",
        minimum=50.0,
        maximum=100.0,
    ),
    AdvancedOption(
        "num_bins",
        "int",
        "histogram bins of Entropy/Percentile calibration (default 2048; Entropy needs at "
        "least 2 x (2 x num_quantized_bins - 1))",
        minimum=16,
        bounds="Entropy and Percentile calibration need at least 16 histogram bins per sign, "
        "Entropy at least 2 x (2 x num_quantized_bins - 1) (510 by default); raise num_bins, "
        "or leave "
        "it out for drpaiq's default of 2048 (not the DRP-AI Quantizer's 128)",
    ),
    AdvancedOption(
        "num_quantized_bins",
        "int",
        "quantized levels of a symmetric range's side in the Entropy search (default 128; "
        "an asymmetric range has 2 x num_quantized_bins - 1)",
        minimum=2,
    ),
    AdvancedOption(
        "entropy_debug",
        "path",
        "folder for calibration debug output (histograms, KL curves, thresholds)",
        field="debug_dir",
    ),
    AdvancedOption(
        "bias_correction",
        "bool",
        "move each int32 bias so the INT8 layer keeps the FP32 per-channel output mean on "
        "the calibration data (default False; about one extra pass per layer depth)",
    ),
    AdvancedOption(
        "load_ranges",
        "path",
        "ranges file whose tensors take its ranges; only the others are calibrated",
        field="load_ranges",
    ),
    AdvancedOption(
        "save_ranges",
        "path",
        "ranges file to write every range of the run to (for load_ranges)",
        field="save_ranges",
    ),
    AdvancedOption(
        "bias_correction_samples",
        "int",
        "calibration samples bias correction measures the means on, spread over the data "
        "(default 128; 0: all of them)",
        minimum=0,
    ),
)


class UnknownOptionError(UserError):
    """An advanced option name that neither the core nor a plugin knows."""

    def __init__(self, key: str, known: list[str]) -> None:
        super().__init__(
            f"unknown advanced option {key!r}; known advanced options: {', '.join(known)}"
        )
        self.key = key
        self.known = known


def _norm_key(key: str) -> str:
    return re.sub(r"[_\-\s]", "", key).lower()


_BY_KEY: dict[str, AdvancedOption] = {
    _norm_key(alias): option
    for option in ADVANCED_OPTIONS
    for alias in (option.name, *option.aliases)
}


def known_option_names() -> list[str]:
    """The canonical advanced option names of the core, in documentation order."""
    return [option.name for option in ADVANCED_OPTIONS]


def find_option(key: str) -> AdvancedOption | None:
    """The core option ``key`` names (any case, ``_``/``-`` ignored), or None."""
    return _BY_KEY.get(_norm_key(key))


def plugin_options(host: PluginHost) -> dict[str, str]:
    """Advanced options that installed plugins declare (their ``OPTIONS``): name -> help.
    Fills every registry, so call it only when a key is not one of the core's."""
    found: dict[str, str] = {}
    for registry in host.iter_registry():
        for entry in registry.entries():
            for name, text in dict(getattr(entry.cls, "OPTIONS", {}) or {}).items():
                found.setdefault(str(name), str(text))
    return found


def get_option(key: str, extra: Mapping[str, str] | None = None) -> AdvancedOption:
    """The option ``key`` names, among the core's and the names in ``extra`` (plugin
    options, passed on unchecked); an unknown key is a :class:`UserError` listing all."""
    option = find_option(key)
    if option is not None:
        return option
    for name, text in (extra or {}).items():
        if _norm_key(name) == _norm_key(key):
            return AdvancedOption(name, "plugin", text)
    raise UnknownOptionError(key, all_option_names(extra))


def all_option_names(extra: Mapping[str, str] | None = None) -> list[str]:
    """The core's advanced option names, then those in ``extra`` (plugin options) that
    are not the core's, sorted."""
    return known_option_names() + sorted(n for n in (extra or {}) if find_option(n) is None)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_bool(value: Any, what: str) -> bool:
    """``True``/``False`` (any case), 1/0, yes/no, on/off, or a Python bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise UserError(
        f"{what} must be True or False (as text also true/false, yes/no, on/off or 1/0, "
        f"any case); got {value!r}"
    )


def quant_type_name(value: Any, what: str) -> str:
    """``int8`` or ``uint8`` from ``QInt8``/``QUInt8``/``int8``/``uint8`` or an enum
    member with such a name (drpaiq's or ONNX Runtime's ``QuantType``)."""
    text = str(getattr(value, "name", value)).strip().lower()
    if text in ("qint8", "int8", "s8"):
        return "int8"
    if text in ("quint8", "uint8", "u8"):
        return "uint8"
    raise UserError(f"{what} must be QInt8 or QUInt8; got {value!r}")


def canonical_value(option: AdvancedOption, value: Any) -> str:
    """The option's value checked and written canonically (the string kept in
    ``QuantizeConfig.options``)."""
    what = f"advanced option {option.name}"
    if option.kind == "plugin":
        return str(getattr(value, "name", value))
    if option.kind == "bool":
        return str(parse_bool(value, what))
    if option.kind == "quant_type":
        name = quant_type_name(value, what)
        if option.name == "weight_type" and name != "int8":
            raise UserError("weight_type must be QInt8: drpaiq's weights are signed and symmetric")
        return name
    if option.kind == "path":
        text = str(value).strip()
        if not text:
            raise UserError(f"{what} needs a path")
        return str(Path(text))
    number: float
    try:
        number = int(str(value).strip()) if option.kind == "int" else float(str(value).strip())
    except ValueError:
        kind = "a whole number" if option.kind == "int" else "a number"
        raise UserError(f"{what} must be {kind}; got {value!r}") from None
    if not math.isfinite(number):
        raise UserError(f"{what} must be finite; got {value!r}")
    why = f" ({option.bounds})" if option.bounds else ""
    if option.minimum is not None and number < option.minimum:
        raise UserError(f"{what} must be at least {option.minimum:g}; got {value!r}{why}")
    if option.maximum is not None and number > option.maximum:
        raise UserError(f"{what} must be at most {option.maximum:g}; got {value!r}{why}")
    if option.name == "percentile_value" and number <= 50:
        raise UserError(f"{what} must be above 50; got {value!r}")
    return str(number)


def parse_advanced(
    pairs: Iterable[tuple[str, Any]], plugin_names: Callable[[], Mapping[str, str]] | None = None
) -> dict[str, str]:
    """Check ``(key, value)`` pairs; returns canonical name -> canonical value. A key
    given twice keeps its last value, as command lines usually do.

    :param plugin_names: called (once, and only if a key is not one of the core's) for
        the advanced options plugins declare, e.g. ``lambda: plugin_options(host)``;
        their values are kept as strings for the plugin to check.
    """
    options: dict[str, str] = {}
    extra: Mapping[str, str] | None = None
    for key, value in pairs:
        if find_option(key) is None and extra is None and plugin_names is not None:
            extra = plugin_names()
        option = get_option(key, extra)
        options[option.name] = canonical_value(option, value)
    return options


def _field_value(option: AdvancedOption, value: str) -> Any:
    if option.kind == "bool":
        flag = value == "True"
        # activation_zeropoint False means "no zero point": symmetric activations.
        return (not flag) if option.name == "activation_zeropoint" else flag
    if option.kind == "path":
        return Path(value)
    return value


def apply_advanced(
    config: Any, options: Mapping[str, str], given: Mapping[str, str] | None = None
) -> None:
    """Record ``options`` (from :func:`parse_advanced`) in ``config.options`` and set
    the :class:`~drpaiq_core.config.QuantizeConfig` fields they stand for.

    Two options that set one field to different values are a :class:`UserError`,
    whatever their order: an advanced option against a field the caller already set
    (named in ``given``, or changed from its default), and two advanced options against
    each other (``activation_zeropoint True activation_symmetric True``).

    :param given: the fields the caller set explicitly, even to their default value,
        each with the option that set it (``{"activation_type": "--activation-type"}``).
    """
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    set_by: dict[str, str] = dict(given or {})
    for name, value in options.items():
        option = find_option(name)
        config.options[name if option is None else option.name] = value
        if option is None or option.field is None:
            continue
        wanted = _field_value(option, value)
        current = getattr(config, option.field)
        if current != defaults.get(option.field):
            set_by.setdefault(option.field, "another option")
        if option.field in set_by and current != wanted:
            raise UserError(_contradiction(option, value, set_by[option.field], current))
        setattr(config, option.field, wanted)
        set_by[option.field] = f"advanced option {option.name} {value}"


def _contradiction(option: AdvancedOption, value: str, other: str, current: Any) -> str:
    """The error line of an advanced option that contradicts an earlier setting."""
    if option.field == "activation_symmetric":
        wanted = _field_value(option, value)
        return (
            f"advanced option {option.name} {value} ({_symmetry(wanted)}) contradicts "
            f"{other} ({_symmetry(current)}); give only one of them"
        )
    return (
        f"advanced option {option.name} {value} contradicts {other}, which set "
        f"{option.field} to {current}; give only one of them"
    )


def _symmetry(symmetric: Any) -> str:
    """What a value of ``activation_symmetric`` means, for error lines."""
    return "symmetric activations" if symmetric else "asymmetric activations with a zero point"


def option_bool(options: Mapping[str, str], name: str, default: bool) -> bool:
    """A boolean advanced option from ``QuantizeConfig.options``, or ``default``."""
    value = options.get(name)
    return default if value is None else parse_bool(value, f"advanced option {name}")


# ---------------------------------------------------------------------------
# Values that arrive as text on the command line or as Python objects
# ---------------------------------------------------------------------------


def parse_number_list(value: Any, what: str) -> tuple[float, ...]:
    """Numbers from ``[0.4914, 0.4822, 0.4465]``, ``0.1,0.2,0.3``, ``0.1 0.2 0.3``,
    ``(0.1, 0.2, 0.3)`` or a Python sequence of numbers."""
    if isinstance(value, str):
        parts = [p for p in re.split(r"[\s,;]+", value.strip().strip("[]()")) if p]
    elif isinstance(value, (int, float)):
        parts = [str(value)]
    else:
        try:
            parts = [str(v) for v in value]
        except TypeError:
            raise UserError(f"{what} must be a list of numbers; got {value!r}") from None
    numbers = []
    for part in parts:
        try:
            numbers.append(float(part.strip().strip("[]()")))
        except ValueError:
            raise UserError(
                f"{what}: {part!r} is not a number; write e.g. {what} 0.485 0.456 0.406"
            ) from None
    if not numbers:
        raise UserError(f"{what} needs numbers, e.g. {what} [0.485,0.456,0.406]")
    return tuple(numbers)


def parse_norm(value: Any, what: str, *, nonzero: bool = False) -> tuple[float, ...] | None:
    """Three finite numbers (R, G, B) for ``norm_mean``/``norm_std`` (any form
    :func:`parse_number_list` reads), or None when not given; ``nonzero`` refuses 0
    (``norm_std`` divides the pixels)."""
    if value is None:
        return None
    numbers = parse_number_list(value, what)
    if len(numbers) != 3:
        raise UserError(
            f"{what} must be 3 numbers (R,G,B), one per channel; got {len(numbers)}: "
            f"{', '.join(f'{v:g}' for v in numbers)}"
        )
    if not all(math.isfinite(v) for v in numbers):
        raise UserError(
            f"{what} must be finite numbers; got {', '.join(f'{v:g}' for v in numbers)}"
        )
    if nonzero and 0.0 in numbers:
        raise UserError(f"{what} must not contain 0 (it divides the pixels)")
    return numbers


def parse_name_list(value: Any, what: str = "names") -> tuple[str, ...]:
    """Names from ``"Softplus,Tanh"`` or a sequence of names (each may hold commas);
    anything else (a number, a list of numbers) is a :class:`UserError`."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        items = [value]
    else:
        items = list(value)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise UserError(
                f'{what} must be names as text, "A,B" or a list of strings like '
                f'["A", "B"]; got {value!r} ({type(item).__name__})'
            )
        names.extend(part.strip() for part in item.split(",") if part.strip())
    return tuple(names)


def parse_count(value: Any, what: str, *, minimum: int, meaning: str) -> int:
    """A whole number of at least ``minimum`` from an int or its text (``"10"``); a
    bool, a fraction or other text is a :class:`UserError` that says what ``what`` is
    (``meaning``) and what it accepts."""
    whole = isinstance(value, Integral) and not isinstance(value, bool)
    text = isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value) is not None
    number = int(value) if whole or text else None
    if number is None or number < minimum:
        raise UserError(
            f"{what} must be a whole number, at least {minimum} ({meaning}); got {value!r}"
        )
    return number


def parse_path(value: Any, what: str) -> Path | None:
    """A path from text or an ``os.PathLike``; None or ``""`` when not given. Anything
    else (a number, a list) is a :class:`UserError` naming ``what``."""
    if value is None or value == "":
        return None
    if isinstance(value, (str, PathLike)):
        return Path(value)
    raise UserError(
        f"{what} must be a path (a string or pathlib.Path); got {value!r} ({type(value).__name__})"
    )


def parse_shape(value: Any, what: str = "--input-shape") -> tuple[int, ...]:
    """A shape from ``1,3,224,224``, ``1x3x224x224``, ``[1, 3, 224, 224]`` or a sequence."""
    if isinstance(value, str):
        text = re.sub(r"(?<=\d)\s*[xX]\s*(?=\d)", ",", value.strip().strip("[]()"))
        parts = [p for p in re.split(r"[\s,]+", text) if p]
    elif isinstance(value, Iterable):
        parts = [str(v) for v in value]
    else:
        parts = [str(value)]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise UserError(f"{what} must be whole numbers like 1,3,224,224; got {value!r}") from None
    if not dims or any(d <= 0 for d in dims):
        raise UserError(f"{what} must be positive whole numbers like 1,3,224,224; got {value!r}")
    return dims


def calibrator_name(value: Any) -> str:
    """A calibrator plugin name from a string (``MinMax``) or an enum member
    (drpaiq's or ONNX Runtime's ``CalibrationMethod``)."""
    text = getattr(value, "name", value)
    if not isinstance(text, str):
        raise UserError(
            f'calibrate_method must be a calibrator\'s name ("MinMax", "Entropy", '
            f'"Percentile") or a CalibrationMethod member; got {value!r} '
            f"({type(value).__name__})"
        )
    if not text.strip():
        raise UserError("calibrate_method is empty; use MinMax, Entropy or Percentile")
    return text.strip().lower()
