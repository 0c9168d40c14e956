"""Serving as a fleet on one machine: replicas, a round-robin client, and replica loss.

``python -m benchmarks.fleet --bundle DIR [--replicas 2] [--clients 8] [--seconds 6]``

Starts ``--replicas`` real server processes (``python -m serving``, the production entry
point) on loopback ports, and drives them with one gRPC channel whose target lists every
replica (``ipv4:127.0.0.1:P1,127.0.0.1:P2``) and whose service config selects gRPC's own
client-side ``round_robin`` load balancing (what a client does against a Kubernetes headless
Service). ``--clients`` threads call ``Recommend`` in a closed loop; halfway through, one
replica is killed with SIGKILL (no drain, no goodbye: a machine or pod lost). Run twice:

1. **no retry policy**: a call in flight on the killed replica fails ``UNAVAILABLE``;
   round_robin stops picking the dead address as soon as its connection breaks, so the
   failed calls are at most the calls in flight there;
2. **retryPolicy on UNAVAILABLE** in the service config (gRPC's own retries, Recommend
   is idempotent): those calls are retried on a live replica, zero failed.

Printed per run: calls, failed calls (by status code), the killed replica's in-flight calls
just before the kill (its ``recsys_pending_requests`` gauge, scraped right before SIGKILL)
and the client's calls in flight at the kill (an upper bound: all replicas). The helpers
(:class:`Replica`, :class:`RoundRobinLoad`, :func:`service_config`) are what the fleet
integration tests use too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

from benchmarks.registry_stack import HOST, free_port
from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api import healthcheck

_START_TIMEOUT_S = 180.0
RECOMMENDER = "recsys.v1.Recommender"


def service_config(*, retry: bool) -> str:
    """The client's service config: round_robin, plus (``retry``) a retryPolicy that retries
    ``UNAVAILABLE`` on another pick (up to 4 attempts, 10-100 ms backoff)."""
    config: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if retry:
        config["methodConfig"] = [
            {
                "name": [{"service": RECOMMENDER}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


def fleet_target(addresses: Sequence[str]) -> str:
    """A gRPC target naming every replica (the ipv4 resolver takes a comma-separated list)."""
    return "ipv4:" + ",".join(addresses)


def round_robin_channel(addresses: Sequence[str], *, retry: bool = False) -> grpc.Channel:
    """One channel over every replica with client-side round_robin (see :func:`service_config`)."""
    options = [
        ("grpc.service_config", service_config(retry=retry)),
        ("grpc.enable_retries", 1 if retry else 0),
    ]
    return grpc.insecure_channel(fleet_target(addresses), options=options)


class Replica:
    """One server process on ``127.0.0.1:port`` (``--metrics-port`` too): started on entry,
    SIGTERM on exit (SIGKILL after 30 s); :meth:`kill` is the replica-loss case."""

    def __init__(self, serve_args: Sequence[str], log: Path, *, name: str = "replica") -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.name = name
        self.log = log
        self.argv = [
            *(sys.executable, "-m", "serving", *serve_args),
            *("--host", HOST, "--port", str(self.port), "--metrics-port", str(self.metrics_port)),
        ]
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> Replica:
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def health(self, service: str = "") -> str:
        """The health status name of ``service`` ("" the whole server), or why it failed."""
        return healthcheck.check(self.address, service=service, timeout=2.0)[1]

    def wait_serving(self, timeout: float = _START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not healthcheck.check(self.address, timeout=1.0)[0]:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited during start-up; see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not SERVING within {timeout:.0f} s; see {self.log}")
            time.sleep(0.2)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of metric ``name``'s samples in the replica's ``/metrics`` whose labels
        include ``labels`` (0 if none)."""
        with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        pattern = re.compile(rf"^{re.escape(name)}(?:{{([^}}]*)}})? ([0-9.eE+-]+)$", re.MULTILINE)
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        return sum(
            float(value)
            for found, value in pattern.findall(text)
            if all(label in found.split(",") for label in wanted)
        )

    def recommend_calls(self) -> float:
        """Recommend calls this replica answered (any status), from its own metrics."""
        return self.metric("recsys_rpc_duration_seconds_count", method="/recsys.v1.Recommender/Recommend")

    def model_version(self, user: str = "u1") -> str:
        """The model version this replica answers with now (a direct call, not the fleet)."""
        with grpc.insecure_channel(self.address) as channel:
            stub = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
            return str(stub.Recommend(pb2.RecommendRequest(user_id=user, k=3), timeout=10).model_version)

    def kill(self) -> None:
        """SIGKILL: the process dies at once, calls in flight there get no answer."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> Replica:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LoadFigures:
    """What a :class:`RoundRobinLoad` saw: calls, failures by status, answers by model version."""

    calls: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


class RoundRobinLoad:
    """``clients`` threads calling Recommend over one round-robin channel.

    Closed loop (each thread sends its next call when the last one is answered); with
    ``rate_per_client`` each thread sends at most that many calls per second (a paced
    load that leaves the machine CPU for what else it must do). A context manager:
    threads start on entry and stop (joined) on exit. Thread-safe counters;
    :attr:`in_flight` is the number of calls sent and not yet answered.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        users: Sequence[str],
        *,
        clients: int = 4,
        retry: bool = False,
        timeout_s: float = 10.0,
        rate_per_client: float | None = None,
    ) -> None:
        self.figures = LoadFigures()
        self._interval = 0.0 if rate_per_client is None else 1.0 / rate_per_client
        self.in_flight = 0
        self.last_version = ""
        self._users = list(users)
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._channel = round_robin_channel(addresses, retry=retry)
        self._stub = pb2_grpc.RecommenderStub(self._channel)  # type: ignore[no-untyped-call]
        self._threads = [
            threading.Thread(target=self._client, args=(seed,), daemon=True) for seed in range(clients)
        ]

    def _client(self, seed: int) -> None:
        rng = random.Random(seed)
        next_at = time.monotonic()
        while not self._stop.is_set():
            if self._interval:
                next_at += self._interval
                self._stop.wait(max(0.0, next_at - time.monotonic()))
            request = pb2.RecommendRequest(user_id=rng.choice(self._users), k=10)
            with self._lock:
                self.in_flight += 1
            try:
                response = self._stub.Recommend(request, timeout=self._timeout)
            except grpc.RpcError as exc:
                with self._lock:
                    self.in_flight -= 1
                    self.figures.calls += 1
                    self.figures.failures[f"{exc.code().name}: {exc.details()}"] += 1
                continue
            with self._lock:
                self.in_flight -= 1
                self.figures.calls += 1
                self.figures.versions[response.model_version] += 1
                self.last_version = response.model_version

    def wait(self, condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> float:
        """Seconds until ``condition()`` held while the load runs; RuntimeError after ``timeout``."""
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{what} not met within {timeout:.0f} s")
            time.sleep(0.02)
        return time.monotonic() - started

    def __enter__(self) -> RoundRobinLoad:
        # Connect to every replica before the load starts, so the first calls do not all go
        # to whichever address connected first.
        grpc.channel_ready_future(self._channel).result(timeout=30)
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        self._channel.close()


@dataclass(frozen=True)
class KillFigures:
    """One replica-loss run (see the module docstring)."""

    retry_policy: bool
    replicas: int
    clients: int
    calls: int
    failed: int
    failures: dict[str, int]
    victim_in_flight: float
    client_in_flight: int
    calls_after_kill: int


def kill_one_under_load(
    replicas: Sequence[Replica], users: Sequence[str], *, clients: int, seconds: float, retry: bool
) -> KillFigures:
    """Run round-robin load over ``replicas`` for ``seconds``; SIGKILL ``replicas[0]`` halfway."""
    victim = replicas[0]
    with RoundRobinLoad([r.address for r in replicas], users, clients=clients, retry=retry) as load:
        time.sleep(seconds / 2)
        victim_in_flight = victim.metric("recsys_pending_requests")
        client_in_flight = load.in_flight
        victim.kill()
        calls_at_kill = load.figures.calls
        time.sleep(seconds / 2)
    figures = load.figures
    return KillFigures(
        retry_policy=retry,
        replicas=len(replicas),
        clients=clients,
        calls=figures.calls,
        failed=figures.failed,
        failures=dict(figures.failures),
        victim_in_flight=victim_in_flight,
        client_in_flight=client_in_flight,
        calls_after_kill=figures.calls - calls_at_kill,
    )


def replica_loss(
    bundle: Path, users: Sequence[str], *, replicas: int, clients: int, seconds: float, workdir: Path
) -> list[KillFigures]:
    """Both runs of the module docstring, each on a fresh set of replicas serving ``bundle``."""
    results = []
    for retry in (False, True):
        with contextlib.ExitStack() as stack:
            started = [
                stack.enter_context(
                    Replica(
                        ["--bundle", str(bundle), "--threads", "2", "--grace", "2"],
                        workdir / f"replica-{int(retry)}-{i}.log",
                        name=f"replica {i}",
                    )
                )
                for i in range(replicas)
            ]
            for replica in started:
                replica.wait_serving()
            results.append(kill_one_under_load(started, users, clients=clients, seconds=seconds, retry=retry))
    return results


def bundle_users(bundle: Path, limit: int = 2000) -> list[str]:
    """Up to ``limit`` user ids of ``bundle`` (its ``users.parquet``)."""
    import polars as pl

    users = pl.read_parquet(bundle / "users.parquet", columns=["user_id"]).get_column("user_id")
    return [str(u) for u in users.head(limit).to_list()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory every replica serves")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8, help="closed-loop client threads")
    parser.add_argument("--seconds", type=float, default=6.0, help="load per run; the kill is halfway")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.replicas < 2:
        parser.error("--replicas: at least 2 (one is killed)")
    users = bundle_users(args.bundle)
    with tempfile.TemporaryDirectory(prefix="recsys-fleet-") as tmp:
        results = replica_loss(
            args.bundle,
            users,
            replicas=args.replicas,
            clients=args.clients,
            seconds=args.seconds,
            workdir=Path(tmp),
        )
    print("| retry policy | replicas | clients | calls | failed | victim in flight | client in flight |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {'UNAVAILABLE x4' if r.retry_policy else 'none'} | {r.replicas} | {r.clients} | {r.calls} "
            f"| **{r.failed}** | {r.victim_in_flight:.0f} | {r.client_in_flight} |"
        )
    for r in results:
        if r.failures:
            print(f"failures ({'retry' if r.retry_policy else 'no retry'}): {r.failures}")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
