"""One quantization run, end to end:

load -> preprocess -> prepare -> select -> calibrate -> plan -> [bias correction] -> emit
-> verify -> write.

Each step is its own module; this one only wires them together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from drpaiq_core.config import QuantizeConfig
from drpaiq_core.errors import UserError
from drpaiq_core.options import apply_advanced, option_bool, parse_advanced, plugin_options
from drpaiq_core.plugin_api import ExclusionRules, QuantOptions
from drpaiq_core.plugins import PluginHost, get_plugin_host
from drpaiq_core.progress import timed
from drpaiq_core.summary import Summary

if TYPE_CHECKING:
    import onnx

    from drpaiq_core.bias_correction import BiasCorrectionReport
    from drpaiq_core.diagnose import Diagnosis
    from drpaiq_core.graph import ModelGraph
    from drpaiq_core.plan import QuantPlan
    from drpaiq_core.plugin_api import Reader, TensorRange
    from drpaiq_core.ranges_file import LoadedRanges
    from drpaiq_core.select import Selection

log = logging.getLogger("drpaiq")

#: Calibration on fewer samples than this gives a warning: ranges from a handful of
#: images miss what real data reaches (the usual advice is 100 to 500 images, at least
#: 20 for a single class).
FEW_SAMPLES = 20


def quant_options(config: QuantizeConfig) -> QuantOptions:
    """The op quantizers' view of the user's choices."""
    if config.activation_type not in ("int8", "uint8"):
        raise UserError(
            f"activation type {config.activation_type!r} is not supported; use int8 or uint8"
        )
    return QuantOptions(
        activation_type=config.activation_type,
        activation_symmetric=config.activation_symmetric,
        per_channel=config.per_channel,
        extra=dict(config.options),
    )


def exclusion_rules(config: QuantizeConfig) -> ExclusionRules:
    """The exclusion matchers' view of the user's rules."""
    pattern = config.pattern_file
    if pattern is None and config.options.get("exclude_act_func_dir"):
        pattern = Path(config.options["exclude_act_func_dir"])
    return ExclusionRules(
        op_types=tuple(config.op_types_to_exclude),
        node_names=tuple(config.nodes_to_exclude),
        pattern_file=pattern,
        options=dict(config.options),
    )


def with_advanced(config: QuantizeConfig, host: PluginHost) -> QuantizeConfig:
    """A copy of ``config`` whose advanced options are checked (an unknown key or a bad
    value is a :class:`UserError`) and applied to the fields they stand for, as the
    command line and ``quantize_static`` do: ``options={"activation_type": "QUInt8"}``
    gives uint8 activations, and one that contradicts a field set otherwise is an
    error. The caller's object stays as it is."""
    resolved = dataclasses.replace(config, options={})
    apply_advanced(resolved, parse_advanced(config.options.items(), lambda: plugin_options(host)))
    return resolved


