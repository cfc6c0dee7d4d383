"""Entropy calibration: the clipping threshold that loses the least information.

The values' magnitudes ``|x|`` are gathered in a fine histogram (see
:mod:`drpaiq_plugins_calibrators.histogram`: one pass, exactly mergeable, at least
``num_bins`` occupied bins). For every candidate threshold ``t_i = i * w`` (the first
``i`` bins kept, ``i`` from ``num_quantized_bins`` to the last occupied bin) we compare

* ``P_i``: the histogram cut at ``t_i``, the clipped mass added to its last bin (what the
  tensor looks like after clipping), with
* ``Q_i``: the kept bins merged into ``num_quantized_bins`` equal groups and spread back
  uniformly over each group's non-empty bins (what is left after quantizing to that
  many levels),

and choose the ``t_i`` of smallest Kullback-Leibler divergence ``KL(P_i || Q_i)``. A low
threshold quantizes finely but clips much; a high one clips nothing but quantizes
coarsely; heavy-tailed activations get a threshold well inside their maximum.

The search is vectorized: with cumulative sums of the counts, of the non-empty flags and
of ``p log p``, every group's mass and occupancy for every candidate is a pair of
lookups, and ``KL`` for all candidates is a handful of array expressions over a
``(candidates x groups)`` matrix, evaluated in blocks to bound memory. Within a group
``Q`` is constant on the bins where ``P`` is non-zero, so ``sum P log Q`` needs only the
group masses:

    KL_i = sum_t P_t log P_t - sum_g P_g log(G_g / nz_g + eps) + log Z_i

with ``G_g`` the group's kept count, ``P_g`` its share of ``P_i`` (``G_g`` plus the clipped
count for the last group, over the total), ``nz_g`` its non-empty bins, ``eps`` the
smoothing count :data:`SMOOTHING` and ``Z_i`` the normalizer (kept count plus ``eps``
per non-empty bin). Without the smoothing, clipping a few far outliers into an empty
last group would cost an infinite divergence and push the threshold out to them.

Exact zeros are left out of the search: the quantizer represents real 0 exactly, so
they cost nothing at any threshold, while the spike of zeros after a ReLU would
otherwise dominate the divergence and pull the threshold far into the data.

Signed tensors use the magnitude histogram and the range ``[max(min, -t), min(max, t)]``;
tensors that are never negative (after ReLU) search ``[0, max]`` the same way and get
``[min, t]``, which the asymmetric quantizer widens to include 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from drpaiq_core.plugin_api import Calibrator, TensorRange

from drpaiq_plugins_calibrators import debug_plots, histogram
from drpaiq_plugins_calibrators._options import int_option, path_option

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


def kl_divergence_curve(counts: np.ndarray, num_quantized_bins: int) -> np.ndarray:
    """``KL(P_i || Q_i)`` for every candidate ``i`` in ``num_quantized_bins .. len(counts)``.

    :param counts: a histogram of ``|x|`` (bin ``m`` covers ``[m*w, (m+1)*w)``) with at
        least ``num_quantized_bins`` bins and some non-zero count.
    :param num_quantized_bins: the number of quantization levels over ``[0, t]``.
    :returns: float64 array, element ``k`` for candidate ``i = num_quantized_bins + k``
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
    cum = np.zeros(n + 1)
    np.cumsum(h, out=cum[1:])
    nonzero_cum = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(h > 0, out=nonzero_cum[1:])
    p = h / total
    plogp_cum = np.zeros(n + 1)
    np.cumsum(p * np.log(np.where(p > 0, p, 1.0)), out=plogp_cum[1:])
    # Group bounds floor(i * g / levels) in int32 where it cannot overflow: integer
    # division is several times faster there than in int64.
    index_type = np.int32 if n * levels < 2**31 else np.int64
    groups = np.arange(levels + 1, dtype=index_type)

    curve = np.empty(n - levels + 1)
    block = max(1, _BLOCK_ELEMENTS // (levels + 1))
    for start in range(levels, n + 1, block):
        kept = np.arange(start, min(n + 1, start + block), dtype=np.int64)
        in_range = cum[kept]
        clipped = total - in_range
        last_p = (h[kept - 1] + clipped) / total
        sum_plogp = plogp_cum[kept - 1] + last_p * np.log(np.where(last_p > 0, last_p, 1.0))

        bounds = ((kept.astype(index_type)[:, None] * groups[None, :]) // levels).astype(np.intp)
        mass_at = cum[bounds]
        mass = mass_at[:, 1:] - mass_at[:, :-1]
        nz_at = nonzero_cum[bounds]
        occupied = (nz_at[:, 1:] - nz_at[:, :-1]).astype(np.float64)
        # The clipped mass lands in P's last bin, which then counts as non-empty.
        became_nonzero = (h[kept - 1] == 0) & (clipped > 0)
        occupied[:, -1] += became_nonzero
        # Q per non-empty bin of a group: the group's mass spread evenly, plus the
        # smoothing count; normalized over all of P's non-empty bins.
        level = mass / np.maximum(occupied, 1.0) + SMOOTHING
        log_level = np.log(level)
        normalizer = in_range + SMOOTHING * (nonzero_cum[kept] + became_nonzero)
        cross = np.einsum("ij,ij->i", mass, log_level) + clipped * log_level[:, -1]
        divergence = sum_plogp - cross / total + np.log(normalizer)
        # A threshold below every value clips all of them into one bin, which the
        # smoothing would score as a perfect match: it is no candidate.
        curve[kept - levels] = np.where(in_range > 0, divergence, np.inf)
    return curve


class EntropyCalibrator(Calibrator):
    """Range from the KL-divergence threshold search (TensorRT-style entropy calibration).

    Options: ``num_bins`` (default 2048, the least number of histogram bins over the
    data's magnitude), ``num_quantized_bins`` (default 128), ``entropy_debug`` (a folder
    for the debug plots and JSON).
    """

    PLUGIN_NAME: ClassVar[str] = "entropy"
    DESCRIPTION: ClassVar[str] = (
        "range = KL-divergence-optimal clipping threshold on a fine histogram"
    )
    ALIASES: ClassVar[tuple[str, ...]] = ("Entropy",)
    PASSES: ClassVar[int] = 1

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.num_quantized_bins = int_option(
            self.options, "num_quantized_bins", DEFAULT_NUM_QUANTIZED_BINS, low=2, high=MAX_BINS
        )
        self.num_bins = int_option(
            self.options, "num_bins", DEFAULT_NUM_BINS, low=self.num_quantized_bins, high=MAX_BINS
        )
        self.debug_dir = path_option(self.options, "entropy_debug")

    def new_state(self) -> histogram.HistogramState:
        """An empty histogram with ``2 * num_bins`` bins per side."""
        return histogram.HistogramState(capacity=2 * self.num_bins)

    def collect(
        self, state: histogram.HistogramState, values: np.ndarray, pass_index: int
    ) -> histogram.HistogramState:
        """Fold a batch of finite values into the histogram."""
        histogram.add_values(state, values)
        return state

    def merge(
        self, a: histogram.HistogramState, b: histogram.HistogramState
    ) -> histogram.HistogramState:
        """Exact merge (see :mod:`drpaiq_plugins_calibrators.histogram`)."""
        return histogram.merge(a, b)

    def compute(self, state: histogram.HistogramState) -> TensorRange:
        """Search the threshold of least KL divergence; the details keep the
        magnitude histogram and the KL curve for :meth:`report`."""
        details: dict[str, Any] = {
            "method": "entropy",
            "count": state.count,
            "num_bins": self.num_bins,
            "num_quantized_bins": self.num_quantized_bins,
        }
        if state.count == 0:
            details["empty"] = True
            return TensorRange(0.0, 0.0, details)
        counts = histogram.abs_counts(state)
        width = state.width
        details.update(
            min=state.vmin, max=state.vmax, zeros=state.zeros, bin_width=width, histogram=counts
        )
        # Exact zeros (the spike after ReLU, padding) are represented exactly at any
        # threshold; left in, the spike would dominate the divergence and drive the
        # threshold down to where bin 0 is a quantization level of its own.
        searched = counts.copy()
        if searched.size:
            searched[0] -= state.zeros
        occupied = np.flatnonzero(searched)
        searched = searched[: occupied[-1] + 1] if occupied.size else searched[:0]
        if searched.size <= self.num_quantized_bins:
            # Nothing to clip: every value fits the quantized bins as it is.
            details["threshold"] = max(-state.vmin, state.vmax)
            return TensorRange(state.vmin, state.vmax, details)
        curve = kl_divergence_curve(searched, self.num_quantized_bins)
        best = int(np.argmin(curve))
        threshold = (self.num_quantized_bins + best) * width
        details.update(threshold=threshold, kl=curve, kl_min=float(curve[best]))
        return TensorRange(max(state.vmin, -threshold), min(state.vmax, threshold), details)

    def report(self, ranges: Mapping[str, TensorRange], debug_dir: Path | None) -> None:
        """With ``debug_dir`` (or the ``entropy_debug`` option): one PNG per tensor
        (histogram, KL curve, threshold) and ``calibration.json``."""
        target = debug_dir or self.debug_dir
        if target is None:
            return
        settings = {"num_bins": self.num_bins, "num_quantized_bins": self.num_quantized_bins}
        debug_plots.write_report(target, "entropy", settings, ranges, plot=debug_plots.plot_entropy)
