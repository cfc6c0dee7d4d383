"""Entropy calibration: the clipping thresholds that lose the least information.

The values are gathered in a fine histogram (see
:mod:`drpaiq_plugins_calibrators.histogram`: one pass, exactly mergeable, between
``num_bins / 2`` and ``num_bins`` occupied bins on the side of the largest magnitude).
Each sign is searched on its own, on the histogram of its magnitudes: for every
candidate threshold ``t_i = i * w`` (the first ``i`` bins kept, ``i`` from
``num_quantized_bins`` to the last occupied bin) we compare

* ``P_i``: the histogram cut at ``t_i``, the clipped mass added to its last bin (what the
  tensor looks like after clipping), with
* ``Q_i``: the kept bins merged into ``num_quantized_bins`` equal groups and spread back
  uniformly over each group's non-empty bins (what is left after quantizing to that
  many levels),

and choose the ``t_i`` of smallest Kullback-Leibler divergence ``KL(P_i || Q_i)``. A low
threshold quantizes finely but clips much; a high one clips nothing but quantizes
coarsely; heavy-tailed activations get a threshold well inside their maximum. The
range is ``[-t_negative, t_positive]``, each end never beyond the values seen; a side
with no values keeps its extreme (``[min, t]`` after a ReLU, which the asymmetric
quantizer widens to include 0).

Why each sign on its own: the quantizer is asymmetric, so the two ends need not match,
and folding the signs together mixes unrelated shapes. On a normalized image input
(a spike of background pixels at the minimum, a spread of bright pixels up to 2.5 times
further on the other side) the folded search clipped the bright side at the
background's magnitude; searched apart, each side keeps its own extent.

The search is vectorized: with cumulative sums of the counts, of the non-empty flags and
of ``p log p``, every group's mass and occupancy for every candidate is a pair of
lookups, and ``KL`` for all candidates is a handful of array expressions over a
``(candidates x groups)`` matrix, evaluated in cache-sized blocks. Within a group ``Q``
is constant on the bins where ``P`` is non-zero, so ``sum P log Q`` needs only the group
masses:

    KL_i = sum_t P_t log P_t - sum_g P_g log(G_g / nz_g + eps) + log Z_i

with ``G_g`` the group's kept count, ``P_g`` its share of ``P_i`` (``G_g`` plus the clipped
count for the last group, over the total), ``nz_g`` its non-empty bins, ``eps`` the
smoothing count :data:`SMOOTHING` and ``Z_i`` the normalizer (kept count plus ``eps``
per non-empty bin). Without the smoothing, clipping a few far outliers into an empty
last group would cost an infinite divergence and push the threshold out to them.

Exact zeros are left out of the search: the quantizer represents real 0 exactly, so
they cost nothing at any threshold, while the spike of zeros after a ReLU would
otherwise dominate the divergence and pull the threshold far into the data.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import TensorRange

from drpaiq_plugins_calibrators import debug_plots, histogram
from drpaiq_plugins_calibrators._options import float_option, int_option, path_option

#: At most this share of a side's non-zero values may be clipped (``entropy_max_clip``).
#: KL divergence compares shapes only: it does not see how far clipped values move. On
#: long-tailed activations (a first layer after ReLU6, 10% of the values in a thin tail
#: up to 6) the bare search clipped at 0.5 and cost modB 16 top-1 points; with this
#: bound the search still clips heavy tails, but never a visible part of the data.
DEFAULT_MAX_CLIP = 1e-4

DEFAULT_NUM_BINS = 2048
DEFAULT_NUM_QUANTIZED_BINS = 128
MAX_BINS = 1 << 16

#: Counts added to every non-empty bin of the quantized distribution, so that clipping
#: values into a stretch the quantized distribution leaves empty (rare outliers far
#: beyond the bulk) costs a large but finite divergence instead of an infinite one.
SMOOTHING = 1e-4

#: Matrix elements per block of the search: 256 KB per float64 array keeps a block in
#: the CPU cache; larger blocks measured several times slower.
_BLOCK_ELEMENTS = 1 << 15


def kl_divergence_curve(
    counts: np.ndarray, num_quantized_bins: int, first: int | None = None
) -> np.ndarray:
    """``KL(P_i || Q_i)`` for every candidate ``i`` in ``first .. len(counts)``.

    :param counts: a histogram of ``|x|`` (bin ``m`` covers ``[m*w, (m+1)*w)``) with at
        least ``num_quantized_bins`` bins and some non-zero count.
    :param num_quantized_bins: the number of quantization levels over ``[0, t]``.
    :param first: the first candidate (default and minimum ``num_quantized_bins``); the
        values do not depend on it.
    :returns: float64 array, element ``k`` for candidate ``i = first + k``
        (threshold ``i * w``); ``inf`` for a threshold below every value.
    """
    h = np.asarray(counts, dtype=np.float64)
    n = h.size
    levels = num_quantized_bins
    if n < levels:
        raise ValueError(f"histogram of {n} bins is shorter than {levels} levels")
    total = float(h.sum())
    if total <= 0:
        raise ValueError("empty histogram")
    # The cumulative counts and the cumulative number of non-empty bins, packed into one
    # integer table: one gather and one subtraction give every group's mass (high bits)
    # and occupancy (low bits) together. Differences of a non-decreasing table are never
    # negative, so the low bits never borrow from the high ones.
    packed = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.asarray(counts, dtype=np.int64), out=packed[1:])
    if packed[-1] >= 1 << (63 - _OCCUPANCY_BITS):
        raise ValueError(f"histogram of {packed[-1]} values is too large to search")
    packed <<= _OCCUPANCY_BITS
    packed[1:] += np.cumsum(h > 0)
    cum = (packed >> _OCCUPANCY_BITS).astype(np.float64)
    nonzero_cum = (packed & _OCCUPANCY_MASK).astype(np.float64)
    p = h / total
    plogp_cum = np.zeros(n + 1)
    np.cumsum(p * np.log(np.where(p > 0, p, 1.0)), out=plogp_cum[1:])

    first = levels if first is None else min(max(first, levels), n)
    curve = np.empty(n - first + 1)
    block = max(1, _BLOCK_ELEMENTS // (levels + 1))
    bounds_of = _group_bounds(levels, n + 1)
    at_buffer, groups_buffer, mass_buffer, level_buffer = _work_buffers(block, levels)
    for start in range(first, n + 1, block):
        stop = min(n + 1, start + block)
        rows = stop - start
        in_range = cum[start:stop]
        clipped = total - in_range
        last_kept = h[start - 1 : stop - 1]
        last_p = (last_kept + clipped) / total
        sum_plogp = plogp_cum[start - 1 : stop - 1] + last_p * np.log(
            np.where(last_p > 0, last_p, 1.0)
        )

        # (mode="clip" only lets take() write straight into the buffer: every bound is
        # inside the table.)
        at = np.take(packed, bounds_of(start, stop), out=at_buffer[:rows], mode="clip")
        groups = np.subtract(at[:, 1:], at[:, :-1], out=groups_buffer[:rows])
        # Counts and occupancies are integers far below 2**53: exact in float64.
        mass = mass_buffer[:rows]
        np.copyto(mass, np.right_shift(groups, _OCCUPANCY_BITS, out=at[:, 1:]))
        occupied = level_buffer[:rows]
        np.copyto(occupied, np.bitwise_and(groups, _OCCUPANCY_MASK, out=groups))
        # The clipped mass lands in P's last bin, which then counts as non-empty.
        became_nonzero = (last_kept == 0) & (clipped > 0)
        occupied[:, -1] += became_nonzero
        # Q per non-empty bin of a group: the group's mass spread evenly, plus the
        # smoothing count; normalized over all of P's non-empty bins.
        log_level = np.maximum(occupied, 1.0, out=occupied)
        np.divide(mass, log_level, out=log_level)
        log_level += SMOOTHING
        np.log(log_level, out=log_level)
        normalizer = in_range + SMOOTHING * (nonzero_cum[start:stop] + became_nonzero)
        cross = np.einsum("ij,ij->i", mass, log_level) + clipped * log_level[:, -1]
        divergence = sum_plogp - cross / total + np.log(normalizer)
        # A threshold below every value clips all of them into one bin, which the
        # smoothing would score as a perfect match: it is no candidate.
        curve[start - first : stop - first] = np.where(in_range > 0, divergence, np.inf)
    return curve


_work = threading.local()


def _work_buffers(rows: int, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The search's block matrices, allocated once per thread and reused: allocated
    afresh for each block (or each tensor), a few 256 KB arrays were returned to the
    system and faulted back in every time, and the search took 2-3x as long whenever the
    C library had not yet raised its thresholds for such sizes."""
    shape = (rows, levels)
    if getattr(_work, "shape", None) != shape:
        _work.buffers = (
            np.empty((rows, levels + 1), dtype=np.int64),
            np.empty((rows, levels), dtype=np.int64),
            np.empty((rows, levels)),
            np.empty((rows, levels)),
        )
        _work.shape = shape
    buffers: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] = _work.buffers
    return buffers


