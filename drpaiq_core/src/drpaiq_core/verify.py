"""Check a quantized model before it is written: sane parameters, a valid graph, and
an ONNX Runtime session that loads it."""

from __future__ import annotations

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


def verify(model: onnx.ModelProto) -> None:
    """onnx.checker plus an ONNX Runtime session built from the serialized model."""
    check_parameters(model)
    try:
        onnx.checker.check_model(model, full_check=False)
    except Exception as exc:
        raise UserError(f"internal check failed: the quantized model is invalid: {exc}") from None
    if model.ByteSize() >= 2_000_000_000:
        return  # too large to hand over in memory; the written file is checked instead
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Fatal messages only: a failure comes back as an exception, reported in one line;
    # ONNX Runtime's own log lines would be a second, differently formatted report.
    options.log_severity_level = 4
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = first_line(exc)
        raise UserError(
            f"internal check failed: ONNX Runtime cannot load the quantized model: {first}"
        ) from None
