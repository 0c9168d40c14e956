"""Profile records -> ``recsys.v1.UserProfile`` messages (no model, no I/O)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from serving._proto.recsys.v1 import profiles_pb2 as pb2
from serving.profiles.behaviour import EVENTS_PREFIX
from serving.profiles.build import ATTRIBUTE_PREFIX
from serving.profiles.store import ProfileRecord

STAGES: dict[str, pb2.LifecycleStage] = {
    "new": pb2.LIFECYCLE_STAGE_NEW,
    "active": pb2.LIFECYCLE_STAGE_ACTIVE,
    "at_risk": pb2.LIFECYCLE_STAGE_AT_RISK,
    "dormant": pb2.LIFECYCLE_STAGE_DORMANT,
    "churned": pb2.LIFECYCLE_STAGE_CHURNED,
}


def as_text(value: Any) -> str | None:
    """An attribute value as text; None for missing (null, empty list, NaN)."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, list | tuple):
        parts = [t for t in (as_text(v) for v in value) if t is not None]
        return ",".join(parts) if parts else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return str(value)


def _lifts(entries: Iterable[dict[str, Any]]) -> list[pb2.AttributeLift]:
    return [
        pb2.AttributeLift(
            attribute=str(e["attribute"]),
            value=str(e["value"]),
            share=float(e["share"]),
            overall_share=float(e["overall_share"]),
            lift=float(e["lift"]),
        )
        for e in entries
    ]


def _ints(values: Sequence[Any] | None) -> list[int]:
    return [int(v) for v in values or () if v is not None]


def to_profile(
    user_id: str,
    record: ProfileRecord,
    model_version: str,
    embedding: npt.NDArray[np.float32] | None = None,
) -> pb2.UserProfile:
    """The message for ``record``; ``user_id`` is the id the caller sent."""
    row = record.row
    section = record.section
    attributes = {
        name[len(ATTRIBUTE_PREFIX) :]: text
        for name, value in row.items()
        if name.startswith(ATTRIBUTE_PREFIX) and (text := as_text(value)) is not None
    }
    average = row.get("average_value")
    behaviour = pb2.Behaviour(
        event_counts={
            name[len(EVENTS_PREFIX) :]: int(value)
            for name, value in row.items()
            if name.startswith(EVENTS_PREFIX) and value
        },
        total_events=int(row["events_total"]),
        first_activity=int(row["first_activity"]),
        last_activity=int(row["last_activity"]),
        active_days=int(row["active_days"]),
        top_hours=_ints(row.get("top_hours")),
        top_weekdays=_ints(row.get("top_weekdays")),
        preferences=[
            pb2.AttributeShare(attribute=p["attribute"], value=p["value"], share=float(p["share"]))
            for p in row.get("preferences") or ()
        ],
        average_value=float(average) if average is not None else 0.0,
        has_average_value=average is not None,
    )
    rfm = pb2.Rfm(
        recency_days=float(row["recency_days"]),
        frequency=int(row["frequency"]),
        monetary=float(row["monetary"]),
        r_score=int(row["r_score"]),
        f_score=int(row["f_score"]),
        m_score=int(row["m_score"]),
        segment=str(row["rfm_segment"]),
        monetary_source=str(section.get("monetary_source", "")),
    )
    lifecycle = pb2.Lifecycle(
        stage=STAGES.get(str(row["lifecycle"]), pb2.LIFECYCLE_STAGE_UNSPECIFIED),
        tenure_days=float(row["tenure_days"]),
        recency_days=float(row["recency_days"]),
    )
    segment = record.segment
    segment_message = (
        pb2.EmbeddingSegment(
            segment_id=int(segment["segment"]),
            label=str(segment["label"]),
            size=int(segment["size"]),
            top_item_attributes=_lifts(segment.get("top_item_attributes", ())),
            top_user_attributes=_lifts(segment.get("top_user_attributes", ())),
        )
        if segment is not None
        else None
    )
    churn_meta = section.get("churn", {})
    risk = row.get("churn_risk")
    churn = pb2.ChurnRisk(
        probability=float(risk) if risk is not None else 0.0,
        horizon_days=float(churn_meta.get("horizon_days", 0.0)),
        model_auc=float(churn_meta.get("auc", 0.0)) if churn_meta.get("trained") else 0.0,
        available=risk is not None,
    )
    return pb2.UserProfile(
        user_id=user_id,
        propensity=_propensity(row, section),
        activity=_activity(row, section),
        lifetime_value=_lifetime_value(row, section),
        abnormal=_abnormal(row),
        model_version=model_version,
        clock=int(section.get("clock", 0)),
        attributes=attributes,
        behaviour=behaviour,
        rfm=rfm,
        lifecycle=lifecycle,
        segment=segment_message,
        churn=churn,
        embedding=np.asarray(embedding, dtype=np.float32).ravel().tolist() if embedding is not None else [],
        as_of=record.as_of if record.as_of is not None else int(section.get("clock", 0)),
        live_events=record.live_events,
    )


def _propensity(row: dict[str, Any], section: dict[str, Any]) -> pb2.PurchasePropensity:
    meta = section.get("propensity", {})
    value = row.get("purchase_propensity")
    return pb2.PurchasePropensity(
        probability=float(value) if value is not None else 0.0,
        horizon_days=float(meta.get("horizon_days", 0.0)),
        model_auc=float(meta.get("auc", 0.0)) if meta.get("trained") else 0.0,
        recency_rule_auc=float(meta.get("recency_rule_auc", 0.0)) if meta.get("trained") else 0.0,
        available=value is not None,
    )


def _activity(row: dict[str, Any], section: dict[str, Any]) -> pb2.ActivityForecast:
    meta = section.get("activity", {})
    value = row.get("expected_active_days")
    return pb2.ActivityForecast(
        expected_active_days=float(value) if value is not None else 0.0,
        horizon_days=float(meta.get("horizon_days", 0.0)),
        model_mae=float(meta.get("mae", 0.0)) if meta.get("trained") else 0.0,
        run_rate_rule_mae=float(meta.get("run_rate_rule_mae", 0.0)) if meta.get("trained") else 0.0,
        available=value is not None,
    )


def _lifetime_value(row: dict[str, Any], section: dict[str, Any]) -> pb2.LifetimeValue:
    meta = section.get("clv", {})
    purchases = row.get("clv_expected_purchases")
    order_value = row.get("clv_expected_order_value")
    value = row.get("clv_value")
    if not meta.get("trained"):
        reason = str(meta.get("reason", "the bundle has no lifetime-value model"))
    elif purchases is None:
        reason = "no purchase yet: the model covers members who bought at least once"
    else:
        reason = ""
    return pb2.LifetimeValue(
        available=purchases is not None,
        expected_purchases=float(purchases) if purchases is not None else 0.0,
        probability_alive=float(row.get("clv_probability_alive") or 0.0),
        horizon_days=float(meta.get("horizon_days", 0.0)),
        has_money=bool(meta.get("has_money", False)),
        expected_order_value=float(order_value) if order_value is not None else 0.0,
        value=float(value) if value is not None else 0.0,
        reason=reason,
    )


def _abnormal(row: dict[str, Any]) -> pb2.AbnormalBehaviour:
    flagged = row.get("anomaly_flagged")
    return pb2.AbnormalBehaviour(
        flagged=bool(flagged),
        score=float(row.get("anomaly_score") or 0.0),
        reasons=[str(r) for r in row.get("anomaly_reasons") or ()],
        available=flagged is not None,
    )
