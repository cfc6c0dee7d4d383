"""The power-of-two histogram: exact widening and exact, order-free merging."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drpaiq_plugins_calibrators import histogram


def direct_counts(values: np.ndarray, capacity: int) -> tuple[int, np.ndarray]:
    """Bin all values at once on the grid their largest magnitude needs (the definition)."""
    values = values.astype(np.float64)
    exponent = histogram.required_exponent(float(np.max(np.abs(values))), capacity)
    index = np.trunc(values / math.ldexp(1.0, exponent)).astype(np.int64) + capacity - 1
    return exponent, np.bincount(index, minlength=2 * capacity - 1)


def folded(chunks: list[np.ndarray], capacity: int) -> histogram.HistogramState:
    state = histogram.HistogramState(capacity)
    for chunk in chunks:
        histogram.add_values(state, chunk)
    return state


def assert_same(a: histogram.HistogramState, b: histogram.HistogramState) -> None:
    assert a.exponent == b.exponent
    assert a.count == b.count
    assert a.vmin == b.vmin and a.vmax == b.vmax
    np.testing.assert_array_equal(a.counts, b.counts)


@pytest.mark.parametrize("capacity", [8, 4096])
def test_required_exponent_is_the_smallest_that_fits(capacity: int) -> None:
    for absmax in [1e-30, 0.1, 1.0, 1.5, 2.0, 3.0, 255.0, 256.0, 1e6, 3e38]:
        k = histogram.required_exponent(absmax, capacity)
        assert absmax < capacity * 2.0**k
        assert absmax >= capacity * 2.0 ** (k - 1)
    assert histogram.required_exponent(0.0, capacity) == histogram.MIN_EXPONENT


def test_growing_batches_equal_binning_everything_at_once() -> None:
    rng = np.random.default_rng(1)
    # Each batch is ten times wider than the last: the grid widens four times.
    chunks = [rng.standard_normal(500).astype(np.float32) * 10.0**k for k in range(-2, 3)]
    state = folded(chunks, 64)
    exponent, counts = direct_counts(np.concatenate(chunks), 64)
    assert state.exponent == exponent
    np.testing.assert_array_equal(state.counts, counts)


def test_side_and_signed_bins() -> None:
    state = folded([np.array([-2.5, -0.5, 0.0, 0.5, 1.0, 3.9], dtype=np.float32)], 4)
    # |x| < 4 with 4 bins per side: width 1.
    assert state.width == 1.0
    np.testing.assert_array_equal(histogram.side_counts(state, negative=False), [3, 1, 0, 1])
    np.testing.assert_array_equal(histogram.side_counts(state, negative=True), [3, 0, 1])
    counts, lower, upper = histogram.signed_bins(state)
    # Bins -2 .. 3; bin 0 is (-1, 1) and holds -0.5, 0 and 0.5 (truncation toward 0).
    np.testing.assert_array_equal(counts, [1, 0, 3, 1, 0, 1])
    np.testing.assert_array_equal(lower, [-3, -2, -1, 1, 2, 3])
    np.testing.assert_array_equal(upper, [-2, -1, 1, 2, 3, 4])


def test_one_sided_and_signed_batches_bin_alike() -> None:
    """A non-negative batch takes the shortcut into the positive half; mixing it with
    signed batches must give the counts of binning everything at once."""
    rng = np.random.default_rng(3)
    relu = np.maximum(rng.standard_normal(1000), 0).astype(np.float32)
    signed = rng.standard_normal(1000).astype(np.float32)
    state = folded([relu, signed, relu[:10]], 32)
    exponent, counts = direct_counts(np.concatenate([relu, signed, relu[:10]]), 32)
    assert state.exponent == exponent
    np.testing.assert_array_equal(state.counts, counts)


def test_exact_zeros_of_both_signs_are_counted() -> None:
    values = np.array([0.0, -0.0, 1e-30, -1e-30, 2.0, 0.0], dtype=np.float32)
    state = folded([values, values[:2].reshape(1, 2)], 8)
    assert state.zeros == 5
    assert state.count == 8


def test_merge_of_different_capacities_is_refused() -> None:
    with pytest.raises(ValueError, match="same num_bins"):
        histogram.merge(histogram.HistogramState(4), histogram.HistogramState(8))


magnitudes = st.sampled_from([1e-6, 1e-2, 1.0, 7.0, 1e3, 1e6])


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    scales=st.lists(magnitudes, min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 10_000), max_size=5),
    capacity=st.sampled_from([16, 4096]),
)
def test_any_chunking_and_order_merges_to_one_pass(
    seed: int, scales: list[float], cuts: list[int], capacity: int
) -> None:
    rng = np.random.default_rng(seed)
    parts = [
        (rng.standard_t(2, size=int(rng.integers(1, 300))) * s).astype(np.float32) for s in scales
    ]
    values = np.concatenate(parts)
    one_pass = folded([values], capacity)
    exponent, counts = direct_counts(values, capacity)
    assert one_pass.exponent == exponent
    np.testing.assert_array_equal(one_pass.counts, counts)

    # Split at arbitrary points, collect each chunk in batches of its own, merge the
    # chunk states in a shuffled order.
    bounds = sorted({c % (values.size + 1) for c in cuts} | {0, values.size})
    chunks = [values[a:b] for a, b in itertools.pairwise(bounds)]
    states = [folded(list(np.array_split(chunk, 3)), capacity) for chunk in chunks]
    order = rng.permutation(len(states))
    merged = histogram.HistogramState(capacity)
    for i in order:
        merged = histogram.merge(merged, states[i])
    assert_same(merged, one_pass)


# -- the compiled loop -------------------------------------------------------------------


def test_the_compiled_loop_is_built() -> None:
    # The install builds _binning.c when a C compiler is there (every supported CI and
    # development machine); without it the calibrators are about twice as slow.
    assert histogram.COMPILED, (
        "drpaiq_plugins_calibrators._binning was not built: install a C compiler and "
        "reinstall drpaiq_plugins_calibrators"
    )


def awkward_values(rng: np.random.Generator, size: int) -> np.ndarray:
    """Values that stress the binning: both signs, exact zeros of both signs,
    subnormals, bin edges and the largest magnitude that fits."""
    values = np.clip(rng.standard_normal(size) * 3.0, -7.99, 7.99).astype(np.float32)
    values[::7] = 0.0
    values[1::11] = -0.0
    values[2::13] = np.float32(1e-42)  # subnormal
    values[3::17] = np.round(values[3::17]) % 8  # on bin edges
    if size > 5:
        values[4] = np.float32(np.nextafter(np.float32(8.0), np.float32(0.0)))
        values[5] = -values[4]
    return values


@pytest.mark.skipif(not histogram.COMPILED, reason="the compiled loop was not built")
@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 1000, 100_003])
@pytest.mark.parametrize("capacity", [8, 2048])
def test_the_compiled_loop_counts_like_numpy(size: int, capacity: int) -> None:
    rng = np.random.default_rng(size + capacity)
    values = awkward_values(rng, size)
    # Magnitudes below 8 fit capacity bins of width 8 / capacity.
    scale = np.float32(capacity / 8.0)
    offset = capacity - 1
    ours = np.arange(2 * capacity - 1, dtype=np.int64)  # counts are added, not set
    reference = ours.copy()
    zeros = histogram.count_bins(values, scale, offset, ours)
    expected = histogram.count_bins_numpy(values, scale, offset, reference)
    assert zeros == expected == int(np.count_nonzero(values == 0))
    np.testing.assert_array_equal(ours, reference)


@pytest.mark.skipif(not histogram.COMPILED, reason="the compiled loop was not built")
def test_the_compiled_loop_counts_into_a_window() -> None:
    values = np.array([2.0, 2.5, 3.0, 3.0, 0.0], dtype=np.float32)
    counts = np.zeros(10, dtype=np.int64)
    # Bins 0..3 of a window starting at bin 2 of the full counts.
    assert histogram.count_bins(values, np.float32(1.0), 0, counts[0:4]) == 1
    assert counts.tolist() == [1, 0, 2, 2, 0, 0, 0, 0, 0, 0]


@pytest.mark.skipif(not histogram.COMPILED, reason="the compiled loop was not built")
@pytest.mark.parametrize("bad", [np.nan, np.inf, 9.0, -9.0])
def test_the_compiled_loop_refuses_values_outside_the_counts(bad: float) -> None:
    values = np.array([1.0, 2.0, bad, 3.0, 1.0, 1.0], dtype=np.float32)
    counts = np.zeros(9, dtype=np.int64)
    with pytest.raises(ValueError, match="outside the counts"):
        histogram.count_bins(values, np.float32(1.0), 4, counts)
    assert not counts.any()  # untouched


@pytest.mark.skipif(not histogram.COMPILED, reason="the compiled loop was not built")
def test_the_compiled_loop_checks_the_extremes_it_is_given() -> None:
    values = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    counts = np.zeros(4, dtype=np.int64)
    assert histogram.count_bins(values, np.float32(1.0), 0, counts, extremes=(1.0, 3.0)) == 0
    assert counts.tolist() == [0, 1, 1, 1]
    for extremes in [(1.0, 4.0), (-1.0, 3.0), (3.0, 1.0), (float("nan"), 3.0)]:
        with pytest.raises(ValueError, match="outside the counts"):
            histogram.count_bins(values, np.float32(1.0), 0, counts, extremes=extremes)
    assert counts.tolist() == [0, 1, 1, 1]  # untouched


@pytest.mark.skipif(not histogram.COMPILED, reason="the compiled loop was not built")
def test_the_compiled_loop_refuses_other_arrays() -> None:
    counts = np.zeros(4, dtype=np.int64)
    with pytest.raises(TypeError, match="float32"):
        histogram.count_bins(np.zeros(3), np.float32(1.0), 0, counts)  # float64
    with pytest.raises(TypeError, match="int64"):
        histogram.count_bins(np.zeros(3, np.float32), np.float32(1.0), 0, np.zeros(4, np.int32))
    with pytest.raises((ValueError, BufferError)):
        histogram.count_bins(np.zeros(3, np.float32), np.float32(1.0), 0, counts[::2])
    with pytest.raises((ValueError, BufferError)):
        readonly = np.zeros(4, dtype=np.int64)
        readonly.setflags(write=False)
        histogram.count_bins(np.zeros(3, np.float32), np.float32(1.0), 0, readonly)
