"""Step 2 of a run: ONNX Runtime's quantization pre-processing.

:func:`preprocess_model` wraps ``onnxruntime.quantization.shape_inference.
quant_pre_process``: symbolic shape inference, graph optimization (constant folding,
BatchNormalization fusion) and ONNX shape inference, each switchable. It is optional:
quantization works on the raw model, and ``--skip_preprocess`` skips this step.

Failures: when symbolic shape inference alone fails (it does on some graphs that the
other two steps handle), the step is retried without it and a warning says so. Any
other failure is a :class:`UserError` beginning with the reference tool's message
"Pre-processing before quantization was Failed." and the advice to skip the step.
ONNX Runtime logs a failed graph optimization instead of raising; that becomes a
warning and the result of the other steps is used.

The output is written atomically (a staging folder beside it, then a rename).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drpaiq_core.errors import UserError
from drpaiq_core.load import model_bytes
from drpaiq_core.options import option_bool
from drpaiq_core.write import check_output_path, write_model

if TYPE_CHECKING:
    import onnx

    from drpaiq_core.config import QuantizeConfig

log = logging.getLogger("drpaiq")

#: The reference tool's message for a failed pre-processing step (kept verbatim, so
#: that users who search for it find the advice).
REFERENCE_FAILURE = "Pre-processing before quantization was Failed."
#: The modes ``--preprocess_mode`` accepts ("default" is post-training quantization).
PREPROCESS_MODES = ("default",)
#: Extra keyword arguments of ``do_preprocess`` passed on to ``quant_pre_process``.
PASS_THROUGH = ("auto_merge", "int_max", "guess_output_rank")


class _Captured(logging.Handler):
    """Collects ONNX Runtime's Python log records during pre-processing, so that its
    tracebacks do not reach the user's terminal."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def check_mode(mode: str) -> str:
    """``mode`` lower-cased if it is a known preprocessing mode, else a UserError."""
    value = str(mode).strip().lower()
    if value not in PREPROCESS_MODES:
        raise UserError(
            f"unknown --preprocess_mode {mode!r}; known modes: {', '.join(PREPROCESS_MODES)} "
            "(post-training quantization)"
        )
    return value


#: Models of this size or more are staged with external data (see preprocess_model).
STAGE_EXTERNAL_BYTES = 64 * 2**20


def preprocess_model(
    input_path: Path,
    output_path: Path,
    *,
    symbolic_shape_inference: bool = True,
    onnx_shape_inference: bool = True,
    optimization: bool = True,
    mode: str = "default",
    verbose: int = 0,
    extra: dict[str, Any] | None = None,
    external_data: tuple[str, int] | None = None,
    loaded: list[onnx.ModelProto] | None = None,
    write: bool = True,
) -> Path:
    """Pre-process ``input_path`` into ``output_path`` and return ``output_path``.

    :param symbolic_shape_inference: run ONNX Runtime's symbolic shape inference.
    :param onnx_shape_inference: run ONNX shape inference.
    :param optimization: run ONNX Runtime's basic graph optimizations.
    :param mode: ``--preprocess_mode``; only ``default`` exists.
    :param verbose: ONNX Runtime's verbosity for symbolic shape inference (0 = quiet).
    :param extra: further ``quant_pre_process`` arguments (``auto_merge``, ``int_max``,
        ``guess_output_rank``).
    :param external_data: ``(file name, size threshold)``: write the weights of that
        size or more into that file beside ``output_path`` (see
        :func:`~drpaiq_core.write.write_model`).
    :param loaded: when given, the pre-processed model is appended to it, so that a
        caller that needs it in memory does not read it back from the file.
    :param write: False: only stage the model beside ``output_path`` and hand it over
        in ``loaded``; nothing is written at ``output_path``.
    :raises UserError: the step failed ("Pre-processing before quantization was
        Failed. ..."), or the paths are wrong.
    """
    check_mode(mode)
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise UserError(f"model {input_path} does not exist; check the path")
    check_output_path(output_path, (input_path,))
    # Staged with external data from a modest size on: ONNX Runtime's pre-processing
    # then passes the weights between its steps as files instead of serialized protos
    # (a 0.5 GB model: 4.8 s instead of 8.3 s). The written model is the same either way.
    big = model_bytes(input_path) >= STAGE_EXTERNAL_BYTES
    # The staging folder sits beside the output so that the final rename stays on one
    # file system, and disappears even when the step fails.
    with tempfile.TemporaryDirectory(
        prefix=".drpaiq-preprocess-", dir=str(output_path.parent)
    ) as staging:
        staged = Path(staging) / "preprocessed.onnx"
        settings = {
            "skip_symbolic_shape": not symbolic_shape_inference,
            "skip_onnx_shape": not onnx_shape_inference,
            "skip_optimization": not optimization,
            "verbose": verbose,
            **(extra or {}),
        }
        if big:
            settings.update(
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                external_data_location="preprocessed.onnx.data",
            )
        try:
            _run(input_path, staged, settings)
        except Exception as exc:
            if not symbolic_shape_inference:
                raise _failure(exc) from None
            log.warning(
                f"symbolic shape inference failed ({_first_line(exc)}); pre-processing without it"
            )
            try:
                _run(input_path, staged, {**settings, "skip_symbolic_shape": True})
            except Exception as again:
                raise _failure(again) from None
        import onnx

        try:
            model = onnx.load(str(staged))
        except Exception as exc:
            raise _failure(exc) from None
        from drpaiq_core.prepare import keep_legacy_resize

        source = onnx.load(str(input_path), load_external_data=False)  # its graph only
        _drop_unused_domains(model, {entry.domain for entry in source.opset_import})
        # ONNX Runtime raises an opset-10 model to 11 without keeping its Resize's
        # coordinates (see keep_legacy_resize).
        keep_legacy_resize(source, model)
        if write:
            write_model(model, output_path, external=external_data)
    if loaded is not None:
        loaded.append(model)
    return output_path


