"""Time-respecting training data of the look-ahead models: features before a cut, outcome after.

At a cut ``c`` with horizon ``H`` days, each user active before ``c`` gets:

* the profile computed from the interactions before ``c`` only
  (:func:`serving.profiles.build.profile_frame` at clock ``c - 1``) joined with the recent-activity
  windows at the same clock (:func:`serving.profiles.recent.recent_activity`);
* the outcomes in ``[c, c + H)``: ``future_events``, ``future_active_days`` and
  ``future_purchases`` (events of the monetary event types).

:func:`forward_fit` fits a model at ``c0 = clock + 1 - 2H``, measures it at the later cut
``c1 = clock + 1 - H`` (whose horizon ends at the clock), then refits at ``c1`` (the most
recent labelled period) for scoring every user's current profile. Nothing after a cut is
ever a feature of that cut.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from serving.profiles.behaviour import DAY_SECONDS
from serving.profiles.build import ProfileContext, ProfileInputs, profile_frame
from serving.profiles.churn import feature_matrix
from serving.profiles.linear import LinearModel
from serving.profiles.options import ProfileOptions
from serving.profiles.recent import recent_activity

log = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float64]
MIN_USERS = 20

Target = Callable[[pl.DataFrame], FloatArray]
"""Cut frame -> the label or count each row is fitted to."""
Fit = Callable[[FloatArray, FloatArray, tuple[str, ...]], LinearModel]
Measure = Callable[[FloatArray, LinearModel, FloatArray, pl.DataFrame], dict[str, Any]]
"""(validation target, early model, validation features, validation frame) -> figures."""


@dataclass
class Cuts:
    """Cut frames of one data set, computed once per (cut, horizon) and shared by the models."""

    inputs: ProfileInputs
    context: ProfileContext
    options: ProfileOptions
    _frames: dict[tuple[int, int], pl.DataFrame] = field(default_factory=dict)

    def frame(self, cut: int, horizon_days: float) -> pl.DataFrame:
        horizon = int(horizon_days * DAY_SECONDS)
        key = (cut, horizon)
        if key not in self._frames:
            self._frames[key] = cut_frame(self.inputs, self.context, self.options, cut, horizon)
        return self._frames[key]


def cut_frame(
    inputs: ProfileInputs, context: ProfileContext, options: ProfileOptions, cut: int, horizon: int
) -> pl.DataFrame:
    """Profiles and recent activity before ``cut`` with the outcomes in ``[cut, cut + horizon)``
    (``horizon`` in seconds), one row per user active before ``cut``, sorted by user id."""
    # The look-ahead features read no item preferences or given attributes: skip those joins.
    behaviour_only = replace(inputs, items=None, users=None, item_attributes=(), user_attributes=())
    profiles = profile_frame(behaviour_only, context, options, clock=cut - 1)
    recent = inputs.events.over_parts(
        lambda events: recent_activity(events, cut - 1, options.monetary_event_types)
    )
    ts = pl.col("timestamp")
    future = inputs.events.over_parts(
        lambda events: (
            events.filter((ts >= cut) & (ts < cut + horizon))
            .group_by("user_id")
            .agg(
                pl.len().cast(pl.Int64).alias("future_events"),
                (ts // DAY_SECONDS).n_unique().cast(pl.Int64).alias("future_active_days"),
                pl.col("event_type")
                .is_in(list(options.monetary_event_types))
                .sum()
                .cast(pl.Int64)
                .alias("future_purchases"),
            )
        )
    )
    return (
        profiles.join(recent, on="user_id", how="left")
        .join(future, on="user_id", how="left")
        .with_columns(
            pl.col(c).fill_null(0) for c in ("future_events", "future_active_days", "future_purchases")
        )
        .sort("user_id")
        .collect()
    )


@dataclass(frozen=True)
class ForwardResult:
    """The refitted model (None when the data cannot support one) and its forward validation."""

    model: LinearModel | None
    metadata: dict[str, Any]


def forward_fit(
    cuts: Cuts,
    name: str,
    horizon_days: float,
    features: tuple[str, ...],
    target: Target,
    fit: Fit,
    measure: Measure,
    label: str,
    binary: bool = True,
) -> ForwardResult:
    """Fit at ``c0``, measure at ``c1``, refit at ``c1`` (see the module docstring)."""
    horizon = int(horizon_days * DAY_SECONDS)
    c1 = cuts.context.clock + 1 - horizon  # the last horizon ends at the clock (inclusive)
    c0 = c1 - horizon
    base: dict[str, Any] = {
        "horizon_days": horizon_days,
        "fit_cut": c0,
        "validation_cut": c1,
        "label": label,
        "features": list(features),
    }
    types = cuts.context.event_types
    fit_frame, val_frame = cuts.frame(c0, horizon_days), cuts.frame(c1, horizon_days)
    fit_y, val_y = target(fit_frame), target(val_frame)
    problem = _problem(fit_y, "fit", binary) or _problem(val_y, "validation", binary)
    if problem:
        log.warning("%s model not trained: %s", name, problem)
        return ForwardResult(None, {**base, "trained": False, "reason": problem})
    early = fit(feature_matrix(fit_frame, features, types), fit_y, features)
    val_x = feature_matrix(val_frame, features, types)
    figures = measure(val_y, early, val_x, val_frame)
    final = fit(val_x, val_y, features)
    metadata = {
        **base,
        "trained": True,
        **figures,
        "fit_users": len(fit_y),
        "validation_users": len(val_y),
        "model": final.to_dict(),
    }
    log.info("%s model: %s on %d users", name, figures, len(val_y))
    return ForwardResult(final, metadata)


def _problem(target: FloatArray, which: str, binary: bool) -> str:
    if len(target) < MIN_USERS:
        return f"{which} cut has {len(target)} users active before it (need {MIN_USERS}); data too short"
    if binary and target.min() == target.max():
        return f"{which} cut has only one class (every label is {bool(target[0])})"
    if not binary and target.max() <= 0:
        return f"{which} cut has no activity after it"
    return ""
