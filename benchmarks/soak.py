"""Soak test: hours-long load at half capacity with a mix of every RPC (not a CI test).

``python -m benchmarks.soak --bundle DIR [--minutes 30] [--secure] [--json F]``

1. Starts the real server (``python -m serving``: the production entry point) on loopback
   with an event log (``--events-dir``), and with ``--secure`` TLS and a bearer token (a
   throwaway CA, certificate and token made for the run, as in :mod:`benchmarks.load`).
2. Measures its capacity for ``--capacity-seconds``: ``--threads`` client threads each
   calling the mix back to back (closed loop); capacity = completed calls per second.
3. Soaks for ``--minutes`` at ``--load`` (default 0.5) of that capacity: Poisson arrivals
   of the mix sent without waiting for answers (open loop, gRPC futures), so a slow
   server shows as latency, not as a lower offered rate.

The mix (every request valid): Recommend 55 % (a third with filters / exclusions / recent
items / diversity), BatchRecommend of 8 users 5 %, SimilarItems 10 %, GetUserEmbedding 5 %,
GetUserProfile 5 %, FindSimilarUsers of 20 seeds 5 %, LogEvents of 10 events 15 %.

Reports per ``--window-s`` window (default 60 s): calls, errors (any status but OK), p50 /
p99 / max latency and the server's RSS; at the end the error count (must be 0), the p99
trend and RSS at the end of the first window and at the end (growth must stay within
10 %). Exits non-zero when either fails. Every acknowledged event is checked to be in the
event log after the server's graceful stop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from benchmarks.load import HOST, Process, Security, free_port, wait_until
from serving._proto.recsys.v1 import (
    audiences_pb2,
    audiences_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    profiles_pb2,
    profiles_pb2_grpc,
)
from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api import healthcheck
from serving.client import open_channel

CALL_TIMEOUT_S = 10.0
ALL_SCOPES = ("recommender", "profiles", "audiences", "events")


@dataclass
class Window:
    """One reporting window of the soak."""

    end_s: float
    calls: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    rss_mib: float = math.nan
    error_codes: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        values = sorted(self.latencies_ms)
        return {
            "end_s": round(self.end_s, 1),
            "calls": self.calls,
            "errors": self.errors,
            "error_codes": self.error_codes,
            "p50_ms": _percentile(values, 0.50),
            "p99_ms": _percentile(values, 0.99),
            "max_ms": values[-1] if values else math.nan,
            "rss_mib": round(self.rss_mib, 1),
        }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    return round(values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))], 2)


class Mix:
    """Builds the calls of the mix (each a ``future`` factory) from the bundle's ids."""

    def __init__(self, channel: grpc.Channel, bundle: Path, seed: int) -> None:
        import polars as pl

        self.rng = random.Random(seed)
        users = pl.read_parquet(bundle / "users.parquet", columns=["user_id"]).get_column("user_id")
        items = pl.read_parquet(bundle / "items.parquet")
        self.users = [str(u) for u in users]
        self.items = [str(i) for i in items.get_column("item_id")]
        self.categorical = next(
            (c for c, t in items.schema.items() if t == pl.String and c != "item_id"), None
        )
        self.values = (
            [str(v) for v in items.get_column(self.categorical).drop_nulls().unique().head(5)]
            if self.categorical
            else []
        )
        self.recommender = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
        self.profiles = profiles_pb2_grpc.MemberProfilesStub(channel)  # type: ignore[no-untyped-call]
        self.audiences = audiences_pb2_grpc.AudiencesStub(channel)  # type: ignore[no-untyped-call]
        self.events = events_pb2_grpc.EventCollectorStub(channel)  # type: ignore[no-untyped-call]
        self.acknowledged: set[str] = set()
        self._event_ids = 0
        self._lock = threading.Lock()
        self.table: list[tuple[float, Callable[[], tuple[str, Any, Callable[[Any], None]]]]] = [
            (0.55, self._recommend),
            (0.05, self._batch),
            (0.10, self._similar),
            (0.05, self._embedding),
            (0.05, self._profile),
            (0.05, self._audience),
            (0.15, self._log_events),
        ]

    def pick(self) -> tuple[str, Any, Callable[[Any], None]]:
        """(rpc name, future, on_ok(response)) for one call of the mix."""
        roll, total = self.rng.random(), 0.0
        for share, make in self.table:
            total += share
            if roll < total:
                return make()
        return self.table[0][1]()

    def _nothing(self, response: Any) -> None:
        return None

    def _recommend_request(self) -> pb2.RecommendRequest:
        request = pb2.RecommendRequest(user_id=self.rng.choice(self.users), k=10)
        if self.rng.random() < 1 / 3:
            request.recent_item_ids.extend(self.rng.sample(self.items, 3))
            request.exclude_item_ids.extend(self.rng.sample(self.items, 5))
            if self.values and self.categorical:
                request.filters.append(pb2.ItemFilter(attribute=self.categorical, none_of=self.values[:1]))
            request.diversity.mmr_lambda = 0.7
        return request

    def _recommend(self) -> tuple[str, Any, Callable[[Any], None]]:
        future = self.recommender.Recommend.future(self._recommend_request(), timeout=CALL_TIMEOUT_S)
        return "Recommend", future, self._nothing

    def _batch(self) -> tuple[str, Any, Callable[[Any], None]]:
        requests = [pb2.RecommendRequest(user_id=u, k=10) for u in self.rng.sample(self.users, 8)]
        future = self.recommender.BatchRecommend.future(
            pb2.BatchRecommendRequest(requests=requests), timeout=CALL_TIMEOUT_S
        )
        return "BatchRecommend", future, self._nothing

    def _similar(self) -> tuple[str, Any, Callable[[Any], None]]:
        request = pb2.SimilarItemsRequest(item_id=self.rng.choice(self.items), k=10)
        return (
            "SimilarItems",
            self.recommender.SimilarItems.future(request, timeout=CALL_TIMEOUT_S),
            self._nothing,
        )

    def _embedding(self) -> tuple[str, Any, Callable[[Any], None]]:
        request = pb2.GetUserEmbeddingRequest(user_id=self.rng.choice(self.users))
        future = self.recommender.GetUserEmbedding.future(request, timeout=CALL_TIMEOUT_S)
        return "GetUserEmbedding", future, self._nothing

    def _profile(self) -> tuple[str, Any, Callable[[Any], None]]:
        request = profiles_pb2.GetUserProfileRequest(user_id=self.rng.choice(self.users))
        return (
            "GetUserProfile",
            self.profiles.GetUserProfile.future(request, timeout=CALL_TIMEOUT_S),
            self._nothing,
        )

    def _audience(self) -> tuple[str, Any, Callable[[Any], None]]:
        request = audiences_pb2.FindSimilarUsersRequest(
            seed_user_ids=self.rng.sample(self.users, 20), size=100
        )
        future = self.audiences.FindSimilarUsers.future(request, timeout=CALL_TIMEOUT_S)
        return "FindSimilarUsers", future, self._nothing

    def _log_events(self) -> tuple[str, Any, Callable[[Any], None]]:
        now = int(time.time() * 1000)
        with self._lock:
            first = self._event_ids
            self._event_ids += 10
        batch = [
            events_pb2.Event(
                event_id=f"soak-{first + i}",
                user_id=self.rng.choice(self.users),
                item_id=self.rng.choice(self.items),
                event_type=events_pb2.EVENT_TYPE_IMPRESSION if i % 3 else events_pb2.EVENT_TYPE_CLICK,
                timestamp_ms=now,
                position=i + 1,
            )
            for i in range(10)
        ]
        ids = [e.event_id for e in batch]

        def acknowledged(response: events_pb2.LogEventsResponse) -> None:
            rejected = {r.index for r in response.rejections}
            with self._lock:
                self.acknowledged.update(i for n, i in enumerate(ids) if n not in rejected)

        future = self.events.LogEvents.future(
            events_pb2.LogEventsRequest(events=batch), timeout=CALL_TIMEOUT_S
        )
        return "LogEvents", future, acknowledged


