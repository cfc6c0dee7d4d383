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

The divergence of every candidate comes from :mod:`drpaiq_plugins_calibrators.divergence`
(cumulative tables, each group's term computed once per width, and a compiled loop for
the sums).

Exact zeros are left out of the search: the quantizer represents real 0 exactly, so
they cost nothing at any threshold, while the spike of zeros after a ReLU would
otherwise dominate the divergence and pull the threshold far into the data.

Each side is searched with the levels it will really get (:func:`side_levels`). With
symmetric activations that is ``num_quantized_bins`` per side, the grid of TensorRT's
calibration. The asymmetric quantizer spreads ``2 * num_quantized_bins - 1`` steps (255)
over ``[-t_negative, t_positive]``: a side with no values (after a ReLU) gets all of
them, and signed data splits them in proportion to the two thresholds. As those depend
on the split, signed data is searched with the split of the extremes seen, then once
more with the split of the thresholds found. Searched with half its levels, a ReLU
output was priced at twice its real rounding error and clipped harder than it should
be: on the modA sample's 60,000 training images, 430 instead of 282 changed class
against the FP32 model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import TensorRange

from drpaiq_plugins_calibrators import debug_plots, histogram
from drpaiq_plugins_calibrators._options import (
    bool_option,
    float_option,
    int_option,
    path_option,
)
from drpaiq_plugins_calibrators.divergence import DivergenceCurves, kl_divergence_curve

#: At most this share of a side's non-zero values may be clipped (``entropy_max_clip``).
#: KL divergence compares shapes only: it does not see how far clipped values move. On
#: long-tailed activations (a first layer after ReLU6, 10% of the values in a thin tail
#: up to 6) the bare search clipped at 0.5 and cost modB 16 top-1 points; with this
#: bound the search still clips heavy tails, but never a visible part of the data.
DEFAULT_MAX_CLIP = 1e-4

DEFAULT_NUM_QUANTIZED_BINS = 128


def side_levels(
    num_quantized_bins: int, symmetric: bool, high: float, low: float
) -> tuple[int, int]:
    """The quantization levels over ``[0, high]`` and over ``[-low, 0]`` (magnitudes).

    Symmetric activations: ``num_quantized_bins`` each. Asymmetric: the range's
    ``2 * num_quantized_bins - 1`` steps split in proportion to ``high`` and ``low``, at
    least 2 for a side that has values; a side of extent 0 has none and the other gets
    them all.
    """
    if symmetric:
        return num_quantized_bins, num_quantized_bins
    steps = 2 * num_quantized_bins - 1
    high, low = max(float(high), 0.0), max(float(low), 0.0)
    if low == 0.0 or high == 0.0:
        return (steps, 0) if low == 0.0 else (0, steps)
    up = min(max(round(steps * high / (high + low)), 2), steps - 2)
    return up, steps - up


def entropy_num_bins(options: Mapping[str, Any], num_quantized_bins: int) -> int:
    """The ``num_bins`` option, checked against ``num_quantized_bins``: the search needs
    at least two histogram bins per level of a side, which gets up to ``2 *
    num_quantized_bins - 1`` levels (all of an asymmetric range's steps, after a ReLU),
    so that the side of the largest magnitude (whose occupied part has more than
    ``num_bins / 2`` bins) has candidate thresholds. A value below that is a
    :class:`UserError` that says so and how to fix it."""
    num_bins = int_option(
        options,
        "num_bins",
        histogram.DEFAULT_NUM_BINS,
        low=16,
        high=histogram.MAX_BINS,
        why="the histogram's memory grows with it; drpaiq's default is "
        f"{histogram.DEFAULT_NUM_BINS}",
    )
    steps = 2 * num_quantized_bins - 1
    needed = 2 * steps
    if num_bins < needed:
        raise UserError(
            f"advanced option num_bins {num_bins} is too few for Entropy calibration: it "
            f"needs at least 2 x (2 x num_quantized_bins - 1) = {needed} histogram bins per "
            f"sign (num_quantized_bins is {num_quantized_bins}, so a side gets up to {steps} "
            f"levels), so that the threshold search has candidates; raise num_bins to "
            f"{needed} or more (drpaiq's default is {histogram.DEFAULT_NUM_BINS}; the DRP-AI "
            f"Quantizer's default of 128 is too few here) or lower num_quantized_bins to "
            f"{max((num_bins + 2) // 4, 2)} or less"
        )
    return num_bins