def _drop_unused_domains(model: onnx.ModelProto, keep: set[str]) -> None:
    """Remove the operator-set imports that ONNX Runtime's optimizer adds for every
    domain it knows (ai.onnx.ml, com.microsoft.nchwc, org.pytorch.aten, ...) when no
    node uses them and the input did not declare them: the written model then declares
    what it uses, which strict importers of accelerator toolchains expect."""
    used = {node.domain for node in model.graph.node} | {"", "ai.onnx"} | keep
    for function in model.functions:
        used |= {node.domain for node in function.node} | {function.domain}
    unused = [entry for entry in model.opset_import if entry.domain not in used]
    for entry in unused:
        model.opset_import.remove(entry)


def preprocess_settings(config: QuantizeConfig) -> dict[str, Any] | None:
    """The :func:`preprocess_model` keyword arguments a run's options ask for, or None
    when pre-processing is skipped. The advanced option ``optimize_model False`` turns
    the graph-optimization step off."""
    if config.skip_preprocess:
        return None
    return {
        "mode": config.preprocess_mode,
        "optimization": option_bool(config.options, "optimize_model", True),
    }


@contextlib.contextmanager
def working_directory(folder: Path) -> Iterator[None]:
    """Run the block with ``folder`` as the current directory (restored afterwards).

    ONNX Runtime's symbolic shape inference saves ``sym_shape_infer_temp.onnx`` into the
    current directory when it fails; pre-processing runs it in its staging folder.
    (``contextlib.chdir`` does the same from Python 3.11 on.)
    """
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def _run(input_path: Path, output_path: Path, settings: dict[str, Any]) -> None:
    import onnxruntime
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # quant_pre_process's session logs through ONNX Runtime's default logger, straight
    # to the terminal ("Removing initializer ..." for any unused weight); drpaiq reports
    # what matters itself, in one line, so ONNX Runtime's lines only with --verbose.
    onnxruntime.set_default_logger_severity(2 if settings.get("verbose") else 4)

    input_path, output_path = input_path.resolve(), output_path.resolve()

    ort_logger = logging.getLogger("onnxruntime")
    captured = _Captured()
    saved_propagate, saved_level = ort_logger.propagate, ort_logger.level
    ort_logger.addHandler(captured)
    ort_logger.propagate = False
    ort_logger.setLevel(logging.DEBUG if settings.get("verbose") else logging.WARNING)
    try:
        with working_directory(output_path.parent), _ort_tools_without_torch():
            quant_pre_process(str(input_path), str(output_path), **settings)
    finally:
        ort_logger.removeHandler(captured)
        ort_logger.propagate, ort_logger.level = saved_propagate, saved_level
    for record in captured.records:
        message = record.getMessage().strip()
        if record.levelno >= logging.ERROR and "Optimization Failed" in message:
            log.warning(
                "ONNX Runtime's graph optimization failed during pre-processing; the model "
                "is used without it"
            )
        elif record.levelno >= logging.WARNING and message and "Traceback" not in message:
            log.debug(f"pre-processing: {_first_line(message)}")
    if not output_path.is_file():
        raise RuntimeError("ONNX Runtime wrote no pre-processed model")


#: ONNX Runtime's package of helper scripts; its symbolic shape inference lives there.
_ORT_TOOLS = "onnxruntime.tools"


@contextlib.contextmanager
def _ort_tools_without_torch() -> Iterator[None]:
    """Let ``quant_pre_process`` import ONNX Runtime's symbolic shape inference without
    importing PyTorch.

    ``onnxruntime/tools/__init__.py`` imports ``torch`` whenever it is installed, for
    a PyTorch export helper that quantization never uses; in the environments of users
    who export from PyTorch that added 1.2 s and about 300 MB to every run. While this
    is active, the package is a bare namespace over the same folder, so its modules
    import without the package's ``__init__``; afterwards the namespace and the modules
    loaded through it are dropped again, so that a later ``import onnxruntime.tools``
    (by the user's own code) runs the package as usual. Nothing is changed when the
    package or PyTorch is already imported.
    """
    if _ORT_TOOLS in sys.modules or "torch" in sys.modules:
        yield
        return
    spec = importlib.util.find_spec(_ORT_TOOLS)
    if spec is None or not spec.submodule_search_locations:
        yield
        return
    namespace = types.ModuleType(_ORT_TOOLS)
    namespace.__path__ = list(spec.submodule_search_locations)
    sys.modules[_ORT_TOOLS] = namespace
    try:
        yield
    finally:
        for name in [n for n in sys.modules if n.split(".")[:2] == ["onnxruntime", "tools"]]:
            del sys.modules[name]


def _failure(exc: BaseException) -> UserError:
    return UserError(
        f"{REFERENCE_FAILURE} ({type(exc).__name__}: {_first_line(exc)}) Rerun with "
        "--skip_preprocess (Python: skip_preprocess=True) to quantize the model as it is"
    )


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0][:300] if text else type(value).__name__
