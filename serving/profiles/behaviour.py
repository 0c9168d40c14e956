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
  null without any.
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


def event_types(interactions: pl.LazyFrame, limit: int = MAX_EVENT_TYPES) -> list[str]:
    """The data's event types, most frequent first (ties by name), at most ``limit``."""
    counts = (
        interactions.group_by("event_type")
        .len()
        .sort(["len", "event_type"], descending=[True, False])
        .head(limit)
        .collect()
    )
    return [str(v) for v in counts.get_column("event_type").to_list()]


def value_source(interactions: pl.LazyFrame, monetary_event_types: Sequence[str]) -> str:
    """Which events carry money.

    ``"monetary"``: some event of ``monetary_event_types`` has a value (purchases with an
    amount); ``"value"``: other events have values (ratings) but none of those; ``"none"``.
    """
    stats = interactions.select(
        (pl.col("value").is_not_null() & pl.col("event_type").is_in(list(monetary_event_types)))
        .sum()
        .alias("monetary"),
        pl.col("value").is_not_null().sum().alias("any"),
    ).collect()
    if stats.item(0, "monetary") > 0:
        return "monetary"
    return "value" if stats.item(0, "any") > 0 else "none"


def value_events(source: str, monetary_event_types: Sequence[str]) -> pl.Expr:
    """Rows whose ``value`` is averaged (and, for ``monetary``, summed into RFM's M)."""
    if source == "monetary":
        return pl.col("value").is_not_null() & pl.col("event_type").is_in(list(monetary_event_types))
    return pl.col("value").is_not_null()


def activity(
    interactions: pl.LazyFrame, types: Sequence[str], value_rows: pl.Expr, monetary_rows: pl.Expr
) -> pl.LazyFrame:
    """Counts, first/last activity, active days, average value; ``orders`` and ``monetary``
    (count and sum of value over ``monetary_rows``) for RFM."""
    ts = pl.col("timestamp")
    return interactions.group_by("user_id").agg(
        ts.min().alias("first_activity"),
        ts.max().alias("last_activity"),
        pl.len().cast(pl.Int64).alias("events_total"),
        (ts // DAY_SECONDS).n_unique().cast(pl.Int64).alias("active_days"),
        *[(pl.col("event_type") == t).sum().cast(pl.Int64).alias(f"{EVENTS_PREFIX}{t}") for t in types],
        pl.col("value").filter(value_rows).mean().alias("average_value"),
        monetary_rows.sum().cast(pl.Int64).alias("orders"),
        pl.col("value").filter(monetary_rows).sum().cast(pl.Float64).alias("monetary_value"),
    )


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
