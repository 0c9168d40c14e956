"""Member profiles for a bundle: the profile table, embedding segments and the look-ahead models.

Called by :mod:`training.pipeline` after the final model is trained:

1. :func:`serving.profiles.build.profile_frame` on every interaction (clock = the
   latest timestamp): behaviour, RFM, lifecycle, given attributes;
2. k-means on the user embeddings (:func:`serving.profiles.segments.cluster`), each
   segment described by the item and user attributes with the highest lift;
3. the churn model (:func:`training.profiles.churn.train_churn`): AUC on a later cut than the one
   it was fitted on; the refitted model scores every user (``churn_risk``);
4. purchase propensity and activity (:mod:`training.profiles.propensity`, same time-respecting
   scheme): ``purchase_propensity`` and ``expected_active_days``;
5. lifetime value (:func:`training.profiles.clv.train_clv`, BG/NBD + Gamma-Gamma, validated on a
   holdout period): ``clv_expected_purchases``, ``clv_probability_alive``,
   ``clv_expected_order_value``, ``clv_value`` (null for members who never bought; the value
   columns are null when the data has no amounts);
6. abnormal behaviour (:func:`training.profiles.anomaly.detect`): ``anomaly_flagged``,
   ``anomaly_score``, ``anomaly_reasons``.

The result is the bundle's ``profiles.parquet`` and the manifest's ``profiles`` section;
:func:`log_profiles` logs the figures to MLflow.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from serving.profiles.behaviour import preference_attributes
from serving.profiles.build import MemberEvents, ProfileInputs, profile_context, profile_frame
from serving.profiles.churn import feature_matrix
from serving.profiles.lifecycle import STAGES
from serving.profiles.linear import LinearModel
from serving.profiles.options import ProfileOptions
from serving.profiles.recent import recent_activity
from serving.profiles.rfm import SEGMENTS
from serving.profiles.segments import cluster, describe
from training.features import Prepared
from training.profiles.anomaly import ANOMALY_COLUMNS, AnomalyResult, detect
from training.profiles.churn import train_churn
from training.profiles.clv import train_clv
from training.profiles.cuts import Cuts, ForwardResult
from training.profiles.propensity import train_activity, train_propensity
from training.tracking import Tracker

log = logging.getLogger(__name__)
PROFILES_ARTIFACT = "profiles.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class BuiltProfiles:
    """``frame``: one row per user (``profiles.parquet``); ``manifest``: its section."""

    frame: pl.DataFrame
    manifest: dict[str, Any]


def build_profiles(
    interactions: pl.DataFrame | pl.LazyFrame | MemberEvents,
    users: pl.DataFrame | None,
    items: pl.DataFrame | None,
    user_attributes: tuple[str, ...],
    item_attributes: tuple[str, ...],
    user_ids: pl.Series,
    user_embeddings: npt.NDArray[np.float32],
    options: ProfileOptions,
    anomaly: AnomalyResult | None = None,
) -> BuiltProfiles:
    """Profiles of every user in ``interactions``: eager, lazy, or parts that no member spans (a
    prepared directory's shards, read part by part so memory holds one part's events).

    ``user_attributes`` / ``item_attributes``: the columns the encoders kept (personal
    data is never among them). ``user_ids`` and ``user_embeddings`` are aligned rows
    (the bundle's user table order). ``anomaly``: abnormal-behaviour flags already computed
    on the same interactions (the pipeline's training-data filter), else detected here.
    """
    started = time.perf_counter()
    events = MemberEvents.of(interactions)
    inputs = ProfileInputs(
        interactions=events,
        items=items.lazy() if items is not None else None,
        users=users.lazy() if users is not None else None,
        item_attributes=tuple(preference_attributes(items, item_attributes)),
        user_attributes=tuple(c for c in user_attributes if users is not None and c in users.columns),
    )
    context = profile_context(inputs, options)
    frame = profile_frame(inputs, context, options).collect()
    profile_seconds = time.perf_counter() - started

    clustering = cluster(
        user_embeddings,
        options.segments_k,
        options.segments_k_min,
        options.segments_k_max,
        options.silhouette_sample,
        options.seed,
    )
    assignments = pl.DataFrame({"user_id": user_ids, "segment": pl.Series(clustering.labels, dtype=pl.Int32)})
    frame = frame.join(assignments, on="user_id", how="left", maintain_order="left")
    descriptions = describe(
        assignments.filter(pl.col("user_id").is_in(frame.get_column("user_id").implode())),
        events.parts,
        inputs.items,
        inputs.item_attributes,
        inputs.users,
        tuple(c for c in inputs.user_attributes if users is not None and _is_describable(users, c)),
        options.top_values,
    )
    segment_seconds = time.perf_counter() - started - profile_seconds

    lookahead_started = time.perf_counter()
    cuts = Cuts(inputs, context, options)
    churn, propensity, activity = train_churn(cuts), train_propensity(cuts), train_activity(cuts)
    current = frame.join(
        events.over_parts(
            lambda part: recent_activity(part, context.clock, options.monetary_event_types)
        ).collect(),
        on="user_id",
        how="left",
    )
    frame = frame.with_columns(
        _scores(churn, current, context.event_types, "churn_risk"),
        _scores(propensity, current, context.event_types, "purchase_propensity"),
        _scores(activity, current, context.event_types, "expected_active_days"),
    )
    clv = train_clv(
        events,
        context.clock,
        options.monetary_event_types,
        context.monetary_source == "monetary",
        options.clv_horizon_days,
        options.clv_holdout_days,
    )
    frame = _join_clv(frame, clv.frame)
    abnormal = anomaly if anomaly is not None else detect(events, options)
    frame = frame.join(
        abnormal.frame.select("user_id", *ANOMALY_COLUMNS), on="user_id", how="left", maintain_order="left"
    ).with_columns(
        pl.col("anomaly_flagged").fill_null(False),
        pl.col("anomaly_reasons").fill_null(pl.lit([], dtype=pl.List(pl.Utf8))),
    )
    lookahead_seconds = time.perf_counter() - lookahead_started
    total_seconds = time.perf_counter() - started

    manifest = {
        "schema_version": SCHEMA_VERSION,
        "clock": context.clock,
        "clock_iso": datetime.fromtimestamp(context.clock, UTC).isoformat(),
        "users": frame.height,
        "options": _jsonable(asdict(options)),
        "event_types": list(context.event_types),
        "monetary_source": context.monetary_source,
        "item_attributes": list(inputs.item_attributes),
        "user_attributes": list(inputs.user_attributes),
        "lifecycle": {
            "stages": list(STAGES),
            "rules": lifecycle_rules(options),
            "counts": _counts(frame, "lifecycle", STAGES),
        },
        "rfm": {
            "bins": options.rfm_bins,
            "segments": list(SEGMENTS),
            "counts": _counts(frame, "rfm_segment", SEGMENTS),
            "grid": _rfm_grid(frame),
        },
        "segments": {
            "k": clustering.k,
            "chosen_by": clustering.chosen_by,
            "silhouettes": {str(k): round(v, 4) for k, v in clustering.silhouettes.items()},
            "descriptions": descriptions,
        },
        "churn": churn.metadata,
        "propensity": propensity.metadata,
        "activity": activity.metadata,
        "clv": clv.metadata,
        "anomaly": abnormal.metadata,
        "seconds": {
            "profiles": round(profile_seconds, 3),
            "segments": round(segment_seconds, 3),
            "lookahead": round(lookahead_seconds, 3),
            "total": round(total_seconds, 3),
        },
    }
    return BuiltProfiles(frame, manifest)


CLV_COLUMNS = ("clv_expected_purchases", "clv_probability_alive", "clv_expected_order_value", "clv_value")


def _scores(result: ForwardResult, current: pl.DataFrame, types: tuple[str, ...], name: str) -> pl.Series:
    """``result``'s model scored on every user's current profile; nulls without a model."""
    model: LinearModel | None = result.model
    if model is None:
        return pl.Series(name, [None] * current.height, dtype=pl.Float64)
    return pl.Series(name, model.score(feature_matrix(current, model.features, types)), dtype=pl.Float64)


def _join_clv(frame: pl.DataFrame, clv: pl.DataFrame | None) -> pl.DataFrame:
    """The CLV columns (null for members who never bought or when no model was fitted)."""
    if clv is None:
        return frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(c) for c in CLV_COLUMNS)
    return frame.join(clv.select("user_id", *CLV_COLUMNS), on="user_id", how="left", maintain_order="left")


def lifecycle_rules(options: ProfileOptions) -> list[str]:
    """The stage rules in words, first match wins (written into the manifest and report)."""
    return [
        f"new: first activity within {options.new_days:g} days of the clock",
        f"active: last activity within {options.active_days:g} days",
        f"at_risk: last activity within {options.at_risk_days:g} days",
        f"dormant: last activity within {options.dormant_days:g} days",
        f"churned: no activity for more than {options.dormant_days:g} days",
    ]


def log_profiles(tracker: Tracker, built: BuiltProfiles) -> None:
    """Metrics ``profiles.*`` (users, segments_k, churn_auc, churn_base_rate, seconds) and
    the manifest section as the ``profiles.json`` artifact."""
    section = built.manifest
    churn = section["churn"]
    metrics = {
        "profiles.users": float(section["users"]),
        "profiles.segments_k": float(section["segments"]["k"]),
        "profiles.build_seconds": float(section["seconds"]["total"]),
    }
    if churn.get("trained"):
        metrics["profiles.churn_auc"] = float(churn["auc"])
        metrics["profiles.churn_base_rate"] = float(churn["validation_base_rate"])
    propensity = section.get("propensity", {})
    if propensity.get("trained"):
        metrics["profiles.propensity_auc"] = float(propensity["auc"])
        metrics["profiles.propensity_recency_rule_auc"] = float(propensity["recency_rule_auc"])
    validation = section.get("clv", {}).get("validation", {})
    if validation.get("done"):
        metrics["profiles.clv_holdout_predicted"] = float(validation["predicted_total"])
        metrics["profiles.clv_holdout_actual"] = float(validation["actual_total"])
    metrics["profiles.abnormal_flagged"] = float(section.get("anomaly", {}).get("flagged", 0))
    tracker.log_metrics(metrics)
    tracker.log_dict(section, PROFILES_ARTIFACT)


def _is_describable(users: pl.DataFrame, column: str) -> bool:
    dtype = users.schema[column]
    return dtype.is_numeric() or dtype in (pl.Utf8, pl.Categorical, pl.Boolean)


def _counts(frame: pl.DataFrame, column: str, order: tuple[str, ...]) -> dict[str, int]:
    counted = dict(frame.get_column(column).value_counts().iter_rows())
    return {name: int(counted.get(name, 0)) for name in order}


def _rfm_grid(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Users and mean monetary value per (R, F) score cell."""
    grid = (
        frame.group_by("r_score", "f_score")
        .agg(pl.len().alias("users"), pl.col("monetary").mean().round(4).alias("mean_monetary"))
        .sort("r_score", "f_score")
    )
    return [
        {k: (int(v) if isinstance(v, int) else v) for k, v in row.items()}
        for row in grid.iter_rows(named=True)
    ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def profiles_for_bundle(
    options: ProfileOptions,
    interactions: pl.DataFrame | pl.LazyFrame | MemberEvents,
    users: pl.DataFrame | None,
    items: pl.DataFrame | None,
    prepared: Prepared,
    user_embeddings: npt.NDArray[np.float32],
    tracker: Tracker,
    anomaly: AnomalyResult | None = None,
) -> BuiltProfiles | None:
    """The pipeline's step: profiles of the final model's users, logged; None when
    ``profiles.enabled`` is false. ``user_embeddings``: the final user tower's output for
    every row of ``prepared``'s user table (the pipeline computes them once, for the user
    index and for the segments)."""
    if not options.enabled:
        return None
    built = build_profiles(
        interactions,
        users,
        items,
        prepared.user_encoder.attribute_columns,
        prepared.item_encoder.attribute_columns,
        prepared.user_table.get_column("user_id"),
        user_embeddings,
        options,
        anomaly,
    )
    log.info(
        "profiles: %d users, %d embedding segments (%s), churn %s, %.1f s",
        built.manifest["users"],
        built.manifest["segments"]["k"],
        built.manifest["segments"]["chosen_by"],
        f"AUC {built.manifest['churn']['auc']:.4f}"
        if built.manifest["churn"].get("trained")
        else f"not trained ({built.manifest['churn'].get('reason')})",
        built.manifest["seconds"]["total"],
    )
    log_profiles(tracker, built)
    return built
