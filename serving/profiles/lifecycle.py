"""Lifecycle stage by thresholds on the data's own clock (see :class:`ProfileOptions`).

First matching rule wins (tenure = clock - first activity, recency = clock - last
activity, in days): ``new`` tenure <= new_days; ``active`` recency <= active_days;
``at_risk`` recency <= at_risk_days; ``dormant`` recency <= dormant_days; else ``churned``.
"""

from __future__ import annotations

import polars as pl

from serving.profiles.behaviour import DAY_SECONDS
from serving.profiles.options import ProfileOptions

STAGES: tuple[str, ...] = ("new", "active", "at_risk", "dormant", "churned")
"""Lifecycle stages in funnel order."""


def stage(tenure_days: pl.Expr, recency_days: pl.Expr, options: ProfileOptions) -> pl.Expr:
    """The stage name of each row."""
    return (
        pl.when(tenure_days <= options.new_days)
        .then(pl.lit("new"))
        .when(recency_days <= options.active_days)
        .then(pl.lit("active"))
        .when(recency_days <= options.at_risk_days)
        .then(pl.lit("at_risk"))
        .when(recency_days <= options.dormant_days)
        .then(pl.lit("dormant"))
        .otherwise(pl.lit("churned"))
    )


def lifecycle(frame: pl.LazyFrame, clock: int, options: ProfileOptions) -> pl.LazyFrame:
    """Adds ``tenure_days`` and ``lifecycle`` (needs ``first_activity``, ``recency_days``)."""
    tenure = ((clock - pl.col("first_activity")) / DAY_SECONDS).alias("tenure_days")
    return frame.with_columns(tenure).with_columns(
        stage(pl.col("tenure_days"), pl.col("recency_days"), options).alias("lifecycle")
    )
