"""A one-pass, exactly mergeable histogram of one tensor's values.

The entropy and percentile calibrators need a fine histogram, but the range of the data
is only known once all of it has been seen. Instead of a first pass for the range and a
second for the histogram (twice the inference time), the grid is fixed in advance up to
a power of two:

* bin ``j`` holds the values ``x`` with ``trunc(x / w) == j``, where the bin width
  ``w = 2**exponent`` is a power of two and ``|j| < capacity``;
* the exponent is the smallest one for which every value seen so far fits; when a batch
  brings a larger ``|x|``, the exponent grows and each old bin ``j`` moves to bin
  ``trunc(j / 2**d)``.

Why this is exact: dividing a float by a power of two only changes its exponent, so
``x / w`` is computed without rounding (a result below the smallest normal float is
below 1 and truncates to 0 either way), and ``trunc(x / 2w) == trunc(trunc(x / w) / 2)``
holds for every real ``x``. Widening therefore gives exactly the counts that binning
the same values on the wider grid directly would give. The final exponent depends only
on the largest ``|x|`` of all the data, and integer counts add in any order, so
splitting the data into batches or chunks, collecting each and merging the states
reproduces one pass bit for bit, whatever the batch size or order.

The calibrators use ``capacity = num_bins``: with the smallest fitting exponent, the
largest magnitude falls between bin ``num_bins / 2`` and bin ``num_bins``, so the side
of the largest magnitude has between ``num_bins / 2 + 1`` and ``num_bins`` occupied bins
(at least the resolution of a ``num_bins`` histogram over ``[-max, max]``). The state
holds ``2 * num_bins - 1`` int64 counts (16 KB per tensor at the default 2048 bins),
independent of the number of batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from drpaiq_core.plugin_api import Calibrator

#: Histogram bins per sign by default (``num_bins``), and the most accepted.
DEFAULT_NUM_BINS = 2048
MAX_BINS = 1 << 16


def bins_option(options: Mapping[str, Any], method: str, places: str) -> int:
    """The ``num_bins`` option of a method that ``places`` its range ends at bin edges:
    16 to :data:`MAX_BINS` (fewer place them far from where they belong; more cost
    memory)."""
    from drpaiq_plugins_calibrators._options import int_option

    return int_option(
        options,
        "num_bins",
        DEFAULT_NUM_BINS,
        low=16,
        high=MAX_BINS,
        why=f"{method} calibration {places} at bin edges: fewer than 16 bins per sign put "
        "them far off, and the histogram's memory grows with more; drpaiq's default is "
        f"{DEFAULT_NUM_BINS}",
    )


#: The smallest bin width is 2**MIN_EXPONENT; a tensor of zeros keeps it. float32 can
#: scale by 2**-MIN_EXPONENT without overflow.
MIN_EXPONENT = -120


@dataclass
class HistogramState:
    """Counts on the power-of-two grid, plus the exact extremes and the value count.

    :ivar capacity: bins per side; bin indices run from ``-(capacity - 1)`` to
        ``capacity - 1``.
    :ivar count: how many values were folded in.
    :ivar zeros: how many of them were exactly 0 (always exactly representable).
    :ivar vmin: the smallest value seen (``+inf`` while empty).
    :ivar vmax: the largest value seen (``-inf`` while empty).
    :ivar exponent: the bin width is ``2**exponent``; ``None`` while empty.
    :ivar counts: int64 counts; ``counts[j + capacity - 1]`` is bin ``j``.
    """

    capacity: int
    count: int = 0
    zeros: int = 0
    vmin: float = math.inf
    vmax: float = -math.inf
    exponent: int | None = None
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if self.counts.size == 0:
            self.counts = np.zeros(2 * self.capacity - 1, dtype=np.int64)

    @property
    def width(self) -> float:
        """The bin width ``2**exponent`` (0.0 while empty)."""
        return 0.0 if self.exponent is None else math.ldexp(1.0, self.exponent)

    def copy(self) -> HistogramState:
        """An independent copy."""
        return HistogramState(
            self.capacity,
            self.count,
            self.zeros,
            self.vmin,
            self.vmax,
            self.exponent,
            self.counts.copy(),
        )


def required_exponent(absmax: float, capacity: int) -> int:
    """The smallest exponent ``k >= MIN_EXPONENT`` with ``absmax < capacity * 2**k``."""
    if absmax <= 0.0:
        return MIN_EXPONENT
    # frexp gives a first guess; the two loops make it exact whatever the rounding of
    # the guess (scaling by powers of two is exact in float64).
    k = max(MIN_EXPONENT, math.frexp(absmax / capacity)[1] - 1)
    while math.ldexp(absmax, -k) >= capacity:
        k += 1
    while k > MIN_EXPONENT and math.ldexp(absmax, -(k - 1)) < capacity:
        k -= 1
    return k


def widen(state: HistogramState, exponent: int) -> None:
    """Move ``state`` to the grid of ``exponent`` (>= its own) by exact bin merges."""
    if state.exponent is None:
        state.exponent = exponent
        return
    shift = exponent - state.exponent
    if shift <= 0:
        return
    offset = state.capacity - 1
    j = np.arange(-offset, offset + 1, dtype=np.int64)
    # trunc(j / 2**shift): shift the magnitude, keep the sign. Shifting by 62 already
    # sends every index below 2**62 to 0.
    moved = np.sign(j) * (np.abs(j) >> min(shift, 62))
    counts = np.zeros_like(state.counts)
    np.add.at(counts, moved + offset, state.counts)
    state.counts = counts
    state.exponent = exponent


def add_values(state: HistogramState, values: np.ndarray) -> None:
    """Fold finite ``values`` (any shape) into ``state``."""
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    if flat.size == 0:
        return
    lo = float(np.minimum.reduce(flat))
    hi = float(np.maximum.reduce(flat))
    state.count += int(flat.size)
    state.vmin = min(state.vmin, lo)
    state.vmax = max(state.vmax, hi)
    needed = required_exponent(max(-lo, hi), state.capacity)
    if state.exponent is None or needed > state.exponent:
        widen(state, needed)
    assert state.exponent is not None
    # The float32 product is exact (power-of-two scale), and truncation toward zero is
    # the binning rule; the indices of lo and hi bound every other value's.
    scale = np.float32(math.ldexp(1.0, -state.exponent))
    offset = state.capacity - 1
    first = int(np.float32(lo) * scale) + offset
    last = int(np.float32(hi) * scale) + offset
    window = state.counts[first : last + 1]
    state.zeros += count_bins(flat, scale, offset - first, window, extremes=(lo, hi))


def count_bins_numpy(flat: np.ndarray, scale: np.float32, offset: int, counts: np.ndarray) -> int:
    """The NumPy path of :func:`count_bins`: the same counts, bit for bit, about twice as
    slow as the compiled loop."""
    # Casting straight to intp spares bincount a conversion (measured several times
    # faster than int32 on large tensors).
    index = (flat * scale).astype(np.intp)
    if offset:
        index += offset
    counts += np.bincount(index, minlength=counts.size)
    # Counting the 32-bit patterns with the sign bit shifted out finds +0.0 and -0.0
    # alike, and is several times faster than counting float non-zeros.
    return int(flat.size - np.count_nonzero(np.left_shift(flat.view(np.int32), 1)))


_compiled_count_bins: Callable[[np.ndarray, float, int, np.ndarray, float, float], int] | None
try:
    from drpaiq_plugins_calibrators._binning import count_bins as _compiled_count_bins
except ImportError:  # built without a C compiler: the NumPy path gives the same counts
    _compiled_count_bins = None

#: Whether the compiled loop (``_binning.c``, built at install time when a C compiler is
#: there) is in use.
COMPILED = _compiled_count_bins is not None


def count_bins(
    flat: np.ndarray,
    scale: np.float32,
    offset: int,
    counts: np.ndarray,
    *,
    extremes: tuple[float, float] | None = None,
) -> int:
    """Add 1 to ``counts[trunc(float32(x * scale)) + offset]`` for every value ``x`` of the
    contiguous float32 vector ``flat``; return how many values were exactly 0.

    ``counts`` is a contiguous int64 array (or view), updated in place. ``extremes`` are
    the smallest and largest value when the caller already has them (measured here
    otherwise): the compiled loop checks their bins once instead of every value's.
    Uses the compiled loop when it was built (:data:`COMPILED`), :func:`count_bins_numpy`
    otherwise; both give identical counts. On the 32x32 sample model the compiled loop
    takes about 60 ms for the outputs of 512 images, NumPy about 135 ms.

    :raises ValueError: a value is NaN or its bin is outside ``counts`` (nothing counted).
    """
    if _compiled_count_bins is None:
        return count_bins_numpy(flat, scale, offset, counts)
    if flat.size == 0:
        return 0
    if extremes is None:
        extremes = (float(np.minimum.reduce(flat)), float(np.maximum.reduce(flat)))
    low, high = extremes
    return int(_compiled_count_bins(flat, float(scale), offset, counts, low, high))


def merge(a: HistogramState, b: HistogramState) -> HistogramState:
    """A new state holding the values of both ``a`` and ``b`` (inputs are untouched)."""
    if a.capacity != b.capacity:
        raise ValueError(
            f"cannot merge histograms of {a.capacity} and {b.capacity} bins per side; "
            "collect both with the same num_bins"
        )
    out = a.copy()
    if b.exponent is None:
        return out
    other = b.copy()
    target = b.exponent if a.exponent is None else max(a.exponent, b.exponent)
    widen(out, target)
    widen(other, target)
    out.counts += other.counts
    out.count += other.count
    out.zeros += other.zeros
    out.vmin = min(out.vmin, other.vmin)
    out.vmax = max(out.vmax, other.vmax)
    return out


def side_counts(state: HistogramState, *, negative: bool) -> np.ndarray:
    """Counts of one sign's magnitudes: bin ``m`` holds the values of that sign with
    ``m*w <= |x| < (m+1)*w`` (bin 0, ``(-w, w)``, belongs to both sides); trailing empty
    bins are dropped. A new array."""
    offset = state.capacity - 1
    side = state.counts[offset::-1] if negative else state.counts[offset:]
    nonzero = np.flatnonzero(side)
    return side[: nonzero[-1] + 1].copy() if nonzero.size else side[:0].copy()


def signed_bins(state: HistogramState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The occupied signed bins in ascending order of value.

    :returns: ``(counts, lower, upper)``: the count of each bin and the edges of the
        interval it covers (bin 0 covers ``(-w, w)``, a positive bin ``j`` covers
        ``[j*w, (j+1)*w)``, a negative bin ``(( j-1)*w, j*w]``).
    """
    nonzero = np.flatnonzero(state.counts)
    if nonzero.size == 0:
        empty = np.zeros(0)
        return state.counts[:0], empty, empty
    first, last = int(nonzero[0]), int(nonzero[-1])
    j = np.arange(first, last + 1, dtype=np.float64) - (state.capacity - 1)
    w = state.width
    lower = np.where(j > 0, j, j - 1) * w
    upper = np.where(j < 0, j, j + 1) * w
    return state.counts[first : last + 1], lower, upper


