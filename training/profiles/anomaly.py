"""Abnormal behaviour: per-member flags with reasons, from explicit rules and an IsolationForest.

Per member, from the interactions (vectorised Polars, no per-row Python):

* ``peak_events_per_minute`` / ``peak_events_per_hour``: the most events in one clock
  minute / hour (bot-like bursts);
* ``median_gap_seconds``: median gap between consecutive events (a human needs seconds to
  look at an item; a script does not);
* ``unbrowsed_purchase_share``: share of purchases with no earlier event on the same item
  by the same member in the day before (orders placed without ever looking: fake orders);
* ``return_share``: returns / purchases, when the data has return events;
* ``accounts_on_shared_key``: the most accounts seen on one of the member's device or
  address hashes, when the interactions carry such columns (values are only counted).

Rules (thresholds in ``[profiles]``, each a reason in words) flag a member; independently
an :class:`~sklearn.ensemble.IsolationForest` on the log-scaled features flags the
``anomaly_contamination`` share most isolated members whose anomaly score is at least
``anomaly_min_score`` (without that floor a clean data set would always lose its share).
A member is flagged when any rule or the forest says so; ``anomaly_score`` is the forest's
score in [0, 1] (higher = more isolated). Rules that the data cannot support (no returns,
no hashes) are listed in the manifest as inactive instead of silently passing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
from sklearn.ensemble import IsolationForest

from serving.profiles.behaviour import DAY_SECONDS
from serving.profiles.build import MemberEvents
from serving.profiles.options import ProfileOptions

FOREST_FEATURES = (
    "log_events",
    "log_events_per_active_day",
    "log_peak_events_per_minute",
    "log_peak_events_per_hour",
    "log_median_gap_seconds",
    "unbrowsed_purchase_share",
    "purchase_share",
)
FOREST_TREES = 200
MIN_MEMBERS = 20
ANOMALY_COLUMNS = ("anomaly_flagged", "anomaly_score", "anomaly_reasons")


@dataclass(frozen=True)
class AnomalyResult:
    """``frame``: ``user_id`` and :data:`ANOMALY_COLUMNS` (plus the features); the manifest section."""

    frame: pl.DataFrame
    metadata: dict[str, Any]


def member_features(events: MemberEvents, options: ProfileOptions) -> pl.DataFrame:
    """The per-member features of the module docstring, one row per member (part by part)."""
    return (
        events.over_parts(lambda interactions: _member_features(interactions, options))
        .sort("user_id")
        .collect()
    )


def _member_features(interactions: pl.LazyFrame, options: ProfileOptions) -> pl.LazyFrame:
    ts = pl.col("timestamp")
    purchase = pl.col("event_type").is_in(list(options.monetary_event_types))
    ordered = interactions.select("user_id", "item_id", "timestamp", "event_type").sort(
        "user_id", "timestamp"
    )
    base = ordered.group_by("user_id").agg(
        pl.len().cast(pl.Int64).alias("events"),
        (ts // DAY_SECONDS).n_unique().cast(pl.Int64).alias("active_days"),
        ts.diff().median().cast(pl.Float64).alias("median_gap_seconds"),
        purchase.sum().cast(pl.Int64).alias("purchases"),
        pl.col("event_type").is_in(list(options.return_event_types)).sum().cast(pl.Int64).alias("returns"),
    )
    peaks = [
        ordered.group_by("user_id", (ts // seconds).alias("bucket"))
        .len()
        .group_by("user_id")
        .agg(pl.col("len").max().cast(pl.Int64).alias(name))
        for seconds, name in ((60, "peak_events_per_minute"), (3600, "peak_events_per_hour"))
    ]
    # A purchase is "browsed" when the member had another event on that item in the day before it.
    last_look = ordered.filter(~purchase).select("user_id", "item_id", ts.alias("looked")).sort("looked")
    bought = ordered.filter(purchase).select("user_id", "item_id", "timestamp").sort("timestamp")
    browsed = (
        bought.join_asof(
            last_look,
            left_on="timestamp",
            right_on="looked",
            by=["user_id", "item_id"],
            strategy="backward",
            tolerance=DAY_SECONDS,
            # Both sides are sorted by time; Polars cannot verify it within the by-groups.
            check_sortedness=False,
        )
        .group_by("user_id")
        .agg(pl.col("looked").is_null().mean().alias("unbrowsed_purchase_share"))
    )
    frame = base
    for part in (*peaks, browsed):
        frame = frame.join(part, on="user_id", how="left")
    return frame.with_columns(
        pl.col("unbrowsed_purchase_share").fill_null(0.0),
        pl.col("median_gap_seconds").fill_null(float(DAY_SECONDS)),
        (pl.col("returns") / pl.col("purchases").clip(1)).alias("return_share"),
    )


def shared_key_accounts(interactions: pl.LazyFrame, columns: tuple[str, ...]) -> pl.LazyFrame | None:
    """``user_id, accounts_on_shared_key``: the most accounts on any of the member's hash values
    in ``columns`` (None when the interactions have none of them)."""
    present = [c for c in columns if c in interactions.collect_schema().names()]
    if not present:
        return None
    parts = []
    for column in present:
        pairs = interactions.select("user_id", pl.col(column).alias("key")).drop_nulls().unique()
        per_key = pairs.group_by("key").agg(pl.len().alias("accounts"))
        parts.append(pairs.join(per_key, on="key").group_by("user_id").agg(pl.col("accounts").max()))
    return pl.concat(parts).group_by("user_id").agg(pl.col("accounts").max().alias("accounts_on_shared_key"))


def detect(interactions: pl.LazyFrame | MemberEvents, options: ProfileOptions) -> AnomalyResult:
    """Flags, scores and reasons of every member in ``interactions``."""
    events = MemberEvents.of(interactions)
    frame = member_features(events, options)
    # Accounts sharing a key span parts: this one reads the key columns of every interaction.
    shared = shared_key_accounts(events.whole(), options.shared_key_columns)
    if shared is not None:
        frame = frame.join(shared.collect(), on="user_id", how="left")
    has_returns = int(frame.get_column("returns").sum()) > 0
    rules: dict[str, pl.Expr] = {
        "burst": pl.when(pl.col("peak_events_per_minute") > options.anomaly_max_events_per_minute).then(
            pl.format("event burst: {} events in one minute", pl.col("peak_events_per_minute"))
        ),
        "pace": pl.when(
            (pl.col("events") >= options.anomaly_min_events)
            & (pl.col("median_gap_seconds") < options.anomaly_min_pace_seconds)
        ).then(pl.format("impossible pace: median {} s between {} events", "median_gap_seconds", "events")),
        "unbrowsed_purchases": pl.when(
            (pl.col("purchases") >= 3)
            & (pl.col("unbrowsed_purchase_share") >= options.anomaly_unbrowsed_share)
        ).then(
            pl.format(
                "purchases without browsing: {} of {} purchases",
                (pl.col("unbrowsed_purchase_share") * pl.col("purchases")).round(0).cast(pl.Int64),
                "purchases",
            )
        ),
    }
    inactive: dict[str, str] = {}
    if has_returns:
        rules["returns"] = pl.when(
            (pl.col("returns") >= 3) & (pl.col("return_share") >= options.anomaly_return_share)
        ).then(pl.format("returns: {} returns for {} purchases", "returns", "purchases"))
    else:
        inactive["returns"] = f"the data has no return events ({', '.join(options.return_event_types)})"
    if shared is not None:
        rules["shared_key"] = pl.when(
            pl.col("accounts_on_shared_key") > options.anomaly_max_accounts_per_key
        ).then(pl.format("{} accounts on one device or address hash", "accounts_on_shared_key"))
    else:
        names = ", ".join(options.shared_key_columns)
        inactive["shared_key"] = f"the interactions have no device or address hash column ({names})"
    scores, outliers, forest_note = _forest(frame, options)
    score_text = pl.Series(np.round(scores, 3)).cast(pl.Utf8)
    forest_reason = pl.when(pl.Series(outliers)).then(
        pl.concat_str(pl.lit("isolation forest outlier (score "), pl.lit(score_text), pl.lit(")"))
    )
    frame = frame.with_columns(
        pl.Series("anomaly_score", scores, dtype=pl.Float64),
        # Rule messages first, then the forest's: one list of reasons per member.
        pl.concat_list([*rules.values(), forest_reason]).list.drop_nulls().alias("anomaly_reasons"),
    ).with_columns((pl.col("anomaly_reasons").list.len() > 0).alias("anomaly_flagged"))
    counts = {name: int(frame.select(expr.is_not_null().sum()).item()) for name, expr in rules.items()}
    counts["isolation_forest"] = int(outliers.sum())
    metadata = {
        "rules": {
            "burst": f"more than {options.anomaly_max_events_per_minute} events in one minute",
            "pace": f"median gap under {options.anomaly_min_pace_seconds:g} s over at least "
            f"{options.anomaly_min_events} events",
            "unbrowsed_purchases": f"at least 3 purchases, {options.anomaly_unbrowsed_share:.0%} of them "
            "with no earlier event on the item in the day before",
            **(
                {"returns": f"at least 3 returns and returns/purchases >= {options.anomaly_return_share:g}"}
                if has_returns
                else {}
            ),
            **(
                {"shared_key": f"more than {options.anomaly_max_accounts_per_key} accounts on one hash"}
                if shared is not None
                else {}
            ),
        },
        "inactive_rules": inactive,
        "isolation_forest": {
            "features": list(FOREST_FEATURES),
            "contamination": options.anomaly_contamination,
            "min_score": options.anomaly_min_score,
            "note": forest_note,
        },
        "members": frame.height,
        "flagged": int(frame.get_column("anomaly_flagged").sum()),
        "flagged_by": counts,
    }
    return AnomalyResult(frame, metadata)


def forest_matrix(frame: pl.DataFrame) -> npt.NDArray[np.float64]:
    """The IsolationForest's input: :data:`FOREST_FEATURES` of ``frame`` (log-scaled counts)."""
    events = pl.col("events").cast(pl.Float64)
    columns = frame.select(
        events.log1p().alias("log_events"),
        (events / pl.col("active_days").clip(1)).log1p().alias("log_events_per_active_day"),
        pl.col("peak_events_per_minute").cast(pl.Float64).log1p().alias("log_peak_events_per_minute"),
        pl.col("peak_events_per_hour").cast(pl.Float64).log1p().alias("log_peak_events_per_hour"),
        pl.col("median_gap_seconds").log1p().alias("log_median_gap_seconds"),
        pl.col("unbrowsed_purchase_share"),
        (pl.col("purchases") / events).alias("purchase_share"),
    )
    out: npt.NDArray[np.float64] = np.nan_to_num(columns.to_numpy().astype(np.float64))
    return out


def _forest(
    frame: pl.DataFrame, options: ProfileOptions
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], str]:
    """(score in [0, 1], outlier flag, note) per row; scores 0 and no outliers when not run."""
    n = frame.height
    if options.anomaly_contamination == 0 or n < MIN_MEMBERS:
        note = "disabled (contamination 0)" if n >= MIN_MEMBERS else f"{n} members (need {MIN_MEMBERS})"
        return np.zeros(n), np.zeros(n, dtype=bool), note
    forest = IsolationForest(
        n_estimators=FOREST_TREES, contamination=options.anomaly_contamination, random_state=options.seed
    ).fit(forest_matrix(frame))
    x = forest_matrix(frame)
    # score_samples is minus the paper's anomaly score s(x) in (0, 1]: higher s = more isolated.
    scores = np.asarray(-forest.score_samples(x), dtype=np.float64)
    outliers = np.asarray((forest.predict(x) == -1) & (scores >= options.anomaly_min_score), dtype=bool)
    return scores, outliers, f"{FOREST_TREES} trees, seed {options.seed}"
