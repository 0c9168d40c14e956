"""Churn model: a logistic regression on profile features, validated forward in time.

Label at a cut ``c`` with horizon ``H`` days: a user active before ``c`` churns when they
have no interaction in ``[c, c + H)``. Features: the profile computed from the
interactions before ``c`` only (:func:`serving.profiles.build.profile_frame` at clock
``c - 1``), read by :func:`serving.profiles.churn.feature_matrix`.

Time-respecting validation: fit at ``c0 = clock - 2H`` (labels from ``[c0, c0 + H)``),
validate at ``c1 = clock - H`` (labels from ``[c1, clock]``): AUC and base rate on the
later cut. The stored model is then refitted at ``c1`` (the most recent labelled
period) and scores every user's current profile (clock = the data's clock).

The regression is fitted with Newton's method (IRLS) on standardised features with an
L2 penalty: a handful of features, so it converges in a few exact steps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from serving.profiles.behaviour import DAY_SECONDS
from serving.profiles.build import ProfileContext, ProfileInputs, profile_frame
from serving.profiles.churn import ChurnModel, feature_expressions, feature_matrix
from serving.profiles.options import ProfileOptions

log = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float64]
MIN_USERS = 20
NEWTON_STEPS = 25


@dataclass(frozen=True)
class ChurnResult:
    """The fitted model (None when the data cannot support one) and its validation."""

    model: ChurnModel | None
    metadata: dict[str, Any]


def auc(labels: npt.NDArray[Any], scores: npt.NDArray[Any]) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    y = np.asarray(labels, dtype=bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = pl.Series(np.asarray(scores, dtype=np.float64)).rank(method="average").to_numpy()
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def fit_logistic(x: FloatArray, y: npt.NDArray[Any], names: tuple[str, ...], l2: float) -> ChurnModel:
    """L2-penalised logistic regression (intercept unpenalised) on standardised ``x``."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    z = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
    target = np.asarray(y, dtype=np.float64)
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], l2)
    penalty[0] = 1e-8
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -30, 30)))
        gradient = z.T @ (p - target) + penalty * w
        hessian = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return ChurnModel(
        features=names,
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        coefficients=tuple(float(v) for v in w[1:]),
        intercept=float(w[0]),
    )


def labelled_cut(
    inputs: ProfileInputs, context: ProfileContext, options: ProfileOptions, cut: int
) -> tuple[pl.DataFrame, FloatArray]:
    """(profiles from before ``cut``, churn label per row) for users active before ``cut``."""
    horizon = int(options.churn_horizon_days * DAY_SECONDS)
    # The churn features read no item preferences or given attributes: skip those joins.
    behaviour_only = replace(inputs, items=None, users=None, item_attributes=(), user_attributes=())
    profiles = profile_frame(behaviour_only, context, options, clock=cut - 1).collect()
    returned = (
        inputs.interactions.filter((pl.col("timestamp") >= cut) & (pl.col("timestamp") < cut + horizon))
        .select("user_id")
        .unique()
        .with_columns(pl.lit(True).alias("returned"))
    )
    labelled = profiles.lazy().join(returned, on="user_id", how="left", maintain_order="left").collect()
    labels = (~labelled.get_column("returned").fill_null(False)).to_numpy().astype(np.float64)
    return profiles, labels


def train_churn(inputs: ProfileInputs, context: ProfileContext, options: ProfileOptions) -> ChurnResult:
    """Fit at ``clock - 2H``, validate at ``clock - H``, refit at ``clock - H``."""
    horizon = int(options.churn_horizon_days * DAY_SECONDS)
    names = tuple(feature_expressions(context.event_types))
    c1 = context.clock + 1 - horizon  # the last horizon ends at the clock (inclusive)
    c0 = c1 - horizon
    base: dict[str, Any] = {
        "horizon_days": options.churn_horizon_days,
        "fit_cut": c0,
        "validation_cut": c1,
        "label": f"no activity in the {options.churn_horizon_days:g} days after the cut",
        "features": list(names),
    }
    fit_profiles, fit_labels = labelled_cut(inputs, context, options, c0)
    val_profiles, val_labels = labelled_cut(inputs, context, options, c1)
    problem = _problem(fit_labels, "fit") or _problem(val_labels, "validation")
    if problem:
        log.warning("churn model not trained: %s", problem)
        return ChurnResult(None, {**base, "trained": False, "reason": problem})
    early = fit_logistic(
        feature_matrix(fit_profiles, names, context.event_types), fit_labels, names, options.churn_l2
    )
    val_x = feature_matrix(val_profiles, names, context.event_types)
    validation_auc = auc(val_labels, early.score(val_x))
    final = fit_logistic(val_x, val_labels, names, options.churn_l2)
    metadata = {
        **base,
        "trained": True,
        "auc": round(validation_auc, 4),
        "fit_users": len(fit_labels),
        "fit_base_rate": round(float(fit_labels.mean()), 4),
        "validation_users": len(val_labels),
        "validation_base_rate": round(float(val_labels.mean()), 4),
        "model": final.to_dict(),
    }
    log.info(
        "churn model: validation AUC %.4f on %d users (base rate %.3f)",
        validation_auc,
        len(val_labels),
        val_labels.mean(),
    )
    return ChurnResult(final, metadata)


def _problem(labels: FloatArray, which: str) -> str:
    if len(labels) < MIN_USERS:
        return f"{which} cut has {len(labels)} users active before it (need {MIN_USERS}); data too short"
    if labels.min() == labels.max():
        return f"{which} cut has only one class (every user {'churned' if labels[0] else 'returned'})"
    return ""