#: Low bits of the packed table that hold the cumulative number of non-empty bins
#: (up to :data:`MAX_BINS` + 1); the high bits hold the cumulative count.
_OCCUPANCY_BITS = 17
_OCCUPANCY_MASK = (1 << _OCCUPANCY_BITS) - 1

#: Group bounds per ``num_quantized_bins``, for thresholds up to some number of bins,
#: kept while they take at most this many integers (2 MB at the default 2048 bins and
#: 128 levels); the same for every tensor, and costly to compute again for each.
_BOUNDS_CACHE_ELEMENTS = 1 << 22
_bounds_cache: dict[int, np.ndarray] = {}


def _group_bounds(levels: int, rows: int) -> Callable[[int, int], np.ndarray]:
    """A function of a range ``start .. stop`` of thresholds ``i`` (in bins, ``stop <=
    rows``) to the bins where each of their ``levels`` groups starts: the
    ``(stop - start, levels + 1)`` intp array of ``floor(i * g / levels)``, ``g = 0 ..
    levels`` (a view into a cache when it fits :data:`_BOUNDS_CACHE_ELEMENTS`)."""
    groups = np.arange(levels + 1, dtype=np.intp)

    def computed(start: int, stop: int) -> np.ndarray:
        # In place in intp: a third faster than through int32 and a cast.
        bounds = np.multiply.outer(np.arange(start, stop, dtype=np.intp), groups)
        bounds //= levels
        return bounds

    # Sized for the default histogram at once where that fits, so that it is built once.
    size = max(rows, DEFAULT_NUM_BINS + 1)
    if size * (levels + 1) > _BOUNDS_CACHE_ELEMENTS:
        size = rows
    if size * (levels + 1) > _BOUNDS_CACHE_ELEMENTS:
        return computed
    table = _bounds_cache.get(levels)
    if table is None or table.shape[0] < rows:
        table = computed(0, size)
        _bounds_cache[levels] = table
    cached = table
    return lambda start, stop: cached[start:stop]