def quantize(config: QuantizeConfig, host: PluginHost | None = None) -> Summary:
    """Quantize ``config.input_model`` into ``config.output_model``.

    :raises UserError: for any problem with what the user gave; nothing is written then.
    """
    from drpaiq_core.bias_correction import DEFAULT_SAMPLES, correct_biases
    from drpaiq_core.calibrate import calibrate, shell_of
    from drpaiq_core.datasource import open_reader
    from drpaiq_core.emit import emit
    from drpaiq_core.graph import ModelGraph
    from drpaiq_core.load import default_opset, load_model, model_bytes
    from drpaiq_core.plan import build_plan
    from drpaiq_core.prepare import prepare
    from drpaiq_core.ranges_file import file_sha256, ranges_document, read_ranges
    from drpaiq_core.select import select
    from drpaiq_core.verify import verify, verify_file
    from drpaiq_core.write import check_output_path, publish_folder, write_model, write_text

    host = host or get_plugin_host()
    config = with_advanced(config, host)
    input_path = Path(config.input_model)
    output_path = Path(config.output_model)
    check_output_path(output_path, (input_path,))
    _check_distinct_outputs(config, _debug_dir(config))
    if config.summary_json is not None:
        check_output_path(Path(config.summary_json), (input_path, output_path))
    if config.save_ranges is not None:
        # May be the --load-ranges file: it is read now and replaced at the end.
        check_output_path(Path(config.save_ranges), (input_path, output_path))
    loaded = read_ranges(Path(config.load_ranges)) if config.load_ranges is not None else None
    if config.preprocessed_model_output is not None:
        # Checked now: it is written only at the end, after the model.
        check_output_path(Path(config.preprocessed_model_output), (input_path, output_path))
    options = quant_options(config)
    if config.diagnose_samples < 0:
        raise UserError(
            f"diagnose_samples is {config.diagnose_samples}; give a number of samples, or 0 "
            "for no diagnosis"
        )
    if config.exclude_suggested and not config.diagnose_samples:
        raise UserError(
            "exclude_suggested applies the diagnosis's suggestion: give diagnose_samples too "
            "(the command line's --exclude-suggested runs the diagnosis by itself)"
        )
    # Read now: a bad value fails before any work rather than after calibration.
    bias_correction = option_bool(config.options, "bias_correction", False)
    correction_samples = int(config.options.get("bias_correction_samples", DEFAULT_SAMPLES))
    rules = exclusion_rules(config)
    calibrator_cls = host.calibrators.get(config.calibrate_method)
    calibrator_options: dict[str, object] = dict(config.options)
    # The grid the ranges will be quantized to, whichever option chose it.
    calibrator_options["activation_symmetric"] = str(options.activation_symmetric)
    if config.debug_dir is not None:
        calibrator_options["entropy_debug"] = str(config.debug_dir)
    calibrator = calibrator_cls(calibrator_options)
    debug_dir = _debug_dir(config)
    # The folder itself is made only once there is something to put in it (see
    # calibrate.finish): a run that fails before then leaves no empty folder behind.
    if debug_dir is not None and debug_dir.exists() and not debug_dir.is_dir():
        raise UserError(f"debug folder {debug_dir} is a file; give a folder path")

    with timed("load"):
        # The model loaded whole for the checks; kept only for a run without
        # pre-processing (which reads the file again), as `held`, a one-item list.
        held = [load_model(input_path)]
    opset_before = default_opset(held[0])
    # What the reader needs of the model: its inputs, not its weights. Graph inputs
    # that are initializers (keep_initializers_as_inputs exports) are not inputs.
    graph_only = shell_of(held[0])
    weights = {init.name for init in held[0].graph.initializer}
    fed = [value for value in graph_only.graph.input if value.name not in weights]
    del graph_only.graph.input[:]
    graph_only.graph.input.extend(fed)

    @functools.cache
    def data() -> Reader:
        return open_reader(config, host, graph_only, input_path)

    @functools.cache
    def model_sha256() -> str:
        return file_sha256(input_path)

    # The reader is built first: a bad folder or bad norm values fail in a second,
    # before any pre-processing work. With a ranges file it is built only when
    # something reads data: a file that covers every tensor needs no calibration data.
    if loaded is None:
        data()
    with tempfile.TemporaryDirectory(prefix="drpaiq-") as workdir_name:
        workdir = Path(workdir_name)
        with timed("pre-process"):
            model, preprocessed = _preprocessed(config, input_path, held, workdir)
            model = prepare(model, per_channel=options.per_channel)
            model = _with_shapes(model)
        with timed("select"):
            graph = ModelGraph(model)
            selection = select(host, graph, rules, options)
        _warn_if_training_mode(graph)
        known: dict[str, TensorRange] = {}
        if loaded is not None:
            loaded.check_names(graph)
            loaded.warn_if_other_source(
                model_sha256(), calibrator_cls.PLUGIN_NAME, options.activation_symmetric
            )
            known.update(loaded.tensor_ranges())
        needed = [t for t in selection.range_tensors if t not in known]
        result = None
        if not needed and loaded is not None and debug_dir is not None:
            log.warning(
                f"no calibration ran (ranges file {loaded.path} gave every range), so there "
                f"is no debug output for {debug_dir}; calibrate without --load-ranges to get it"
            )
        if needed or loaded is None:
            with timed("calibrate"):
                result = calibrate(
                    model,
                    needed,
                    data(),
                    calibrator,
                    quiet=config.quiet,
                    # Staged: published below only once the whole run has succeeded.
                    debug_dir=None if debug_dir is None else workdir / "debug",
                    workdir=workdir,
                )
            known.update(result.ranges)
            if result.samples < FEW_SAMPLES:
                log.warning(
                    f"calibrated on {result.samples} sample(s): ranges measured on fewer than "
                    f"{FEW_SAMPLES} rarely hold for real data; calibrate on 100 to 1000 images "
                    "like those the model will see"
                )
        with timed("plan"):
            graph = ModelGraph(model, observed_shapes=result.shapes if result else None)
            ranges = _ranges_of(selection.range_tensors, known)
            plan = build_plan(selection, graph, ranges, options)

        def correct(target: QuantPlan) -> BiasCorrectionReport:
            return correct_biases(
                model,
                target,
                data(),
                samples=correction_samples,
                quiet=config.quiet,
                workdir=workdir,
            )

        correction = None
        if bias_correction:
            with timed("bias correction"):
                correction = correct(plan)
        diagnosis = None
        if config.diagnose_samples:
            from drpaiq_core.diagnose import diagnose, tied_nodes

            def exclude(
                nodes: tuple[str, ...],
            ) -> tuple[Selection, QuantPlan, BiasCorrectionReport | None]:
                """The selection and plan with ``nodes`` excluded as well, as ``-exn``
                gives them; the tensors its new boundaries need that calibration did not
                measure are calibrated now."""
                more = dataclasses.replace(rules, node_names=(*rules.node_names, *nodes))
                with _reported_already():
                    chosen = select(host, graph, more, options)
                missing = [t for t in chosen.range_tensors if t not in known]
                if missing:
                    found = calibrate(
                        model, missing, data(), calibrator, quiet=config.quiet, workdir=workdir
                    )
                    known.update(found.ranges)
                ranges = _ranges_of(chosen.range_tensors, known)
                with _reported_already():
                    replanned = build_plan(chosen, graph, ranges, options)
                return chosen, replanned, correct(replanned) if bias_correction else None

            with timed("diagnose"):
                diagnosis = diagnose(
                    model,
                    plan,
                    tied_nodes(selection, graph),
                    data(),
                    config.diagnose_samples,
                    replan=lambda nodes: exclude(nodes)[1],
                    quiet=config.quiet,
                    workdir=workdir,
                )
            if config.exclude_suggested and diagnosis.suggested:
                # The model written is the suggestion's: the same as a run with -exn.
                selection, plan, correction = exclude(diagnosis.suggested)
        with timed("emit and verify"):
            quantized = emit(model, plan)
            checked = verify(quantized)
        with timed("write"):
            write_model(quantized, output_path)
        if not checked:
            with timed("verify the written model"):
                verify_file(output_path)
        if preprocessed is not None and config.preprocessed_model_output is not None:
            _publish_preprocessed(preprocessed, Path(config.preprocessed_model_output))
        if debug_dir is not None and (workdir / "debug").is_dir():
            publish_folder(workdir / "debug", debug_dir)
            files = sum(1 for _ in debug_dir.rglob("*") if _.is_file())
            log.info(f"calibration debug output ({files} file(s)) written to {debug_dir}")
        if config.save_ranges is not None:
            # A run that calibrated nothing passes the file's provenance on.
            method, samples = calibrator_cls.PLUGIN_NAME, result.samples if result else 0
            if result is None and loaded is not None:
                method, samples = loaded.calibrate_method or method, loaded.samples or 0
            document = ranges_document(
                known,
                selection.range_tensors,
                model_path=input_path,
                model_sha256=model_sha256(),
                calibrate_method=method,
                activation_symmetric=options.activation_symmetric,
                samples=samples,
            )
            write_text(Path(config.save_ranges), document)

    summary = Summary(
        input_model=input_path,
        output_model=output_path,
        calibrate_method=calibrator_cls.PLUGIN_NAME,
        samples=result.samples if result else 0,
        ranges_file=None if loaded is None else loaded.path,
        quantized={name: op for name, (op, _) in plan.quantized_nodes.items()},
        float_nodes={
            name: (_op_type(model, name), reason) for name, reason in plan.float_nodes.items()
        },
        rules={report.rule: list(report.nodes) for _, report in selection.reports},
        size_before=model_bytes(input_path),
        size_after=model_bytes(output_path),
        opset=(opset_before, default_opset(quantized)),
        plan=plan,
        diagnosis=diagnosis,
    )
    if summary.opset[1] != summary.opset[0]:
        summary.notes.append(
            f"opset raised from {summary.opset[0]} to {summary.opset[1]} for per-channel weights"
        )
    if plan.cuts:
        summary.notes.append(
            f"{len(plan.cuts)} Add/Sub input range(s) cut to the values that can still reach "
            "the output's range (plan.cuts in --summary-json)"
        )
    if loaded is not None:
        summary.notes.append(_loaded_note(loaded, selection.range_tensors, needed))
    for remark, nodes in selection.notes.items():
        summary.notes.append(f"{remark}: {len(nodes)} node(s), e.g. {nodes[0]}")
    if config.save_ranges is not None:
        summary.notes.append(f"ranges of {len(known)} tensor(s) saved to {config.save_ranges}")
    if config.exclude_suggested and diagnosis is not None:
        summary.notes.append(_applied_note(diagnosis))
    if correction is not None:
        summary.notes.append(correction.note())
    if config.summary_json is not None:
        write_text(Path(config.summary_json), summary.to_json())
    return summary


