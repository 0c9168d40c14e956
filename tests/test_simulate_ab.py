"""The A/B simulation's user model (pure) and one small closed loop against a real server
process: experiments file (two-tower vs popularity), Recommend, LogEvents, SIGTERM, report."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from benchmarks.simulate_ab import (
    CONTROL,
    EXPERIMENT,
    TREATMENT,
    SimulationOptions,
    play,
    session_events,
    sessions_of,
    start_server,
    stop_server,
    time_split,
    write_experiments_file,
)
from serving._proto.recsys.v1 import events_pb2
from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving.events.reader import read_events
from training.reports.ab_report import build_report


def _heldout(user: str, count: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [user] * count,
            "item_id": [f"i{n}" for n in range(count)],
            "timestamp": [1_000_000 + n for n in range(count)],
            "event_type": ["rating"] * count,
            "value": [float(1 + n % 5) for n in range(count)],
        }
    )


def test_sessions_replay_the_held_out_future_in_time_order() -> None:
    (sessions,) = sessions_of(_heldout("u1", 25), size=10, max_recent=15)
    assert [s.index for s in sessions] == [0, 1, 2]
    assert sessions[0].recent == ()
    assert sessions[2].recent == tuple(f"i{n}" for n in range(5, 20))  # the last 15 before it
    assert set(sessions[1].future) == {f"i{n}" for n in range(10, 25)}
    assert sessions[1].timestamp_ms == 1_000_010 * 1000


def test_a_shown_future_item_is_clicked_once_and_bought_when_rated_high() -> None:
    (sessions,) = sessions_of(_heldout("u1", 25), size=10, max_recent=50)
    shown = pb2.RecommendResponse(
        items=[pb2.ScoredItem(item_id=i) for i in ("i13", "i2", "i14", "nope")],
        variant=TREATMENT,
        model_version="m1",
    )
    clicked: set[str] = set()
    events = session_events(sessions[1], shown, "r1", clicked, purchase_rating=4.0)
    kinds = [(e.item_id, e.event_type) for e in events]
    impression, click, purchase = (
        events_pb2.EVENT_TYPE_IMPRESSION,
        events_pb2.EVENT_TYPE_CLICK,
        events_pb2.EVENT_TYPE_PURCHASE,
    )
    # i13 rated 4 (future: click + purchase), i2 is in the past (no click), i14 rated 5.
    assert kinds == [
        ("i13", impression), ("i13", click), ("i13", purchase),
        ("i2", impression),
        ("i14", impression), ("i14", click), ("i14", purchase),
        ("nope", impression),
    ]  # fmt: skip
    assert {e.value for e in events if e.event_type == purchase} == {4.0, 5.0}
    assert all(e.variant == TREATMENT and e.request_id == "r1" and e.experiment == EXPERIMENT for e in events)
    assert clicked == {"i13", "i14"}
    again = session_events(sessions[1], shown, "r2", clicked, purchase_rating=4.0)
    assert all(e.event_type == impression for e in again)  # never clicked twice


@pytest.mark.slow
def test_the_closed_loop_against_a_real_server(trained: object, tmp_path: Path) -> None:
    interactions: pl.DataFrame = trained.interactions  # type: ignore[attr-defined]
    _, heldout = time_split(interactions, 0.8)
    users = sessions_of(heldout, size=10, max_recent=50)[:40]
    experiments = write_experiments_file(tmp_path / "experiments.toml", trained.bundle)  # type: ignore[attr-defined]
    events_dir = tmp_path / "events"
    process, address = start_server(trained.bundle, experiments, events_dir, tmp_path / "serve.log")  # type: ignore[attr-defined]
    try:
        stats = play(address, users, SimulationOptions(client_threads=4))
    finally:
        stop_server(process)
    assert stats.rejected == 0
    assert set(stats.by_variant) == {TREATMENT, CONTROL}
    assert stats.sessions == sum(len(s) for s in users)
    events = read_events(events_dir)
    assert events.height == stats.events
    report = build_report(events, EXPERIMENT, control=CONTROL, bootstrap_resamples=200)
    assert sorted(report.ranking) == [CONTROL, TREATMENT]
    assert 0 < sum(v.impressions for v in report.variants) <= 10 * stats.sessions
