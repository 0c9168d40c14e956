"""Customer lifetime value: BG/NBD purchase counts and Gamma-Gamma spend, fitted with SciPy.

Why not ``pymc-marketing`` (the maintained home of these models): it brings PyMC,
PyTensor, Numba/llvmlite, ArviZ and h5py (27 packages on top of this project's) and
PyTensor compiles C at first use; on a 2-core CI box the install and compile blow the
budget for a model whose maximum-likelihood fit is four parameters. The closed forms below
are those of Fader, Hardie & Lee (2005, "Counting your customers the easy way" and the
Gamma-Gamma note), computed in log space with :func:`scipy.special.gammaln`, and the fit is
:func:`scipy.optimize.minimize` (L-BFGS-B) on log parameters.

Data: a *transaction* is a UTC day with at least one event of
``profiles.monetary_event_types`` (several orders on one day are one purchase occasion, as
usual for BG/NBD). Per buyer, on a clock: ``x`` repeat occasions (occasions - 1), ``t_x``
days from the first to the last occasion, ``T`` days from the first occasion to the clock,
and, when the data has amounts, ``m`` the mean spend per occasion over ``x + 1`` occasions.
Members who never bought are outside the model (their figures are left unset, not invented).

BG/NBD (``r, alpha, a, b``): while alive a buyer purchases as a Poisson process with rate
``lambda ~ Gamma(r, alpha)``; after each purchase they drop out with ``p ~ Beta(a, b)``.
Gamma-Gamma (``p, q, gamma``): the spend per occasion is Gamma(``p``, ``nu``) with ``nu ~
Gamma(q, gamma)``, independent of the purchase process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
from scipy.optimize import minimize
from scipy.special import betaln, gammaln, hyp2f1

from serving.profiles.behaviour import DAY_SECONDS
from serving.profiles.build import MemberEvents

log = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float64]
MIN_BUYERS = 20
MIN_REPEAT_BUYERS = 5
LOG_BOUND = 12.0
"""Parameters are fitted as logs bounded to [-12, 12] (e^12 ~ 1.6e5): a Beta(a, b) with a
huge b (nobody drops out) stays finite."""


@dataclass(frozen=True)
class Buyers:
    """Per-buyer summary at a clock (rows aligned); ``spend`` is None without amounts."""

    user_id: pl.Series
    x: FloatArray
    t_x: FloatArray
    big_t: FloatArray
    spend: FloatArray | None


def buyers(events: MemberEvents, clock: int, purchase_types: tuple[str, ...], money: bool) -> Buyers:
    """The summary of every user with a purchase at or before ``clock`` (days as the unit)."""
    ts = pl.col("timestamp")

    def summary(interactions: pl.LazyFrame) -> pl.LazyFrame:
        occasions = (
            interactions.filter((ts <= clock) & pl.col("event_type").is_in(list(purchase_types)))
            .group_by("user_id", (ts // DAY_SECONDS).alias("day"))
            .agg(ts.min().alias("at"), pl.col("value").sum().alias("spend"))
        )
        return occasions.group_by("user_id").agg(
            (pl.len() - 1).cast(pl.Float64).alias("x"),
            ((pl.col("at").max() - pl.col("at").min()) / DAY_SECONDS).alias("t_x"),
            ((clock - pl.col("at").min()) / DAY_SECONDS).alias("big_t"),
            pl.col("spend").mean().alias("m"),
        )

    frame = events.over_parts(summary).sort("user_id").collect()
    return Buyers(
        frame.get_column("user_id"),
        frame.get_column("x").to_numpy(),
        frame.get_column("t_x").to_numpy(),
        # A purchase at the clock itself has T = 0: nudged so the likelihood stays defined.
        np.maximum(frame.get_column("big_t").to_numpy(), 1e-3),
        frame.get_column("m").fill_null(0.0).to_numpy() if money else None,
    )


# --------------------------------------------------------------------------- BG/NBD


@dataclass(frozen=True)
class BgNbd:
    """BG/NBD parameters (the manifest keeps :meth:`to_dict`)."""

    r: float
    alpha: float
    a: float
    b: float

    def to_dict(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}


def bgnbd_log_likelihood(params: BgNbd, x: FloatArray, t_x: FloatArray, big_t: FloatArray) -> FloatArray:
    """Per-buyer log-likelihood (Fader, Hardie & Lee 2005, eq. 6, in log space)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    a3 = -(r + x) * np.log(alpha + big_t)
    repeat = x > 0
    a4 = np.full_like(x, -np.inf)
    a4[repeat] = np.log(a) - np.log(b + x[repeat] - 1) - (r + x[repeat]) * np.log(alpha + t_x[repeat])
    out: FloatArray = a1 + a2 + np.logaddexp(a3, a4)
    return out