class Recorder:
    """Thread-safe per-window tallies of finished calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.window = Window(0.0)
        self.total_errors = 0
        self.total_calls = 0

    def record(self, latency_ms: float, code: grpc.StatusCode) -> None:
        with self._lock:
            self.window.calls += 1
            self.total_calls += 1
            self.window.latencies_ms.append(latency_ms)
            if code is not grpc.StatusCode.OK:
                self.window.errors += 1
                self.total_errors += 1
                self.window.error_codes[code.name] = self.window.error_codes.get(code.name, 0) + 1

    def roll(self, end_s: float) -> Window:
        with self._lock:
            finished, self.window = self.window, Window(end_s)
        finished.end_s = end_s
        return finished


def _send(mix: Mix, recorder: Recorder, in_flight: threading.Semaphore) -> None:
    in_flight.acquire()
    started = time.perf_counter()
    name, future, on_ok = mix.pick()

    def done(call: Any) -> None:
        try:
            code = call.code()
            if code is grpc.StatusCode.OK:
                on_ok(call.result())
            else:
                sys.stderr.write(f"{name}: {code.name}: {call.details()}\n")
        finally:
            recorder.record((time.perf_counter() - started) * 1000.0, code)
            in_flight.release()

    future.add_done_callback(done)


def measure_capacity(mix: Mix, seconds: float, threads: int) -> float:
    """Completed calls per second with ``threads`` closed-loop callers."""
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def caller(index: int) -> None:
        while time.monotonic() < stop:
            _, future, on_ok = mix.pick()
            with contextlib.suppress(grpc.RpcError):
                on_ok(future.result())
            counts[index] += 1

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / seconds


def soak(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="recsys-soak-") as tmp:
        workdir = Path(tmp)
        events_dir = workdir / "events"
        security = Security.create(workdir / "security", ALL_SCOPES) if args.secure else None
        port, metrics_port = free_port(), free_port()
        argv = [
            *(
                sys.executable,
                "-m",
                "serving",
                "--bundle",
                str(args.bundle),
                "--host",
                HOST,
                "--port",
                str(port),
            ),
            *("--metrics-port", str(metrics_port), "--events-dir", str(events_dir), *args.server_arg),
            *(security.server_args() if security is not None else []),
        ]
        tls = security.client_tls() if security is not None else None
        token = security.token if security is not None else None
        address = f"{HOST}:{port}"
        with Process(argv, workdir / "server.log") as server:
            wait_until(lambda: healthcheck.check(address, timeout=1.0, tls=tls)[0], server, "recsys server")
            with open_channel(address, tls=tls, token=token) as channel:
                mix = Mix(channel, args.bundle, args.seed)
                capacity = measure_capacity(mix, args.capacity_seconds, args.threads)
                rate = capacity * args.load
                callers = f"{args.threads} closed-loop callers"
                print(f"capacity {capacity:.1f} calls/s ({callers}); soak at {rate:.1f}/s")
                windows = _run_open_loop(mix, server, rate, args)
                health = healthcheck.check(address, timeout=5.0, tls=tls)[1]
            acknowledged = set(mix.acknowledged)
            server.__exit__()  # SIGTERM: graceful drain, the WAL compacted into Parquet
            from serving.events.reader import read_events

            logged = set(read_events(events_dir).get_column("event_id").to_list()) if acknowledged else set()
        lost = len(acknowledged - logged)
    summaries = [w.summary() for w in windows]
    first_rss, last_rss = summaries[0]["rss_mib"], summaries[-1]["rss_mib"]
    growth = (last_rss - first_rss) / first_rss if first_rss else math.nan
    errors = sum(w["errors"] for w in summaries)
    return {
        "minutes": args.minutes,
        "secure": args.secure,
        "capacity_calls_per_s": round(capacity, 1),
        "offered_calls_per_s": round(rate, 1),
        "calls": sum(w["calls"] for w in summaries),
        "errors": errors,
        "health_at_end": health,
        "acknowledged_events": len(acknowledged),
        "lost_events": lost,
        "rss_first_window_mib": first_rss,
        "rss_end_mib": last_rss,
        "rss_growth": round(growth, 4),
        "windows": summaries,
    }


def _run_open_loop(mix: Mix, server: Process, rate: float, args: argparse.Namespace) -> list[Window]:
    recorder = Recorder()
    in_flight = threading.Semaphore(args.max_in_flight)
    rng = random.Random(args.seed + 1)
    started = time.monotonic()
    end = started + args.minutes * 60.0
    next_window = started + args.window_s
    next_call = started
    windows: list[Window] = []
    while True:
        now = time.monotonic()
        if now >= next_window or now >= end:
            # Let this window's calls finish before closing it (bounded by the call timeout).
            window = recorder.roll(now - started)
            window.rss_mib = server.memory_mib()[0]
            windows.append(window)
            print(json.dumps(window.summary()), flush=True)
            next_window += args.window_s
            if now >= end:
                break
        if now < next_call:
            time.sleep(min(next_call - now, 0.01))
            continue
        _send(mix, recorder, in_flight)
        next_call += rng.expovariate(rate)
    for _ in range(args.max_in_flight):  # wait for the last calls
        in_flight.acquire()
    last = recorder.roll(time.monotonic() - started)
    if last.calls:
        windows[-1].calls += last.calls
        windows[-1].errors += last.errors
        windows[-1].latencies_ms += last.latencies_ms
    return windows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--minutes", type=float, default=30.0, help="soak duration (default 30)")
    parser.add_argument(
        "--load", type=float, default=0.5, help="share of the measured capacity (default 0.5)"
    )
    parser.add_argument(
        "--capacity-seconds", type=float, default=30.0, help="capacity measurement (default 30)"
    )
    parser.add_argument(
        "--threads", type=int, default=8, help="closed-loop callers for the capacity (default 8)"
    )
    parser.add_argument("--window-s", type=float, default=60.0, help="reporting window (default 60 s)")
    parser.add_argument("--max-in-flight", type=int, default=256, help="open-loop calls in flight at most")
    parser.add_argument(
        "--secure", action="store_true", help="TLS + bearer token (throwaway, made for the run)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG", help="extra serve flag")
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    report = soak(args)
    print(json.dumps({k: v for k, v in report.items() if k != "windows"}, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    ok = report["errors"] == 0 and report["lost_events"] == 0 and report["rss_growth"] <= 0.10
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
