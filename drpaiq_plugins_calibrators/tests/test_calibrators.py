"""The built-in calibrators: ranges, exact merging, options, registration."""

from __future__ import annotations

import itertools
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from drpaiq_core.errors import UserError
from drpaiq_core.plugin_api import Calibrator, TensorRange
from drpaiq_core.plugins import get_plugin_host
from drpaiq_plugins_calibrators.divergence import kl_divergence_curve
from drpaiq_plugins_calibrators.entropy import DEFAULT_MAX_CLIP, EntropyCalibrator, side_levels
from drpaiq_plugins_calibrators.minmax import MinMaxCalibrator
from drpaiq_plugins_calibrators.mse import MSECalibrator
from drpaiq_plugins_calibrators.percentile import PercentileCalibrator
from hypothesis import given, settings
from hypothesis import strategies as st

from drpaiq_plugins_calibrators import entropy, plugin

CALIBRATORS = [MinMaxCalibrator, EntropyCalibrator, PercentileCalibrator, MSECalibrator]


def run(calibrator: Calibrator, batches: list[np.ndarray]) -> TensorRange:
    state = calibrator.new_state()
    for batch in batches:
        state = calibrator.collect(state, batch, 0)
    return calibrator.compute(state)


def same_range(a: TensorRange, b: TensorRange) -> None:
    assert (a.rmin, a.rmax) == (b.rmin, b.rmax)
    assert a.details.keys() == b.details.keys()
    for key, value in a.details.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(b.details[key]), err_msg=key)


def heavy_tailed(rng: np.random.Generator, size: int, outliers: int = 0) -> np.ndarray:
    bulk = rng.laplace(scale=1.0, size=size)
    far = rng.choice([-1.0, 1.0], outliers) * rng.uniform(500, 1000, outliers)
    return np.concatenate([bulk, far]).astype(np.float32)


# ---------------------------------------------------------------------------
# Mergeable and exact: chunks, batch size and order do not matter
# ---------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    cuts=st.lists(st.integers(0, 64), max_size=6),
    cls=st.sampled_from(CALIBRATORS),
)
def test_chunks_merged_in_any_order_give_exactly_one_pass(
    seed: int, cuts: list[int], cls: type[Calibrator]
) -> None:
    rng = np.random.default_rng(seed)
    # 64 "images" of activations whose spread varies a lot between images, so the
    # histogram grid widens while the data streams in.
    images = [
        (rng.standard_t(3, size=(4, 6, 6)) * 10.0 ** rng.uniform(-2, 2)).astype(np.float32)
        for _ in range(64)
    ]
    calibrator = cls({"num_bins": 512})
    reference = run(calibrator, [np.stack(images)])
    for batch_size in (1, 8, 32):
        batches = [np.stack(images[i : i + batch_size]) for i in range(0, 64, batch_size)]
        same_range(run(calibrator, batches), reference)
    shuffled = [images[i] for i in rng.permutation(64)]
    same_range(run(calibrator, shuffled), reference)

    bounds = sorted({0, 64, *cuts})
    states = []
    for a, b in itertools.pairwise(bounds):
        state = calibrator.new_state()
        for image in images[a:b]:
            state = calibrator.collect(state, image, 0)
        states.append(state)
    merged = calibrator.new_state()
    for i in rng.permutation(len(states)):
        merged = calibrator.merge(merged, states[i])
    same_range(calibrator.compute(merged), reference)


@pytest.mark.parametrize("cls", CALIBRATORS)
def test_state_size_does_not_grow_with_batches(cls: type[Calibrator]) -> None:
    calibrator = cls()
    rng = np.random.default_rng(0)
    state = calibrator.collect(calibrator.new_state(), rng.standard_normal(100), 0)
    size = len(repr(state.__dict__.keys())) + sum(
        np.asarray(v).nbytes for v in state.__dict__.values()
    )
    for _ in range(200):
        state = calibrator.collect(state, rng.standard_normal(100) * 3, 0)
    assert (
        len(repr(state.__dict__.keys()))
        + sum(np.asarray(v).nbytes for v in state.__dict__.values())
        == size
    )