def _applied_note(diagnosis: Diagnosis) -> str:
    """What ``exclude_suggested`` did."""
    if not diagnosis.suggested or diagnosis.suggested_score is None:
        return "exclude-suggested: the diagnosis found no exclusion worth it; nothing excluded"
    gain = diagnosis.gain(diagnosis.suggested_score)
    return (
        f"exclude-suggested: left {len(diagnosis.suggested)} more node(s) in float, as "
        f"-exn {','.join(diagnosis.suggested)} ({gain:+.2f} dB on the diagnosis samples)"
    )


def _warn_if_training_mode(graph: ModelGraph) -> None:
    """Warn once when the model was exported in training mode: its BatchNormalization
    nodes then normalize with each batch's own statistics (their running-mean and
    running-variance outputs give it away), so the FP32 model itself is not the one to
    deploy, quantized or not."""
    training = [
        node.name
        for node in graph.nodes
        if node.op_type == "BatchNormalization" and sum(1 for out in node.output if out) > 1
    ]
    if training:
        log.warning(
            f"{len(training)} BatchNormalization node(s) (e.g. {training[0]!r}) are in "
            "training mode: they normalize with each batch's statistics, not the learned "
            "ones, and stay float; re-export the model after model.eval() (torch.onnx.export "
            "with training=TrainingMode.EVAL)"
        )


