"""RFM (recency, frequency, monetary) scores and named segments, as Polars expressions.

Inputs (per user): ``last_activity`` (unix s), ``orders`` / ``monetary_value`` (count and
sum of the monetary events) and ``events_total``. Definitions:

* recency ``recency_days`` = (clock - last activity) / 86400;
* frequency = ``orders`` when the data has monetary events (``monetary_source =
  "monetary"``), else ``events_total`` (behaviour-only data such as ratings);
* monetary = ``monetary_value`` (sum of the monetary events' values) when there are any,
  else ``events_total`` (documented in the manifest as ``monetary_source``).

Scores 1..``bins`` are quantile bins over users: ``1 + floor(bins * (rank - 1) / n)`` with
``rank`` the *minimum* rank (ties share the lowest position, so e.g. every user without a
purchase gets F = 1 however many such users there are). Higher is better: recent,
frequent, spending. One user gets 1 everywhere.

A live profile (one member's row updated after the snapshot) is scored against the
snapshot's population instead (:class:`RfmReference`: the same formula with ``rank`` =
1 + the number of snapshot users with a smaller value, ``n`` = the snapshot's users), so
its scores use the bundle's bins and a member whose values did not change keeps the score
the snapshot gave them.

Named segment from (R, F) rescaled to 1..5 (``round(1 + 4 * (score - 1) / (bins - 1))``;
identity for quintiles), by the common map:

=====================  ==============  =============
segment                R               F
=====================  ==============  =============
champions              5               4-5
loyal                  3-4             4-5
potential_loyalists    4-5             2-3
new_customers          5               1
promising              4               1
need_attention         3               3
about_to_sleep         3               1-2
cannot_lose            1-2             5
at_risk                1-2             3-4
hibernating            1-2             1-2 (not 1/1)
lost                   1               1
=====================  ==============  =============
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from serving.profiles.behaviour import DAY_SECONDS

SEGMENTS: tuple[str, ...] = (
    "champions",
    "loyal",
    "potential_loyalists",
    "new_customers",
    "promising",
    "need_attention",
    "about_to_sleep",
    "cannot_lose",
    "at_risk",
    "hibernating",
    "lost",
)
"""Named RFM segments, best first (the report's order)."""


@dataclass(frozen=True)
class RfmReference:
    """The snapshot population the R, F and M scores of later rows are binned against:
    each column's values sorted ascending (``last_activity``, ``frequency``, ``monetary``)."""

    last_activity: pl.Series
    frequency: pl.Series
    monetary: pl.Series

    @classmethod
    def of(cls, profiles: pl.DataFrame) -> RfmReference:
        """The reference of a profile table built by :func:`rfm` (a bundle's ``profiles.parquet``)."""
        return cls(
            *(profiles.get_column(c).drop_nulls().sort() for c in ("last_activity", "frequency", "monetary"))
        )


def quantile_score(values: pl.Expr, bins: int, reference: pl.Series | None = None) -> pl.Expr:
    """1..``bins`` by the minimum rank of ``values`` among all rows (ties share a score), or
    among the sorted ``reference`` values when given (see the module docstring)."""
    if reference is None:
        below = values.rank(method="min").cast(pl.Float64) - 1
        n = pl.len().cast(pl.Float64)
    else:
        below = pl.lit(reference).search_sorted(values, side="left").cast(pl.Float64)
        n = pl.lit(max(len(reference), 1), dtype=pl.Float64)
    return (1 + (below * bins / n).floor()).clip(1, bins).cast(pl.Int8)


def _to_five(score: pl.Expr, bins: int) -> pl.Expr:
    """1..``bins`` mapped linearly onto 1..5 (1 -> 1, bins -> 5), rounded."""
    return (1 + (score.cast(pl.Float64) - 1) * 4 / (bins - 1)).round(0)


def segment(r: pl.Expr, f: pl.Expr, bins: int) -> pl.Expr:
    """The named segment of (R, F) scores in 1..``bins`` (see the module table)."""
    r5 = _to_five(r, bins)
    f5 = _to_five(f, bins)
    return (
        pl.when((r5 == 5) & (f5 >= 4))
        .then(pl.lit("champions"))
        .when(r5.is_between(3, 4) & (f5 >= 4))
        .then(pl.lit("loyal"))
        .when((r5 >= 4) & f5.is_between(2, 3))
        .then(pl.lit("potential_loyalists"))
        .when((r5 == 5) & (f5 == 1))
        .then(pl.lit("new_customers"))
        .when((r5 == 4) & (f5 == 1))
        .then(pl.lit("promising"))
        .when((r5 == 3) & (f5 == 3))
        .then(pl.lit("need_attention"))
        .when((r5 == 3) & (f5 <= 2))
        .then(pl.lit("about_to_sleep"))
        .when((r5 <= 2) & (f5 == 5))
        .then(pl.lit("cannot_lose"))
        .when((r5 <= 2) & f5.is_between(3, 4))
        .then(pl.lit("at_risk"))
        .when((r5 == 1) & (f5 == 1))
        .then(pl.lit("lost"))
        .otherwise(pl.lit("hibernating"))
    )


def rfm(
    frame: pl.LazyFrame, clock: int, bins: int, monetary_source: str, reference: RfmReference | None = None
) -> pl.LazyFrame:
    """Adds ``recency_days, frequency, monetary, r_score, f_score, m_score, rfm_segment``;
    scores among the rows of ``frame``, or against ``reference`` when given."""
    ref = reference
    has_money = monetary_source == "monetary"
    frequency = pl.col("orders") if has_money else pl.col("events_total")
    monetary = pl.col("monetary_value").fill_null(0.0) if has_money else pl.col("events_total")
    return (
        frame.with_columns(
            ((clock - pl.col("last_activity")) / DAY_SECONDS).alias("recency_days"),
            frequency.cast(pl.Int64).alias("frequency"),
            monetary.cast(pl.Float64).alias("monetary"),
        )
        .with_columns(
            quantile_score(pl.col("last_activity"), bins, None if ref is None else ref.last_activity).alias(
                "r_score"
            ),
            quantile_score(pl.col("frequency"), bins, None if ref is None else ref.frequency).alias(
                "f_score"
            ),
            quantile_score(pl.col("monetary"), bins, None if ref is None else ref.monetary).alias("m_score"),
        )
        .with_columns(segment(pl.col("r_score"), pl.col("f_score"), bins).alias("rfm_segment"))
    )
