"""``recsys dashboard``: the served page over a real event log, the trained bundle and campaign files;
its numbers match the log, it needs no network, and (where Chromium is installed) the charts render."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from conftest import TrainedBundle
from plotly_page import assert_self_contained, figures

from serving._proto.recsys.v1 import events_pb2
from serving.events.log import EventLog
from serving.profiles.store import read_profiles
from training.cli.main import main
from training.reports import report_check
from training.reports.dashboard_kpis import daily_kpis
from training.reports.dashboard_server import DashboardServer, make_server, start_in_thread

WIRE = {"impression": 1, "click": 2, "add_to_cart": 3, "purchase": 4}


def _event(
    user: str, item: str, kind: str, variant: str, day: int, value: float = 0.0, experiment: str = "exp"
) -> events_pb2.Event:
    return events_pb2.Event(
        user_id=user,
        item_id=item,
        event_type=WIRE[kind],  # type: ignore[arg-type]
        experiment=experiment if variant else "",
        variant=variant,
        request_id=f"r-{user}-{day}",
        timestamp_ms=int(datetime(2026, 3, day, 12, tzinfo=UTC).timestamp() * 1000),
        value=value,
    )


def _members(trained: TrainedBundle) -> tuple[str, str]:
    """Two members of the bundle's profiles in different lifecycle stages (where there are two)."""
    profiles = read_profiles(trained.bundle, trained.manifest).sort("user_id")
    first = profiles.row(0, named=True)
    other = profiles.filter(pl.col("lifecycle") != first["lifecycle"])
    second = (other if other.height else profiles.slice(1)).row(0, named=True)
    return first["user_id"], second["user_id"]


def _events(m1: str, m2: str) -> list[events_pb2.Event]:
    """Day 1: a0..a3 (A) and b0..b2 (B) see 5 items each; A: 2 clicks, B: 6 clicks; a0 buys 10.0
    and b0 buys 30.0. Day 2: a0 and b1 see 5 items (A 1 click, B 0) and a0 buys again (20.0);
    bundle members outside the experiment: m1 buys for 50.0, m2 adds to the cart."""
    events = []
    for user, variant, clicks in (("a0", "A", 1), ("a1", "A", 1), ("a2", "A", 0), ("a3", "A", 0)):
        events += [_event(user, f"i{i}", "impression", variant, 1) for i in range(5)]
        events += [_event(user, f"i{i}", "click", variant, 1) for i in range(clicks)]
    for user in ("b0", "b1", "b2"):
        events += [_event(user, f"i{i}", "impression", "B", 1) for i in range(5)]
        events += [_event(user, f"i{i}", "click", "B", 1) for i in range(2)]
    events += [_event("a0", "i0", "purchase", "A", 1, 10.0), _event("b0", "i0", "purchase", "B", 1, 30.0)]
    events += [_event("a0", f"i{i}", "impression", "A", 2) for i in range(5)]
    events += [_event("a0", "i1", "click", "A", 2), _event("a0", "i1", "purchase", "A", 2, 20.0)]
    events += [_event("b1", f"i{i}", "impression", "B", 2) for i in range(5)]
    events += [_event(m1, "i0", "purchase", "", 2, 50.0), _event(m2, "i0", "add_to_cart", "", 2)]
    return events


@pytest.fixture(scope="module")
def event_dir(tmp_path_factory: pytest.TempPathFactory, trained: TrainedBundle) -> Path:
    root = tmp_path_factory.mktemp("dashboard") / "events"
    log = EventLog.open(root)
    log.submit(_events(*_members(trained))).result(10)
    log.close()
    return root


