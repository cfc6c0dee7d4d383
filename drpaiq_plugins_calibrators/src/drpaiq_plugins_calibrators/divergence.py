"""The divergence curve of the Entropy search: ``KL(P_i || Q_i)`` for every candidate.

For a histogram ``h`` of magnitudes (``n`` bins of width ``w``) and a candidate ``i``
(threshold ``i * w``, ``i`` bins kept):

* ``P_i`` is ``h`` cut after bin ``i - 1``, the clipped count added to that last bin;
* ``Q_i`` merges the kept bins into ``levels`` groups, group ``g`` holding bins
  ``floor(i * g / levels) .. floor(i * (g + 1) / levels) - 1``, and spreads each group's
  count evenly over its non-empty bins, plus :data:`SMOOTHING` per non-empty bin.

Within a group ``Q`` is constant on the bins where ``P`` is non-zero, so ``sum P log Q``
needs only the group counts:

    KL_i = sum_t P_t log P_t - (sum_g G_g log(G_g / nz_g + eps) + C_i log(.)_last) / N + log Z_i

with ``G_g`` the group's count, ``nz_g`` its non-empty bins, ``C_i`` the clipped count
(it joins the last group's bin), ``N`` the total and ``Z_i`` the normalizer (kept count
plus ``eps`` per non-empty bin). Without the smoothing, clipping a few far outliers into
an empty last group would cost an infinite divergence and push the threshold out to
them.

What costs: ``candidates x levels`` group terms ``G log(G / nz + eps)``, each a
logarithm. But a group's term depends only on where it starts and how many bins it
spans, and for the candidates ``first .. n`` the span is one of a few widths
(``floor(i / levels)`` or one more). So when it is smaller, the terms of every start and
every such width are computed once, a table of ``n x widths`` logarithms (about 10,000
instead of 100,000 for 255 levels), and each candidate's sum is lookups in it. The sums
run in group order, one addition after the other, in the compiled loop
(``_divergence.c``, built when a C compiler is present) and in NumPy (``cumsum`` along
the groups) alike, so both give the same curve bit for bit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

#: Counts added to every non-empty bin of the quantized distribution, so that clipping
#: values into a stretch the quantized distribution leaves empty (rare outliers far
#: beyond the bulk) costs a large but finite divergence instead of an infinite one.
SMOOTHING = 1e-4

#: Low bits of the packed table that hold the cumulative number of non-empty bins
#: (up to 2**16 + 1 bins); the high bits hold the cumulative count.
OCCUPANCY_BITS = 17
_OCCUPANCY_MASK = (1 << OCCUPANCY_BITS) - 1

#: Matrix elements per block of the NumPy path: 256 KB per array keeps a block in the
#: CPU cache; larger blocks measured several times slower.
_BLOCK_ELEMENTS = 1 << 15

_compiled_group_sums: Callable[[np.ndarray, int, int, int, int, np.ndarray], None] | None
try:  # built at install time when a C compiler is there (setup.py)
    from drpaiq_plugins_calibrators._divergence import group_sums as _compiled_group_sums
except ImportError:  # built without a C compiler: NumPy gives the same sums
    _compiled_group_sums = None

#: Whether the compiled candidate loop (``_divergence.c``) is in use. Without it NumPy
#: computes the same curve, bit for bit, more slowly.
COMPILED = _compiled_group_sums is not None


def kl_divergence_curve(
    counts: np.ndarray, levels: int, first: int | None = None, *, compiled: bool = True
) -> np.ndarray:
    """``KL(P_i || Q_i)`` for every candidate ``i`` in ``first .. len(counts)``: see
    :meth:`DivergenceCurves.curve` (this builds one for a single curve)."""
    return DivergenceCurves(counts).curve(levels, first, compiled=compiled)


class DivergenceCurves:
    """The divergence curves of one histogram of magnitudes, for any number of levels.

    Everything that depends on the histogram alone is computed once: the cumulative
    tables and, per group width, the term of every group of that width. A search that
    tries several level counts on one side (the asymmetric split of signed data) pays
    for each further curve only the sums.

    :param counts: a histogram of ``|x|`` (bin ``m`` covers ``[m*w, (m+1)*w)``) with
        some non-zero count.
    """

    def __init__(self, counts: np.ndarray) -> None:
        h = np.asarray(counts, dtype=np.int64)
        n = h.size
        # The cumulative counts and the cumulative number of non-empty bins, packed into
        # one integer table: one gather and one subtraction give a group's count (high
        # bits) and occupancy (low bits) together. Differences of a non-decreasing table
        # are never negative, so the low bits never borrow from the high ones.
        packed = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(h, out=packed[1:])
        total = int(packed[-1])
        if total <= 0:
            raise ValueError("empty histogram")
        if total >= 1 << (63 - OCCUPANCY_BITS):
            raise ValueError(f"histogram of {total} values is too large to search")
        packed <<= OCCUPANCY_BITS
        packed[1:] += np.cumsum(h > 0)
        p = h / float(total)
        plogp_cum = np.zeros(n + 1)
        np.cumsum(p * np.log(np.where(p > 0, p, 1.0)), out=plogp_cum[1:])
        self.counts, self.packed, self.total, self.plogp_cum = h, packed, total, plogp_cum
        self._columns: dict[int, np.ndarray] = {}

    def curve(self, levels: int, first: int | None = None, *, compiled: bool = True) -> np.ndarray:
        """``KL(P_i || Q_i)`` for every candidate ``i`` in ``first .. len(counts)``.

        :param levels: the number of quantization levels over ``[0, t]``.
        :param first: the first candidate (default and minimum ``levels``); the values
            do not depend on it.
        :param compiled: use the compiled loop when it is built (False: NumPy only; the
            result is the same).
        :returns: float64 array, element ``k`` for candidate ``i = first + k``
            (threshold ``i * w``); ``inf`` for a threshold below every value.
        """
        h, packed, total = self.counts, self.packed, self.total
        n = h.size
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        if n < levels:
            raise ValueError(f"histogram of {n} bins is shorter than {levels} levels")
        first = levels if first is None else min(max(first, levels), n)
        kept = np.arange(first, n + 1)
        in_range = (packed[first:] >> OCCUPANCY_BITS).astype(np.float64)
        clipped = total - in_range
        last_kept = h[first - 1 : n].astype(np.float64)
        last_p = (last_kept + clipped) / total
        sum_plogp = self.plogp_cum[first - 1 : n] + last_p * np.log(
            np.where(last_p > 0, last_p, 1.0)
        )
        # The clipped values land in P's last bin, which then counts as non-empty.
        became_nonzero = (last_kept == 0) & (clipped > 0)

        # The last group of each candidate, which takes the clipped values in.
        last = packed[first:] - packed[(kept * (levels - 1)) // levels]
        last_mass = (last >> OCCUPANCY_BITS).astype(np.float64)
        last_occupied = np.maximum((last & _OCCUPANCY_MASK) + became_nonzero, 1)
        last_term = (last_mass + clipped) * np.log(last_mass / last_occupied + SMOOTHING)

        cross = self._group_sums(levels, first, compiled) + last_term
        nonzero = (packed[first:] & _OCCUPANCY_MASK) + became_nonzero
        divergence = sum_plogp - cross / total + np.log(in_range + SMOOTHING * nonzero)
        # A threshold below every value clips all of them into one bin, which the
        # smoothing would score as a perfect match: it is no candidate.
        return np.where(in_range > 0, divergence, np.inf)

    def _column(self, width: int) -> np.ndarray:
        """The term of the group of ``width`` bins starting at each bin (0 past the end)."""
        column = self._columns.get(width)
        if column is None:
            n = self.counts.size
            column = np.zeros(n + 1)
            reach = n + 1 - width  # starts whose group stays inside the histogram
            if reach > 0:
                starts = np.arange(reach)
                column[:reach] = _group_terms(self.packed, starts, starts + width)
            self._columns[width] = column
        return column

    def _group_sums(self, levels: int, first: int, compiled: bool) -> np.ndarray:
        """For every candidate ``i = first .. n``: the sum of its groups' terms, but the
        last group's, added in group order."""
        packed = self.packed
        n = packed.size - 1
        rows = n - first + 1
        if levels < 2:
            return np.zeros(rows)
        narrowest = first // levels
        widths = n // levels + 2 - narrowest  # floor(i / levels) or one more
        new = sum(w not in self._columns for w in range(narrowest, narrowest + widths))
        if n * new > rows * (levels - 1):
            # Few levels over many candidates: the table would cost more than it saves.
            return _direct_sums(packed, levels, first)
        table = np.stack([self._column(narrowest + k) for k in range(widths)], axis=1)
        sums = np.empty(rows)
        if compiled and _compiled_group_sums is not None:
            _compiled_group_sums(table, widths, narrowest, levels, first, sums)
            return sums
        flat = table.reshape(-1)
        return _in_order_sums(
            packed,
            levels,
            first,
            lambda bounds: flat[bounds[:, :-1] * widths + (np.diff(bounds, axis=1) - narrowest)],
        )


