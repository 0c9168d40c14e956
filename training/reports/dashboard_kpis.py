"""The numbers behind ``recsys dashboard``'s KPI charts, from event-log rows (``read_events``).

Days are UTC days; every event of the day counts.

* **active members**: distinct users with at least one event that day;
* **CTR** = clicks / impressions of the day (events counted as logged);
* **conversion** = members who bought that day / active members;
* **average order value** = purchase value / purchases of the day (purchases without a value
  count as 0);
* **repurchase share** = buyers of the day who had bought on an earlier day / buyers;
* **churned share** = members seen on or before the day whose latest event (as of that day) is
  at least ``churn_days`` days old / members seen on or before the day (``churn_days``: the
  bundle's churn horizon, the same "no activity for H days" the churn model predicts).

Per group of members (lifecycle stage or embedding segment of the bundle's profiles):
members with an event in the log, the share of them who bought, and revenue per such member.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

KPI_COLUMNS = (
    "active_members",
    "ctr",
    "conversion",
    "average_order_value",
    "repurchase_share",
    "churned_share",
)


def _ratio(numerator: str, denominator: str) -> pl.Expr:
    return pl.when(pl.col(denominator) > 0).then(pl.col(numerator) / pl.col(denominator))


def daily_kpis(events: pl.DataFrame, churn_days: float = 30.0) -> pl.DataFrame:
    """One row per UTC day with an event: ``date``, ``active_members``, ``impressions``, ``clicks``,
    ``ctr``, ``buyers``, ``conversion``, ``purchases``, ``revenue``, ``average_order_value``,
    ``repurchase_share``, ``seen_members``, ``churned_members``, ``churned_share`` (definitions in the
    module docstring; ratios are null on a zero denominator).

    Raises :class:`ValueError` for ``churn_days`` <= 0.
    """
    if not churn_days > 0:
        raise ValueError(f"churn_days: must be > 0, got {churn_days}")
    frame = events.with_columns(pl.col("timestamp").dt.date().alias("day"))
    purchases = frame.filter(pl.col("event_type") == "purchase")
    first_purchase = purchases.group_by("user_id").agg(pl.col("day").min().alias("first_day"))
    buyers = (
        purchases.select("day", "user_id")
        .unique()
        .join(first_purchase, on="user_id")
        .group_by("day")
        .agg(pl.len().alias("buyers"), (pl.col("first_day") < pl.col("day")).sum().alias("repeat_buyers"))
    )
    counts = frame.group_by("day").agg(
        pl.col("user_id").n_unique().alias("active_members"),
        (pl.col("event_type") == "impression").sum().alias("impressions"),
        (pl.col("event_type") == "click").sum().alias("clicks"),
        (pl.col("event_type") == "purchase").sum().alias("purchases"),
        pl.when(pl.col("event_type") == "purchase")
        .then(pl.col("value").fill_null(0.0))
        .sum()
        .alias("revenue"),
    )
    out = (
        counts.join(buyers, on="day", how="left")
        .join(_churned_members(frame, churn_days), on="day", how="left")
        .with_columns(pl.col("buyers").fill_null(0), pl.col("repeat_buyers").fill_null(0))
    )
    return (
        out.with_columns(
            _ratio("clicks", "impressions").alias("ctr"),
            _ratio("buyers", "active_members").alias("conversion"),
            _ratio("revenue", "purchases").alias("average_order_value"),
            _ratio("repeat_buyers", "buyers").alias("repurchase_share"),
            _ratio("churned_members", "seen_members").alias("churned_share"),
        )
        .rename({"day": "date"})
        .drop("repeat_buyers")
        .sort("date")
    )


def _churned_members(frame: pl.DataFrame, churn_days: float) -> pl.DataFrame:
    """``day, seen_members, churned_members`` for every day with an event.

    A member is churned on day d when the latest of their active days up to d, a, has
    d - a >= H (H = ``churn_days`` rounded up to whole days). Between consecutive active days a < b
    that holds for d in [a + H, b); after the last one for d >= a + H. So each gap adds +1 at
    a + H and -1 at b (when a + H < b), and a running sum over the days gives the count without
    a member x day product.
    """
    horizon = timedelta(days=int(-(-churn_days // 1)))
    active = frame.select("user_id", "day").unique().sort("user_id", "day")
    gaps = active.with_columns(pl.col("day").shift(-1).over("user_id").alias("next_day")).with_columns(
        (pl.col("day") + horizon).alias("churn_day")
    )
    starts = gaps.filter(pl.col("next_day").is_null() | (pl.col("churn_day") < pl.col("next_day")))
    steps = pl.concat(
        [
            starts.select(pl.col("churn_day").alias("day"), pl.lit(1).alias("step")),
            starts.filter(pl.col("next_day").is_not_null()).select(
                pl.col("next_day").alias("day"), pl.lit(-1).alias("step")
            ),
        ]
    )
    firsts = active.group_by("user_id").agg(pl.col("day").min().alias("day")).group_by("day").len("new")
    days = frame.select("day").unique()
    return (
        pl.concat([days, steps.select("day")])
        .unique()
        .join(steps.group_by("day").agg(pl.col("step").sum()), on="day", how="left")
        .join(firsts, on="day", how="left")
        .sort("day")
        .with_columns(
            pl.col("step").fill_null(0).cum_sum().alias("churned_members"),
            pl.col("new").fill_null(0).cum_sum().alias("seen_members"),
        )
        .join(days, on="day", how="semi")
        .select("day", "seen_members", "churned_members")
    )


def group_kpis(events: pl.DataFrame, groups: pl.DataFrame, column: str) -> pl.DataFrame:
    """Per value of ``column`` of ``groups`` (``user_id`` + ``column``, one row per member):
    ``members`` (with an event in ``events``), ``buyers``, ``conversion`` (buyers / members),
    ``revenue``, ``revenue_per_member``; members without a value are left out. Sorted by value."""
    per_member = events.group_by("user_id").agg(
        (pl.col("event_type") == "purchase").any().alias("bought"),
        pl.when(pl.col("event_type") == "purchase")
        .then(pl.col("value").fill_null(0.0))
        .sum()
        .alias("revenue"),
    )
    return (
        per_member.join(groups.select("user_id", column).drop_nulls(column), on="user_id")
        .group_by(column)
        .agg(
            pl.len().alias("members"),
            pl.col("bought").sum().alias("buyers"),
            pl.col("revenue").sum().alias("revenue"),
        )
        .with_columns(
            _ratio("buyers", "members").alias("conversion"),
            _ratio("revenue", "members").alias("revenue_per_member"),
        )
        .sort(column)
    )
