"""``recsys dashboard``: the served page over a real event log and the trained bundle; its numbers
match the log, it needs no network, and (where Chromium is installed) the charts render."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import TrainedBundle

from serving._proto.recsys.v1 import events_pb2
from serving.events.log import EventLog
from training.cli.main import main
from training.reports.dashboard_server import DashboardServer, make_server, start_in_thread

WIRE = {"impression": 1, "click": 2, "purchase": 4}


def _event(user: str, item: str, kind: str, variant: str, day: int, value: float = 0.0) -> events_pb2.Event:
    return events_pb2.Event(
        user_id=user,
        item_id=item,
        event_type=WIRE[kind],  # type: ignore[arg-type]
        experiment="exp",
        variant=variant,
        request_id=f"r-{user}-{day}",
        timestamp_ms=int(datetime(2026, 3, day, 12, tzinfo=UTC).timestamp() * 1000),
        value=value,
    )


def _events() -> list[events_pb2.Event]:
    """Day 1: a0..a3 (A) and b0..b2 (B) see 5 items each; A: 2 clicks, B: 6 clicks; a0 buys 10.0
    and b0 buys 30.0. Day 2: a0 and b1 see 5 items (A 1 click, B 0) and a0 buys again (20.0)."""
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
    return events


@pytest.fixture(scope="module")
def event_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dashboard") / "events"
    log = EventLog.open(root)
    log.submit(_events()).result(10)
    log.close()
    return root


@pytest.fixture(scope="module")
def server(trained: TrainedBundle, event_dir: Path) -> Iterator[DashboardServer]:
    server = make_server(trained.bundle, event_dir, port=0)
    start_in_thread(server)
    yield server
    server.shutdown()
    server.server_close()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as response:
        body: bytes = response.read()
        assert response.headers["Content-Type"].startswith("text/html")
    return body.decode("utf-8")


def _figures(page: str) -> dict[str, dict[str, Any]]:
    """The figures of the page by title: the data and layout each ``Plotly.newPlot`` call gets."""
    decoder = json.JSONDecoder()
    figures = {}
    for match in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*', page):
        data, end = decoder.raw_decode(page, match.end())
        layout, _ = decoder.raw_decode(page, page.index("{", end))
        title = layout["title"]["text"] if isinstance(layout["title"], dict) else layout["title"]
        figures[title] = {"data": data, "layout": layout}
    return figures


def test_page_numbers_match_the_event_log(server: DashboardServer, trained: TrainedBundle) -> None:
    page = _get(server.url)
    assert trained.model_version in page
    figures = _figures(page)

    (active,) = figures["Active members per day"]["data"]
    assert active["x"] == ["2026-03-01", "2026-03-02"]
    assert active["y"] == [7, 2]  # a0..a3, b0..b2; then a0 and b1
    (ctr,) = figures["CTR (clicks / impressions)"]["data"]
    assert ctr["y"] == pytest.approx([8 / 35, 1 / 10])
    (conversion,) = figures["Conversion (buyers / active members)"]["data"]
    assert conversion["y"] == pytest.approx([2 / 7, 1 / 2])
    (order_value,) = figures["Average order value"]["data"]
    assert order_value["y"] == pytest.approx([20.0, 20.0])
    (repurchase,) = figures["Repurchase share (buyers who bought before)"]["data"]
    assert repurchase["y"] == pytest.approx([0.0, 1.0])  # a0 bought on day 1, again on day 2

    ab = figures["Experiment exp: CTR and conversion (95 % CI)"]["data"]
    by_metric = {trace["name"]: dict(zip(trace["x"], trace["y"], strict=True)) for trace in ab}
    assert by_metric["ctr"] == pytest.approx({"A": 3 / 25, "B": 6 / 20})
    assert by_metric["conversion"] == pytest.approx({"A": 1 / 4, "B": 1 / 3})

    profiles = trained.manifest["profiles"]
    assert profiles  # the bundle has profiles: the lifecycle chart counts every member
    (stages,) = figures["Members per lifecycle stage"]["data"]
    assert sum(stages["y"]) == trained.interactions.get_column("user_id").n_unique()


def test_page_is_self_contained_and_rebuilt_per_request(server: DashboardServer, event_dir: Path) -> None:
    page = _get(server.url)
    assert re.search(r"<script[^>]+src=", page) is None
    # Outside the scripts no URL at all; inside, plotly.js names sites (its logo link, map tiles
    # attributions) but loads nothing: no script has a src and there is no map chart.
    markup = re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.DOTALL)
    assert re.search(r"https?://", markup) is None
    assert "plotly.js" in page.lower()
    assert len(page) > 1_000_000  # the library itself, inlined

    log = EventLog.open(event_dir)
    log.submit([_event("n0", "i0", "impression", "A", 3)]).result(10)
    log.close()
    (active,) = _figures(_get(server.url))["Active members per day"]["data"]
    assert active["y"] == [7, 2, 1]

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
    argv = ["dashboard", "--bundle", str(trained.bundle), "--events", str(tmp_path / "none"), "--port", "0"]
    assert main(argv) == 2
    assert "events" in capsys.readouterr().err


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)"
)
def test_charts_render_in_headless_chromium(server: DashboardServer, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium is not None
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            server.url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    dom = result.stdout
    assert dom.count('class="plot-container') >= 7  # 5 KPI charts, the experiment, the lifecycle stages
    assert 'class="main-svg"' in dom
