"""Progress on stderr for long work (images calibrated, tensors searched).

tqdm draws the bar (done/total, rate, time left); ``quiet`` silences it. With ``-v``
each stage of a run also logs how long it took (:func:`timed`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

#: Log level between INFO and DEBUG: what ``drpaiq -v`` adds (the stages' times).
DETAIL = 15


def bar_class() -> Any | None:
    """tqdm's bar class when tqdm is imported (so bars may be on screen), else None.

    Another thread may be importing tqdm at this moment: the module is then in
    ``sys.modules`` but not yet filled, and counts as not imported.
    """
    import sys

    return getattr(sys.modules.get("tqdm"), "tqdm", None)


@contextlib.contextmanager
def timed(stage: str) -> Iterator[None]:
    """Log at :data:`DETAIL` how long the ``with`` block (one stage of a run) took and
    the process's peak memory so far, when it finishes without an error."""
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    peak = _peak_rss_mb()
    memory = f", peak memory so far {peak:,.0f} MB" if peak else ""
    logging.getLogger("drpaiq").log(DETAIL, f"{stage}: {seconds:.2f} s{memory}")


def _peak_rss_mb() -> float:
    """The process's peak resident memory in MB (0 where the platform cannot tell)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    import sys

    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def progress(
    items: Iterable[T], *, total: int | None, desc: str, unit: str, quiet: bool
) -> Iterator[T]:
    """Iterate ``items`` while showing a progress bar on stderr unless ``quiet``."""
    if quiet:
        yield from items
        return
    from tqdm import tqdm

    with tqdm(items, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True) as bar:
        yield from bar


class Counter:
    """A manually advanced progress bar (for work counted in samples, not items)."""

    def __init__(self, *, total: int | None, desc: str, unit: str, quiet: bool) -> None:
        self._bar = None
        if not quiet:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Counter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
