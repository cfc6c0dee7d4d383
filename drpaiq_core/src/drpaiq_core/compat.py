"""The reference tool's Python API, as thin adapters over drpaiq's pipeline.

A script written for the DRP-AI Quantizer runs with its import lines changed to::

    from drpaiq_core.compat import (
        CalibrationMethod, NCHWDataReader, NHWCDataReader, QuantType,
        do_preprocess, quantize_interface,
    )

- :func:`do_preprocess` and :func:`quantize_interface` have the reference's
  signatures and defaults;
- :class:`CalibrationMethod` and :class:`QuantType` are enums; strings (``"Entropy"``)
  and ONNX Runtime's own enum members work as well;
- ``NCHWDataReader``/``NHWCDataReader`` come from the installed image reader plugins
  (``nchw_image``/``nhwc_image`` expose them through ``reference_reader()``); they are
  looked up, and ONNX Runtime imported, only when first used.

Errors are :class:`drpaiq_core.errors.UserError` with one clear line.
"""

from __future__ import annotations

import enum
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drpaiq_core.errors import UserError
from drpaiq_core.options import (
    UnknownOptionError,
    apply_advanced,
    calibrator_name,
    parse_advanced,
    parse_bool,
    parse_count,
    parse_name_list,
    parse_norm,
    parse_path,
    parse_shape,
    plugin_options,
)

if TYPE_CHECKING:
    from drpaiq_core.config import QuantizeConfig
    from drpaiq_core.plugins import PluginHost

    # Resolved at run time by __getattr__ below (they live in the readers plugin).
    NCHWDataReader: type
    NHWCDataReader: type

__all__ = [
    "CalibrationMethod",
    "NCHWDataReader",
    "NHWCDataReader",
    "QuantType",
    "do_preprocess",
    "quantize_interface",
]


class CalibrationMethod(enum.Enum):
    """Calibration methods, as in the reference (and ONNX Runtime). Any installed
    calibrator may also be named by a string."""

    MinMax = 0
    Entropy = 1
    Percentile = 2


class QuantType(enum.Enum):
    """Activation/weight integer types, as in the reference (and ONNX Runtime)."""

    QInt8 = 0
    QUInt8 = 1


#: Which image reader plugin provides each reference reader class.
_REFERENCE_READERS = {"NCHWDataReader": "nchw_image", "NHWCDataReader": "nhwc_image"}


@functools.cache
def _host() -> PluginHost:
    # One host for the API's lookups and runs, made when first needed.
    from drpaiq_core.plugins import get_plugin_host

    return get_plugin_host()


@functools.cache
def _reference_reader_class(name: str) -> type:
    plugin = _REFERENCE_READERS[name]
    cls = _host().readers.get(plugin)
    factory = getattr(cls, "reference_reader", None)
    if factory is None:
        raise UserError(
            f"the installed {plugin!r} reader ({cls.__module__}) offers no reference-compatible "
            f"{name}; install drpaiq-plugins-readers"
        )
    result = factory()
    assert isinstance(result, type)
    return result


def __getattr__(name: str) -> Any:
    # NCHWDataReader/NHWCDataReader subclass ONNX Runtime's CalibrationDataReader and
    # live in a plugin: resolve them on first use, through the plugin host.
    if name in _REFERENCE_READERS:
        return _reference_reader_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_REFERENCE_READERS])


# ---------------------------------------------------------------------------
# do_preprocess
# ---------------------------------------------------------------------------