def fit_bgnbd(data: Buyers) -> BgNbd:
    """Maximum-likelihood BG/NBD parameters of ``data``."""

    def loss(theta: FloatArray) -> float:
        params = BgNbd(*np.exp(theta))
        return -float(bgnbd_log_likelihood(params, data.x, data.t_x, data.big_t).sum()) / len(data.x)

    start = np.log([1.0, max(float(data.big_t.mean()), 1.0), 1.0, 1.0])
    found = minimize(loss, start, method="L-BFGS-B", bounds=[(-LOG_BOUND, LOG_BOUND)] * 4)
    return BgNbd(*(float(v) for v in np.exp(found.x)))


def probability_alive(params: BgNbd, x: FloatArray, t_x: FloatArray, big_t: FloatArray) -> FloatArray:
    """P(still a customer | x, t_x, T) (eq. 11)."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    log_ratio = (
        np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) + (r + x) * np.log((alpha + big_t) / (alpha + t_x))
    )
    out: FloatArray = np.where(x > 0, 1.0 / (1.0 + np.exp(np.clip(log_ratio, -700, 700))), 1.0)
    return out


def expected_purchases(
    params: BgNbd, x: FloatArray, t_x: FloatArray, big_t: FloatArray, days: float
) -> FloatArray:
    """E[purchase occasions in the next ``days`` | x, t_x, T] (eq. 10).

    The Gauss hypergeometric term is evaluated by :func:`scipy.special.hyp2f1`; where it is not
    finite (extreme parameters) the no-dropout limit ``P(alive) * (r + x) / (alpha + T) *
    days`` is used instead, which the formula tends to as ``b`` grows.
    """
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    z = days / (alpha + big_t + days)
    head = (a + b + x - 1) / (a - 1) if abs(a - 1) > 1e-9 else np.full_like(x, np.nan)
    with np.errstate(all="ignore"):
        term = ((alpha + big_t) / (alpha + big_t + days)) ** (r + x) * hyp2f1(r + x, b + x, a + b + x - 1, z)
        numerator = head * (1.0 - term)
        denominator = 1.0 + (x > 0) * a / np.maximum(b + x - 1, 1e-12) * (
            (alpha + big_t) / (alpha + t_x)
        ) ** (r + x)
        value = numerator / denominator
    limit = probability_alive(params, x, t_x, big_t) * (r + x) / (alpha + big_t) * days
    out: FloatArray = np.where(np.isfinite(value) & (value >= 0), value, limit)
    return out


# --------------------------------------------------------------------------- Gamma-Gamma


@dataclass(frozen=True)
class GammaGamma:
    """Gamma-Gamma spend parameters (the manifest keeps :meth:`to_dict`)."""

    p: float
    q: float
    gamma: float

    def to_dict(self) -> dict[str, float]:
        return {"p": self.p, "q": self.q, "gamma": self.gamma}


def gamma_gamma_log_likelihood(params: GammaGamma, n: FloatArray, m: FloatArray) -> FloatArray:
    """Per-buyer log-likelihood of the mean spend ``m`` over ``n`` occasions."""
    p, q, g = params.p, params.q, params.gamma
    px = p * n
    out: FloatArray = (
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * np.log(g)
        + (px - 1) * np.log(m)
        + px * np.log(n)
        - (px + q) * np.log(n * m + g)
    )
    return out


def fit_gamma_gamma(n: FloatArray, m: FloatArray) -> GammaGamma:
    """Maximum-likelihood Gamma-Gamma parameters (``q > 1``, so the mean spend exists)."""

    def loss(theta: FloatArray) -> float:
        params = GammaGamma(float(np.exp(theta[0])), 1.0 + float(np.exp(theta[1])), float(np.exp(theta[2])))
        return -float(gamma_gamma_log_likelihood(params, n, m).sum()) / len(n)

    start = np.log([1.0, 1.0, max(float(m.mean()), 1e-3)])
    found = minimize(loss, start, method="L-BFGS-B", bounds=[(-LOG_BOUND, LOG_BOUND)] * 3)
    return GammaGamma(float(np.exp(found.x[0])), 1.0 + float(np.exp(found.x[1])), float(np.exp(found.x[2])))


def expected_spend(params: GammaGamma, n: FloatArray, m: FloatArray) -> FloatArray:
    """E[spend per occasion | mean m over n occasions] (shrunk towards the population mean)."""
    out: FloatArray = params.p * (params.gamma + n * m) / (params.p * n + params.q - 1)
    return out


# --------------------------------------------------------------------------- the bundle's model


@dataclass(frozen=True)
class ClvResult:
    """Per-buyer predictions (None when not trained) and the manifest section."""

    frame: pl.DataFrame | None
    metadata: dict[str, Any]


def train_clv(
    interactions: pl.LazyFrame | MemberEvents,
    clock: int,
    purchase_types: tuple[str, ...],
    money: bool,
    horizon_days: float,
    holdout_days: float,
) -> ClvResult:
    """Validate on a time split (fit before ``clock - holdout``, compare the holdout's purchases
    per decile of prediction), refit on everything, predict ``horizon_days`` ahead.

    ``frame``: ``user_id, clv_expected_purchases, clv_probability_alive, clv_expected_order_value,
    clv_value`` (the last two null when ``money`` is false).
    """
    base: dict[str, Any] = {
        "model": "BG/NBD + Gamma-Gamma (maximum likelihood, SciPy)",
        "transaction": f"a UTC day with an event of {', '.join(purchase_types)}",
        "horizon_days": horizon_days,
        "holdout_days": holdout_days,
        "has_money": money,
    }
    events = MemberEvents.of(interactions)
    everyone = buyers(events, clock, purchase_types, money)
    problem = _problem(everyone)
    if problem:
        log.warning("CLV model not trained: %s", problem)
        return ClvResult(None, {**base, "trained": False, "reason": problem})
    validation = validate(events, clock, purchase_types, money, holdout_days)
    counts = fit_bgnbd(everyone)
    purchases = expected_purchases(counts, everyone.x, everyone.t_x, everyone.big_t, horizon_days)
    alive = probability_alive(counts, everyone.x, everyone.t_x, everyone.big_t)
    columns: dict[str, Any] = {
        "user_id": everyone.user_id,
        "clv_expected_purchases": purchases,
        "clv_probability_alive": alive,
    }
    metadata: dict[str, Any] = {
        **base,
        "trained": True,
        "buyers": len(everyone.x),
        "bgnbd": counts.to_dict(),
        "validation": validation,
    }
    if money and everyone.spend is not None:
        n = everyone.x + 1
        spenders = everyone.spend > 0
        spend_model = fit_gamma_gamma(n[spenders], everyone.spend[spenders])
        order_value = expected_spend(spend_model, n, np.maximum(everyone.spend, 0.0))
        columns["clv_expected_order_value"] = order_value
        columns["clv_value"] = purchases * order_value
        metadata["gamma_gamma"] = spend_model.to_dict()
    else:
        columns["clv_expected_order_value"] = pl.Series([None] * len(everyone.x), dtype=pl.Float64)
        columns["clv_value"] = pl.Series([None] * len(everyone.x), dtype=pl.Float64)
        metadata["gamma_gamma"] = None
        metadata["money_note"] = "the data has no amounts on purchase events: no spend model, no CLV value"
    frame = pl.DataFrame(columns).with_columns(pl.exclude("user_id").cast(pl.Float64))
    return ClvResult(frame, metadata)


def validate(
    events: MemberEvents, clock: int, purchase_types: tuple[str, ...], money: bool, holdout_days: float
) -> dict[str, Any]:
    """Fit on the events before ``clock + 1 - holdout``; predicted vs actual purchase occasions
    (and spend with money) in the holdout, per decile of predicted purchases."""
    cut = clock + 1 - int(holdout_days * DAY_SECONDS)
    calibration = buyers(events, cut - 1, purchase_types, money)
    if _problem(calibration):
        return {"done": False, "reason": f"calibration period: {_problem(calibration)}"}
    params = fit_bgnbd(calibration)
    predicted = expected_purchases(params, calibration.x, calibration.t_x, calibration.big_t, holdout_days)
    ts = pl.col("timestamp")
    holdout = events.over_parts(
        lambda interactions: (
            interactions.filter(
                (ts >= cut) & (ts <= clock) & pl.col("event_type").is_in(list(purchase_types))
            )
            .group_by("user_id")
            .agg(
                (ts // DAY_SECONDS).n_unique().cast(pl.Float64).alias("actual"),
                pl.col("value").sum().alias("spend"),
            )
        )
    )
    joined = (
        pl.DataFrame({"user_id": calibration.user_id, "predicted": predicted})
        .lazy()
        .join(holdout, on="user_id", how="left", maintain_order="left")
        .with_columns(pl.col("actual").fill_null(0.0), pl.col("spend").fill_null(0.0))
        .collect()
    )
    if money and calibration.spend is not None:
        n = calibration.x + 1
        spenders = calibration.spend > 0
        spend = fit_gamma_gamma(n[spenders], calibration.spend[spenders])
        joined = joined.with_columns(
            pl.Series(
                "predicted_spend", predicted * expected_spend(spend, n, np.maximum(calibration.spend, 0.0))
            )
        )
    deciles = deciles_table(joined, money and calibration.spend is not None)
    actual_total = float(joined.get_column("actual").sum())
    predicted_total = float(joined.get_column("predicted").sum())
    spend_totals = (
        {
            "predicted_spend_total": round(float(joined.get_column("predicted_spend").sum()), 2),
            "actual_spend_total": round(float(joined.get_column("spend").sum()), 2),
        }
        if "predicted_spend" in joined.columns
        else {}
    )
    return {
        "done": True,
        "cut": cut,
        "buyers": joined.height,
        "bgnbd": params.to_dict(),
        "predicted_total": round(predicted_total, 2),
        "actual_total": round(actual_total, 2),
        "correlation": round(float(np.corrcoef(joined["predicted"], joined["actual"])[0, 1]), 4),
        **spend_totals,
        "deciles": deciles,
    }


def deciles_table(joined: pl.DataFrame, money: bool) -> list[dict[str, Any]]:
    """Mean predicted and actual holdout purchases (and spend) per decile of prediction
    (decile 10 = the highest predictions)."""
    # Ties (buyers with the same history get the same prediction) are split by user id, so
    # the deciles do not depend on row order.
    ranked = joined.sort("predicted", "user_id").with_columns(
        (1 + pl.int_range(pl.len()) * 10 // pl.len()).cast(pl.Int32).alias("decile")
    )
    aggregations = [
        pl.len().alias("buyers"),
        pl.col("predicted").mean().round(4).alias("predicted_purchases"),
        pl.col("actual").mean().round(4).alias("actual_purchases"),
    ]
    if money:
        aggregations += [
            pl.col("predicted_spend").mean().round(2).alias("predicted_spend"),
            pl.col("spend").mean().round(2).alias("actual_spend"),
        ]
    table = ranked.group_by("decile").agg(aggregations).sort("decile")
    return [dict(row) for row in table.iter_rows(named=True)]


def _problem(data: Buyers) -> str:
    if len(data.x) < MIN_BUYERS:
        return f"{len(data.x)} buyers (need {MIN_BUYERS}); too few purchases"
    if int((data.x > 0).sum()) < MIN_REPEAT_BUYERS:
        return f"{int((data.x > 0).sum())} repeat buyers (need {MIN_REPEAT_BUYERS})"
    return ""
