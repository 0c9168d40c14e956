"""``recsys campaign-report``: what a sent campaign list did, against its held-out control group.

Inputs: the campaign file written with the list (``<list stem>.campaign.json``, see
:mod:`serving.campaigns.holdout`), the list and control files next to it, and the feedback
event log (``recsys serve --events-dir``). The window is ``[sent_at, sent_at + days)``.

Per member of the treatment (the list that was sent) and of the control (held out):

* **responded**: any click, add-to-cart or purchase in the window (impressions are not a
  response: they are what the service showed);
* **converted**: at least one purchase in the window;
* **revenue**: the sum of purchase values in the window (0 without one).

Report: **reach** (members contacted) and **coverage** (reach / profiled members at send
time), per group the response rate, conversion rate and revenue per member; the **uplift**
(treatment minus control) of each with a 95 % interval and p-value from Welch's t-test on the
per-member outcomes (:func:`scipy.stats.ttest_ind`, unequal variances: for 0/1 outcomes this is
the unpooled two-proportion interval); with ``--cost-per-contact``, the cost, the incremental
revenue (revenue uplift x reach, with its interval) and **ROI** = (incremental revenue - cost) /
cost. The fairness table recorded when the list was written (share of each protected-attribute
value in the list against the base) is repeated. Without a control group there is no uplift.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from serving.campaigns.holdout import CAMPAIGN_SUFFIX
from serving.events.reader import is_event_log, scan_events
from serving.recommend.batch import read_user_ids
from serving.storage import atomic_write_text

DAY_SECONDS = 86_400
RESPONSES = ("click", "add_to_cart", "purchase")
METRICS = ("responded", "converted", "revenue")


@dataclass(frozen=True)
class Uplift:
    """Treatment minus control, with a 95 % interval and the two-sided p-value."""

    difference: float
    low: float
    high: float
    p_value: float


def read_campaign(path: Path) -> dict[str, Any]:
    """The campaign file; a clear error naming the file and the problem otherwise."""
    path = Path(path)
    if not path.name.endswith(CAMPAIGN_SUFFIX):
        raise ValueError(f"--campaign {path}: not a campaign file (*{CAMPAIGN_SUFFIX})")
    try:
        campaign: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--campaign {path}: unreadable: {exc}") from exc
    for key in ("campaign", "sent_at", "list", "control_list"):
        if key not in campaign:
            raise ValueError(f"--campaign {path}: missing field {key!r}")
    return campaign


def outcomes(events: pl.LazyFrame, members: pl.Series, start: int, end: int) -> pl.DataFrame:
    """``user_id, responded, converted, revenue`` for every member (0 without events)."""
    ts = pl.col("timestamp").dt.epoch("s")
    window = events.filter((ts >= start) & (ts < end) & pl.col("event_type").is_in(list(RESPONSES)))
    per_member = window.group_by("user_id").agg(
        pl.len().gt(0).alias("responded"),
        (pl.col("event_type") == "purchase").any().alias("converted"),
        pl.col("value").filter(pl.col("event_type") == "purchase").sum().alias("revenue"),
    )
    return (
        pl.DataFrame({"user_id": members.unique(maintain_order=True)})
        .lazy()
        .join(per_member, on="user_id", how="left", maintain_order="left")
        .with_columns(
            pl.col("responded").fill_null(False).cast(pl.Float64),
            pl.col("converted").fill_null(False).cast(pl.Float64),
            pl.col("revenue").fill_null(0.0).cast(pl.Float64),
        )
        .collect()
    )


def uplift(treatment: np.ndarray, control: np.ndarray) -> Uplift | None:
    """Welch's t interval of mean(treatment) - mean(control); None without two members a side."""
    if len(treatment) < 2 or len(control) < 2:
        return None
    difference = float(treatment.mean() - control.mean())
    if treatment.var() == 0 and control.var() == 0:
        return Uplift(difference, difference, difference, 1.0 if difference == 0 else 0.0)
    result = stats.ttest_ind(treatment, control, equal_var=False)
    interval = result.confidence_interval(0.95)
    return Uplift(difference, float(interval.low), float(interval.high), float(result.pvalue))