def do_preprocess(
    input_model_path: str | os.PathLike[str],
    preprocessed_model_output: str | os.PathLike[str],
    do_symbolic_shape_inference: bool = True,
    do_onnx_shape_inference: bool = True,
    do_optimization: bool = True,
    skip_preprocess: bool = False,
    verbose: int = 0,
    preprocess_mode: str = "default",
    **kwargs: Any,
) -> Path:
    """Pre-process a model for quantization (ONNX Runtime's quant_pre_process).

    :param input_model_path: the FP32 model.
    :param preprocessed_model_output: where the pre-processed model is written.
    :param do_symbolic_shape_inference: run symbolic shape inference.
    :param do_onnx_shape_inference: run ONNX shape inference.
    :param do_optimization: run graph optimization.
    :param skip_preprocess: turn all three off (the model is copied unchanged).
    :param verbose: verbosity of symbolic shape inference.
    :param preprocess_mode: ``"default"`` (post-training quantization).
    :param kwargs: ``auto_merge``, ``int_max``, ``guess_output_rank`` for
        ``quant_pre_process``; ``save_as_external_data``, ``all_tensors_to_one_file``,
        ``external_data_location`` and ``external_data_size_threshold`` as there (the
        weights go into one file beside the model); other keys are an error.
    :returns: the path of the written model.
    :raises UserError: the input is not a model drpaiq can read (as in
        :func:`~drpaiq_core.load.load_model`), "Pre-processing before quantization was
        Failed. ..." with the advice to skip it, a path problem, or an argument of the
        wrong type.
    """
    from drpaiq_core.load import load_model
    from drpaiq_core.preprocess import PASS_THROUGH, check_mode, preprocess_model

    check_mode(preprocess_mode)
    unknown = sorted(set(kwargs) - set(PASS_THROUGH) - set(EXTERNAL_DATA_ARGUMENTS))
    if unknown:
        raise UserError(
            f"do_preprocess got unknown argument(s) {', '.join(unknown)}; known extra "
            f"arguments: {', '.join((*PASS_THROUGH, *EXTERNAL_DATA_ARGUMENTS))}"
        )
    source = _required_path(input_model_path, "input_model_path")
    target = _required_path(preprocessed_model_output, "preprocessed_model_output")
    external = _external_data(kwargs, target)
    kwargs = {key: value for key, value in kwargs.items() if key in PASS_THROUGH}
    steps = {
        "symbolic_shape_inference": parse_bool(
            do_symbolic_shape_inference, "do_symbolic_shape_inference"
        ),
        "onnx_shape_inference": parse_bool(do_onnx_shape_inference, "do_onnx_shape_inference"),
        "optimization": parse_bool(do_optimization, "do_optimization"),
    }
    verbosity = parse_count(verbose, "verbose", minimum=0, meaning="0 = quiet")
    # Loaded first, as a quantize run does: a file that is no model is reported as
    # such, not as a pre-processing failure that skipping the step would not cure.
    model = load_model(source)
    if parse_bool(skip_preprocess, "skip_preprocess"):
        from drpaiq_core.write import check_output_path, write_model

        check_output_path(target, (source,))
        write_model(model, target, external=external)
        return target
    return preprocess_model(
        source,
        target,
        symbolic_shape_inference=steps["symbolic_shape_inference"],
        onnx_shape_inference=steps["onnx_shape_inference"],
        optimization=steps["optimization"],
        mode=preprocess_mode,
        verbose=verbosity,
        extra=kwargs,
        external_data=external,
    )


#: ``quant_pre_process``'s external-data arguments, which ``do_preprocess`` accepts.
EXTERNAL_DATA_ARGUMENTS = (
    "save_as_external_data",
    "all_tensors_to_one_file",
    "external_data_location",
    "external_data_size_threshold",
)


def _external_data(kwargs: dict[str, Any], target: Path) -> tuple[str, int] | None:
    """``(data file name, size threshold)`` when ``save_as_external_data`` asks for the
    weights in a file beside the model, else None. drpaiq writes them into one file
    (``all_tensors_to_one_file`` is accepted either way): ``external_data_location``
    when it names a file, else ``<model file name>.data``."""
    if not parse_bool(kwargs.get("save_as_external_data", False), "save_as_external_data"):
        return None
    parse_bool(kwargs.get("all_tensors_to_one_file", True), "all_tensors_to_one_file")
    threshold = parse_count(
        kwargs.get("external_data_size_threshold", 1024),
        "external_data_size_threshold",
        minimum=0,
        meaning="bytes",
    )
    location = Path(str(kwargs.get("external_data_location", "") or "."))
    if str(location) == ".":  # ONNX Runtime's default "./": beside the model
        return (f"{target.name}.data", threshold)
    if location.parent != Path("."):
        raise UserError(
            f"external_data_location {str(location)!r} is a path; give a file name (it is "
            f"written beside {target})"
        )
    return (location.name, threshold)


# ---------------------------------------------------------------------------
# quantize_interface
# ---------------------------------------------------------------------------

