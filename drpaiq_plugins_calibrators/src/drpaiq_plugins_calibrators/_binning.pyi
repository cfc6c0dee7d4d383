"""Types of the compiled histogram loop (``_binning.c``)."""

from typing import Any

def count_bins(
    values: Any, scale: float, offset: int, counts: Any, low: float, high: float, /
) -> int: ...
