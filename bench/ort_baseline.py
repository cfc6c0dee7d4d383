"""ONNX Runtime's own quantizer, as every benchmark here runs it for comparison.

One function, so that the baseline is the same everywhere: the model converted to
opset 13 where it is below (ONNX Runtime writes per-channel DequantizeLinear with an
``axis`` even below 13, an invalid model; drpaiq converts the same way), then
``quant_pre_process`` and ``quantize_static`` with QDQ, per-channel, QInt8 activations
and weights and the given calibration method.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

#: drpaiq calibrators that ONNX Runtime has no counterpart for, and the method of its
#: own the benchmarks compare them with (its default).
STAND_INS = {"mse": "MinMax"}


def ort_method(method: str) -> str:
    """ONNX Runtime's calibration method compared with drpaiq's ``method``: the same
    one, or for one it lacks its stand-in (:data:`STAND_INS`)."""
    return STAND_INS.get(method.lower(), method)


def stand_in_note(methods: Iterable[str]) -> str:
    """A line saying which ONNX Runtime methods stood in for which drpaiq ones ("" when
    none did)."""
    used = sorted({m for m in methods if m.lower() in STAND_INS})
    return "; ".join(
        f"ONNX Runtime has no {m} calibration: its {ort_method(m)} is compared" for m in used
    )


def ort_quantize_static(
    source: Path, out: Path, feeds: Iterable[dict[str, np.ndarray]], method: str, scratch: Path
) -> float:
    """Quantize ``source`` into ``out`` with ONNX Runtime, calibrating on ``feeds`` (one
    dict of input arrays per run; consumed once); ``method`` is a ``CalibrationMethod``
    member name (``MinMax``, ``Entropy``, ``Percentile``) or a drpaiq method with a
    stand-in (see :func:`ort_method`); intermediate files go to
    ``scratch``. Returns the wall time in seconds."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    start = time.perf_counter()
    model = onnx.load(str(source))
    if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
        source = scratch / f"{out.stem}_opset13.onnx"
        onnx.save(version_converter.convert_version(model, 13), str(source))
    pre = scratch / f"{out.stem}_pre.onnx"
    quant_pre_process(str(source), str(pre))
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines
        quantize_static(
            str(pre),
            str(out),
            Feeds(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, ort_method(method)),
        )
    return time.perf_counter() - start
