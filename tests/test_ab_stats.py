"""The library-backed A/B statistics (statsmodels, SciPy) against the figures of the hand-written
formulas they replaced (``training/reports/ab_stats.py`` before the switch, run on these inputs).

Closed forms (Wilson interval, pooled z-test) agree to 1e-9; the seeded bootstraps give the same
draws, so the same figures (to 1e-9, i.e. floating-point summation only), including batches
(n x resamples above the batch size) and groups of a single value.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from training.reports.ab_stats import (
    bootstrap_difference_test,
    bootstrap_mean_interval,
    two_proportion_z_test,
    wilson_interval,
)

CLOSE = 1e-9

# (successes, trials) -> (low, high) of the hand-written Wilson interval at z = 1.96.
WILSON_BEFORE = {
    (0, 0): (0.0, 1.0),
    (0, 1): (0.0, 0.7934506856227626),
    (1, 1): (0.20654931437723745, 1.0),
    (0, 50): (0.0, 0.07134759913335872),
    (50, 50): (0.9286524008666414, 1.0),
    (1, 3): (0.06149194472039621, 0.7923403991979522),
    (10, 100): (0.0552291370606751, 0.17436566150491345),
    (3, 7): (0.15821985525146975, 0.7495416354723428),
    (500, 1000): (0.4690696003681042, 0.5309303996318958),
    (999, 1000): (0.9943574414020421, 0.9998234536293739),
}

# (control successes, control trials, successes, trials) -> (difference, z, p).
Z_TEST_BEFORE = {
    (200, 1000, 250, 1000): (0.04999999999999999, 2.677397763008329, 0.007419649261025693),
    (0, 10, 0, 10): (0.0, 0.0, 1.0),
    (10, 10, 10, 10): (0.0, 0.0, 1.0),
    (5, 5, 5, 5): (0.0, 0.0, 1.0),
    (0, 3, 3, 3): (1.0, 2.449489742783178, 0.014305878435429655),
    (1, 2, 1, 2): (0.0, 0.0, 1.0),
    (30, 100, 30, 100): (0.0, 0.0, 1.0),
    (7, 50, 12, 40): (0.15999999999999998, 1.8482055087756455, 0.06457261881366305),
    (0, 1, 1, 1): (1.0, 1.414213562373095, 0.1572992070502852),
}


@pytest.mark.parametrize(("successes", "trials"), list(WILSON_BEFORE))
def test_wilson_interval_matches_the_hand_written_figures(successes: int, trials: int) -> None:
    interval = wilson_interval(successes, trials)
    low, high = WILSON_BEFORE[(successes, trials)]
    assert interval.low == pytest.approx(low, abs=CLOSE)
    assert interval.high == pytest.approx(high, abs=CLOSE)


def test_wilson_interval_keeps_exact_bounds_and_other_levels() -> None:
    # 0 or all successes: the bound is exactly 0 or 1, not 1e-17 off.
    assert wilson_interval(0, 1).low == 0.0
    assert wilson_interval(1, 1).high == 1.0
    at_99 = wilson_interval(10, 100, z=2.5758293035489004)
    assert at_99.low == pytest.approx(0.046025811701035035, abs=CLOSE)
    assert at_99.high == pytest.approx(0.20375073847162334, abs=CLOSE)


@pytest.mark.parametrize("counts", list(Z_TEST_BEFORE))
def test_two_proportion_z_test_matches_the_hand_written_figures(
    counts: tuple[int, int, int, int],
) -> None:
    result = two_proportion_z_test(*counts)
    difference, z, p = Z_TEST_BEFORE[counts]
    assert result.difference == pytest.approx(difference, abs=CLOSE)
    assert result.statistic == pytest.approx(z, abs=CLOSE)
    assert result.p_value == pytest.approx(p, abs=CLOSE)


def test_two_proportion_z_test_rejects_empty_groups_and_impossible_counts() -> None:
    with pytest.raises(ValueError, match="trials > 0"):
        two_proportion_z_test(0, 0, 1, 2)
    with pytest.raises(ValueError, match="3 of 2"):
        two_proportion_z_test(1, 2, 3, 2)


def _revenue(rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
    """Revenue per user: 0 for most, a gamma-distributed basket for about a fifth."""
    revenue: npt.NDArray[np.float64] = (rng.random(n) < 0.2) * rng.gamma(2.0, 20.0, n)
    return revenue


def test_bootstrap_mean_interval_gives_the_same_seeded_figures() -> None:
    rng = np.random.default_rng(7)
    revenue = _revenue(rng, 300)
    cases: list[tuple[npt.ArrayLike, dict[str, int], tuple[float, float]]] = [
        (revenue, {}, (6.01341235495824, 11.193574088859336)),
        (revenue, {"resamples": 500, "seed": 3}, (6.03681519244051, 11.131576820702723)),
        ([4.0], {}, (4.0, 4.0)),
        ([1.0, 3.0], {}, (1.0, 3.0)),
        ([3.0] * 20, {}, (3.0, 3.0)),
        ([0.0, 0.0, 5.0, 0.0, 12.5], {"seed": 11}, (0.0, 8.5)),
        # 5,000 values x 1,000 resamples: drawn in batches.
        (rng.gamma(2.0, 20.0, 5000), {"resamples": 1000, "seed": 5}, (39.174087332511505, 40.75800637505522)),
    ]
    for values, options, (low, high) in cases:
        interval = bootstrap_mean_interval(values, **options)
        assert interval.low == pytest.approx(low, abs=CLOSE)
        assert interval.high == pytest.approx(high, abs=CLOSE)


def test_bootstrap_difference_test_gives_the_same_seeded_figures() -> None:
    rng = np.random.default_rng(7)
    revenue = _revenue(rng, 300)
    rng.gamma(2.0, 20.0, 5000)  # the previous test's large sample: same stream, same inputs
    control = _revenue(rng, 400)
    big_control, big_treatment = rng.gamma(2.0, 20.0, 3000), rng.gamma(2.0, 21.0, 3000)
    # (control, treatment, options) -> (difference, statistic, p, low, high)
    cases: list[tuple[npt.ArrayLike, npt.ArrayLike, dict[str, int], tuple[float, ...]]] = [
        (
            control,
            revenue,
            {},
            (0.3372487238964865, 0.19833168185011496, 0.914, -3.1490125845214854, 3.5322070612610452),
        ),
        (revenue, revenue, {}, (0.0, 0.0, 0.961, -3.961361848954805, 3.5389763612600693)),
        (
            revenue,
            revenue + 2,
            {"resamples": 1000, "seed": 9},
            (1.9999999999999982, 1.0630133984763517, 0.27, -1.4209257138556863, 5.705630541935338),
        ),
        ([1.0, 2.0, 7.0], [4.0], {}, (0.6666666666666665, 0.44424575132884375, 0.527, -3.0, 3.0)),
        ([4.0], [1.0, 2.0, 7.0], {}, (-0.6666666666666665, -0.44424575132884375, 0.527, -3.0, 3.0)),
        ([1.0], [2.0], {}, (1.0, 0.0, 0.0005, 1.0, 1.0)),
        # 3,000 a side x 1,000 resamples: drawn in batches.
        (
            big_control,
            big_treatment,
            {"resamples": 1000, "seed": 2},
            (2.121468665180693, 2.7809104383586996, 0.001, 0.6594006698639804, 3.641760983717693),
        ),
    ]
    for a, b, options, expected in cases:
        result, interval = bootstrap_difference_test(a, b, **options)
        got = (result.difference, result.statistic, result.p_value, interval.low, interval.high)
        assert got == pytest.approx(expected, abs=CLOSE)
    with pytest.raises(ValueError, match="at least one value"):
        bootstrap_difference_test([], [1.0])
