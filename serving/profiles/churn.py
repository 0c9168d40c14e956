"""Churn risk: the profile features the model reads.

The model is a scikit-learn logistic regression fitted at training time
(``training.profiles.churn``) and stored in the bundle manifest as data
(:class:`serving.profiles.linear.LinearModel`), so scoring needs only NumPy. Features come
from the profile columns, so the same code scores a profile computed at any clock:

* ``recency_days``, ``tenure_days``;
* ``log1p`` of ``events_total``, ``active_days``, ``frequency``, ``monetary``;
* ``events_per_active_day``; ``active_share`` = active days / (tenure + 1);
* ``r_score``, ``f_score``, ``m_score``;
* for each event type, its share of the user's events.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import polars as pl

from serving.profiles.behaviour import EVENTS_PREFIX
from serving.profiles.recent import recent_expressions

FloatArray = npt.NDArray[np.float64]


def feature_expressions(types: Sequence[str]) -> dict[str, pl.Expr]:
    """Feature name -> expression over a profile frame."""
    total = pl.col("events_total").cast(pl.Float64)
    features = {
        "recency_days": pl.col("recency_days"),
        "tenure_days": pl.col("tenure_days"),
        "log_events": total.log1p(),
        "log_active_days": pl.col("active_days").cast(pl.Float64).log1p(),
        "log_frequency": pl.col("frequency").cast(pl.Float64).log1p(),
        "log_monetary": pl.col("monetary").cast(pl.Float64).clip(0).log1p(),
        "events_per_active_day": total / pl.col("active_days").clip(1),
        "active_share": pl.col("active_days") / (pl.col("tenure_days") + 1.0),
        "r_score": pl.col("r_score").cast(pl.Float64),
        "f_score": pl.col("f_score").cast(pl.Float64),
        "m_score": pl.col("m_score").cast(pl.Float64),
    }
    for t in types:
        features[f"share.{t}"] = pl.col(f"{EVENTS_PREFIX}{t}") / total
    return features


def feature_matrix(profiles: pl.DataFrame, names: Sequence[str], types: Sequence[str]) -> FloatArray:
    """(users, features) float64 in ``names`` order; missing values are 0.

    Names come from :func:`feature_expressions` or, for a frame joined with
    :func:`serving.profiles.recent.recent_activity`, :func:`serving.profiles.recent.recent_expressions`.
    """
    expressions = {**feature_expressions(types), **recent_expressions()}
    frame = profiles.select([expressions[name].cast(pl.Float64).fill_null(0.0).alias(name) for name in names])
    out: FloatArray = np.nan_to_num(frame.to_numpy().astype(np.float64))
    return out