@pytest.mark.parametrize("cls", CALIBRATORS)
def test_empty_and_constant_tensors(cls: type[Calibrator]) -> None:
    calibrator = cls()
    empty = calibrator.compute(calibrator.new_state())
    assert (empty.rmin, empty.rmax) == (0.0, 0.0) and empty.details["empty"]
    for value in (0.0, 2.5, -1e-35):
        got = run(calibrator, [np.full((3, 5), value, dtype=np.float32)])
        assert (got.rmin, got.rmax) == (np.float32(value), np.float32(value))


# ---------------------------------------------------------------------------
# MinMax
# ---------------------------------------------------------------------------


def test_minmax_is_the_extremes() -> None:
    got = run(MinMaxCalibrator(), [np.array([0.5, -2.0]), np.array([[7.25]]), np.zeros(0)])
    assert (got.rmin, got.rmax) == (-2.0, 7.25)


# ---------------------------------------------------------------------------
# Entropy
# ---------------------------------------------------------------------------


def test_entropy_search_picks_the_least_divergence_among_admissible_thresholds() -> None:
    rng = np.random.default_rng(5)
    values = heavy_tailed(rng, 200_000)
    calibrator = EntropyCalibrator()
    state = calibrator.new_state()
    calibrator.collect(state, values, 0)
    found = calibrator.compute(state)
    counts, levels = found.details["searched_high"], found.details["levels_high"]
    whole = kl_divergence_curve(counts, levels)
    clipped = counts.sum() - np.cumsum(counts)[levels - 1 :]
    admissible = np.where(clipped <= calibrator.max_clip * counts.sum(), whole, np.inf)
    assert found.details["threshold_high"] == (levels + int(np.argmin(admissible))) * state.width


@pytest.mark.parametrize("size", [200, 200_000])
def test_entropy_keeps_the_maximum_when_nothing_may_be_clipped(size: int) -> None:
    """With too few values for even one to be clipped (200 * 0.0001 < 1), or a bound that
    admits no clipping, the one admissible threshold is the last occupied bin's edge."""
    rng = np.random.default_rng(8)
    values = heavy_tailed(rng, size)
    calibrator = EntropyCalibrator({"entropy_max_clip": "1e-9"} if size > 200 else None)
    state = calibrator.new_state()
    calibrator.collect(state, values, 0)
    found = calibrator.compute(state)
    counts = found.details["searched_high"]
    assert found.details["threshold_high"] == counts.size * state.width
    assert (found.rmin, found.rmax) == (state.vmin, state.vmax)


def test_entropy_clips_heavy_tails_well_inside_the_maximum() -> None:
    rng = np.random.default_rng(0)
    values = heavy_tailed(rng, 400_000)
    entropy = run(EntropyCalibrator(), np.array_split(values, 16))
    minmax = run(MinMaxCalibrator(), [values])
    # Laplace(1): the 99.99th percentile of |x| is ln(1e4) = 9.2, the maximum of 400 000
    # draws about 13. Entropy keeps the bulk and cuts the extreme tails.
    high, low = entropy.details["threshold_high"], entropy.details["threshold_low"]
    assert 5.0 < high < 0.9 * minmax.rmax
    assert 0.9 * minmax.rmin < low < -5.0
    assert (entropy.rmin, entropy.rmax) == (low, high)
    assert (entropy.rmin, entropy.rmax) != (minmax.rmin, minmax.rmax)


def test_entropy_ignores_rare_far_outliers() -> None:
    rng = np.random.default_rng(1)
    values = heavy_tailed(rng, 400_000, outliers=40)
    entropy = run(EntropyCalibrator(), [values])
    # The extremes are near +-1000; the bulk lives within about +-13. Each side's
    # threshold lands near the finest one the histogram allows (one bin per level of
    # the side, about 127 of the 255), an order of magnitude below the outliers.
    width = entropy.details["bin_width"]
    assert entropy.details["levels_high"] + entropy.details["levels_low"] == 255
    assert entropy.details["levels_high"] * width <= entropy.rmax < 0.1 * float(values.max())
    assert -entropy.details["levels_low"] * width >= entropy.rmin > 0.1 * float(values.min())