def _ranges_of(tensors: list[str], known: dict[str, TensorRange]) -> dict[str, TensorRange]:
    """The ranges of ``tensors`` (those known), in that order."""
    return {t: known[t] for t in tensors if t in known}


def _loaded_note(loaded: LoadedRanges, tensors: list[str], calibrated: list[str]) -> str:
    """What a ranges file gave this run."""
    needed = set(tensors)
    used = sum(1 for t in loaded.ranges if t in needed)
    text = f"ranges: {used} read from {loaded.path}, {len(calibrated)} calibrated"
    unused = [t for t in loaded.ranges if t not in needed]
    if not unused:
        return text
    named = ", ".join(unused[:3]) + (", ..." if len(unused) > 3 else "")
    return f"{text}; {len(unused)} in the file not needed by this plan ({named})"


@contextlib.contextmanager
def _reported_already() -> Iterator[None]:
    """Errors only: the run's rules and plan were reported once already."""
    logger = logging.getLogger("drpaiq")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _preprocessed(
    config: QuantizeConfig, input_path: Path, held: list[onnx.ModelProto], workdir: Path
) -> tuple[onnx.ModelProto, Path | None]:
    """The model after ONNX Runtime's quantization pre-processing (or as loaded), and
    the file it was pre-processed into (in ``workdir``; None without pre-processing).

    :param held: the loaded model, as the only item of a list that this function
        empties: pre-processing reads the model file again, so the loaded copy is let go
        first (a model of several GB would otherwise be held once more throughout).
    """
    from drpaiq_core.preprocess import preprocess_model, preprocess_settings

    original = held.pop()
    settings = preprocess_settings(config)
    if settings is None:
        return original, None
    del original
    target = workdir / "preprocessed.onnx"
    loaded: list[onnx.ModelProto] = []
    # The file is needed only to publish it (-pmo) at the end.
    keep = config.preprocessed_model_output is not None
    preprocess_model(Path(input_path), target, **settings, loaded=loaded, write=keep)
    return loaded[0], target if keep else None


