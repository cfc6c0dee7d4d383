"""Types of the compiled Entropy search loop (``_divergence.c``)."""

from typing import Any

def group_sums(
    table: Any, widths: int, narrowest: int, levels: int, first: int, out: Any, /
) -> None: ...