def test_entropy_on_relu_outputs_searches_zero_to_max() -> None:
    rng = np.random.default_rng(2)
    values = np.maximum(heavy_tailed(rng, 200_000), 0.0)
    got = run(EntropyCalibrator(), [values])
    assert got.rmin == 0.0
    assert 3.0 < got.rmax < float(values.max())
    assert "threshold_low" not in got.details


def test_side_levels_split_the_asymmetric_steps_in_proportion() -> None:
    assert side_levels(128, True, 5.0, 0.0) == (128, 128)
    assert side_levels(128, False, 5.0, 0.0) == (255, 0)
    assert side_levels(128, False, 0.0, 2.0) == (0, 255)
    assert side_levels(128, False, 3.0, 1.0) == (191, 64)
    assert side_levels(64, False, 1.0, 1.0) == (64, 63)
    # A side with values keeps at least 2 levels.
    assert side_levels(128, False, 1e6, 1.0) == (253, 2)
    assert side_levels(128, False, 1.0, 1e6) == (2, 253)


def test_entropy_searches_a_relu_output_with_all_the_steps() -> None:
    rng = np.random.default_rng(2)
    values = np.maximum(heavy_tailed(rng, 200_000), 0.0)
    asymmetric = run(EntropyCalibrator(), [values])
    symmetric = run(EntropyCalibrator({"activation_symmetric": "True"}), [values])
    assert asymmetric.details["levels_high"] == 255
    assert symmetric.details["levels_high"] == 128
    # Each picked the least divergence among the admissible thresholds at its levels.
    for found in (asymmetric, symmetric):
        counts, levels = found.details["searched_high"], found.details["levels_high"]
        clipped = counts.sum() - np.cumsum(counts)[levels - 1 :]
        curve = kl_divergence_curve(counts, levels)
        admissible = np.where(clipped <= DEFAULT_MAX_CLIP * counts.sum(), curve, np.inf)
        width = found.details["bin_width"]
        assert found.rmax == (levels + int(np.argmin(admissible))) * width


def test_entropy_splits_the_levels_of_signed_data_by_its_thresholds() -> None:
    rng = np.random.default_rng(3)
    bulk = heavy_tailed(rng, 300_000)
    values = np.where(bulk > 0, 3.0 * bulk, bulk).astype(np.float32)
    calibrator = EntropyCalibrator()
    state = calibrator.collect(calibrator.new_state(), values, 0)
    got = calibrator.compute(state)
    high, low = got.details["levels_high"], got.details["levels_low"]
    assert high + low == 255 and high > 2 * low
    # First searched with the split of the extremes, then with the split of the
    # thresholds that search found.
    split = side_levels(128, False, state.vmax, -state.vmin)
    found = [
        entropy._Side(state, negative=sign, max_clip=DEFAULT_MAX_CLIP).search(levels)[0]
        for sign, levels in ((False, split[0]), (True, split[1]))
    ]
    assert (high, low) == side_levels(128, False, *found)
    assert (got.rmax, -got.rmin) == tuple(
        entropy._Side(state, negative=sign, max_clip=DEFAULT_MAX_CLIP).search(levels)[0]
        for sign, levels in ((False, high), (True, low))
    )
    symmetric = run(EntropyCalibrator({"activation_symmetric": "True"}), [values])
    assert (symmetric.details["levels_high"], symmetric.details["levels_low"]) == (128, 128)


def test_activation_symmetric_must_be_true_or_false() -> None:
    with pytest.raises(UserError, match="activation_symmetric must be True or False"):
        EntropyCalibrator({"activation_symmetric": "maybe"})


def test_entropy_keeps_each_side_of_an_image_input() -> None:
    # A normalized image: 60% background pixels at the minimum, the rest spread over
    # the 256 levels up to 2.5 times further on the positive side. Folding the signs
    # together would clip every bright pixel at the background's magnitude.
    rng = np.random.default_rng(5)
    pixels = np.where(rng.random(300_000) < 0.6, 0, rng.integers(0, 256, 300_000))
    values = ((pixels / 255.0 - 0.286) / 0.353).astype(np.float32)
    got = run(EntropyCalibrator(), [values])
    assert got.rmin == values.min()
    assert got.rmax > 0.9 * values.max()