#: quantize_interface keyword arguments that are drpaiq options, not advanced options.
API_OPTIONS = (
    "reader",
    "calibrate_dataset",
    "norm_mean",
    "norm_std",
    "batch_size",
    "size_limit",
    "input_shape",
    "tvm",
    "datareader_path",
    "skip_preprocess",
    "preprocess_mode",
    "preprocessed_model_output",
    "debug_dir",
    "summary_json",
    "quiet",
)


#: ONNX Runtime's ``quantize_static`` keyword arguments, with drpaiq's spelling.
ORT_SPELLINGS = {
    "model_input": "the first argument, input_model_path",
    "model_output": "the second argument, output_model_path",
    "calibration_data_reader": "datareader=",
    "nodes_to_exclude": "node_to_exclude=",
    "op_types_to_exclude": "operate_to_exclude=",
    "extra_options": (
        "the advanced options as keyword arguments, e.g. "
        "quantize_interface(..., activation_symmetric=True) or **{'ActivationSymmetric': True}"
    ),
}


def build_config(
    input_model_path: str | os.PathLike[str],
    output_model_path: str | os.PathLike[str],
    datareader: Any = None,
    calibrate_method: Any = CalibrationMethod.MinMax,
    operate_to_exclude: Any = None,
    node_to_exclude: Any = None,
    *,
    host: PluginHost | None = None,
    **kwargs: Any,
) -> QuantizeConfig:
    """The :class:`~drpaiq_core.config.QuantizeConfig` :func:`quantize_interface`
    runs with (the same arguments; ``host`` is asked for plugin-declared options).
    Every argument is checked here: a wrong type or value is one :class:`UserError`
    naming the argument, the value given and what is accepted."""
    from drpaiq_core.config import QuantizeConfig

    api = {key: kwargs.pop(key) for key in list(kwargs) if key in API_OPTIONS}
    advanced = _advanced_options(kwargs, host)
    config = QuantizeConfig(
        input_model=_required_path(input_model_path, "input_model_path"),
        output_model=_required_path(output_model_path, "output_model_path"),
        reader=_reader_name(api.get("reader")),
        reader_object=datareader,
        calibrate_dataset=parse_path(api.get("calibrate_dataset"), "calibrate_dataset"),
        calibrate_method=calibrator_name(calibrate_method),
        norm_mean=parse_norm(api.get("norm_mean"), "norm_mean"),
        norm_std=parse_norm(api.get("norm_std"), "norm_std", nonzero=True),
        op_types_to_exclude=parse_name_list(operate_to_exclude, "operate_to_exclude"),
        nodes_to_exclude=parse_name_list(node_to_exclude, "node_to_exclude"),
        # The reference's quantize_interface quantizes the model it is given; its
        # pre-processing is the separate do_preprocess step.
        skip_preprocess=_flag(api, "skip_preprocess", default=True),
        preprocess_mode=_preprocess_mode(api.get("preprocess_mode")),
        preprocessed_model_output=parse_path(
            api.get("preprocessed_model_output"), "preprocessed_model_output"
        ),
        size_limit=_count(api, "size_limit", 0, "the most calibration samples used, 0 = all"),
        batch_size=_count(api, "batch_size", 1, "calibration samples per batch"),
        input_shape=_input_shape(api.get("input_shape")),
        debug_dir=parse_path(api.get("debug_dir"), "debug_dir"),
        summary_json=parse_path(api.get("summary_json"), "summary_json"),
        quiet=_flag(api, "quiet", default=False),
        tvm=_flag(api, "tvm", default=False),
        datareader_path=parse_path(api.get("datareader_path"), "datareader_path"),
    )
    sources = (config.calibrate_dataset, config.reader, config.tvm, config.datareader_path)
    if datareader is None and not any(sources):
        raise UserError(
            "quantize_interface needs calibration data: pass datareader=NCHWDataReader(folder, "
            "norm_mean, norm_std, model_path) (or calibrate_dataset=DIR with norm_mean/norm_std)"
        )
    apply_advanced(config, advanced)
    return config


