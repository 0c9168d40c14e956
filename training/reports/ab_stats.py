"""Statistics of A/B reports: proportion intervals, the two-proportion z-test and the bootstrap.

Pure functions over counts and arrays (numpy only), checked against hand-computed values
in the tests. Two-sided tests at 95 % throughout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

Z_95: Final = 1.959963984540054  # the 97.5 % quantile of the standard normal


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

    ``trials == 0`` gives the uninformative ``[0, 1]``.
    """
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")
    if trials == 0:
        return Interval(0.0, 1.0)
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    # At 0 or n successes the bound is exactly 0 or 1 (rounding would leave ~1e-17).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return Interval(low, high)


def two_proportion_z_test(
    control_successes: int, control_trials: int, successes: int, trials: int
) -> TestResult:
    """Pooled two-proportion z-test of ``successes/trials`` against the control's proportion.

    ``z = (p1 - p0) / sqrt(p (1 - p) (1/n0 + 1/n1))`` with the pooled ``p``; two-sided
    ``p_value = erfc(|z| / sqrt 2)``. No variation at all (pooled 0 or 1) gives z 0, p 1.
    """
    for s, n in ((control_successes, control_trials), (successes, trials)):
        if not 0 <= s <= n or n == 0:
            raise ValueError(f"need 0 <= successes <= trials and trials > 0, got {s} of {n}")
    p0 = control_successes / control_trials
    p1 = successes / trials
    pooled = (control_successes + successes) / (control_trials + trials)
    se = math.sqrt(pooled * (1 - pooled) * (1 / control_trials + 1 / trials))
    if se == 0:
        return TestResult(p1 - p0, 0.0, 1.0)
    z = (p1 - p0) / se
    return TestResult(p1 - p0, z, math.erfc(abs(z) / math.sqrt(2)))


def _bootstrap_means(
    values: npt.NDArray[np.float64], resamples: int, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    if values.size == 0:
        return np.full(resamples, np.nan)
    # Resample in chunks: resamples x n indices at once can be large.
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // values.size)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        picks = rng.integers(0, values.size, size=(stop - start, values.size))
        means[start:stop] = values[picks].mean(axis=1)
    return means


def bootstrap_mean_interval(
    values: npt.ArrayLike, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. revenue per user)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return Interval(math.nan, math.nan)
    means = _bootstrap_means(data, resamples, np.random.default_rng(seed))
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(low), float(high))


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
    rng = np.random.default_rng(seed)
    differences = _bootstrap_means(b, resamples, rng) - _bootstrap_means(a, resamples, rng)
    estimate = float(b.mean() - a.mean())
    se = float(differences.std(ddof=1)) if resamples > 1 else 0.0
    below = float(np.mean(differences <= 0))
    above = float(np.mean(differences >= 0))
    p_value = min(1.0, max(2 * min(below, above), 1 / resamples))
    alpha = (1 - level) / 2
    low, high = np.quantile(differences, [alpha, 1 - alpha])
    statistic = estimate / se if se > 0 else 0.0
    return TestResult(estimate, statistic, p_value), Interval(float(low), float(high))
