"""Live member profiles (serving.profiles.live) with real parts: the trained bundle, a real
gRPC server on loopback with a real event log, restarts, a hot swap to a later snapshot, and
two replicas sharing a real ``redis-server`` (skipped, saying why, when it is not installed;
``RECSYS_REQUIRE_REDIS=1``, set by ``.ci/run``, turns the skip into a failure)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import polars as pl
import pytest
from conftest import TrainedBundle

from benchmarks.redis_stack import RedisServer
from benchmarks.registry_stack import StackUnavailableError
from serving._proto.recsys.v1 import events_pb2, events_pb2_grpc
from serving._proto.recsys.v1 import profiles_pb2 as pb2
from serving._proto.recsys.v1 import profiles_pb2_grpc as pb2_grpc
from serving.api.background import BackgroundServer
from serving.api.profiles import ProfileStores
from serving.api.server import ServerOptions, _open_live_feed
from serving.bundle.format import MANIFEST, load_bundle
from serving.cli import add_serve_arguments, serve_command
from serving.events.log import EventLog
from serving.profiles.behaviour import (
    DAY_SECONDS,
    activity,
    activity_from_days,
    append_activity,
    day_activity,
)
from serving.profiles.build import row_rules
from serving.profiles.live.feed import LiveFeed
from serving.profiles.live.profiles import LiveProfiles
from serving.profiles.live.redis_store import ProfileStoreConfigError, check_url
from serving.profiles.live.spec import LiveSpec
from serving.profiles.live.stores import EmbeddedDeltaStore
from serving.profiles.rfm import segment
from serving.recommend.engine import TwoTowerEngine

pytestmark = pytest.mark.slow

VISIBLE_S = 5.0


def _lapsed_user(trained: TrainedBundle) -> str:
    """A member with an old last activity (a purchase now changes recency and segment)."""
    profiles = pl.read_parquet(trained.bundle / "profiles.parquet")
    row = profiles.sort(["last_activity", "user_id"]).row(0, named=True)
    return str(row["user_id"])


def _purchases(user: str, stamps: list[int], value: float = 40.0) -> list[events_pb2.Event]:
    return [
        events_pb2.Event(
            user_id=user,
            item_id="i1",
            event_type=events_pb2.EVENT_TYPE_PURCHASE,
            timestamp_ms=stamp * 1000,
            value=value,
        )
        for stamp in stamps
    ]


def _log(address: str, events: list[events_pb2.Event]) -> None:
    with grpc.insecure_channel(address) as channel:
        reply = events_pb2_grpc.EventCollectorStub(channel).LogEvents(
            events_pb2.LogEventsRequest(events=events), timeout=10
        )
    assert reply.accepted == len(events), reply.rejections


def _profile(address: str, user: str) -> pb2.UserProfile:
    with grpc.insecure_channel(address) as channel:
        reply: pb2.UserProfile = pb2_grpc.MemberProfilesStub(channel).GetUserProfile(
            pb2.GetUserProfileRequest(user_id=user), timeout=30
        )
    return reply


def _until(read: Callable[[], pb2.UserProfile], done: Callable[[pb2.UserProfile], bool]) -> pb2.UserProfile:
    deadline = time.monotonic() + VISIBLE_S
    while True:
        profile = read()
        if done(profile) or time.monotonic() > deadline:
            return profile
        time.sleep(0.05)


def _options(events_dir: Path, profile_store: str = "") -> ServerOptions:
    return ServerOptions(
        host="127.0.0.1",
        port=0,
        grace_seconds=0.5,
        max_workers=2,
        events_dir=events_dir,
        profile_store=profile_store,
    )


def _expected_segment(r: int, f: int, bins: int) -> str:
    return str(pl.select(segment(pl.lit(r), pl.lit(f), bins)).item())


# ------------------------------------------------------------------ the arithmetic


def test_snapshot_extended_by_later_events_equals_the_profile_of_all_events(trained: TrainedBundle) -> None:
    """append_activity(activity(before), activity(after)) == activity(all): the live update
    is the snapshot's own arithmetic, one batch at a time."""
    interactions = trained.interactions.lazy()
    section = trained.manifest["profiles"]
    types = section["event_types"]
    value_rows, monetary_rows = row_rules(
        section["monetary_source"], section["options"]["monetary_event_types"]
    )
    stamps = trained.interactions.get_column("timestamp")
    cut = int(stamps.quantile(0.6) or 0)
    before = interactions.filter(pl.col("timestamp") <= cut)
    after = interactions.filter(pl.col("timestamp") > cut)
    # The later events arrive in two batches (partials of the same day merged by the store's rule).
    store = EmbeddedDeltaStore()
    spec = LiveSpec.of(section)
    store.register(spec, "test-log")
    halves = after.collect().sample(fraction=1.0, shuffle=True, seed=3)
    for half in (halves.head(halves.height // 2), halves.tail(halves.height - halves.height // 2)):
        store.add(spec, day_activity(half.lazy(), types, value_rows, monetary_rows).collect())
    users = after.select("user_id").unique().collect().get_column("user_id").to_list()
    later = pl.concat([store.read(spec, u).parts for u in users])
    live = append_activity(
        activity(before, types, value_rows, monetary_rows),
        activity_from_days(later.lazy(), types),
        types,
    ).collect()
    whole = activity(interactions, types, value_rows, monetary_rows).collect()
    columns = [c for c in whole.columns if c not in ("average_value", "value_sum", "monetary_value")]
    joined = whole.join(live, on="user_id", suffix="_live")
    assert joined.height == whole.height
    for column in columns[1:]:
        assert joined.get_column(column).to_list() == joined.get_column(f"{column}_live").to_list(), column
    for column in ("average_value", "value_sum", "monetary_value"):
        diff = (joined.get_column(column) - joined.get_column(f"{column}_live")).abs().fill_null(0.0)
        assert diff.max() < 1e-6, column


def test_profile_store_urls_refuse_credentials_and_plain_text_beyond_loopback() -> None:
    check_url("redis://127.0.0.1:6379/0")
    check_url("rediss://cache.internal:6380/0")
    with pytest.raises(ProfileStoreConfigError, match="credentials in the URL"):
        check_url("redis://:secret@127.0.0.1:6379/0")
    with pytest.raises(ProfileStoreConfigError, match="only on loopback"):
        check_url("redis://10.0.0.5:6379/0")
    check_url("redis://10.0.0.5:6379/0", insecure=True)
    with pytest.raises(ProfileStoreConfigError, match="redis://"):
        check_url("memcached://127.0.0.1:1")
    with pytest.raises(ValueError, match="credentials"):
        ServerOptions(profile_store="redis://user:pw@127.0.0.1:6379/0")


# ------------------------------------------------------------------ one server


def test_log_events_update_the_served_profile_and_survive_a_restart(
    trained: TrainedBundle, tmp_path: Path
) -> None:
    user = _lapsed_user(trained)
    section = trained.manifest["profiles"]
    clock = int(section["clock"])
    bins = int(section["rfm"]["bins"])
    stamps = [clock + DAY_SECONDS, clock + 2 * DAY_SECONDS + 60]
    load = lambda: TwoTowerEngine.load(trained.bundle)  # noqa: E731
    with BackgroundServer(_options(tmp_path / "events"), load, start_timeout=30) as server:
        before = _profile(server.address, user)
        assert before.as_of == before.clock == clock
        assert before.live_events == 0
        _log(server.address, _purchases(user, stamps))
        _log(server.address, _purchases("brand-new-member", [stamps[0]], value=10.0))
        after = _until(lambda: _profile(server.address, user), lambda p: p.live_events == 2)
        newcomer = _until(lambda: _profile(server.address, "brand-new-member"), lambda p: p.live_events == 1)
    assert after.live_events == 2
    assert after.clock == clock  # the snapshot's clock is unchanged ...
    assert after.as_of == stamps[-1]  # ... the profile is as of the latest event applied
    assert after.behaviour.total_events == before.behaviour.total_events + 2
    assert after.behaviour.event_counts["purchase"] == before.behaviour.event_counts.get("purchase", 0) + 2
    assert after.behaviour.last_activity == stamps[-1]
    assert after.behaviour.first_activity == before.behaviour.first_activity
    assert after.behaviour.active_days == before.behaviour.active_days + 2
    assert after.rfm.recency_days == 0.0
    assert after.rfm.r_score == bins  # more recent than every member of the snapshot
    if after.rfm.monetary_source == "monetary":
        assert after.rfm.frequency == before.rfm.frequency + 2
        assert after.rfm.monetary == pytest.approx(before.rfm.monetary + 80.0)
    assert after.rfm.segment == _expected_segment(after.rfm.r_score, after.rfm.f_score, bins)
    assert after.rfm.segment != before.rfm.segment
    assert after.lifecycle.stage == pb2.LIFECYCLE_STAGE_ACTIVE
    assert after.lifecycle.recency_days == 0.0
    assert after.segment.segment_id == before.segment.segment_id  # snapshot-only parts kept
    assert newcomer.behaviour.total_events == 1
    assert newcomer.lifecycle.stage == pb2.LIFECYCLE_STAGE_NEW
    assert newcomer.as_of == stamps[-1]

    # A restart rebuilds the live part from the durable event log (nothing in memory survives).
    with BackgroundServer(_options(tmp_path / "events"), load, start_timeout=30) as server:
        again = _profile(server.address, user)
    assert again.live_events == 2
    assert again.as_of == after.as_of
    assert again.behaviour == after.behaviour
    assert again.rfm == after.rfm
    assert again.lifecycle == after.lifecycle


def test_events_logged_while_the_profiles_build_are_counted_once(
    trained: TrainedBundle, tmp_path: Path
) -> None:
    """Events before the first profile request (in the WAL, not yet in Parquet) and after it
    (applied live) each count once."""
    user = _lapsed_user(trained)
    clock = int(trained.manifest["profiles"]["clock"])
    load = lambda: TwoTowerEngine.load(trained.bundle)  # noqa: E731
    with BackgroundServer(_options(tmp_path / "events"), load, start_timeout=30) as server:
        _log(server.address, _purchases(user, [clock + 10, clock + 20]))  # still in the WAL
        first = _profile(server.address, user)  # built now: flush + Parquet
        _log(server.address, _purchases(user, [clock + 30]))
        later = _until(lambda: _profile(server.address, user), lambda p: p.live_events >= 3)
    assert first.live_events == 2
    assert later.live_events == 3
    assert later.as_of == clock + 30


# ------------------------------------------------------------------ hot swap


def _later_snapshot(trained: TrainedBundle, directory: Path, clock: int) -> Path:
    """A copy of the bundle whose profiles snapshot is dated ``clock`` (a later training)."""
    copy = directory / "bundle-later"
    shutil.copytree(trained.bundle, copy)
    manifest = json.loads((copy / MANIFEST).read_text(encoding="utf-8"))
    manifest["profiles"]["clock"] = clock
    manifest["model_version"] = f"{manifest['model_version']}-later"
    (copy / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return copy


def test_a_hot_swap_starts_from_the_new_snapshot_plus_the_events_after_it(
    trained: TrainedBundle, engine: TwoTowerEngine, tmp_path: Path
) -> None:
    user = _lapsed_user(trained)
    clock = int(trained.manifest["profiles"]["clock"])
    newer = TwoTowerEngine(load_bundle(_later_snapshot(trained, tmp_path, clock + 2 * DAY_SECONDS)))
    event_log = EventLog.open(tmp_path / "events")
    feed = LiveFeed(event_log, EmbeddedDeltaStore())
    try:
        stores = ProfileStores(feed)
        old = stores.of(engine)
        assert isinstance(old, LiveProfiles)
        future = event_log.submit(_purchases(user, [clock + DAY_SECONDS, clock + 3 * DAY_SECONDS]))
        future.result(10)
        feed.sync(10)
        assert old.get(user).live_events == 2
        swapped = stores.of(newer)  # the swap: the new snapshot, built from the log
        assert isinstance(swapped, LiveProfiles)
        record = swapped.get(user)
        assert record.live_events == 1  # the event before the new snapshot's clock is in it
        assert record.as_of == clock + 3 * DAY_SECONDS
        assert record.row["last_activity"] == clock + 3 * DAY_SECONDS
        event_log.submit(_purchases(user, [clock + 4 * DAY_SECONDS])).result(10)
        feed.sync(10)
        assert swapped.get(user).live_events == 2
        assert old.get(user).live_events == 3  # the old snapshot still follows (until released)
    finally:
        feed.close()
        event_log.close()


# ------------------------------------------------------------------ two replicas, one Redis


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    try:
        server = RedisServer()
    except StackUnavailableError as exc:
        if os.environ.get("RECSYS_REQUIRE_REDIS") == "1":
            pytest.fail(f"RECSYS_REQUIRE_REDIS=1 but {exc}")
        pytest.skip(str(exc))
    with server:
        yield server


def test_an_event_sent_to_one_replica_shows_on_the_other(
    trained: TrainedBundle, tmp_path: Path, redis_server: RedisServer
) -> None:
    user = _lapsed_user(trained)
    clock = int(trained.manifest["profiles"]["clock"])
    load = lambda: TwoTowerEngine.load(trained.bundle)  # noqa: E731
    with (
        BackgroundServer(_options(tmp_path / "a", redis_server.url), load, start_timeout=30) as a,
        BackgroundServer(_options(tmp_path / "b", redis_server.url), load, start_timeout=30) as b,
    ):
        assert _profile(b.address, user).live_events == 0  # B builds the shared partials
        _log(a.address, _purchases(user, [clock + DAY_SECONDS]))
        seen = _until(lambda: _profile(b.address, user), lambda p: p.live_events == 1)
        assert seen.live_events == 1
        assert seen.as_of == clock + DAY_SECONDS
        assert seen.rfm.recency_days == 0.0
        _log(b.address, _purchases(user, [clock + DAY_SECONDS + 5]))
        both = _until(lambda: _profile(a.address, user), lambda p: p.live_events == 2)
        assert both.live_events == 2
    # A replica restarted against the same Redis finds the partials there (not rebuilt, not doubled).
    with BackgroundServer(_options(tmp_path / "a", redis_server.url), load, start_timeout=30) as a:
        assert _profile(a.address, user).live_events == 2


def test_a_new_snapshot_gets_the_events_every_replica_logged_before_it_was_registered(
    trained: TrainedBundle, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Replicas keep separate event logs: events B accepted after the snapshot's clock but
    before any replica registered the snapshot reach it when B joins (B adds its own log)."""
    user = _lapsed_user(trained)
    clock = int(trained.manifest["profiles"]["clock"])
    load = lambda: TwoTowerEngine.load(trained.bundle)  # noqa: E731
    with (
        BackgroundServer(_options(tmp_path / "a", redis_server.url), load, start_timeout=30) as a,
        BackgroundServer(_options(tmp_path / "b", redis_server.url), load, start_timeout=30) as b,
    ):
        _log(b.address, _purchases(user, [clock + 100, clock + 200]))  # nobody follows the snapshot yet
        _log(a.address, _purchases(user, [clock + 300]))
        seen = _until(lambda: _profile(a.address, user), lambda p: p.live_events == 3)
        assert seen.live_events == 3
        assert seen.as_of == clock + 300
        on_b = _profile(b.address, user)
        assert on_b.live_events == 3  # B's own profile request adds nothing twice
        assert on_b.behaviour == seen.behaviour


def test_workers_default_to_snapshot_profiles_and_refuse_an_embedded_store(tmp_path: Path) -> None:
    """With --workers N an in-process store per worker would diverge: the default is off (a
    warning says so) and an explicit embedded store is refused."""
    event_log = EventLog.open(tmp_path / "events")
    try:
        worker = ServerOptions(events_dir=tmp_path / "events", reuse_port=True)
        assert _open_live_feed(worker, event_log) is None
        single = _open_live_feed(ServerOptions(events_dir=tmp_path / "events"), event_log)
        assert single is not None
        single.close()
        assert (
            _open_live_feed(ServerOptions(events_dir=tmp_path / "events", profile_store="off"), event_log)
            is None
        )
    finally:
        event_log.close()
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(
        ["--bundle", str(tmp_path), "--workers", "2", "--port", "1", "--profile-store", "embedded"]
    )
    with pytest.raises(ValueError, match="--profile-store embedded"):
        serve_command(args)
