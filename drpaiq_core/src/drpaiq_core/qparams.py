"""Scale and zero-point arithmetic: ranges in, quantization parameters out.

The zero-point rule (the reference tool's changed behaviour 2):

* A range is first widened to include 0.0: ``rmin = min(rmin, 0)``, ``rmax = max(rmax, 0)``.
* Asymmetric: ``scale = (rmax - rmin) / (qmax - qmin)`` and
  ``zero_point = clamp(round(qmin - rmin / scale), qmin, qmax)``. Real 0.0 then
  quantizes to ``zero_point`` exactly and dequantizes back to exactly 0.0, so zero
  padding and ReLU outputs lose nothing.
* Symmetric: ``scale = max(|rmin|, |rmax|) / 127`` with ``zero_point`` 0 (int8) or
  128 (uint8).
* A degenerate range (``rmin == rmax == 0``, e.g. a constant zero tensor) gets
  ``scale = 1.0``; every scale is at least :data:`MIN_SCALE`, so no scale is ever 0.

Weights are int8, symmetric, per channel, in ``[-127, 127]``; biases are int32 with
zero point 0 and ``scale = input scale x weight scale``. A channel whose bias would not
fit ``+-2**30`` at that scale gets a larger weight scale instead (see
:func:`bias_weight_scale_floor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Smallest scale written; avoids division by zero and denormals in kernels.
MIN_SCALE = 1e-12

QRANGES = {"int8": (-128, 127), "uint8": (0, 255)}
NP_TYPES: dict[str, type[np.signedinteger[Any]] | type[np.unsignedinteger[Any]]] = {
    "int8": np.int8,
    "uint8": np.uint8,
    "int32": np.int32,
}


@dataclass(frozen=True)
class QParams:
    """Parameters of one quantized tensor.

    :ivar scale: float32 scalar (per tensor) or 1-D array (per channel).
    :ivar zero_point: same shape as ``scale``, of the quantized dtype.
    :ivar dtype: ``int8``, ``uint8`` or ``int32``.
    :ivar axis: channel axis for per-channel parameters, else None.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str
    axis: int | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-able form (lists for per-channel values)."""
        return {
            "scale": self.scale.tolist(),
            "zero_point": self.zero_point.tolist(),
            "dtype": self.dtype,
            "axis": self.axis,
        }


def widen(rmin: float, rmax: float) -> tuple[float, float]:
    """The range widened to include 0.0."""
    return min(float(rmin), 0.0), max(float(rmax), 0.0)


def activation_scale(rmin: float, rmax: float, dtype: str, symmetric: bool) -> float:
    """The scale a range needs on its own."""
    rmin, rmax = widen(rmin, rmax)
    qmin, qmax = QRANGES[dtype]
    if symmetric:
        span = max(abs(rmin), abs(rmax)) / 127.0
    else:
        span = (rmax - rmin) / (qmax - qmin)
    if span == 0.0:
        return 1.0
    return max(span, MIN_SCALE)


def activation_params(
    rmin: float, rmax: float, dtype: str, symmetric: bool, scale: float | None = None
) -> QParams:
    """Per-tensor activation parameters for a range.

    :param scale: force this scale (a shared-scale group); the zero point is then
        chosen for this range under it.
    """
    rmin, rmax = widen(rmin, rmax)
    qmin, qmax = QRANGES[dtype]
    s = float(
        np.float32(scale if scale is not None else activation_scale(rmin, rmax, dtype, symmetric))
    )
    if symmetric:
        zp = 0 if dtype == "int8" else 128
    else:
        zp = int(np.clip(np.round(qmin - rmin / s), qmin, qmax))
    return QParams(np.array(s, dtype=np.float32), np.array(zp, dtype=NP_TYPES[dtype]), dtype, None)


def weight_params(
    weight: np.ndarray, axis: int | None, min_scale: np.ndarray | float | None = None
) -> tuple[QParams, np.ndarray]:
    """Symmetric int8 parameters and the quantized weight (per channel along ``axis``).

    :param min_scale: a floor for the scale (per channel, or one value): see
        :func:`bias_weight_scale_floor`.
    """
    w = np.asarray(weight, dtype=np.float32)
    floor = np.float32(MIN_SCALE) if min_scale is None else np.asarray(min_scale, np.float32)
    if axis is None:
        absmax = np.array(np.max(np.abs(w)) if w.size else 0.0, dtype=np.float32)
        scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
        scale = np.maximum(np.maximum(scale, MIN_SCALE), np.max(floor)).astype(np.float32)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        return QParams(scale, np.zeros((), np.int8), "int8", None), q
    axis = axis % w.ndim
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    absmax = np.max(np.abs(moved), axis=1) if moved.size else np.zeros(w.shape[axis], np.float32)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    scale = np.maximum(np.maximum(scale, MIN_SCALE), floor).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return QParams(scale, np.zeros(scale.shape, np.int8), "int8", axis), q


#: The largest |int32 bias| planned: half the int32 range, so that the accumulator
#: (bias plus the int8 x int8 products) keeps room before it overflows.
BIAS_LIMIT = 2**30


def bias_weight_scale_floor(bias: np.ndarray, input_scale: np.ndarray | float) -> np.ndarray:
    """The smallest weight scale per channel under which ``bias`` fits :data:`BIAS_LIMIT`.

    A channel whose weights are all nearly zero (a BatchNormalization with gamma near 0
    folded into its Conv: a pruned or "slimmed" channel) gets a tiny weight scale, and
    its bias, divided by ``input scale x weight scale``, far exceeds int32: clipped, the
    channel would output a fraction of its bias. Raising that channel's weight scale to
    this floor costs the channel nothing it had (its weights round to about the same
    few levels) and keeps its bias exact.
    """
    b = np.abs(np.asarray(bias, dtype=np.float64).reshape(-1))
    s_in = max(float(np.asarray(input_scale, dtype=np.float64).reshape(-1)[0]), MIN_SCALE)
    floor = b / (s_in * BIAS_LIMIT)
    # float32 rounding must not bring the quotient back above the limit.
    return np.nextafter(floor.astype(np.float32), np.float32(np.inf))


def bias_params(
    bias: np.ndarray, input_scale: np.ndarray, weight_scale: np.ndarray
) -> tuple[QParams, np.ndarray]:
    """int32 bias with ``scale = input scale x weight scale`` (per channel when the
    weight is, one scale when the weight is per tensor) and zero point 0."""
    b = np.asarray(bias, dtype=np.float64).reshape(-1)
    scale = (np.float64(input_scale) * np.asarray(weight_scale, dtype=np.float64)).reshape(-1)
    with np.errstate(over="ignore"):  # an overflow to inf is refused by verify
        scale32 = np.maximum(scale, MIN_SCALE).astype(np.float32)
    q = np.clip(np.round(b / scale32.astype(np.float64)), -(2**31), 2**31 - 1).astype(np.int32)
    axis: int | None = 0
    if np.asarray(weight_scale).size == 1:
        return QParams(scale32.reshape(()), np.zeros((), np.int32), "int32", None), q.reshape(
            np.shape(bias)
        )
    return QParams(scale32, np.zeros(scale32.shape, np.int32), "int32", axis), q.reshape(
        np.shape(bias)
    )


def fake_quantize(values: np.ndarray, params: QParams) -> np.ndarray:
    """Quantize then dequantize ``values`` with ``params`` (a NumPy reference)."""
    scale = params.scale.astype(np.float32)
    zp = params.zero_point.astype(np.float32)
    if params.axis is not None:
        shape = [1] * values.ndim
        shape[params.axis] = -1
        scale = scale.reshape(shape)
        zp = zp.reshape(shape)
    info = np.iinfo(NP_TYPES[params.dtype])
    q = np.clip(np.round(values / scale) + zp, info.min, info.max)
    return ((q - zp) * scale).astype(np.float32)