def _advanced_options(kwargs: dict[str, Any], host: PluginHost | None) -> dict[str, str]:
    """The keyword arguments that are advanced options, checked; an unknown key is a
    :class:`UserError` listing the known ones, with drpaiq's spelling of ONNX Runtime's
    ``quantize_static`` arguments."""
    for key, value in kwargs.items():
        if key in ORT_SPELLINGS:
            instead = ORT_SPELLINGS[key]
            if key == "extra_options" and isinstance(value, dict) and value:
                instead = (
                    "the advanced options as keyword arguments: "
                    f"quantize_interface(..., **{value!r})"
                )
            raise UserError(
                f"quantize_interface got {key}=, ONNX Runtime's spelling; drpaiq's "
                f"quantize_interface takes {instead} (see docs/migration.md)"
            )
    try:
        return parse_advanced(kwargs.items(), lambda: plugin_options(host or _host()))
    except UnknownOptionError as exc:
        raise UserError(
            f"quantize_interface got unknown option {exc.key!r}; known advanced options: "
            f"{', '.join(exc.known)}; drpaiq options: {', '.join(API_OPTIONS)}"
        ) from None


def _required_path(value: Any, what: str) -> Path:
    """A path argument that must be given."""
    path = parse_path(value, what)
    if path is None:
        raise UserError(f"{what} is empty; give the path of an .onnx file")
    return path


def _flag(api: dict[str, Any], key: str, *, default: bool) -> bool:
    """A boolean drpaiq option: True/False or their text, as the advanced options
    take them; None means the default."""
    value = api.get(key)
    return default if value is None else parse_bool(value, key)


def _count(api: dict[str, Any], key: str, default: int, meaning: str) -> int:
    """A whole-number drpaiq option (at least ``default``); None means the default."""
    value = api.get(key)
    return default if value is None else parse_count(value, key, minimum=default, meaning=meaning)


def _reader_name(value: Any) -> str | None:
    """The ``reader=`` plugin name, or None."""
    if value is None or isinstance(value, str):
        return value or None
    raise UserError(
        f'reader must be a reader plugin\'s name such as "nchw_image" (pass reader objects '
        f"as datareader=); got {value!r} ({type(value).__name__})"
    )


def _preprocess_mode(value: Any) -> str:
    """The ``preprocess_mode=`` value, checked."""
    from drpaiq_core.preprocess import check_mode

    return "default" if value is None else check_mode(value)


def _input_shape(value: Any) -> tuple[int, ...] | None:
    """The ``input_shape=`` value (``"1,3,224,224"`` or a sequence), or None."""
    return None if value is None or value == "" else parse_shape(value, "input_shape")


def quantize_interface(
    input_model_path: str | os.PathLike[str],
    output_model_path: str | os.PathLike[str],
    datareader: Any = None,
    calibrate_method: Any = CalibrationMethod.MinMax,
    operate_to_exclude: Any = None,
    node_to_exclude: Any = None,
    **kwargs: Any,
) -> Any:
    """Quantize an FP32 ONNX model to an INT8 QDQ model, as the reference tool's
    ``quantize_interface`` does (per-channel weights; MinMax, Entropy or any installed
    calibrator).

    :param input_model_path: the FP32 model (usually the output of :func:`do_preprocess`).
    :param output_model_path: where the INT8 model is written.
    :param datareader: the calibration data: ``NCHWDataReader(...)``/``NHWCDataReader(...)``,
        any object with ``get_next()``, or a drpaiq Reader.
    :param calibrate_method: :class:`CalibrationMethod` member or name (``"Entropy"``).
    :param operate_to_exclude: op types to leave in float, ``"Softplus,Tanh"`` or a list.
    :param node_to_exclude: node names to leave in float, ``"Conv_1,Add_3"`` or a list.
    :param kwargs: advanced options (``exclude_act_func_dir="rules.csv"``,
        ``activation_zeropoint=False``, ``percentile_value=99.99``, ``num_bins``,
        ``num_quantized_bins``, ``entropy_debug``, ``optimize_model``,
        ``activation_type=QuantType.QUInt8``, ``per_channel``, ...) and drpaiq options
        (``calibrate_dataset``, ``norm_mean``, ``norm_std``, ``batch_size``,
        ``size_limit``, ``input_shape``, ``skip_preprocess`` (default True here),
        ``summary_json``, ``quiet``, ...). Unknown keys are an error listing the known.
    :returns: the run's summary (``to_text()``, ``to_dict()``).
    """
    host = _host()
    config = build_config(
        input_model_path,
        output_model_path,
        datareader,
        calibrate_method,
        operate_to_exclude,
        node_to_exclude,
        host=host,
        **kwargs,
    )
    from drpaiq_core.pipeline import quantize

    return quantize(config, host=host)