def _group_terms(packed: np.ndarray, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """``G log(G / nz + eps)`` of the groups of bins ``start .. stop - 1`` (0 if empty)."""
    group = packed[stop] - packed[start]
    mass = (group >> OCCUPANCY_BITS).astype(np.float64)
    occupied = np.maximum(group & _OCCUPANCY_MASK, 1)
    term = mass * np.log(mass / occupied + SMOOTHING)
    return np.where(mass > 0, term, 0.0)


def _direct_sums(packed: np.ndarray, levels: int, first: int) -> np.ndarray:
    """:meth:`DivergenceCurves._group_sums` with each group's term computed where it is
    used."""
    return _in_order_sums(
        packed, levels, first, lambda bounds: _group_terms(packed, bounds[:, :-1], bounds[:, 1:])
    )


def _in_order_sums(
    packed: np.ndarray,
    levels: int,
    first: int,
    terms_of: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """For every candidate ``i = first .. n``, in blocks: the sum of the terms that
    ``terms_of`` gives for the bounds of its groups but the last (a ``(candidates,
    levels)`` array of group starts; the terms ``(candidates, levels - 1)``)."""
    n = packed.size - 1
    sums = np.empty(n - first + 1)
    block = max(1, _BLOCK_ELEMENTS // levels)
    bounds_of = _group_bounds(levels, n + 1)
    for start in range(first, n + 1, block):
        stop = min(n + 1, start + block)
        bounds = bounds_of(start, stop)[:, :levels]  # the groups but the last
        # A running sum along the groups adds them in order, as the compiled loop does.
        sums[start - first : stop - first] = np.cumsum(terms_of(bounds), axis=1)[:, -1]
    return sums


#: Group bounds per level count, for thresholds up to some number of bins, kept while
#: they take at most this many integers; the same for every tensor, and costly to
#: compute again for each (the NumPy path's only).
_BOUNDS_CACHE_ELEMENTS = 1 << 22
#: At most this many level counts are kept, the most recently used: every ReLU output
#: is searched with the same count, each signed tensor with a split of its own.
_BOUNDS_CACHE_ENTRIES = 4
_bounds_cache: dict[int, np.ndarray] = {}
#: Level counts asked for before: a table is built on a count's second use.
_bounds_seen: set[int] = set()
_bounds_lock = threading.Lock()

#: The histogram size the bounds tables are built for at once, where that fits.
_USUAL_ROWS = 2049


def _group_bounds(levels: int, rows: int) -> Callable[[int, int], np.ndarray]:
    """A function of a range ``start .. stop`` of candidates ``i`` (``stop <= rows``) to
    the bins where each of their groups starts: the ``(stop - start, levels + 1)`` intp
    array of ``floor(i * g / levels)``, ``g = 0 .. levels`` (a view into a cache when it
    fits :data:`_BOUNDS_CACHE_ELEMENTS` and the count was asked for before)."""
    groups = np.arange(levels + 1, dtype=np.intp)

    def computed(start: int, stop: int) -> np.ndarray:
        # In place in intp: a third faster than through int32 and a cast.
        bounds = np.multiply.outer(np.arange(start, stop, dtype=np.intp), groups)
        bounds //= levels
        return bounds

    size = max(rows, _USUAL_ROWS)
    if size * (levels + 1) > _BOUNDS_CACHE_ELEMENTS:
        size = rows
    if size * (levels + 1) > _BOUNDS_CACHE_ELEMENTS:
        return computed
    with _bounds_lock:
        if levels not in _bounds_seen:
            _bounds_seen.add(levels)
            return computed
        table = _bounds_cache.pop(levels, None)
        if table is None or table.shape[0] < rows:
            table = computed(0, size)
        _bounds_cache[levels] = table  # (re)inserted last: the most recently used
        while len(_bounds_cache) > _BOUNDS_CACHE_ENTRIES:
            del _bounds_cache[next(iter(_bounds_cache))]
    return lambda start, stop: table[start:stop]
