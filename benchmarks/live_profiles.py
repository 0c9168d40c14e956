"""Event -> profile visible: live member profiles under a steady event stream.

    python -m benchmarks.live_profiles --bundle DIR [--rate 1000] [--seconds 20] [--stores embedded,redis]

For each store, starts real server processes (``python -m serving``, the production
entry point) on loopback with an event log in a temporary directory:

* ``embedded``: one server; events and profile reads go to it;
* ``redis``: a throw-away ``redis-server`` (:mod:`benchmarks.redis_stack`) and two replicas
  sharing it (``--profile-store redis://...``); events go to replica A, profiles are read
  from replica B (an event crossing the fleet).

A load thread sends ``--rate`` events/s (``LogEvents`` batches every 50 ms) for bundle
members, timestamps after the snapshot's clock. A probe thread, every ``--probe-ms``, sends
one purchase for a dedicated probe member inside the same stream and polls
``GetUserProfile`` (every 5 ms) until its ``live_events`` counts it: the latency is from the
send to the first answer that shows it. Printed per store: events sent, achieved rate, probe
count, p50 / p99 / max latency (target p99 <= 2 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import polars as pl

from benchmarks.fleet import Replica
from benchmarks.redis_stack import RedisServer
from serving._proto.recsys.v1 import events_pb2, events_pb2_grpc
from serving._proto.recsys.v1 import profiles_pb2 as pb2
from serving._proto.recsys.v1 import profiles_pb2_grpc as pb2_grpc

PERIOD_S = 0.05
PROBE_USER = "live-profile-probe"
TYPES = (
    events_pb2.EVENT_TYPE_IMPRESSION,
    events_pb2.EVENT_TYPE_CLICK,
    events_pb2.EVENT_TYPE_ADD_TO_CART,
    events_pb2.EVENT_TYPE_PURCHASE,
)


def _event(user: str, stamp_s: int, kind: events_pb2.EventType) -> events_pb2.Event:
    value = 25.0 if kind == events_pb2.EVENT_TYPE_PURCHASE else 0.0
    return events_pb2.Event(
        user_id=user, item_id="i1", event_type=kind, timestamp_ms=stamp_s * 1000, value=value
    )


def _load(address: str, users: list[str], clock: int, rate: int, seconds: float, sent: list[int]) -> None:
    per_batch = max(1, round(rate * PERIOD_S))
    rng = random.Random(7)
    with grpc.insecure_channel(address) as channel:
        stub = events_pb2_grpc.EventCollectorStub(channel)  # type: ignore[no-untyped-call]
        started = time.monotonic()
        tick = 0
        while (now := time.monotonic()) - started < seconds:
            stamp = clock + 1 + int(now - started)
            batch = [_event(rng.choice(users), stamp, rng.choice(TYPES)) for _ in range(per_batch)]
            stub.LogEvents(events_pb2.LogEventsRequest(events=batch), timeout=10)
            sent[0] += len(batch)
            tick += 1
            time.sleep(max(0.0, started + tick * PERIOD_S - time.monotonic()))


def _probe(send_to: str, read_from: str, clock: int, seconds: float, period_s: float) -> list[float]:
    latencies: list[float] = []
    with grpc.insecure_channel(send_to) as a, grpc.insecure_channel(read_from) as b:
        log = events_pb2_grpc.EventCollectorStub(a)  # type: ignore[no-untyped-call]
        profiles = pb2_grpc.MemberProfilesStub(b)  # type: ignore[no-untyped-call]
        started = time.monotonic()
        count = 0
        while time.monotonic() - started < seconds:
            count += 1
            sent_at = time.monotonic()
            stamp = clock + 1 + int(sent_at - started)
            log.LogEvents(
                events_pb2.LogEventsRequest(
                    events=[_event(PROBE_USER, stamp, events_pb2.EVENT_TYPE_PURCHASE)]
                ),
                timeout=10,
            )
            while True:
                try:
                    seen = profiles.GetUserProfile(pb2.GetUserProfileRequest(user_id=PROBE_USER), timeout=10)
                    if seen.live_events >= count:
                        break
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                if time.monotonic() - sent_at > 30:
                    raise RuntimeError("probe event not visible within 30 s")
                time.sleep(0.005)
            latencies.append(time.monotonic() - sent_at)
            time.sleep(max(0.0, sent_at + period_s - time.monotonic()))
    return latencies


@contextlib.contextmanager
def _servers(store: str, bundle: Path, work: Path) -> Iterator[tuple[str, str]]:
    """(address events go to, address profiles are read from)."""
    base = ["--bundle", str(bundle), "--threads", "2"]
    if store == "embedded":
        with Replica([*base, "--events-dir", str(work / "events")], work / "server.log") as one:
            one.wait_serving()
            yield one.address, one.address
        return
    with RedisServer() as redis:
        shared = ["--profile-store", redis.url]
        with (
            Replica([*base, "--events-dir", str(work / "a"), *shared], work / "a.log", name="A") as a,
            Replica([*base, "--events-dir", str(work / "b"), *shared], work / "b.log", name="B") as b,
        ):
            a.wait_serving()
            b.wait_serving()
            yield a.address, b.address


def run(store: str, bundle: Path, rate: int, seconds: float, probe_ms: float) -> dict[str, object]:
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    clock = int(manifest["profiles"]["clock"])
    users = pl.read_parquet(bundle / "profiles.parquet").get_column("user_id").cast(pl.Utf8).to_list()
    with (
        tempfile.TemporaryDirectory(prefix="recsys-live-") as tmp,
        _servers(store, bundle, Path(tmp)) as (a, b),
    ):
        # The first request builds the live state from the event log.
        with grpc.insecure_channel(b) as channel, contextlib.suppress(grpc.RpcError):
            stub = pb2_grpc.MemberProfilesStub(channel)  # type: ignore[no-untyped-call]
            stub.GetUserProfile(pb2.GetUserProfileRequest(user_id=users[0]), timeout=60)
        sent = [0]
        load = threading.Thread(target=_load, args=(a, users, clock, rate, seconds, sent), daemon=True)
        started = time.monotonic()
        load.start()
        latencies = _probe(a, b, clock, seconds, probe_ms / 1000)
        load.join()
        elapsed = time.monotonic() - started
    values = np.asarray(latencies) * 1000
    return {
        "store": store,
        "events": sent[0] + len(latencies),
        "rate_per_s": round((sent[0] + len(latencies)) / elapsed, 1),
        "probes": len(latencies),
        "p50_ms": round(float(np.percentile(values, 50)), 1),
        "p99_ms": round(float(np.percentile(values, 99)), 1),
        "max_ms": round(float(values.max()), 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle with profiles")
    parser.add_argument("--rate", type=int, default=1000, help="events per second (default 1000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the stream (default 20)")
    parser.add_argument(
        "--probe-ms", type=float, default=100.0, help="one probe event every N ms (default 100)"
    )
    parser.add_argument("--stores", default="embedded,redis", help="comma-separated: embedded, redis")
    args = parser.parse_args(argv)
    for store in args.stores.split(","):
        print(json.dumps(run(store.strip(), args.bundle, args.rate, args.seconds, args.probe_ms)), flush=True)


if __name__ == "__main__":
    main()
