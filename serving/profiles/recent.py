"""Recent-activity features of the look-ahead models (purchase propensity, activity).

Windows counted back from a clock (days on the data's own clock), from the canonical
interactions at or before it; a *purchase* is an event of the configured monetary
event types, with or without an amount:

* ``events_7d``, ``events_30d``: interactions in the last 7 / 30 days;
* ``active_days_30d``: distinct UTC days with activity in the last 30 days;
* ``purchases_30d``, ``purchases_90d``, ``purchases_total``: purchase events;
* ``days_since_purchase``: days since the latest purchase, null without one.

:func:`recent_expressions` turns them into model features (``log1p`` of the counts; days
since purchase capped at :data:`NO_PURCHASE_DAYS`, which also stands for "never").
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from serving.profiles.behaviour import DAY_SECONDS

NO_PURCHASE_DAYS = 365.0
"""Days since purchase of a member who never bought (and the cap for everyone else)."""
RECENT_COLUMNS = (
    "events_7d",
    "events_30d",
    "active_days_30d",
    "purchases_30d",
    "purchases_90d",
    "purchases_total",
    "days_since_purchase",
)


def recent_activity(interactions: pl.LazyFrame, clock: int, purchase_types: Sequence[str]) -> pl.LazyFrame:
    """One row per user active at or before ``clock``: the columns of the module docstring."""
    ts = pl.col("timestamp")
    bought = pl.col("event_type").is_in(list(purchase_types))

    def within(days: int) -> pl.Expr:
        return ts > clock - days * DAY_SECONDS

    return (
        interactions.filter(ts <= clock)
        .group_by("user_id")
        .agg(
            within(7).sum().cast(pl.Int64).alias("events_7d"),
            within(30).sum().cast(pl.Int64).alias("events_30d"),
            (ts // DAY_SECONDS).filter(within(30)).n_unique().cast(pl.Int64).alias("active_days_30d"),
            (bought & within(30)).sum().cast(pl.Int64).alias("purchases_30d"),
            (bought & within(90)).sum().cast(pl.Int64).alias("purchases_90d"),
            bought.sum().cast(pl.Int64).alias("purchases_total"),
            ((clock - ts.filter(bought).max()) / DAY_SECONDS).alias("days_since_purchase"),
        )
    )


def recent_expressions() -> dict[str, pl.Expr]:
    """Feature name -> expression over a frame with the :data:`RECENT_COLUMNS`."""
    features = {
        f"log_{name}": pl.col(name).cast(pl.Float64).fill_null(0.0).log1p()
        for name in RECENT_COLUMNS
        if name != "days_since_purchase"
    }
    features["days_since_purchase"] = (
        pl.col("days_since_purchase").fill_null(NO_PURCHASE_DAYS).clip(0.0, NO_PURCHASE_DAYS)
    )
    return features
