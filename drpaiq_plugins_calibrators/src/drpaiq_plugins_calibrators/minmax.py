"""MinMax calibration: the range is the smallest and largest value seen.

The state is two floats and a count; min and max are exact and associative, so chunks
merge to exactly the result of one pass in any order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from drpaiq_core.plugin_api import Calibrator, TensorRange

from drpaiq_plugins_calibrators import debug_plots


@dataclass
class MinMaxState:
    """Running extremes of one tensor.

    :ivar count: values folded in.
    :ivar vmin: smallest value (``+inf`` while empty).
    :ivar vmax: largest value (``-inf`` while empty).
    """

    count: int = 0
    vmin: float = math.inf
    vmax: float = -math.inf


class MinMaxCalibrator(Calibrator):
    """Range = [min, max] of all calibration values (the reference's default)."""

    PLUGIN_NAME: ClassVar[str] = "minmax"
    DESCRIPTION: ClassVar[str] = "range = smallest and largest value seen (streaming, exact)"
    ALIASES: ClassVar[tuple[str, ...]] = ("MinMax",)
    PASSES: ClassVar[int] = 1

    def new_state(self) -> MinMaxState:
        """An empty state."""
        return MinMaxState()

    def collect(self, state: MinMaxState, values: np.ndarray, pass_index: int) -> MinMaxState:
        """Fold a batch of finite values into ``state``."""
        if values.size:
            state.count += int(values.size)
            # The ufunc reductions directly: np.min/np.max add Python overhead that
            # shows on small tensors.
            state.vmin = min(state.vmin, float(np.minimum.reduce(values, axis=None)))
            state.vmax = max(state.vmax, float(np.maximum.reduce(values, axis=None)))
        return state

    def merge(self, a: MinMaxState, b: MinMaxState) -> MinMaxState:
        """The extremes of both states."""
        return MinMaxState(a.count + b.count, min(a.vmin, b.vmin), max(a.vmax, b.vmax))

    def compute(self, state: MinMaxState) -> TensorRange:
        """``[min, max]``; ``[0, 0]`` for a tensor that had no finite value."""
        if state.count == 0:
            return TensorRange(0.0, 0.0, {"method": "minmax", "count": 0, "empty": True})
        details = {"method": "minmax", "count": state.count, "min": state.vmin, "max": state.vmax}
        return TensorRange(state.vmin, state.vmax, details)

    def report(self, ranges: Mapping[str, TensorRange], debug_dir: Path | None) -> None:
        """Write ``calibration.json`` (ranges only) into ``debug_dir`` when given."""
        if debug_dir is not None:
            debug_plots.write_report(debug_dir, "minmax", {}, ranges, plot=None)
