"""MSE calibration: the range whose quantization moves the values least.

Entropy compares the shape of the clipped histogram with its quantized copy and does not
see how far clipped values move; MinMax ignores how rarely the extremes occur. This
calibrator scores a range ``[lo, hi]`` by the expected squared error it causes, on the
same one-pass histogram as Entropy and Percentile
(:mod:`drpaiq_plugins_calibrators.histogram`):

    E(lo, hi) = sum over values above hi of (x - hi)^2
              + sum over values below lo of (lo - x)^2
              + (values inside, exact zeros aside) * step^2 / 12

with ``step = (hi - lo) / 255`` for asymmetric activations and ``max(-lo, hi) / 127``
for symmetric ones (the rounding error of a value inside the range is taken as uniform
over one step; exact zeros are represented exactly). Each value is taken at its bin's
centre. The candidates are the bin edges, never beyond the values seen.

Data of one sign is a one-dimensional search over the end that has values. Signed data
is searched one end at a time, the other held, from ``[min, max]`` on, until neither
end moves (a few rounds): each round can only lower the error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from drpaiq_core.plugin_api import TensorRange

from drpaiq_plugins_calibrators import debug_plots, histogram
from drpaiq_plugins_calibrators._options import bool_option

#: Rounds of the one-end-at-a-time search of signed data (it stops earlier once
#: neither end moves).
MAX_ROUNDS = 8


class MSECalibrator(histogram.HistogramCalibrator):
    """Range of least expected squared quantization error (options: ``num_bins``;
    ``activation_symmetric`` is set by the core from the run's options)."""

    PLUGIN_NAME: ClassVar[str] = "mse"
    DESCRIPTION: ClassVar[str] = (
        "range = least expected squared error (clipping + rounding) on a fine histogram"
    )
    ALIASES: ClassVar[tuple[str, ...]] = ("MSE",)
    PASSES: ClassVar[int] = 1

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.num_bins = histogram.bins_option(self.options, "MSE", "places the range ends")
        self.symmetric = bool_option(self.options, "activation_symmetric", False)

    def compute(self, state: histogram.HistogramState) -> TensorRange:
        """The range of least expected error; the details keep the histogram and the
        error found for :meth:`report`."""
        details = self.base_details(state, "mse")
        if details.get("empty"):
            return TensorRange(0.0, 0.0, details)
        counts = np.asarray(details["histogram"], dtype=np.float64)
        centres = (np.asarray(details["histogram_lower"]) + details["histogram_upper"]) / 2.0
        errors = _Errors(counts, centres, float(state.zeros), self.symmetric)
        lo, hi = min(state.vmin, 0.0), max(state.vmax, 0.0)
        highs = _candidates(details["histogram_upper"], hi, positive=True)
        lows = _candidates(details["histogram_lower"], lo, positive=False)
        if self.symmetric:
            ends = np.union1d(highs, -lows)
            best = ends[int(np.argmin(errors.of(-ends, ends)))]
            lo, hi = (-best if state.vmin < 0 else lo), (best if state.vmax > 0 else hi)
        else:
            for _ in range(MAX_ROUNDS):
                new_hi = highs[int(np.argmin(errors.of(np.full_like(highs, lo), highs)))]
                new_lo = lows[int(np.argmin(errors.of(lows, np.full_like(lows, new_hi))))]
                if new_hi == hi and new_lo == lo:
                    break
                lo, hi = new_lo, new_hi
        details["expected_error"] = float(errors.of(np.array([lo]), np.array([hi]))[0])
        rmin, rmax = max(state.vmin, lo), min(state.vmax, hi)
        return TensorRange(rmin, max(rmin, rmax), details)

    def report(self, ranges: Mapping[str, TensorRange], debug_dir: Path | None) -> None:
        """With ``debug_dir``: one PNG per tensor (histogram and range) and
        ``calibration.json``."""
        if debug_dir is None:
            return
        settings = {"num_bins": self.num_bins, "activation_symmetric": self.symmetric}
        debug_plots.write_report(debug_dir, "mse", settings, ranges, plot=debug_plots.plot_mse)


def _candidates(edges: np.ndarray, extreme: float, *, positive: bool) -> np.ndarray:
    """The bin edges on one side of 0 up to the extreme seen, and the extreme itself
    (0 alone for a side without values)."""
    edges = np.asarray(edges, dtype=np.float64)
    if positive:
        kept = edges[(edges > 0) & (edges < extreme)]
    else:
        kept = edges[(edges < 0) & (edges > extreme)]
    return np.unique(np.append(kept, extreme))


class _Errors:
    """Expected squared error of ranges over one histogram, vectorized over candidates
    through cumulative sums of the counts, ``count * x`` and ``count * x^2``."""

    def __init__(self, counts: np.ndarray, centres: np.ndarray, zeros: float, symmetric: bool):
        self.centres = centres
        self.symmetric = symmetric
        self.zeros = zeros
        self.n = np.concatenate(([0.0], np.cumsum(counts)))
        self.s1 = np.concatenate(([0.0], np.cumsum(counts * centres)))
        self.s2 = np.concatenate(([0.0], np.cumsum(counts * centres * centres)))

    def of(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """The expected error of each range ``[lo[i], hi[i]]``."""
        total_n, total_s1, total_s2 = self.n[-1], self.s1[-1], self.s2[-1]
        # Bins whose centre lies below lo / above hi.
        below = np.searchsorted(self.centres, lo, side="left")
        above = np.searchsorted(self.centres, hi, side="right")
        n_low, s1_low, s2_low = self.n[below], self.s1[below], self.s2[below]
        n_high = total_n - self.n[above]
        s1_high = total_s1 - self.s1[above]
        s2_high = total_s2 - self.s2[above]
        clipped_low = s2_low - 2 * lo * s1_low + lo * lo * n_low
        clipped_high = s2_high - 2 * hi * s1_high + hi * hi * n_high
        step = np.maximum(-lo, hi) / 127.0 if self.symmetric else (hi - lo) / 255.0
        inside = np.maximum(total_n - n_low - n_high - self.zeros, 0.0)
        return clipped_low + clipped_high + inside * step * step / 12.0
