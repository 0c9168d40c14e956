"""Behaviour part of a member profile: what each user did, when, and on what.

Pure Polars lazy expressions over the canonical interactions (``user_id``, ``item_id``,
``timestamp`` in unix seconds, ``event_type``, ``value``); no per-row Python. The same
functions run on a whole training table and could run on one user's rows at serving.

Output columns (one row per user with at least one interaction):

* ``first_activity`` / ``last_activity``: unix seconds;
* ``events_total``; ``active_days`` (distinct UTC days with activity);
* ``events.<type>``: count per event type (the types passed in, in that order);
* ``top_hours`` (0..23, UTC) and ``top_weekdays`` (1 = Monday .. 7 = Sunday): the most
  frequent first, ties by the smaller value;
* ``preferences``: list of ``{attribute, value, share}``: per categorical or list item
  attribute, the ``top`` values by share of the user's interactions whose item has that
  value (list attributes: an item counts for each of its values, so shares of one
  attribute may sum above 1);
* ``average_value``: mean ``value`` of the user's value events (see :func:`value_source`),
  null without any; ``value_sum`` and ``value_count`` behind it (to extend it later).

The counts are sums of (user, day) partials (:func:`day_activity`): a live profile adds the
partials of the events logged after the snapshot (:func:`append_activity`) instead of
recomputing from every event.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

DAY_SECONDS = 86_400
HOUR_SECONDS = 3_600
EVENTS_PREFIX = "events."
MAX_EVENT_TYPES = 20
"""Event types beyond the most frequent 20 are not counted separately (still in the total)."""

PREFERENCE_FIELDS = ("attribute", "value", "share")


def event_summary(interactions: pl.LazyFrame) -> pl.LazyFrame:
    """``event_type, events, valued, latest``: per event type, the interactions, those with a
    value and the latest timestamp (counts add up across parts of the data)."""
    return interactions.group_by("event_type").agg(
        pl.len().cast(pl.Int64).alias("events"),
        pl.col("value").is_not_null().sum().cast(pl.Int64).alias("valued"),
        pl.col("timestamp").max().alias("latest"),
    )


def event_types(summary: pl.DataFrame, limit: int = MAX_EVENT_TYPES) -> list[str]:
    """The data's event types, most frequent first (ties by name), at most ``limit``
    (``summary``: :func:`event_summary` of every interaction)."""
    counts = summary.sort(["events", "event_type"], descending=[True, False]).head(limit)
    return [str(v) for v in counts.get_column("event_type").to_list()]


def value_source(summary: pl.DataFrame, monetary_event_types: Sequence[str]) -> str:
    """Which events carry money (``summary``: :func:`event_summary` of every interaction).

    ``"monetary"``: some event of ``monetary_event_types`` has a value (purchases with an
    amount); ``"value"``: other events have values (ratings) but none of those; ``"none"``.
    """
    monetary = summary.filter(pl.col("event_type").is_in(list(monetary_event_types)))
    if int(monetary.get_column("valued").sum()) > 0:
        return "monetary"
    return "value" if int(summary.get_column("valued").sum()) > 0 else "none"


def value_events(source: str, monetary_event_types: Sequence[str]) -> pl.Expr:
    """Rows whose ``value`` is averaged (and, for ``monetary``, summed into RFM's M)."""
    if source == "monetary":
        return pl.col("value").is_not_null() & pl.col("event_type").is_in(list(monetary_event_types))
    return pl.col("value").is_not_null()


DAY_MERGE: dict[str, str] = {
    "first_activity": "min",
    "last_activity": "max",
    "events_total": "sum",
    "value_sum": "sum",
    "value_count": "sum",
    "orders": "sum",
    "monetary_value": "sum",
}
"""How two partials of the same (user, day) combine, per column (``events.<type>``: sum):
the one rule every store of live partials applies (:mod:`serving.profiles.live.stores`)."""


def merge_rule(column: str) -> str:
    """``min``, ``max`` or ``sum``: how ``column`` of two (user, day) partials combines."""
    return DAY_MERGE.get(column, "sum")


def day_activity(
    interactions: pl.LazyFrame, types: Sequence[str], value_rows: pl.Expr, monetary_rows: pl.Expr
) -> pl.LazyFrame:
    """Additive partials of :func:`activity`, one row per (``user_id``, ``day``).

    ``day`` = UTC day number (timestamp // 86400); columns of :data:`DAY_MERGE` plus
    ``events.<type>``. Partials of the same (user, day) from different batches of events
    combine column by column (:func:`merge_rule`), so a profile can be kept up to date one
    batch at a time and still equal the profile of all the events at once.
    """
    ts = pl.col("timestamp")
    return interactions.group_by("user_id", (ts // DAY_SECONDS).cast(pl.Int64).alias("day")).agg(
        ts.min().cast(pl.Int64).alias("first_activity"),
        ts.max().cast(pl.Int64).alias("last_activity"),
        pl.len().cast(pl.Int64).alias("events_total"),
        *[(pl.col("event_type") == t).sum().cast(pl.Int64).alias(f"{EVENTS_PREFIX}{t}") for t in types],
        pl.col("value").filter(value_rows).sum().cast(pl.Float64).alias("value_sum"),
        value_rows.sum().cast(pl.Int64).alias("value_count"),
        monetary_rows.sum().cast(pl.Int64).alias("orders"),
        pl.col("value").filter(monetary_rows).sum().cast(pl.Float64).alias("monetary_value"),
    )


def _average(total: pl.Expr, count: pl.Expr) -> pl.Expr:
    return pl.when(count > 0).then(total / count).otherwise(None).alias("average_value")


def activity_from_days(days: pl.LazyFrame, types: Sequence[str]) -> pl.LazyFrame:
    """(user, day) partials (one row per pair) -> :func:`activity`'s columns."""
    return days.group_by("user_id").agg(
        pl.col("first_activity").min(),
        pl.col("last_activity").max(),
        pl.col("events_total").sum(),
        pl.len().cast(pl.Int64).alias("active_days"),
        *[pl.col(f"{EVENTS_PREFIX}{t}").sum() for t in types],
        _average(pl.col("value_sum").sum(), pl.col("value_count").sum()),
        pl.col("value_sum").sum(),
        pl.col("value_count").sum(),
        pl.col("orders").sum(),
        pl.col("monetary_value").sum(),
    )


def activity(
    interactions: pl.LazyFrame, types: Sequence[str], value_rows: pl.Expr, monetary_rows: pl.Expr
) -> pl.LazyFrame:
    """Counts, first/last activity, active days, average value (with its ``value_sum`` and
    ``value_count``); ``orders`` and ``monetary_value`` (count and sum of value over
    ``monetary_rows``) for RFM. Computed through the (user, day) partials of
    :func:`day_activity`, the same arithmetic the live profiles apply one batch at a time."""
    return activity_from_days(day_activity(interactions, types, value_rows, monetary_rows), types)


_ADDED = ("events_total", "value_sum", "value_count", "orders", "monetary_value")


def append_activity(earlier: pl.LazyFrame, later: pl.LazyFrame, types: Sequence[str]) -> pl.LazyFrame:
    """:func:`activity` rows of ``earlier`` events extended by those of strictly ``later`` ones.

    Every event behind ``later`` must be after every event behind ``earlier`` (a snapshot
    and the events logged after its clock): then the two share at most one UTC day, the
    last of ``earlier`` and the first of ``later``, counted once in ``active_days``. Users
    of either side are kept; other columns of ``earlier`` (attributes, segments...) pass
    through, null for users only in ``later``.
    """
    added = [*_ADDED, *[f"{EVENTS_PREFIX}{t}" for t in types]]
    right = later.select(
        "user_id",
        *[pl.col(c).alias(f"{c}__later") for c in (*added, "first_activity", "last_activity", "active_days")],
    )
    joined = earlier.join(right, on="user_id", how="full", coalesce=True)
    shared_day = (
        (pl.col("last_activity") // DAY_SECONDS) == (pl.col("first_activity__later") // DAY_SECONDS)
    ).fill_null(False)
    merged = joined.with_columns(
        *[(pl.col(c).fill_null(0) + pl.col(f"{c}__later").fill_null(0)).alias(c) for c in added],
        pl.min_horizontal("first_activity", "first_activity__later").alias("first_activity"),
        pl.max_horizontal("last_activity", "last_activity__later").alias("last_activity"),
        (
            pl.col("active_days").fill_null(0)
            + pl.col("active_days__later").fill_null(0)
            - shared_day.cast(pl.Int64)
        ).alias("active_days"),
    )
    return merged.with_columns(
        _average(pl.col("value_sum"), pl.col("value_count")).fill_null(pl.col("average_value"))
    ).drop([c for c in merged.collect_schema().names() if c.endswith("__later")])


def _top_per_user(frame: pl.LazyFrame, key: str, top: int, alias: str) -> pl.LazyFrame:
    """The ``top`` most frequent values of ``key`` per user (ties: smaller value first)."""
    counted = frame.group_by("user_id", key).len()
    return counted.group_by("user_id").agg(
        pl.col(key).sort_by([pl.col("len"), pl.col(key)], descending=[True, False]).head(top).alias(alias)
    )


def rhythm(interactions: pl.LazyFrame, top: int = 3) -> pl.LazyFrame:
    """``top_hours`` and ``top_weekdays`` per user (UTC)."""
    ts = pl.col("timestamp")
    timed = interactions.select(
        "user_id",
        ((ts % DAY_SECONDS) // HOUR_SECONDS).cast(pl.Int8).alias("hour"),
        pl.from_epoch(ts, time_unit="s").dt.weekday().cast(pl.Int8).alias("weekday"),
    )
    hours = _top_per_user(timed, "hour", top, "top_hours")
    weekdays = _top_per_user(timed, "weekday", top, "top_weekdays")
    return hours.join(weekdays, on="user_id", how="full", coalesce=True)


def preference_attributes(items: pl.DataFrame | None, candidates: Sequence[str]) -> list[str]:
    """The ``candidates`` columns of ``items`` that preferences can be shares of: strings,
    categoricals, booleans and lists of strings (numbers are not categories)."""
    if items is None:
        return []
    out = []
    for column in candidates:
        if column not in items.columns:
            continue
        dtype = items.schema[column]
        inner = dtype.inner if isinstance(dtype, pl.List) else dtype
        if inner in (pl.Utf8, pl.Categorical, pl.Boolean) or isinstance(inner, pl.Enum | pl.Categorical):
            out.append(column)
    return out


def item_values(items: pl.LazyFrame, attribute: str) -> pl.LazyFrame:
    """``item_id, attribute, value`` (text): one row per item and value (lists exploded)."""
    schema = items.collect_schema()
    column = pl.col(attribute)
    frame = items.select("item_id", column)
    if isinstance(schema[attribute], pl.List):
        frame = frame.explode(attribute)
    return frame.select(
        "item_id", pl.lit(attribute).alias("attribute"), column.cast(pl.Utf8).alias("value")
    ).filter(pl.col("value").is_not_null() & (pl.col("value") != ""))


def attribute_interactions(
    interactions: pl.LazyFrame, items: pl.LazyFrame, attributes: Sequence[str]
) -> pl.LazyFrame:
    """``user_id, event, attribute, value``: every interaction joined to each value of
    each attribute of its item (``event`` = the interaction's row number)."""
    events = interactions.select("user_id", "item_id").with_row_index("event")
    parts = [events.join(item_values(items, a), on="item_id", how="inner") for a in attributes]
    return pl.concat(parts).drop("item_id")


def preferences(
    interactions: pl.LazyFrame, items: pl.LazyFrame | None, attributes: Sequence[str], top: int = 3
) -> pl.LazyFrame:
    """``user_id, preferences``: the ``top`` values per attribute with their shares."""
    if items is None or not attributes:
        return (
            interactions.select("user_id")
            .unique()
            .with_columns(pl.lit([], dtype=_PREFERENCE_LIST).alias("preferences"))
        )
    joined = attribute_interactions(interactions, items, attributes)
    counted = joined.group_by("user_id", "attribute", "value").agg(pl.len().alias("n"))
    totals = joined.group_by("user_id", "attribute").agg(pl.col("event").n_unique().alias("total"))
    shares = (
        counted.join(totals, on=["user_id", "attribute"])
        .with_columns((pl.col("n") / pl.col("total")).alias("share"))
        .sort(["user_id", "attribute", "share", "value"], descending=[False, False, True, False])
        .group_by("user_id", "attribute", maintain_order=True)
        .head(top)
    )
    return shares.group_by("user_id", maintain_order=True).agg(
        pl.struct(*PREFERENCE_FIELDS).alias("preferences")
    )


_PREFERENCE_LIST = pl.List(pl.Struct({"attribute": pl.Utf8, "value": pl.Utf8, "share": pl.Float64}))


def behaviour(
    interactions: pl.LazyFrame,
    items: pl.LazyFrame | None,
    types: Sequence[str],
    attributes: Sequence[str],
    value_rows: pl.Expr,
    monetary_rows: pl.Expr,
    top: int = 3,
) -> pl.LazyFrame:
    """Every behaviour column of the module docstring, one row per user."""
    return (
        activity(interactions, types, value_rows, monetary_rows)
        .join(rhythm(interactions, top), on="user_id", how="left")
        .join(preferences(interactions, items, attributes, top), on="user_id", how="left")
        .with_columns(pl.col("preferences").fill_null(pl.lit([], dtype=_PREFERENCE_LIST)))
    )
