"""The divergence curve of the Entropy search: against the obvious loop, the compiled
loop against NumPy, and the bounds cache."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from drpaiq_plugins_calibrators.divergence import SMOOTHING, kl_divergence_curve

from drpaiq_plugins_calibrators import divergence


def kl_loop(counts: np.ndarray, levels: int) -> np.ndarray:
    """The KL curve written the slow, obvious way: one candidate at a time."""
    h = counts.astype(np.float64)
    out = []
    for kept in range(levels, h.size + 1):
        if h[:kept].sum() == 0:
            out.append(np.inf)
            continue
        p = h[:kept].copy()
        p[-1] += h[kept:].sum()
        q = np.zeros(kept)
        bounds = [g * kept // levels for g in range(levels + 1)]
        for a, b in itertools.pairwise(bounds):
            nonzero = p[a:b] > 0
            if nonzero.any():
                q[a:b][nonzero] = h[a:b].sum() / nonzero.sum() + SMOOTHING
        p /= p.sum()
        q /= q.sum()
        mask = p > 0
        out.append(float(np.sum(p[mask] * np.log(p[mask] / q[mask]))))
    return np.array(out)


def sample_counts(seed: int, size: int, values: int = 20_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = size / 12
    counts = np.bincount(
        np.minimum((np.abs(rng.standard_t(3, values)) * scale).astype(int), size - 1),
        minlength=size,
    )
    counts[size * 5 // 8 : size * 3 // 4] = 0  # an empty stretch: groups with no mass
    counts[-1] = 2  # and clipped mass landing beyond it
    return counts


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("levels", [1, 2, 8, 127, 128, 255])
def test_the_curve_equals_the_loop(levels: int, compiled: bool) -> None:
    counts = sample_counts(3, 400)
    np.testing.assert_allclose(
        kl_divergence_curve(counts, levels, compiled=compiled),
        kl_loop(counts, levels),
        rtol=1e-9,
        atol=1e-12,
    )


def test_the_table_and_the_direct_sums_agree() -> None:
    """Few levels over many candidates take the direct path, many levels the table; on
    the boundary both must give the same curve (to rounding: the terms are the same
    numbers, computed at different places)."""
    counts = sample_counts(5, 2048, 200_000)
    for levels, first in ((8, 8), (128, 1500), (255, 300)):
        curves = divergence.DivergenceCurves(counts)
        direct = divergence._direct_sums(curves.packed, levels, first)
        table = curves._group_sums(levels, first, compiled=False)
        np.testing.assert_allclose(table, direct, rtol=1e-12)


@pytest.mark.skipif(not divergence.COMPILED, reason="the compiled loop was not built")
@pytest.mark.parametrize("seed", range(40))
def test_the_compiled_loop_gives_numpys_curve_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(20, 2049))
    levels = int(rng.integers(2, max(3, size // 2)))
    counts = sample_counts(seed, size, int(rng.integers(100, 100_000)))
    counts[rng.integers(0, size, size // 3)] = 0
    first = int(rng.integers(levels, size + 1))
    compiled = kl_divergence_curve(counts, levels, first)
    numpy = kl_divergence_curve(counts, levels, first, compiled=False)
    assert np.array_equal(compiled, numpy)


@pytest.mark.skipif(not divergence.COMPILED, reason="the compiled loop was not built")
def test_the_compiled_loop_refuses_a_table_that_does_not_fit() -> None:
    table, out = np.zeros((11, 3)), np.zeros(3)  # n = 10; candidates 8 .. 10
    divergence._compiled_group_sums(table, 3, 4, 2, 8, out)  # fits
    with pytest.raises(ValueError, match="widths do not cover"):
        divergence._compiled_group_sums(table, 3, 3, 2, 8, out)
    with pytest.raises(ValueError, match="n - first \\+ 1"):
        divergence._compiled_group_sums(table, 3, 4, 2, 8, np.zeros(2))
    with pytest.raises(TypeError, match="float64"):
        divergence._compiled_group_sums(table.astype(np.float32), 3, 4, 2, 8, out)


def test_the_compiled_loop_is_built() -> None:
    # The install builds _divergence.c when a C compiler is there (every supported CI
    # and development machine); without it the Entropy search is several times slower.
    assert divergence.COMPILED, (
        "drpaiq_plugins_calibrators._divergence was not built: install a C compiler and "
        "reinstall drpaiq_plugins_calibrators"
    )


@pytest.mark.parametrize("levels", [8, 128, 1000])
def test_the_curve_is_the_same_with_the_group_bounds_cached_or_not(
    levels: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(6)
    counts = np.bincount((np.abs(rng.standard_t(2, 30_000)) * 40).astype(int) % 2500)
    counts[1500:1600] = 0
    monkeypatch.setattr(divergence, "_bounds_cache", {})
    monkeypatch.setattr(divergence, "_bounds_seen", set())
    first = kl_divergence_curve(counts, levels, compiled=False)  # computed: the count is new
    cached = kl_divergence_curve(counts, levels, compiled=False)  # the table, on second use
    assert levels in divergence._bounds_cache
    np.testing.assert_array_equal(first, cached)
    monkeypatch.setattr(divergence, "_BOUNDS_CACHE_ELEMENTS", 0)
    monkeypatch.setattr(divergence, "_bounds_cache", {})
    np.testing.assert_array_equal(kl_divergence_curve(counts, levels, compiled=False), cached)


def test_the_bounds_cache_keeps_a_few_level_counts() -> None:
    counts = sample_counts(7, 600)
    for levels in range(100, 110):
        for _ in range(2):
            kl_divergence_curve(counts, levels, compiled=False)
    assert len(divergence._bounds_cache) <= divergence._BOUNDS_CACHE_ENTRIES
    assert 109 in divergence._bounds_cache


@pytest.mark.parametrize("compiled", [True, False])
def test_a_curve_from_a_later_candidate_is_the_tail_of_the_whole_curve(compiled: bool) -> None:
    """The search computes only the admissible thresholds; their values must not depend
    on where the computation starts."""
    rng = np.random.default_rng(4)
    counts = np.bincount((np.abs(rng.standard_t(2, 50_000)) * 40).astype(int) % 3000)
    whole = kl_divergence_curve(counts, 128, compiled=compiled)
    for first in (128, 129, 1000, counts.size - 1, counts.size):
        np.testing.assert_array_equal(
            kl_divergence_curve(counts, 128, first, compiled=compiled), whole[first - 128 :]
        )