class HistogramCalibrator(Calibrator):
    """Shared state handling of the histogram calibrators: one :class:`HistogramState`
    per tensor with ``num_bins`` bins per side (set by the subclass), folded and merged
    exactly. Subclasses implement :meth:`compute`."""

    num_bins: int

    def new_state(self) -> HistogramState:
        """An empty histogram with ``num_bins`` bins per side."""
        return HistogramState(capacity=self.num_bins)

    def collect(self, state: HistogramState, values: np.ndarray, pass_index: int) -> HistogramState:
        """Fold a batch of finite values into the histogram."""
        add_values(state, values)
        return state

    def merge(self, a: HistogramState, b: HistogramState) -> HistogramState:
        """Exact merge (see :mod:`drpaiq_plugins_calibrators.histogram`)."""
        return merge(a, b)

    def base_details(self, state: HistogramState, method: str, **settings: Any) -> dict[str, Any]:
        """The details every histogram calibrator reports for :meth:`report`: the method,
        the value count, ``num_bins`` and ``settings``, then either ``empty`` (no
        values) or the extremes, the bin width and the occupied signed bins
        (``histogram``, ``histogram_lower``, ``histogram_upper``; see
        :func:`signed_bins`)."""
        details: dict[str, Any] = {
            "method": method,
            "count": state.count,
            "num_bins": self.num_bins,
            **settings,
        }
        if state.count == 0:
            details["empty"] = True
            return details
        counts, lower, upper = signed_bins(state)
        details.update(
            min=state.vmin,
            max=state.vmax,
            bin_width=state.width,
            histogram=counts,
            histogram_lower=lower,
            histogram_upper=upper,
        )
        return details
