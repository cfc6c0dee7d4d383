"""Check a quantized model before it is written: sane parameters, a valid graph, and
an ONNX Runtime session that loads it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from drpaiq_core.errors import UserError, first_line


def check_parameters(model: onnx.ModelProto) -> None:
    """Refuse a model with a NaN, Inf or zero scale, or a non-finite zero point."""
    inits = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 2:
            continue
        scale_init = inits.get(node.input[1])
        if scale_init is None:
            continue
        scale = numpy_helper.to_array(scale_init)
        if not np.all(np.isfinite(scale)) or np.any(scale == 0):
            raise UserError(
                f"internal check failed: {node.name} has a NaN, Inf or zero scale; nothing "
                "was written (the calibration data may contain only non-finite values)"
            )


def verify(model: onnx.ModelProto) -> bool:
    """onnx.checker plus an ONNX Runtime session built from the serialized model.

    :returns: False when the model is too large to check in memory (over protobuf's
        2 GB): check the written file with :func:`verify_file` instead.
    """
    from drpaiq_core.write import EXTERNAL_DATA_THRESHOLD, proto_bytes

    check_parameters(model)
    if proto_bytes(model) >= EXTERNAL_DATA_THRESHOLD:
        return False
    try:
        onnx.checker.check_model(model, full_check=False)
    except Exception as exc:
        raise UserError(f"internal check failed: the quantized model is invalid: {exc}") from None
    _open_session(model.SerializeToString())
    return True


def verify_file(path: Path) -> None:
    """onnx.checker and an ONNX Runtime session on a written model (with its external
    data beside it)."""
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as exc:
        first = first_line(exc)
        raise UserError(f"internal check failed: the quantized model is invalid: {first}") from None
    _open_session(str(path))


def _open_session(source: bytes | str) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Fatal messages only: a failure comes back as an exception, reported in one line;
    # ONNX Runtime's own log lines would be a second, differently formatted report.
    options.log_severity_level = 4
    try:
        ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = first_line(exc)
        raise UserError(
            f"internal check failed: ONNX Runtime cannot load the quantized model: {first}"
        ) from None
