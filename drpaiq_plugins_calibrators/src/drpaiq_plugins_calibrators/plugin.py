"""The entry point of drpaiq's built-in calibrators (``drpaiq`` group, ``builtin_calibrators``).

Registered through the same hook as any third-party calibrator. Importing this module
costs numpy only; matplotlib is imported when debug plots are written.
"""

from __future__ import annotations

from collections.abc import Callable

from drpaiq_core.plugin_api import Calibrator, hookimpl

from drpaiq_plugins_calibrators.entropy import EntropyCalibrator
from drpaiq_plugins_calibrators.minmax import MinMaxCalibrator
from drpaiq_plugins_calibrators.mse import MSECalibrator
from drpaiq_plugins_calibrators.percentile import PercentileCalibrator


@hookimpl
def drpaiq_register_calibrators(register: Callable[[type[Calibrator]], None]) -> None:
    """Register ``minmax``, ``entropy``, ``percentile`` and ``mse`` (also spelled
    ``MinMax``, ``Entropy``, ``Percentile``, ``MSE``)."""
    register(MinMaxCalibrator)
    register(EntropyCalibrator)
    register(PercentileCalibrator)
    register(MSECalibrator)
