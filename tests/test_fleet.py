"""Serving as a fleet, with real parts only: PostgreSQL (initdb + pg_ctl in a temp dir), an
``mlflow server`` on it, real ``python -m serving`` replica processes on loopback and a client
that balances over them with gRPC's own round_robin.

* a tiny model trained against the tracking server registers version 1, a second one version
  2; two replicas serve ``models:/NAME@champion``; promoting version 2 moves both within one
  poll interval (plus the swap itself), with zero failed calls from the round-robin client;
* the tracking server stopped: both replicas keep answering, health entry ``recsys.registry``
  and ``recsys_registry_up`` say so; the alias moved meanwhile (straight in PostgreSQL) is
  caught up once the server is back;
* a replica killed with SIGKILL under round-robin load with a retryPolicy on UNAVAILABLE:
  zero failed calls (the figures without the policy: ``python -m benchmarks.fleet``).

Without PostgreSQL's binaries or the psycopg driver the registry tests skip, saying why;
``RECSYS_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) turns that skip into a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TrainedBundle, tiny_config

from benchmarks.fleet import Replica, RoundRobinLoad, kill_one_under_load
from benchmarks.registry_stack import MlflowServer, PostgresCluster, StackUnavailableError
from serving.lifecycle.mlflow_store import ModelRegistry
from serving.lifecycle.registry_health import REGISTRY_HEALTH_SERVICE
from training.promotion import promote

pytestmark = pytest.mark.slow

MODEL = "fleet-model"
POLL_S = 2.0
CLIENTS = 4
RATE = 50.0  # calls/s per client thread: 200/s over the fleet, CPU left for the swaps


def _unavailable(reason: str) -> None:
    if os.environ.get("RECSYS_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"RECSYS_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


@dataclass(frozen=True)
class Registry:
    """The shared registry: PostgreSQL, the tracking server in front of it, two versions."""

    postgres: PostgresCluster
    server: MlflowServer
    v1: str
    v2: str
    model_versions: dict[str, str]

    @property
    def client(self) -> ModelRegistry:
        return ModelRegistry(self.server.uri)


@pytest.fixture(scope="module")
def registry(trained: TrainedBundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if importlib.util.find_spec("psycopg") is None:
        _unavailable("the psycopg driver is not installed (the project's dev extra)")
    root = tmp_path_factory.mktemp("fleet-registry")
    try:
        postgres = PostgresCluster()
    except StackUnavailableError as exc:
        _unavailable(str(exc))
    with postgres, MlflowServer(postgres.uri, root / "artifacts", root / "mlflow.log") as server:
        from training.pipeline import train

        data = trained.data
        versions: dict[str, str] = {}
        for seed in ("1", "7"):
            config = tiny_config(
                f"train.seed={seed}",
                "train.epochs=1",
                "eval.protocol=none",
                f'tracking.tracking_uri="{server.uri}"',
                f'tracking.registered_model="{MODEL}"',
            )
            summary = train(
                config, data.interactions_path, data.users_path, data.items_path, root / f"bundle-{seed}"
            )
            assert summary.registered_version is not None
            versions[summary.registered_version] = summary.model_version
        v1, v2 = sorted(versions, key=int)
        assert (v1, v2) == ("1", "2")
        assert versions[v1] != versions[v2]
        yield Registry(postgres, server, v1, v2, versions)


@dataclass
class Fleet:
    replicas: list[Replica]
    users: list[str]

    @property
    def addresses(self) -> list[str]:
        return [r.address for r in self.replicas]

    def versions(self) -> list[str]:
        return [r.model_version() for r in self.replicas]


@pytest.fixture(scope="module")
def fleet(
    registry: Registry, trained: TrainedBundle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """Two replicas of ``models:/fleet-model@champion`` (champion: version 1 at start), each
    with its own bundle cache, as on two machines."""
    registry.client.set_alias(MODEL, "champion", registry.v1)
    root = tmp_path_factory.mktemp("fleet")
    replicas = []
    for i in range(2):
        args = [
            *("--model", f"models:/{MODEL}@champion", "--tracking-uri", registry.server.uri),
            *("--model-poll-s", str(POLL_S), "--bundle-cache", str(root / f"cache-{i}")),
            *("--threads", "2", "--grace", "2"),
        ]
        replicas.append(Replica(args, root / f"replica-{i}.log", name=f"replica {i}").start())
    try:
        for replica in replicas:
            replica.wait_serving()
        users = trained.interactions.get_column("user_id").unique().sort().to_list()
        yield Fleet(replicas, users)
    finally:
        for replica in replicas:
            replica.stop()


def _swap_seconds(log: Path) -> list[float]:
    """Hot-swap durations a replica logged ("swapped version A -> B (model M) in S s")."""
    return [
        float(s)
        for s in re.findall(r"swapped version \S+ -> \S+ \(model \S+\) in ([0-9.]+) s", log.read_text())
    ]


def _wait(condition: object, timeout: float, what: str) -> float:
    started = time.monotonic()
    assert callable(condition)
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_promotion_moves_both_replicas_within_a_poll_with_zero_failed_calls(
    registry: Registry, fleet: Fleet
) -> None:
    old, new = registry.model_versions[registry.v1], registry.model_versions[registry.v2]
    assert fleet.versions() == [old, old]
    with RoundRobinLoad(fleet.addresses, fleet.users, clients=CLIENTS, rate_per_client=RATE) as load:
        load.wait(lambda: load.figures.calls >= 100, what="100 calls")
        # round_robin spreads the calls: both replicas answered some.
        served = [r.recommend_calls() for r in fleet.replicas]
        moved_at = time.monotonic()
        promote(registry.client, MODEL, registry.v2, "champion", force=True)
        converged = _wait(lambda: fleet.versions() == [new, new], 4 * POLL_S + 30, "both replicas on v2")
        calls_at_move = load.figures.calls
        load.wait(lambda: load.figures.calls >= calls_at_move + 100, what="100 calls after the move")
    figures = load.figures
    swaps = [max(_swap_seconds(r.log), default=0.0) for r in fleet.replicas]
    print(
        "fleet promotion: "
        + json.dumps(
            {
                "calls": figures.calls,
                "failed": figures.failed,
                "by_model_version": dict(figures.versions),
                "promotion_to_both_on_v2_s": round(converged, 2),
                "poll_s": POLL_S,
                "swap_s": swaps,
                "since_move_s": round(time.monotonic() - moved_at, 2),
            }
        )
    )
    assert figures.failed == 0, figures.failures
    assert all(count > 0 for count in served), served
    assert set(figures.versions) == {old, new}
    # Each replica notices the move at its next poll (at most one interval later), then
    # downloads, verifies and warms up the new version before it swaps.
    assert converged <= POLL_S + max(swaps) + 1.0


def test_registry_outage_keeps_serving_reports_it_and_catches_up(registry: Registry, fleet: Fleet) -> None:
    before = registry.model_versions[registry.v2]
    after = registry.model_versions[registry.v1]
    registry.client.set_alias(MODEL, "champion", registry.v2)
    _wait(lambda: fleet.versions() == [before, before], 4 * POLL_S + 30, "both replicas on v2")
    with RoundRobinLoad(fleet.addresses, fleet.users, clients=CLIENTS, rate_per_client=RATE) as load:
        registry.server.stop()
        stopped_at = time.monotonic()
        noticed = _wait(
            lambda: all(r.health(REGISTRY_HEALTH_SERVICE) == "NOT_SERVING" for r in fleet.replicas),
            3 * POLL_S + 10,
            "registry health NOT_SERVING on both replicas",
        )
        assert [r.health() for r in fleet.replicas] == ["SERVING", "SERVING"]
        assert [r.metric("recsys_registry_up") for r in fleet.replicas] == [0.0, 0.0]
        assert all(r.metric("recsys_registry_poll_failures_total") >= 1 for r in fleet.replicas)
        # Meanwhile the alias moves (straight in the database: the tracking server is down).
        ModelRegistry(registry.postgres.uri).set_alias(MODEL, "champion", registry.v1)
        calls_in_outage = load.figures.calls
        load.wait(lambda: load.figures.calls >= calls_in_outage + 100, what="100 calls during the outage")
        assert fleet.versions() == [before, before]
        outage_s = time.monotonic() - stopped_at
        registry.server.start()
        back_at = time.monotonic()
        caught_up = _wait(lambda: fleet.versions() == [after, after], 4 * POLL_S + 30, "catch-up to v1")
        _wait(
            lambda: all(r.health(REGISTRY_HEALTH_SERVICE) == "SERVING" for r in fleet.replicas),
            POLL_S + 10,
            "registry health SERVING again",
        )
        assert [r.metric("recsys_registry_up") for r in fleet.replicas] == [1.0, 1.0]
        calls_after = load.figures.calls
        load.wait(lambda: load.figures.calls >= calls_after + 50, what="50 calls after the catch-up")
    figures = load.figures
    print(
        "registry outage: "
        + json.dumps(
            {
                "calls": figures.calls,
                "failed": figures.failed,
                "outage_noticed_s": round(noticed, 2),
                "outage_s": round(outage_s, 2),
                "server_back_to_both_caught_up_s": round(caught_up, 2),
                "since_server_back_s": round(time.monotonic() - back_at, 2),
                "by_model_version": dict(figures.versions),
            }
        )
    )
    assert figures.failed == 0, figures.failures


def test_a_killed_replica_costs_no_call_with_a_retry_policy(trained: TrainedBundle, tmp_path: Path) -> None:
    replicas = [
        Replica(
            ["--bundle", str(trained.bundle), "--threads", "2"], tmp_path / f"r{i}.log", name=f"replica {i}"
        )
        for i in range(2)
    ]
    users = trained.interactions.get_column("user_id").unique().sort().to_list()
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_serving()
        figures = kill_one_under_load(replicas, users, clients=CLIENTS, seconds=4.0, retry=True)
    finally:
        for replica in replicas:
            replica.stop()
    print(f"replica kill -9 with retryPolicy: {figures}")
    assert not replicas[0].alive()
    assert figures.failed == 0, figures.failures
    assert figures.calls_after_kill >= 50  # the surviving replica kept answering


def test_the_health_port_answers_health_only_in_plaintext(trained: TrainedBundle) -> None:
    """What deploy/kubernetes/ probes: ``--health-port`` reports the server's health (the same
    servicer) and serves nothing else."""
    import grpc

    from benchmarks.registry_stack import free_port
    from serving._proto.recsys.v1 import recommender_pb2 as pb2
    from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
    from serving.api import healthcheck
    from serving.api.background import BackgroundServer
    from serving.api.server import ServerOptions
    from serving.recommend.engine import TwoTowerEngine

    port = free_port()
    options = ServerOptions(host="127.0.0.1", port=0, health_port=port, max_workers=1, grace_seconds=0.5)
    with BackgroundServer(options, lambda: TwoTowerEngine.load(trained.bundle), start_timeout=30):
        assert healthcheck.check(f"127.0.0.1:{port}") == (True, "SERVING")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError) as refused:
                stub.Recommend(pb2.RecommendRequest(user_id="u1", k=3), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