def _publish_preprocessed(source: Path, target: Path) -> None:
    """Write the pre-processed model to ``-pmo``'s path, once the run has succeeded
    (with its external data file beside it, when it has one)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    from drpaiq_core.write import copy_file, write_bytes

    data = source.parent / f"{source.name}.data"
    if not data.exists():
        copy_file(source, target)
        return
    # The data file is copied as it is (not loaded: it may be several GB) and named
    # after the target, as for any model; the data file is in place before the model.
    name = f"{target.name}.data"
    shell = onnx.load(str(source), load_external_data=False)
    for tensor in _get_all_tensors(shell):
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = name
    copy_file(data, target.parent / name)
    write_bytes(target, shell.SerializeToString(deterministic=True))


def _debug_dir(config: QuantizeConfig) -> Path | None:
    """Where the calibrator's debug output goes: ``--debug-dir``, else the advanced
    option ``entropy_debug``, else nowhere."""
    if config.debug_dir is not None:
        return Path(config.debug_dir)
    value = config.options.get("entropy_debug")
    return Path(value) if value else None


def _check_distinct_outputs(config: QuantizeConfig, debug_dir: Path | None) -> None:
    """Refuse two outputs at one path (the model, the summary JSON, the pre-processed
    model: one would replace the other at the end of the run), and a debug folder at
    the path of the input or of an output file."""
    files = {
        "the input model": config.input_model,
        "the output model": config.output_model,
        "--summary-json": config.summary_json,
        "-pmo": config.preprocessed_model_output,
        "--save-ranges": config.save_ranges,
    }
    seen: dict[Path, str] = {}
    for what, path in list(files.items())[1:]:
        if path is None:
            continue
        key = Path(path).resolve()
        if key in seen:
            raise UserError(
                f"{what} {path} is also {seen[key]}; give each output a path of its own"
            )
        seen[key] = what
    if debug_dir is None:
        return
    for what, path in files.items():
        if path is not None and Path(path).resolve() == debug_dir.resolve():
            raise UserError(
                f"debug folder {debug_dir} is the path of {what}; give the debug output a "
                "folder of its own"
            )


def _with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run ONNX shape inference; where it fails, go on with what it could infer
    (calibration observes the remaining shapes) and say so.

    A model over protobuf's 2 GB limit cannot be handed to the inference as it is: it
    runs on a copy whose large weights keep their shape but not their values, and the
    inferred types are copied back."""
    import onnx

    from drpaiq_core.write import EXTERNAL_DATA_THRESHOLD, proto_bytes

    large = proto_bytes(model) >= EXTERNAL_DATA_THRESHOLD
    source = _weightless(model) if large else model
    try:
        inferred = onnx.shape_inference.infer_shapes(source, strict_mode=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        log.info(
            f"shape inference failed ({type(exc).__name__}: {first}); continuing with "
            "shapes observed during calibration"
        )
        try:
            inferred = onnx.shape_inference.infer_shapes(source)
        except Exception:
            return model
    if not large:
        return inferred
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    for mine, found in zip(model.graph.output, inferred.graph.output, strict=True):
        mine.CopyFrom(found)
    return model


def _weightless(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` for shape inference: initializers of 1 MiB or more keep their
    name, type and shape but hold no values (marked as external data that is never
    read); the others, which may be shapes a Reshape needs, are copied whole."""
    import onnx

    from drpaiq_core.calibrate import shell_of

    light = shell_of(model)
    for init in model.graph.initializer:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        count = 1
        for dim in init.dims:
            count *= dim
        if count * itemsize < 1 << 20:
            light.graph.initializer.append(init)
            continue
        empty = light.graph.initializer.add()
        empty.name, empty.data_type = init.name, init.data_type
        empty.dims.extend(init.dims)
        empty.data_location = onnx.TensorProto.EXTERNAL
        entry = empty.external_data.add()
        entry.key, entry.value = "location", "not-read"
    return light


def _op_type(model: onnx.ModelProto, name: str) -> str:
    return next((node.op_type for node in model.graph.node if node.name == name), "?")
