"""A/B report statistics against hand-computed values, and the report over an event log
(tables, the Plotly charts page, MLflow run)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from mlflow.tracking import MlflowClient
from plotly_page import assert_self_contained, figures

from serving._proto.recsys.v1 import events_pb2
from serving.events.log import EventLog
from serving.events.reader import read_events
from serving.events.schema import EVENT_SCHEMA
from training.config import load_config
from training.reports.ab_report import build_report, format_table, run_ab_report
from training.reports.ab_stats import (
    bootstrap_difference_test,
    bootstrap_mean_interval,
    two_proportion_z_test,
    wilson_interval,
)

# --- statistics --------------------------------------------------------------------------------


def test_wilson_interval_matches_the_textbook_value() -> None:
    # 10 of 100: centre (0.1 + z²/200) / (1 + z²/100) = 0.11480, half-width 0.05957.
    interval = wilson_interval(10, 100)
    assert interval.low == pytest.approx(0.05523, abs=1e-5)
    assert interval.high == pytest.approx(0.17437, abs=1e-5)
    assert wilson_interval(0, 50).low == 0.0
    assert wilson_interval(0, 0).high == 1.0
    with pytest.raises(ValueError, match="successes <= trials"):
        wilson_interval(5, 4)


def test_two_proportion_z_test_matches_a_hand_computation() -> None:
    # 200/1000 vs 250/1000: pooled 0.225, se = sqrt(0.225 * 0.775 * 2/1000) = 0.018675,
    # z = 0.05 / 0.018675 = 2.6774, two-sided p = erfc(2.6774 / sqrt 2) = 0.00742.
    result = two_proportion_z_test(200, 1000, 250, 1000)
    assert result.difference == pytest.approx(0.05)
    assert result.statistic == pytest.approx(2.6774, abs=1e-4)
    assert result.p_value == pytest.approx(0.00742, abs=1e-5)
    flipped = two_proportion_z_test(250, 1000, 200, 1000)
    assert flipped.statistic == pytest.approx(-result.statistic)
    assert flipped.p_value == pytest.approx(result.p_value)
    assert two_proportion_z_test(0, 10, 0, 10).p_value == 1.0


def test_bootstrap_intervals_cover_the_mean_with_the_normal_width() -> None:
    values = np.array([0.0, 1.0] * 200)  # mean 0.5, standard error 0.025
    interval = bootstrap_mean_interval(values, resamples=4000, seed=1)
    assert interval.low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.01)
    assert interval.high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.01)
    assert bootstrap_mean_interval([3.0] * 20) == bootstrap_mean_interval([3.0] * 5)

    same, _ = bootstrap_difference_test(values, values, resamples=2000)
    assert same.p_value > 0.5
    shifted, ci = bootstrap_difference_test(values, values + 0.2, resamples=2000)
    assert shifted.difference == pytest.approx(0.2)
    assert shifted.p_value <= 1 / 2000 + 1e-12
    assert ci.low == pytest.approx(0.2 - 1.96 * 0.025 * math.sqrt(2), abs=0.015)


# --- the report ----------------------------------------------------------------------------


def _row(
    user: str, item: str, kind: str, variant: str, request: str, day: int, value: float | None = None
) -> dict[str, object]:
    return {
        "event_id": None,
        "user_id": user,
        "item_id": item,
        "event_type": kind,
        "experiment": "exp",
        "variant": variant,
        "model_version": None,
        "request_id": request,
        "position": 0,
        "timestamp": datetime(2026, 3, day, 12, tzinfo=UTC),
        "value": value,
    }


def _events() -> pl.DataFrame:
    """A: 10 users x 10 impressions, 10 clicks, 1 buyer (10.0). B: the same shown, 20 clicks,
    3 buyers (5.0 each). Plus a click matching no impression and another experiment."""
    rows = []
    clicks = {"A": 10, "B": 20}
    buyers = {"A": {"a0": 10.0}, "B": {"b0": 5.0, "b1": 5.0, "b2": 5.0}}
    for variant in ("A", "B"):
        for u in range(10):
            user = f"{variant.lower()}{u}"
            for i in range(10):
                day = 1 + (u % 2)
                rows.append(_row(user, f"i{i}", "impression", variant, f"r-{user}", day))
                if u * 10 + i < clicks[variant] * 5 and (u * 10 + i) % 5 == 0:
                    rows.append(_row(user, f"i{i}", "click", variant, f"r-{user}", day))
            if user in buyers[variant]:
                rows.append(
                    _row(user, "i0", "purchase", variant, f"r-{user}", 1 + (u % 2), buyers[variant][user])
                )
    rows.append(_row("a1", "i1", "click", "A", "another-call", 1))  # no impression in that call
    rows.append({**_row("z", "i1", "impression", "A", "r", 1), "experiment": "other"})
    return pl.DataFrame(rows, schema=EVENT_SCHEMA)


def test_report_counts_and_statistics_match_hand_computed_values() -> None:
    report = build_report(_events(), "exp", bootstrap_resamples=1000)
    assert report.control == "A"
    assert report.ranking == ["B", "A"]
    b, a = report.variants
    assert (a.users, a.impressions, a.clicks, a.converted_users) == (10, 100, 10, 1)
    assert (b.users, b.impressions, b.clicks, b.converted_users) == (10, 100, 20, 3)
    assert a.ctr == pytest.approx(0.1)
    assert (a.ctr_ci.low, a.ctr_ci.high) == pytest.approx((0.05523, 0.17437), abs=1e-5)
    assert b.conversion == pytest.approx(0.3)
    assert a.revenue_per_user == pytest.approx(1.0)
    assert b.revenue_per_user == pytest.approx(1.5)
    assert a.revenue_per_user_ci.low <= 1.0 <= a.revenue_per_user_ci.high

    comparison = report.comparison("B")
    # CTR 20/100 vs 10/100: pooled 0.15, se = sqrt(0.15 * 0.85 * 0.02) = 0.050498, z = 1.9803.
    assert comparison.ctr.statistic == pytest.approx(1.9803, abs=1e-4)
    assert comparison.ctr.p_value == pytest.approx(0.04767, abs=1e-4)
    # Conversion 3/10 vs 1/10: pooled 0.2, se = sqrt(0.2 * 0.8 * 0.2) = 0.17889, z = 1.1180.
    assert comparison.conversion.statistic == pytest.approx(1.1180, abs=1e-4)
    assert comparison.revenue_per_user.difference == pytest.approx(0.5)

    daily = report.daily
    assert daily.columns[:2] == ["date", "variant"]
    assert daily.filter(pl.col("variant") == "A")["impressions"].sum() == 100
    assert daily["users"].sum() == 20  # each user was shown items on one day

    table = format_table(report)
    assert table.splitlines()[2].split()[:2] == ["1", "B"]
    assert "B vs A: CTR +10.00 pp" in table


def test_report_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"no impressions.*'exp', 'other'"):
        build_report(_events(), "missing")
    with pytest.raises(ValueError, match="control 'C': not a variant"):
        build_report(_events(), "exp", control="C")


def test_ab_report_reads_the_log_writes_charts_and_logs_to_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    events = _events()
    wire = {"impression": 1, "click": 2, "add_to_cart": 3, "purchase": 4}
    log = EventLog.open(tmp_path / "events")
    log.submit(
        [
            events_pb2.Event(
                user_id=r["user_id"],
                item_id=r["item_id"],
                event_type=wire[r["event_type"]],  # type: ignore[arg-type]
                experiment=r["experiment"],
                variant=r["variant"],
                request_id=r["request_id"],
                timestamp_ms=int(r["timestamp"].timestamp() * 1000),
                value=r["value"] or 0.0,
            )
            for r in events.iter_rows(named=True)
        ]
    ).result(10)
    log.close()
    assert read_events(tmp_path / "events").height == events.height

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = load_config(None, [f'tracking.tracking_uri="{uri}"', "tracking.experiment=ab"])
    out = tmp_path / "report"
    report = run_ab_report(
        tmp_path / "events", "exp", out, config.tracking, control="A", bootstrap_resamples=500
    )
    assert report.ranking == ["B", "A"]
    for name in ("report.json", "report.txt", "daily.csv", "report.html"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "report.json").read_text())
    assert saved["ranking"] == ["B", "A"]

    # The charts draw the report's own numbers: per variant (by name) the value and its interval.
    page = (out / "report.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    charts = figures(page)
    by_name = {v["variant"]: v for v in saved["variants"]}
    for metric, label in (
        ("ctr", "CTR"),
        ("conversion", "conversion"),
        ("revenue_per_user", "revenue per user"),
    ):
        (bars,) = charts[f"{label} per variant, 95 % intervals (control A)"]["data"]
        assert bars["x"] == ["A", "B"]
        assert bars["y"] == pytest.approx([by_name[v][metric] for v in ("A", "B")])
        assert bars["error_y"]["array"] == pytest.approx(
            [by_name[v][f"{metric}_ci"]["high"] - by_name[v][metric] for v in ("A", "B")]
        )
    # Per day and variant: a band (upper, lower edge) and the line of the daily table's CTR.
    daily = pl.read_csv(out / "daily.csv").sort("date", "variant")
    traces = charts["CTR (clicks / impressions) per day, 95 % Wilson intervals"]["data"]
    for i, variant in enumerate(("A", "B")):
        upper, lower, line = traces[3 * i : 3 * i + 3]  # per variant: the band's edges, then the line
        rows = daily.filter(pl.col("variant") == variant)
        assert line["name"] == variant
        assert line["x"] == rows.get_column("date").cast(pl.Utf8).to_list()
        assert line["y"] == pytest.approx(rows.get_column("ctr").to_list())
        bands = [wilson_interval(c, n) for c, n in rows.select("clicks", "impressions").iter_rows()]
        assert upper["y"] == pytest.approx([b.high for b in bands])
        assert lower["y"] == pytest.approx([b.low for b in bands])

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("ab")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["experiment"] == "exp"
    assert run.data.metrics["B.ctr"] == pytest.approx(0.2)
    assert run.data.metrics["B_vs_A.ctr_p_value"] == pytest.approx(0.04767, abs=1e-4)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "ab_report")}
    assert "ab_report/report.html" in artifacts
