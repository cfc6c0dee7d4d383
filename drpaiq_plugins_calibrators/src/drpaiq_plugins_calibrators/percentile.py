"""Percentile calibration: clip the rarest values of each tail.

With ``percentile_value`` ``p`` (default 99.999), the range is cut where at most
``(100 - p)`` percent of the values lie above it, and likewise below: both tails of
signed data are clipped independently; for data that is never negative the lower end
stays at the minimum (usually the zeros after ReLU). The cut points are read from the
one-pass, exactly mergeable histogram of :mod:`drpaiq_plugins_calibrators.histogram`
(``num_bins`` bins per sign, between half and all of them occupied on the side of the
largest magnitude) and rounded outward to bin edges, never beyond the values seen.
``p = 100`` gives exactly MinMax.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from drpaiq_core.plugin_api import TensorRange

from drpaiq_plugins_calibrators import debug_plots, histogram
from drpaiq_plugins_calibrators._options import float_option

DEFAULT_PERCENTILE = 99.999


class PercentileCalibrator(histogram.HistogramCalibrator):
    """Range = the ``percentile_value`` cut of each tail (options: ``percentile_value``,
    ``num_bins``)."""

    PLUGIN_NAME: ClassVar[str] = "percentile"
    DESCRIPTION: ClassVar[str] = "range = percentile_value cut of each tail of a fine histogram"
    ALIASES: ClassVar[tuple[str, ...]] = ("Percentile",)
    PASSES: ClassVar[int] = 1

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.percentile = float_option(
            self.options, "percentile_value", DEFAULT_PERCENTILE, above=50.0, at_most=100.0
        )
        self.num_bins = histogram.bins_option(self.options, "Percentile", "cuts the tails")

    def compute(self, state: histogram.HistogramState) -> TensorRange:
        """The two tail cuts; the details keep the signed histogram for :meth:`report`."""
        details = self.base_details(state, "percentile", percentile=self.percentile)
        if details.get("empty"):
            return TensorRange(0.0, 0.0, details)
        counts, lower, upper = (
            details["histogram"],
            details["histogram_lower"],
            details["histogram_upper"],
        )
        cum = np.cumsum(counts)
        tail = (100.0 - self.percentile) / 100.0 * state.count
        # Lowest bin with more than `tail` values at or below it: fewer than `tail`
        # values lie strictly below its lower edge. Mirror for the top.
        low_bin = int(np.searchsorted(cum, tail, side="right"))
        high_bin = int(np.searchsorted(cum, state.count - tail, side="left"))
        low_bin = min(low_bin, counts.size - 1)
        high_bin = min(high_bin, counts.size - 1)
        rmin = max(state.vmin, float(lower[low_bin]))
        rmax = min(state.vmax, float(upper[high_bin]))
        return TensorRange(rmin, rmax, details)

    def report(self, ranges: Mapping[str, TensorRange], debug_dir: Path | None) -> None:
        """With ``debug_dir``: one PNG per tensor (histogram and cuts) and
        ``calibration.json``."""
        if debug_dir is None:
            return
        settings = {"num_bins": self.num_bins, "percentile_value": self.percentile}
        debug_plots.write_report(
            debug_dir, "percentile", settings, ranges, plot=debug_plots.plot_percentile
        )