class EntropyCalibrator(histogram.HistogramCalibrator):
    """Range from the KL-divergence threshold search (TensorRT-style entropy calibration).

    Options: ``num_bins`` (default 2048, histogram bins per sign), ``num_quantized_bins``
    (default 128, the levels of a symmetric range's side; see :func:`side_levels`),
    ``activation_symmetric`` (set by the core from the run's options),
    ``entropy_max_clip`` (default 0.0001, the largest share of a side's non-zero values a
    threshold may clip; see :data:`DEFAULT_MAX_CLIP`), ``entropy_debug`` (a folder for the
    debug plots and JSON).
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
            high=(histogram.MAX_BINS + 2) // 4,
            why="the levels of a symmetric range's side; num_bins must be at least "
            "2 x (2 x num_quantized_bins - 1)",
        )
        self.num_bins = entropy_num_bins(self.options, self.num_quantized_bins)
        self.debug_dir = path_option(self.options, "entropy_debug")
        # Set by the core from the run's activation grid (see side_levels).
        self.symmetric = bool_option(self.options, "activation_symmetric", False)
        self.max_clip = float_option(
            self.options, "entropy_max_clip", DEFAULT_MAX_CLIP, above=0.0, at_most=1.0
        )

    def compute(self, state: histogram.HistogramState) -> TensorRange:
        """Search the threshold of least KL divergence on each side that has values,
        each with the levels it gets (:func:`side_levels`); the details keep the
        histogram, the levels and the searched counts for :meth:`report`."""
        details = self.base_details(state, "entropy", num_quantized_bins=self.num_quantized_bins)
        if details.get("empty"):
            return TensorRange(0.0, 0.0, details)
        details["zeros"] = state.zeros
        sides = [
            _Side(state, negative=negative, max_clip=self.max_clip) if has_values else None
            for negative, has_values in ((False, state.vmax > 0), (True, state.vmin < 0))
        ]
        levels = side_levels(self.num_quantized_bins, self.symmetric, state.vmax, -state.vmin)
        high, low = _search(sides, levels)
        if high is not None and low is not None and not self.symmetric:
            # The split depends on the thresholds, which depend on the split: the
            # extremes seen gave the first; the thresholds found with it give the second,
            # with which both sides are searched once more.
            given = side_levels(self.num_quantized_bins, False, high[0], low[0])
            if given != levels:
                high, low = _search(sides, given)
        rmin, rmax = state.vmin, state.vmax
        if high is not None:
            threshold, searched, count = high
            rmax = min(state.vmax, threshold)
            details.update(threshold_high=threshold, searched_high=searched, levels_high=count)
        if low is not None:
            threshold, searched, count = low
            rmin = max(state.vmin, -threshold)
            details.update(threshold_low=-threshold, searched_low=searched, levels_low=count)
        return TensorRange(rmin, rmax, details)

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
                        searched, int(found.details[f"levels_{side}"])
                    )
        settings = {"num_bins": self.num_bins, "num_quantized_bins": self.num_quantized_bins}
        debug_plots.write_report(target, "entropy", settings, ranges, plot=debug_plots.plot_entropy)


_Found = tuple[float, np.ndarray | None, int]


def _search(sides: list[_Side | None], levels: tuple[int, int]) -> list[_Found | None]:
    """Each side that has values (positive, negative) searched with its levels."""
    return [
        None if side is None else side.search(count)
        for side, count in zip(sides, levels, strict=True)
    ]


class _Side:
    """The magnitudes of one sign of a tensor, prepared once for searches with several
    level counts (the split of signed data)."""

    def __init__(self, state: histogram.HistogramState, *, negative: bool, max_clip: float):
        counts = histogram.side_counts(state, negative=negative)
        # Exact zeros (the spike after ReLU, padding) are represented exactly at any
        # threshold; left in, the spike would dominate the divergence and drive the
        # threshold down to where bin 0 is a quantization level of its own.
        if counts.size:
            counts[0] -= state.zeros
        occupied = np.flatnonzero(counts)
        self.counts = counts[: occupied[-1] + 1] if occupied.size else counts[:0]
        self.width = state.width
        # Only thresholds that clip at most max_clip of the values are admissible, and
        # they are the last ones: the divergence is computed for those alone (the debug
        # report computes the whole curve).
        kept = np.cumsum(self.counts, dtype=np.float64)
        total = float(kept[-1]) if kept.size else 0.0
        self.admissible = int(np.argmax(total - kept <= max_clip * total)) + 1 if kept.size else 0
        self._curves: DivergenceCurves | None = None

    def search(self, levels: int) -> _Found:
        """The threshold (a magnitude) of least divergence at ``levels``, the magnitude
        histogram it was searched on (None when the side is too narrow to clip) and
        ``levels``."""
        counts = self.counts
        if counts.size <= levels:
            # Every value fits the quantized levels as it is: nothing to clip.
            return counts.size * self.width, None, levels
        first = max(levels, self.admissible)
        if first >= counts.size:
            # Only the threshold that clips nothing is admissible: no divergence to compare.
            return counts.size * self.width, counts, levels
        if self._curves is None:
            self._curves = DivergenceCurves(counts)
        curve = self._curves.curve(levels, first)
        return (first + int(np.argmin(curve))) * self.width, counts, levels
