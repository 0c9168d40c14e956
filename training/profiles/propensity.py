"""Purchase propensity and activity forecast: scikit-learn GLMs validated forward in time.

* **Purchase propensity** (logistic regression): does a user active before a cut buy (an
  event of ``profiles.monetary_event_types``, with or without an amount) within
  ``profiles.propensity_horizon_days`` after it? Validation reports the AUC against the
  *recency rule* on the same cut (score = the more recent the last activity, the likelier
  a purchase), the usual baseline of a marketer's "recently active" list.
* **Activity forecast** (Poisson regression): the number of active days in the same
  horizon. Validation reports the mean absolute error against the *run-rate rule*
  (active days in the last 30 days, scaled to the horizon).

Features: the churn features (:func:`serving.profiles.churn.feature_expressions`) plus the
recent-activity windows (:func:`serving.profiles.recent.recent_expressions`). Cuts, fit
and refit as in :func:`training.profiles.cuts.forward_fit`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from serving.profiles.churn import feature_expressions
from serving.profiles.linear import LinearModel
from serving.profiles.recent import recent_expressions
from training.profiles.classifiers import auc, fit_logistic, fit_poisson
from training.profiles.cuts import Cuts, FloatArray, ForwardResult, forward_fit


def lookahead_features(event_types: tuple[str, ...]) -> tuple[str, ...]:
    """Feature names of the propensity and activity models."""
    return (*feature_expressions(event_types), *recent_expressions())


def bought(frame: pl.DataFrame) -> FloatArray:
    """1.0 where the user bought in the horizon after the cut."""
    return (frame.get_column("future_purchases") > 0).to_numpy().astype(np.float64)


def active_days(frame: pl.DataFrame) -> FloatArray:
    """Active days in the horizon after the cut."""
    return frame.get_column("future_active_days").cast(pl.Float64).to_numpy()


def recency_rule(frame: pl.DataFrame) -> FloatArray:
    """The baseline score: minus the days since the last activity (recent = likely)."""
    return -frame.get_column("recency_days").cast(pl.Float64).to_numpy()


def train_propensity(cuts: Cuts) -> ForwardResult:
    """The purchase-propensity model (horizon ``profiles.propensity_horizon_days``)."""
    options = cuts.options
    horizon = options.propensity_horizon_days
    if not _has_purchases(cuts):
        reason = f"the data has no purchase events ({', '.join(options.monetary_event_types)})"
        return ForwardResult(None, {"horizon_days": horizon, "trained": False, "reason": reason})

    def measure(y: FloatArray, model: LinearModel, x: FloatArray, frame: pl.DataFrame) -> dict[str, Any]:
        return {
            "auc": round(auc(y, model.score(x)), 4),
            "recency_rule_auc": round(auc(y, recency_rule(frame)), 4),
            "validation_base_rate": round(float(y.mean()), 4),
        }

    return forward_fit(
        cuts,
        "purchase propensity",
        horizon,
        lookahead_features(cuts.context.event_types),
        bought,
        lambda x, y, n: fit_logistic(x, y, n, options.propensity_l2),
        measure,
        f"a purchase in the {horizon:g} days after the cut",
    )


def train_activity(cuts: Cuts) -> ForwardResult:
    """The activity forecast: expected active days in ``profiles.propensity_horizon_days``."""
    options = cuts.options
    horizon = options.propensity_horizon_days

    def measure(y: FloatArray, model: LinearModel, x: FloatArray, frame: pl.DataFrame) -> dict[str, Any]:
        predicted = model.score(x)
        run_rate = frame.get_column("active_days_30d").fill_null(0).cast(pl.Float64).to_numpy() * horizon / 30
        return {
            "mae": round(float(np.abs(predicted - y).mean()), 4),
            "run_rate_rule_mae": round(float(np.abs(run_rate - y).mean()), 4),
            "mean_actual": round(float(y.mean()), 4),
            "mean_predicted": round(float(predicted.mean()), 4),
        }

    return forward_fit(
        cuts,
        "activity",
        horizon,
        lookahead_features(cuts.context.event_types),
        active_days,
        lambda x, y, n: fit_poisson(x, y, n, options.propensity_l2),
        measure,
        f"active days in the {horizon:g} days after the cut",
        binary=False,
    )


def _has_purchases(cuts: Cuts) -> bool:
    types = set(cuts.options.monetary_event_types)
    return bool(types & set(cuts.context.event_types))