def build_campaign_report(
    campaign_path: Path, events_dir: Path, days: float, cost_per_contact: float
) -> dict[str, Any]:
    """The report of the module docstring as JSON-ready data."""
    if days <= 0:
        raise ValueError(f"--days: must be > 0, got {days}")
    if cost_per_contact < 0 or not math.isfinite(cost_per_contact):
        raise ValueError(f"--cost-per-contact: must be a finite number >= 0, got {cost_per_contact}")
    if not is_event_log(Path(events_dir)):
        raise ValueError(f"--events {events_dir}: not an event log (no date=*/part-*.parquet files)")
    campaign = read_campaign(campaign_path)
    folder = Path(campaign_path).parent
    treated = read_user_ids(folder / campaign["list"])
    control = (
        read_user_ids(folder / campaign["control_list"])
        if campaign["control_list"]
        else pl.Series([], dtype=pl.Utf8)
    )
    start = int(campaign["sent_at"])
    end = start + int(days * DAY_SECONDS)
    events = scan_events(Path(events_dir))
    groups = {
        "treatment": outcomes(events, treated, start, end),
        "control": outcomes(events, control, start, end),
    }
    report: dict[str, Any] = {
        "campaign": campaign["campaign"],
        "sent_at": campaign.get("sent_at_iso", start),
        "window_days": days,
        "reach": len(treated),
        "coverage": round(len(treated) / campaign["base_members"], 4)
        if campaign.get("base_members")
        else None,
        "groups": {},
        "uplift": {},
        "fairness": campaign.get("fairness", {}),
    }
    for name, frame in groups.items():
        report["groups"][name] = {
            "members": frame.height,
            "response_rate": _mean(frame, "responded"),
            "conversion_rate": _mean(frame, "converted"),
            "revenue_per_member": _mean(frame, "revenue"),
            "revenue": round(float(frame.get_column("revenue").sum()), 2),
        }
    for metric, key in zip(METRICS, ("response_rate", "conversion_rate", "revenue_per_member"), strict=True):
        found = uplift(
            groups["treatment"].get_column(metric).to_numpy(), groups["control"].get_column(metric).to_numpy()
        )
        report["uplift"][key] = None if found is None else {k: round(v, 6) for k, v in found.__dict__.items()}
    if cost_per_contact > 0:
        cost = cost_per_contact * len(treated)
        revenue_uplift = report["uplift"]["revenue_per_member"]
        roi: dict[str, Any] = {"cost_per_contact": cost_per_contact, "cost": round(cost, 2)}
        if revenue_uplift is not None:
            incremental = [revenue_uplift[k] * len(treated) for k in ("difference", "low", "high")]
            roi["incremental_revenue"] = [round(v, 2) for v in incremental]
            roi["roi"] = [round((v - cost) / cost, 4) for v in incremental]
        report["roi"] = roi
    return report


def _mean(frame: pl.DataFrame, column: str) -> float | None:
    return round(float(frame.get_column(column).to_numpy().mean()), 6) if frame.height else None


def format_report(report: dict[str, Any]) -> str:
    """The report as a few readable lines."""
    lines = [
        f"campaign {report['campaign']} sent {report['sent_at']}, window {report['window_days']:g} days: "
        f"reach {report['reach']}" + (f" (coverage {report['coverage']:.1%})" if report["coverage"] else "")
    ]
    for name, group in report["groups"].items():
        if not group["members"]:
            lines.append(f"  {name}: no members")
            continue
        lines.append(
            f"  {name}: {group['members']} members, response {group['response_rate']:.2%}, conversion "
            f"{group['conversion_rate']:.2%}, revenue/member {group['revenue_per_member']:.2f}"
        )
    for key, found in report["uplift"].items():
        if found is None:
            lines.append(f"  uplift {key}: no control group (or fewer than 2 members a side)")
        else:
            lines.append(
                f"  uplift {key}: {found['difference']:+.4f} "
                f"(95% CI {found['low']:+.4f} .. {found['high']:+.4f}, p={found['p_value']:.3g})"
            )
    if "roi" in report:
        roi = report["roi"]
        if "roi" in roi:
            low, mid, high = roi["roi"][1], roi["roi"][0], roi["roi"][2]
            lines.append(f"  cost {roi['cost']:.2f}: ROI {mid:+.2f} (95% CI {low:+.2f} .. {high:+.2f})")
        else:
            lines.append(f"  cost {roi['cost']:.2f}: no ROI without a control group")
    for attribute, shares in report["fairness"].items():
        parts = ", ".join(f"{v} {s['list']:.0%} (base {s['base']:.0%})" for v, s in shares.items())
        lines.append(f"  {attribute}: {parts}")
    return "\n".join(lines)


def run_campaign_report(
    campaign_path: Path, events_dir: Path, days: float, cost_per_contact: float, out: Path | None
) -> dict[str, Any]:
    """Build the report and, with ``out``, write it as JSON (atomically)."""
    report = build_campaign_report(campaign_path, events_dir, days, cost_per_contact)
    if out is not None:
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    return report