def entropy_num_bins(options: Mapping[str, Any], num_quantized_bins: int) -> int:
    """The ``num_bins`` option, checked against ``num_quantized_bins``: the search needs
    at least two histogram bins per quantized level, so that each side (whose occupied
    part has more than ``num_bins / 2`` bins) has candidate thresholds. A value below
    that is a :class:`UserError` that says so and how to fix it."""
    num_bins = int_option(
        options,
        "num_bins",
        DEFAULT_NUM_BINS,
        low=1,
        high=MAX_BINS,
        why=f"the histogram's memory grows with it; drpaiq's default is {DEFAULT_NUM_BINS}",
    )
    needed = 2 * num_quantized_bins
    if num_bins < needed:
        raise UserError(
            f"advanced option num_bins {num_bins} is too few for Entropy calibration: it "
            f"needs at least 2 x num_quantized_bins = {needed} histogram bins per sign "
            f"(num_quantized_bins is {num_quantized_bins}), so that the threshold search has "
            f"candidates; raise num_bins to {needed} or more (drpaiq's default is "
            f"{DEFAULT_NUM_BINS}; the DRP-AI Quantizer's default of 128 is too few here) or "
            f"lower num_quantized_bins to {max(num_bins // 2, 2)} or less"
        )
    return num_bins