def test_too_few_bins_for_a_search_are_refused() -> None:
    # The reference's histogram of 128 bins for 128 levels leaves a single candidate,
    # so its "Entropy" is MinMax; drpaiq asks for at least two bins per level of the
    # 255 a side may get.
    with pytest.raises(UserError, match=r"needs at least 2 x \(2 x num_quantized_bins - 1\) = 510"):
        EntropyCalibrator({"num_bins": "128", "num_quantized_bins": "128"})
    rng = np.random.default_rng(4)
    # At the minimum, a one-sided range (all 255 levels on one side) still has
    # thresholds to choose from.
    values = np.abs(heavy_tailed(rng, 100_000))
    got = run(EntropyCalibrator({"num_bins": "510", "num_quantized_bins": "128"}), [values])
    assert got.details["levels_high"] == 255
    assert got.details["searched_high"].size > 255
    assert got.rmax < float(values.max())


# ---------------------------------------------------------------------------
# Percentile
# ---------------------------------------------------------------------------


def test_percentile_cuts_each_tail_within_a_bin() -> None:
    rng = np.random.default_rng(5)
    values = (rng.standard_normal(200_000) * 2 + 1).astype(np.float32)
    got = run(PercentileCalibrator({"percentile_value": 99}), np.array_split(values, 7))
    width = got.details["bin_width"]
    low, high = np.percentile(values, [1, 99])
    assert low - width <= got.rmin <= low + width
    assert high - width <= got.rmax <= high + width
    assert width < (values.max() - values.min()) / 2048


def test_percentile_100_is_minmax_and_relu_keeps_zero() -> None:
    rng = np.random.default_rng(6)
    values = rng.standard_t(2, 50_000).astype(np.float32)
    full = run(PercentileCalibrator({"percentile_value": "100"}), [values])
    assert (full.rmin, full.rmax) == (values.min(), values.max())
    relu = run(PercentileCalibrator({"percentile_value": 99.9}), [np.maximum(values, 0)])
    assert relu.rmin == 0.0 and relu.rmax < values.max()


# ---------------------------------------------------------------------------
# MSE
# ---------------------------------------------------------------------------


def quantization_error(values: np.ndarray, found: TensorRange, symmetric: bool = False) -> float:
    """The mean squared error of ``values`` quantized to int8 with the range ``found``,
    as drpaiq's planner would (the range widened to include 0, the zero-point rule)."""
    from drpaiq_core.qparams import activation_params, fake_quantize

    params = activation_params(found.rmin, found.rmax, "int8", symmetric)
    return float(np.mean((fake_quantize(values, params) - values).astype(np.float64) ** 2))


@pytest.mark.parametrize("symmetric", [False, True])
def test_mse_range_quantizes_with_less_error_than_the_others(symmetric: bool) -> None:
    rng = np.random.default_rng(11)
    # Signed and lopsided, with a long tail: MinMax wastes levels, a cut can pay.
    values = np.concatenate([rng.laplace(0.5, 1.0, 200_000), rng.laplace(0.0, 6.0, 300)])
    values = values.astype(np.float32)
    option = {"activation_symmetric": str(symmetric)}
    errors = {
        cls.__name__: quantization_error(values, run(cls(option), [values]), symmetric)
        for cls in CALIBRATORS
    }
    best = errors.pop("MSECalibrator")
    assert all(best < other for other in errors.values()), (best, errors)


def test_mse_range_is_a_minimum_of_the_real_error() -> None:
    """The histogram's estimate of the error finds a range that the real quantization
    error cannot improve on by moving either end by 10%."""
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.normal(-0.3, 1.0, 100_000), rng.normal(0, 5.0, 500)])
    values = values.astype(np.float32)
    found = run(MSECalibrator(), [values])
    at_best = quantization_error(values, found)
    assert found.details["expected_error"] / values.size == pytest.approx(at_best, rel=0.1)
    for low, high in itertools.product((0.9, 1.0, 1.1), repeat=2):
        moved = TensorRange(found.rmin * low, found.rmax * high)
        assert at_best <= quantization_error(values, moved) * 1.01, (low, high)


