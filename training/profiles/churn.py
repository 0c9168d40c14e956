"""Churn model: a scikit-learn logistic regression on profile features, validated forward in time.

Label at a cut ``c`` with horizon ``H`` days: a user active before ``c`` churns when they
have no interaction in ``[c, c + H)``. Features: the profile computed from the
interactions before ``c`` only, read by :func:`serving.profiles.churn.feature_matrix`.
Fitted at ``clock - 2H``, validated at ``clock - H`` (AUC and base rate on the later cut),
refitted at ``clock - H`` and stored as data (:class:`serving.profiles.linear.LinearModel`)
to score every user's current profile (:func:`training.profiles.cuts.forward_fit`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from serving.profiles.churn import feature_expressions
from serving.profiles.linear import LinearModel
from training.profiles.classifiers import auc, fit_logistic
from training.profiles.cuts import Cuts, FloatArray, ForwardResult, forward_fit


def churned(frame: pl.DataFrame) -> FloatArray:
    """1.0 where the user had no interaction in the horizon after the cut."""
    return (frame.get_column("future_events") == 0).to_numpy().astype(np.float64)


def train_churn(cuts: Cuts) -> ForwardResult:
    """The churn model of ``cuts``' data (horizon ``profiles.churn_horizon_days``)."""
    options = cuts.options
    names = tuple(feature_expressions(cuts.context.event_types))

    def measure(y: FloatArray, model: LinearModel, x: FloatArray, _: pl.DataFrame) -> dict[str, Any]:
        return {"auc": round(auc(y, model.score(x)), 4), "validation_base_rate": round(float(y.mean()), 4)}

    return forward_fit(
        cuts,
        "churn",
        options.churn_horizon_days,
        names,
        churned,
        lambda x, y, n: fit_logistic(x, y, n, options.churn_l2),
        measure,
        f"no activity in the {options.churn_horizon_days:g} days after the cut",
    )
