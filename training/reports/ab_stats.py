"""Statistics of A/B reports: proportion intervals, the two-proportion z-test and the bootstrap.

Thin wrappers over maintained library calls, so that the formulas are the libraries' and only
the report's conventions (edge cases, return types) live here:

* Wilson interval: :func:`statsmodels.stats.proportion.proportion_confint` (``method="wilson"``);
* pooled two-proportion z-test: :func:`statsmodels.stats.proportion.proportions_ztest`
  (``prop_var=False``: the variance of the pooled proportion, as under the null hypothesis);
* percentile bootstrap of a mean: :func:`scipy.stats.bootstrap` (``method="percentile"``, its
  ``bootstrap_distribution`` for the difference of two groups) drawing from a NumPy
  ``default_rng(seed)``, so a seed gives the same interval on every run.

Two-sided tests at 95 % throughout. ``tests/test_ab_stats.py`` pins these against the figures of
the hand-written formulas they replaced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import stats
from statsmodels.stats.proportion import proportion_confint, proportions_ztest

Z_95: Final = float(stats.norm.ppf(0.975))  # the 97.5 % quantile of the standard normal

# Indices drawn per bootstrap batch (per group): resamples x n at once can be large.
_BATCH_ELEMENTS: Final = 2_000_000

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class TestResult:
    """A two-sided test of "no difference": the statistic, its p-value and the estimate
    (``treatment - control``)."""

    difference: float
    statistic: float
    p_value: float


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> Interval:
    """Wilson score interval of a proportion (good near 0 and 1, unlike the normal one).

    ``z`` is the normal quantile of the two-sided level (1.96 for 95 %). ``trials == 0`` gives
    the uninformative ``[0, 1]``.
    """
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return Interval(0.0, 1.0)
    alpha = 2 * float(stats.norm.sf(z))
    low, high = proportion_confint(successes, trials, alpha=alpha, method="wilson")
    # At 0 or n successes the bound is exactly 0 or 1 (rounding would leave ~1e-17).
    return Interval(
        0.0 if successes == 0 else max(0.0, float(low)),
        1.0 if successes == trials else min(1.0, float(high)),
    )


def two_proportion_z_test(
    control_successes: int, control_trials: int, successes: int, trials: int
) -> TestResult:
    """Pooled two-proportion z-test of ``successes/trials`` against the control's proportion.

    ``z = (p1 - p0) / sqrt(p (1 - p) (1/n0 + 1/n1))`` with the pooled ``p``, two-sided. No
    variation at all (pooled 0 or 1) gives z 0, p 1 (the library would divide by zero).
    """
    for s, n in ((control_successes, control_trials), (successes, trials)):
        if not 0 <= s <= n or n == 0:
            raise ValueError(f"need 0 <= successes <= trials and trials > 0, got {s} of {n}")
    difference = successes / trials - control_successes / control_trials
    pooled_successes = control_successes + successes
    if pooled_successes in (0, control_trials + trials):
        return TestResult(difference, 0.0, 1.0)
    z, p_value = proportions_ztest(
        [successes, control_successes], [trials, control_trials], value=0, prop_var=False
    )
    return TestResult(difference, float(z), float(p_value))


def _bootstrap_means(values: Floats, resamples: int, rng: np.random.Generator) -> Floats:
    """The bootstrap distribution of the mean of ``values`` (at least one), drawn from ``rng``.

    One value has one resample, itself, and draws nothing (as NumPy draws nothing for
    ``integers(0, 1)``); SciPy wants two or more, so that case is answered here.
    """
    if values.size == 1:
        return np.full(resamples, values[0])
    result = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=resamples,
        batch=max(1, _BATCH_ELEMENTS // values.size),
        vectorized=True,
        method="percentile",
        rng=rng,
    )
    means: Floats = np.asarray(result.bootstrap_distribution, dtype=np.float64)
    return means


def _percentile_interval(distribution: Floats, level: float) -> Interval:
    alpha = (1 - level) / 2
    low, high = np.quantile(distribution, [alpha, 1 - alpha])
    return Interval(float(low), float(high))


def bootstrap_mean_interval(
    values: npt.ArrayLike, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. revenue per user)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return Interval(math.nan, math.nan)
    means = _bootstrap_means(data, resamples, np.random.default_rng(seed))
    return _percentile_interval(means, level)


def bootstrap_difference_test(
    control: npt.ArrayLike,
    treatment: npt.ArrayLike,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[TestResult, Interval]:
    """Bootstrap of ``mean(treatment) - mean(control)``, each group resampled on its own.

    Returns the test (statistic = the difference divided by its bootstrap standard error;
    two-sided p-value = twice the smaller share of resampled differences on either side of
    0, at least ``1 / resamples``) and the percentile interval of the difference.
    """
    a = np.asarray(control, dtype=np.float64)
    b = np.asarray(treatment, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("both groups need at least one value")
    # Each group resampled on its own from one generator, treatment first: the resampled
    # differences are those of scipy.stats.bootstrap((b, a), mean(b) - mean(a)) in law, and this
    # order keeps the seeded figures of the report's earlier releases (a two-sample call
    # interleaves the groups batch by batch, which moves every figure by Monte Carlo noise).
    rng = np.random.default_rng(seed)
    differences = _bootstrap_means(b, resamples, rng) - _bootstrap_means(a, resamples, rng)
    estimate = float(b.mean() - a.mean())
    se = float(differences.std(ddof=1)) if resamples > 1 else 0.0
    below = float(np.mean(differences <= 0))
    above = float(np.mean(differences >= 0))
    p_value = min(1.0, max(2 * min(below, above), 1 / resamples))
    statistic = estimate / se if se > 0 else 0.0
    return TestResult(estimate, statistic, p_value), _percentile_interval(differences, level)
