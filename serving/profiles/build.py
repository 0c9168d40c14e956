"""One member-profile table at a given clock: behaviour, RFM, lifecycle, attributes.

:func:`profile_frame` composes :mod:`~serving.profiles.behaviour`,
:mod:`~serving.profiles.rfm` and :mod:`~serving.profiles.lifecycle` into one lazy query
(one row per user active up to the clock). Embedding segments and churn risk are added
by the training job, which has the user embeddings and fits the churn model.

Which event types are counted, and whether the data carries money, are decided once on
the whole data (:func:`profile_context`) and reused for every clock, so that profiles at
an earlier cut (churn training) have the same columns as the final ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from serving.profiles.behaviour import behaviour, event_types, value_events, value_source
from serving.profiles.lifecycle import lifecycle
from serving.profiles.options import ProfileOptions
from serving.profiles.rfm import rfm

ATTRIBUTE_PREFIX = "attr."
"""Given user attributes are passed through as ``attr.<column>``."""


@dataclass(frozen=True)
class ProfileInputs:
    """The canonical tables (personal columns already excluded from the attribute lists).

    ``item_attributes``: item columns preferences are computed on (categorical or list
    columns); ``user_attributes``: user columns passed through as given attributes.
    """

    interactions: pl.LazyFrame
    items: pl.LazyFrame | None = None
    users: pl.LazyFrame | None = None
    item_attributes: tuple[str, ...] = ()
    user_attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProfileContext:
    """Decisions made once on the whole data: the clock, event types and money source."""

    clock: int
    """The data's own "now": the latest interaction timestamp (unix seconds)."""
    event_types: tuple[str, ...]
    monetary_source: str
    """``monetary`` (sum of monetary events' values), ``value`` or ``none`` (then RFM's M is
    the interaction count; see :mod:`serving.profiles.rfm`)."""


def profile_context(inputs: ProfileInputs, options: ProfileOptions) -> ProfileContext:
    clock = inputs.interactions.select(pl.col("timestamp").max()).collect().item()
    if clock is None:
        raise ValueError("no interactions: profiles need at least one")
    return ProfileContext(
        clock=int(clock),
        event_types=tuple(event_types(inputs.interactions)),
        monetary_source=value_source(inputs.interactions, options.monetary_event_types),
    )


def row_rules(monetary_source: str, monetary_event_types: Sequence[str]) -> tuple[pl.Expr, pl.Expr]:
    """``(value_rows, monetary_rows)``: which interactions are averaged and which are orders
    (summed into RFM's M), for a data set whose money is ``monetary_source``."""
    value_rows = value_events(monetary_source, monetary_event_types)
    monetary_rows = (
        value_events("monetary", monetary_event_types) if monetary_source == "monetary" else pl.lit(False)
    )
    return value_rows, monetary_rows


def profile_frame(
    inputs: ProfileInputs, context: ProfileContext, options: ProfileOptions, clock: int | None = None
) -> pl.LazyFrame:
    """Profiles from the interactions at or before ``clock`` (default: the data's clock)."""
    now = context.clock if clock is None else clock
    interactions = inputs.interactions.filter(pl.col("timestamp") <= now)
    value_rows, monetary_rows = row_rules(context.monetary_source, options.monetary_event_types)
    frame = behaviour(
        interactions,
        inputs.items,
        context.event_types,
        inputs.item_attributes,
        value_rows,
        monetary_rows,
        options.top_values,
    )
    frame = lifecycle(rfm(frame, now, options.rfm_bins, context.monetary_source), now, options)
    return _with_attributes(frame, inputs.users, inputs.user_attributes).sort("user_id")


def _with_attributes(frame: pl.LazyFrame, users: pl.LazyFrame | None, columns: Sequence[str]) -> pl.LazyFrame:
    if users is None or not columns:
        return frame
    given = users.select("user_id", *[pl.col(c).alias(f"{ATTRIBUTE_PREFIX}{c}") for c in columns])
    return frame.join(given, on="user_id", how="left")
