"""One member-profile table at a given clock: behaviour, RFM, lifecycle, attributes.

:func:`profile_frame` composes :mod:`~serving.profiles.behaviour`,
:mod:`~serving.profiles.rfm` and :mod:`~serving.profiles.lifecycle` into one lazy query
(one row per user active up to the clock). Embedding segments and churn risk are added
by the training job, which has the user embeddings and fits the churn model.

Which event types are counted, and whether the data carries money, are decided once on
the whole data (:func:`profile_context`) and reused for every clock, so that profiles at
an earlier cut (churn training) have the same columns as the final ones.

Interactions too many for one process's memory (a prepared directory's shards) come as
:class:`MemberEvents` parts that no member spans: every per-member aggregation then runs part
by part and only the per-member rows are concatenated, so memory holds one part's events at a
time; what compares members (RFM's quantiles, lifecycle, the look-ahead models' fits) runs on
those rows, which is why the result equals the one-part result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl

from serving.profiles.behaviour import behaviour, event_summary, event_types, value_events, value_source
from serving.profiles.lifecycle import lifecycle
from serving.profiles.options import ProfileOptions
from serving.profiles.rfm import rfm

ATTRIBUTE_PREFIX = "attr."
"""Given user attributes are passed through as ``attr.<column>``."""


PartQuery = Callable[[pl.LazyFrame], pl.LazyFrame]
"""Interactions in, an aggregate out: per member (each output row reads one member's events
only) or counts that add up across parts."""


@dataclass(frozen=True)
class MemberEvents:
    """Interactions as parts that no member spans (one part: everything in one frame)."""

    parts: tuple[pl.LazyFrame, ...]

    @classmethod
    def of(cls, interactions: pl.LazyFrame | pl.DataFrame | MemberEvents) -> MemberEvents:
        if isinstance(interactions, MemberEvents):
            return interactions
        return cls((interactions.lazy(),))

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("MemberEvents needs at least one part")

    def whole(self) -> pl.LazyFrame:
        """Every interaction as one lazy frame (for what reads few columns or is small)."""
        return self.parts[0] if len(self.parts) == 1 else pl.concat(self.parts)

    def over_parts(self, query: PartQuery) -> pl.LazyFrame:
        """``query`` of every part, concatenated: the whole data's result when ``query`` is a
        per-member aggregation (or counts, summed afterwards). One part stays lazy; several are
        collected one at a time, so memory holds one part's events and every part's result."""
        if len(self.parts) == 1:
            return query(self.parts[0])
        return pl.concat([query(part).collect() for part in self.parts]).lazy()


@dataclass(frozen=True)
class ProfileInputs:
    """The canonical tables (personal columns already excluded from the attribute lists).

    ``interactions``: one lazy frame, or parts that no member spans (a prepared directory's
    shards; see :class:`MemberEvents`). ``item_attributes``: item columns preferences are
    computed on (categorical or list columns); ``user_attributes``: user columns passed
    through as given attributes.
    """

    interactions: pl.LazyFrame | MemberEvents
    items: pl.LazyFrame | None = None
    users: pl.LazyFrame | None = None
    item_attributes: tuple[str, ...] = ()
    user_attributes: tuple[str, ...] = ()

    @property
    def events(self) -> MemberEvents:
        return MemberEvents.of(self.interactions)


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
    summary = (
        inputs.events.over_parts(event_summary)
        .group_by("event_type")
        .agg(pl.col("events").sum(), pl.col("valued").sum(), pl.col("latest").max())
        .collect()
    )
    clock = summary.get_column("latest").max() if summary.height else None
    if clock is None:
        raise ValueError("no interactions: profiles need at least one")
    return ProfileContext(
        clock=int(clock),  # type: ignore[arg-type]
        event_types=tuple(event_types(summary)),
        monetary_source=value_source(summary, options.monetary_event_types),
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
    value_rows, monetary_rows = row_rules(context.monetary_source, options.monetary_event_types)
    frame = inputs.events.over_parts(
        lambda events: behaviour(
            events.filter(pl.col("timestamp") <= now),
            inputs.items,
            context.event_types,
            inputs.item_attributes,
            value_rows,
            monetary_rows,
            options.top_values,
        )
    )
    frame = lifecycle(rfm(frame, now, options.rfm_bins, context.monetary_source), now, options)
    return _with_attributes(frame, inputs.users, inputs.user_attributes).sort("user_id")


def _with_attributes(frame: pl.LazyFrame, users: pl.LazyFrame | None, columns: Sequence[str]) -> pl.LazyFrame:
    if users is None or not columns:
        return frame
    given = users.select("user_id", *[pl.col(c).alias(f"{ATTRIBUTE_PREFIX}{c}") for c in columns])
    return frame.join(given, on="user_id", how="left")