def test_mse_on_relu_outputs_keeps_zero_and_weighs_a_far_value() -> None:
    """A value far out is cut only when its squared move costs less than the rounding
    error the wider range would put on all the others: at 8 bits, a rare one."""
    rng = np.random.default_rng(2)
    bulk = np.maximum(rng.uniform(-1.0, 1.0, 2_000_000), 0.0).astype(np.float32)
    one_far = run(MSECalibrator(), [np.append(bulk, np.float32(4.0))])
    # n values inside pay n * (h / 255)^2 / 12 of rounding, k far ones k * (4 - h)^2 of
    # clipping: the sum is least at h = 4k / (n / (12 * 255^2) + k).
    inside = np.count_nonzero(bulk)

    def best(k: int) -> float:
        return 4.0 * k / (inside / (12 * 255**2) + k)

    assert one_far.rmin == 0.0
    assert one_far.rmax == pytest.approx(best(1), abs=2 * one_far.details["bin_width"])
    many_far = run(MSECalibrator(), [np.append(bulk, np.full(50, 4.0, np.float32))])
    assert many_far.rmax == pytest.approx(best(50), abs=2 * many_far.details["bin_width"])
    assert best(1) < 2.0 < best(50)
    # Exact zeros are free: half the values are 0, and without them the range is the same.
    assert one_far.rmax == run(MSECalibrator(), [np.append(bulk[bulk > 0], np.float32(4.0))]).rmax


def test_mse_never_goes_beyond_the_values_seen() -> None:
    values = np.array([0.25, 0.5, 0.75, 1.0], dtype=np.float32)
    found = run(MSECalibrator(), [values])
    assert found.rmin >= 0.0 and found.rmax <= 1.0


# ---------------------------------------------------------------------------
# Options and registration
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "options", "message"),
    [
        (EntropyCalibrator, {"num_bins": "abc"}, "num_bins must be an integer"),
        (EntropyCalibrator, {"num_bins": 200}, "num_bins 200 is too few for Entropy"),
        (EntropyCalibrator, {"num_quantized_bins": 1}, "num_quantized_bins must be between 2"),
        (EntropyCalibrator, {"num_bins": True}, "num_bins must be an integer"),
        (PercentileCalibrator, {"percentile_value": "high"}, "percentile_value must be a number"),
        (PercentileCalibrator, {"percentile_value": 120}, "at most 100"),
        (PercentileCalibrator, {"percentile_value": "nan"}, "greater than 50"),
        (PercentileCalibrator, {"percentile_value": 30}, "greater than 50"),
    ],
)
def test_bad_options_are_one_line_user_errors(
    cls: type[Calibrator], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(UserError, match=message) as info:
        cls(options)
    assert "\n" not in str(info.value)


def test_options_arrive_as_strings_or_numbers() -> None:
    entropy = EntropyCalibrator({"num_bins": " 512 ", "num_quantized_bins": 64, "other": "x"})
    assert (entropy.num_bins, entropy.num_quantized_bins) == (512, 64)
    assert PercentileCalibrator({"percentile_value": "99.9"}).percentile == 99.9


def test_registered_under_both_spellings_through_entry_points() -> None:
    host = get_plugin_host()
    for name, cls in (
        ("minmax", MinMaxCalibrator),
        ("MinMax", MinMaxCalibrator),
        ("Entropy", EntropyCalibrator),
        ("PERCENTILE", PercentileCalibrator),
        ("MSE", MSECalibrator),
        ("mse", MSECalibrator),
    ):
        assert host.calibrators.get(name) is cls
    assert host.plugins["builtin_calibrators"].module == plugin.__name__


def test_plugin_import_stays_light() -> None:
    code = (
        "import sys, drpaiq_plugins_calibrators.plugin\n"
        "heavy = [m for m in ('onnxruntime', 'onnx', 'matplotlib', 'PIL') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