class EntropyCalibrator(histogram.HistogramCalibrator):
    """Range from the KL-divergence threshold search (TensorRT-style entropy calibration).

    Options: ``num_bins`` (default 2048, histogram bins per sign), ``num_quantized_bins``
    (default 128, the levels each side is quantized to), ``entropy_max_clip`` (default
    0.0001, the largest share of a side's non-zero values a threshold may clip; see
    :data:`DEFAULT_MAX_CLIP`), ``entropy_debug`` (a folder for the debug plots and JSON).
    """

    PLUGIN_NAME: ClassVar[str] = "entropy"
    DESCRIPTION: ClassVar[str] = (
        "range = KL-divergence-optimal clipping threshold on a fine histogram"
    )
    ALIASES: ClassVar[tuple[str, ...]] = ("Entropy",)
    PASSES: ClassVar[int] = 1
    OPTIONS: ClassVar[Mapping[str, str]] = {
        "entropy_max_clip": "largest share of a side's non-zero values a threshold may clip "
        "(default 0.0001)"
    }

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.num_quantized_bins = int_option(
            self.options,
            "num_quantized_bins",
            DEFAULT_NUM_QUANTIZED_BINS,
            low=2,
            high=MAX_BINS // 2,
            why="the levels each side is quantized to; num_bins must be at least twice as many",
        )
        self.num_bins = entropy_num_bins(self.options, self.num_quantized_bins)
        self.debug_dir = path_option(self.options, "entropy_debug")
        self.max_clip = float_option(
            self.options, "entropy_max_clip", DEFAULT_MAX_CLIP, above=0.0, at_most=1.0
        )

    def compute(self, state: histogram.HistogramState) -> TensorRange:
        """Search the threshold of least KL divergence on each side that has values;
        the details keep the histogram and the KL curves for :meth:`report`."""
        details = self.base_details(state, "entropy", num_quantized_bins=self.num_quantized_bins)
        if details.get("empty"):
            return TensorRange(0.0, 0.0, details)
        details["zeros"] = state.zeros
        rmin, rmax = state.vmin, state.vmax
        if state.vmax > 0:
            threshold, searched = self._search(state, negative=False)
            rmax = min(state.vmax, threshold)
            details.update(threshold_high=threshold, searched_high=searched)
        if state.vmin < 0:
            threshold, searched = self._search(state, negative=True)
            rmin = max(state.vmin, -threshold)
            details.update(threshold_low=-threshold, searched_low=searched)
        return TensorRange(rmin, rmax, details)

    def _search(
        self, state: histogram.HistogramState, *, negative: bool
    ) -> tuple[float, np.ndarray | None]:
        """The threshold of one side (a magnitude) and the magnitude histogram it was
        searched on (None when the side is too narrow to clip)."""
        counts = histogram.side_counts(state, negative=negative)
        # Exact zeros (the spike after ReLU, padding) are represented exactly at any
        # threshold; left in, the spike would dominate the divergence and drive the
        # threshold down to where bin 0 is a quantization level of its own.
        if counts.size:
            counts[0] -= state.zeros
        occupied = np.flatnonzero(counts)
        counts = counts[: occupied[-1] + 1] if occupied.size else counts[:0]
        if counts.size <= self.num_quantized_bins:
            # Every value fits the quantized levels as it is: nothing to clip.
            return counts.size * state.width, None
        # Only thresholds that clip at most max_clip of the values are admissible, and
        # they are the last ones: the divergence is computed for those alone (the
        # debug report computes the whole curve).
        kept = np.cumsum(counts, dtype=np.float64)
        total = float(kept[-1])
        admissible = total - kept <= self.max_clip * total  # True from some bin on
        first = max(self.num_quantized_bins, int(np.argmax(admissible)) + 1)
        if first >= counts.size:
            # Only the threshold that clips nothing is admissible: no divergence to compare.
            return counts.size * state.width, counts
        curve = kl_divergence_curve(counts, self.num_quantized_bins, first)
        return (first + int(np.argmin(curve))) * state.width, counts

    def report(self, ranges: Mapping[str, TensorRange], debug_dir: Path | None) -> None:
        """With ``debug_dir`` (or the ``entropy_debug`` option): one PNG per tensor
        (histogram, KL curve, threshold) and ``calibration.json``."""
        target = debug_dir or self.debug_dir
        if target is None:
            return
        for found in ranges.values():
            for side in ("high", "low"):
                searched = found.details.pop(f"searched_{side}", None)
                if searched is not None:
                    found.details[f"kl_{side}"] = kl_divergence_curve(
                        searched, self.num_quantized_bins
                    )
        settings = {"num_bins": self.num_bins, "num_quantized_bins": self.num_quantized_bins}
        debug_plots.write_report(target, "entropy", settings, ranges, plot=debug_plots.plot_entropy)