@pytest.fixture(scope="module")
def campaigns_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Campaign "spring", sent 2026-03-01 00:00 UTC: a0..a3 contacted, b0..b2 held out (the files
    ``recsys recommend --campaign`` writes: the campaign file, the list and the control list)."""
    root = tmp_path_factory.mktemp("campaigns")
    (root / "spring.csv").write_text("user_id\na0\na1\na2\na3\n")
    (root / "spring.control.csv").write_text("user_id\nb0\nb1\nb2\n")
    campaign = {
        "campaign": "spring",
        "sent_at": int(datetime(2026, 3, 1, tzinfo=UTC).timestamp()),
        "sent_at_iso": "2026-03-01T00:00:00+00:00",
        "list": "spring.csv",
        "control_list": "spring.control.csv",
        "base_members": 7,
    }
    (root / "spring.campaign.json").write_text(json.dumps(campaign))
    return root


@pytest.fixture(scope="module")
def server(trained: TrainedBundle, event_dir: Path, campaigns_dir: Path) -> Iterator[DashboardServer]:
    server = make_server(trained.bundle, event_dir, campaigns_dir=campaigns_dir, port=0)
    start_in_thread(server)
    yield server
    server.shutdown()
    server.server_close()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as response:
        body: bytes = response.read()
        assert response.headers["Content-Type"].startswith("text/html")
    return body.decode("utf-8")


def test_page_numbers_match_the_event_log(server: DashboardServer, trained: TrainedBundle) -> None:
    page = _get(server.url)
    assert trained.model_version in page
    charts = figures(page)

    (active,) = charts["Active members per day"]["data"]
    assert active["x"] == ["2026-03-01", "2026-03-02"]
    assert active["y"] == [7, 4]  # a0..a3, b0..b2; then a0, b1, m1 and m2
    (ctr,) = charts["CTR (clicks / impressions)"]["data"]
    assert ctr["y"] == pytest.approx([8 / 35, 1 / 10])
    (conversion,) = charts["Conversion (buyers / active members)"]["data"]
    assert conversion["y"] == pytest.approx([2 / 7, 2 / 4])
    (order_value,) = charts["Average order value"]["data"]
    assert order_value["y"] == pytest.approx([20.0, 35.0])
    (repurchase,) = charts["Repurchase share (buyers who bought before)"]["data"]
    assert repurchase["y"] == pytest.approx([0.0, 0.5])  # a0 bought on day 1 and again; m1 first
    horizon = trained.manifest["profiles"]["churn"]["horizon_days"]
    (churned,) = charts[f"Churned share (no event for {horizon:g} days)"]["data"]
    assert churned["y"] == [0.0, 0.0]  # two days of log: nobody has been away for the horizon

    ab = charts["Experiment exp: CTR and conversion (95 % CI)"]["data"]
    by_metric = {trace["name"]: dict(zip(trace["x"], trace["y"], strict=True)) for trace in ab}
    assert by_metric["ctr"] == pytest.approx({"A": 3 / 25, "B": 6 / 20})
    assert by_metric["conversion"] == pytest.approx({"A": 1 / 4, "B": 1 / 3})

    assert trained.manifest["profiles"]  # the bundle has profiles: the lifecycle chart counts every member
    (stages,) = charts["Members per lifecycle stage"]["data"]
    assert sum(stages["y"]) == trained.interactions.get_column("user_id").n_unique()


def test_lifecycle_campaign_and_health_charts_match_the_log(
    server: DashboardServer, trained: TrainedBundle
) -> None:
    charts = figures(_get(server.url))

    # Per lifecycle stage, over the log's events of bundle members only (m1 bought 50.0, m2 did not).
    m1, m2 = _members(trained)
    stage_of = dict(
        read_profiles(trained.bundle, trained.manifest).select("user_id", "lifecycle").iter_rows()
    )
    expected: dict[str, list[float]] = {}
    for member, bought, revenue in ((m1, 1.0, 50.0), (m2, 0.0, 0.0)):
        members, buyers, total = expected.get(stage_of[member], [0.0, 0.0, 0.0])
        expected[stage_of[member]] = [members + 1, buyers + bought, total + revenue]
    conversion, revenue = charts["Per lifecycle stage: conversion and revenue per member in the log"]["data"]
    assert dict(zip(conversion["x"], conversion["y"], strict=True)) == pytest.approx(
        {stage: buyers / members for stage, (members, buyers, _) in expected.items()}
    )
    assert dict(zip(revenue["x"], revenue["y"], strict=True)) == pytest.approx(
        {stage: total / members for stage, (members, _, total) in expected.items()}
    )

    # Campaign "spring" over 14 days: contacted a0..a3 (a0, a1 clicked; a0 bought 10 + 20), control
    # b0..b2 (all clicked; b0 bought 30).
    (reach,) = charts["Latest campaigns: reach (members contacted)"]["data"]
    assert (reach["x"], reach["y"]) == (["spring 2026-03-01"], [4])
    contacted, control = charts["Campaign response rate: contacted vs control"]["data"]
    assert (contacted["y"], control["y"]) == ([0.5], [1.0])
    response, converted = charts["Campaign uplift over the control (95 % CI)"]["data"]
    assert response["y"] == pytest.approx([0.5 - 1.0])
    assert converted["y"] == pytest.approx([1 / 4 - 1 / 3], abs=1e-6)
    assert response["error_y"]["array"][0] > 0
    assert response["error_y"]["arrayminus"][0] > 0
    (revenue_uplift,) = charts["Campaign uplift in revenue per member (95 % CI)"]["data"]
    assert revenue_uplift["y"] == pytest.approx([30 / 4 - 30 / 3], abs=1e-6)

    # Model version and health: the bundle's own evaluation figures.
    health = charts[f"Model {trained.model_version}: health"]["data"]
    values = {trace["title"]["text"]: trace["value"] for trace in health}
    k = trained.manifest["config"]["eval"]["k"]
    assert values[f"recall@{k} (offline)"] == pytest.approx(trained.manifest["metrics"][f"recall@{k}"])
    assert values["churn AUC"] == pytest.approx(trained.manifest["profiles"]["churn"]["auc"])


def test_churned_share_counts_members_away_for_the_horizon() -> None:
    """a: days 1, 5, 9; b: days 1, 9; c: day 3; horizon 3 days. Day 5: b (away 4 days) of a, b, c;
    day 9: c (away 6 days); b came back."""
    days = {"a": (1, 5, 9), "b": (1, 9), "c": (3,)}
    events = pl.DataFrame(
        [
            {"user_id": user, "timestamp": datetime(2026, 3, day, 12, tzinfo=UTC), "event_type": "click"}
            | {"value": None}
            for user, active in days.items()
            for day in active
        ],
        schema={
            "user_id": pl.Utf8,
            "timestamp": pl.Datetime("ms", "UTC"),
            "event_type": pl.Utf8,
            "value": pl.Float64,
        },
    )
    kpis = daily_kpis(events, churn_days=3)
    assert kpis.get_column("seen_members").to_list() == [2, 3, 3, 3]
    assert kpis.get_column("churned_members").to_list() == [0, 0, 1, 1]
    assert kpis.get_column("churned_share").to_list() == pytest.approx([0.0, 0.0, 1 / 3, 1 / 3])
    with pytest.raises(ValueError, match="churn_days"):
        daily_kpis(events, churn_days=0)


def test_page_is_self_contained_and_rebuilt_per_request(server: DashboardServer, event_dir: Path) -> None:
    page = _get(server.url)
    assert_self_contained(page)
    assert page.count("plotly.js v") == 1  # the library once, however many charts

    log = EventLog.open(event_dir)
    log.submit([_event("n0", "i0", "impression", "A", 3)]).result(10)
    log.close()
    (active,) = figures(_get(server.url))["Active members per day"]["data"]
    assert active["y"] == [7, 4, 1]

    with pytest.raises(urllib.error.HTTPError) as error:
        _get(server.url + "other")
    assert error.value.code == 404


def test_bad_flags_are_refused_with_the_reason(
    trained: TrainedBundle, event_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match=r"host '0\.0\.0\.0': not loopback.*--insecure"):
        make_server(trained.bundle, event_dir, host="0.0.0.0")
    with pytest.raises(ValueError, match="port 70000"):
        make_server(trained.bundle, event_dir, port=70000)
    with pytest.raises(ValueError, match=r"--campaigns .*: not a directory"):
        make_server(trained.bundle, event_dir, campaigns_dir=tmp_path / "none")
    with pytest.raises(ValueError, match="--campaign-days 0"):
        make_server(trained.bundle, event_dir, campaign_days=0)
    argv = ["dashboard", "--bundle", str(trained.bundle), "--events", str(tmp_path / "none"), "--port", "0"]
    assert main(argv) == 2
    assert "events" in capsys.readouterr().err


@pytest.mark.skipif(
    report_check.find_browser() is None, reason="no Chromium installed (apt-get install chromium)"
)
def test_charts_render_in_headless_chromium(server: DashboardServer) -> None:
    page = _get(server.url)
    # Health, 6 KPI charts, the experiment, 2 per lifecycle stage and segment, 4 of the campaign:
    # every one drawn by plotly.js in the browser.
    assert page.count("Plotly.newPlot") >= 16
    assert report_check.drawn_charts(server.url) == page.count("Plotly.newPlot")
