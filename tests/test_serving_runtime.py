"""Serving runtime: micro-batching, admission control, deadlines in the queue, metrics,
request ids, and ``--workers N`` (real servers on loopback, real channels, real HTTP).

Most tests use a deterministic engine whose calls can be held at a gate, so queues can
be filled on purpose; the ``--workers`` test serves the session's trained bundle through
the real command in a subprocess.
"""

from __future__ import annotations

import asyncio
import functools
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import psutil
import pytest

from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api import healthcheck
from serving.api.background import BackgroundServer
from serving.api.batcher import BatchOptions, MicroBatcher, answer_queries
from serving.api.interceptors import REQUEST_ID_KEY
from serving.api.server import ServerOptions, ServerStartupError
from serving.api.workers import run_workers
from serving.errors import DeadlineExpired, InvalidArgumentError, OverloadedError
from serving.recommend.types import (
    FallbackReason,
    Recommendation,
    RecommendQuery,
    ScoredItem,
    SimilarItemsQuery,
)

MODEL_VERSION = "runtime-test-3"
REPO_ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 5.0

pytestmark = pytest.mark.slow


class GatedEngine:
    """Answers ``item-<user>``; every engine call waits at ``gate`` (open by default).

    ``batches`` records the user ids of each call, in call order. ``"bad"`` is an invalid
    query (the engine names it), ``"boom"`` crashes the whole call, ``"ghost"`` is unknown
    (popularity fallback).
    """

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[list[str]] = []
        self._lock = threading.Lock()

    @property
    def model_version(self) -> str:
        return MODEL_VERSION

    def _enter(self, queries: Sequence[RecommendQuery]) -> None:
        with self._lock:
            self.batches.append([q.user_id for q in queries])
        self.entered.set()
        assert self.gate.wait(WAIT_S), "test never opened the gate"

    @staticmethod
    def _answer(query: RecommendQuery) -> Recommendation:
        if query.user_id == "ghost":
            return Recommendation([ScoredItem("popular", 1.0)], MODEL_VERSION, FallbackReason.UNKNOWN_USER)
        return Recommendation([ScoredItem(f"item-{query.user_id}", 1.0)], MODEL_VERSION)

    def recommend(self, query: RecommendQuery) -> Recommendation:
        self._enter([query])
        if query.user_id == "bad":
            raise InvalidArgumentError("filters[0].attribute", "unknown item attribute 'colour'")
        if query.user_id == "boom":
            raise RuntimeError("engine crashed")
        return self._answer(query)

    def recommend_many(self, queries: Sequence[RecommendQuery]) -> list[Recommendation]:
        self._enter(queries)
        for i, query in enumerate(queries):
            if query.user_id == "bad":
                cause = InvalidArgumentError("filters[0].attribute", "unknown item attribute 'colour'")
                raise InvalidArgumentError(f"requests[{i}].{cause.field}", cause.problem) from cause
        if any(q.user_id == "boom" for q in queries):
            raise RuntimeError("engine crashed")
        return [self._answer(q) for q in queries]

    def similar_items(self, query: SimilarItemsQuery) -> list[ScoredItem]:
        self._enter([])
        return [ScoredItem("i2", 0.5)][: query.k]

    def user_embedding(self, user_id: str) -> npt.NDArray[np.float32]:
        self._enter([])
        return np.ones(2, dtype=np.float32)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT_S) as reply:
        return str(reply.read().decode())


def _sample(text: str, name: str, **labels: str) -> float:
    """Value of one sample in Prometheus text (labels in any order); 0 when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if line.split("{")[0].split(" ")[0] == name and found == labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def engine() -> GatedEngine:
    return GatedEngine()


def _server(engine: GatedEngine, **options: object) -> BackgroundServer:
    settings: dict[str, object] = {
        "port": 0,
        "max_workers": 1,
        "grace_seconds": 2.0,
        "metrics_port": _free_port(),
        "max_wait_ms": 20.0,
    }
    settings.update(options)
    return BackgroundServer(ServerOptions(**settings), lambda: engine)  # type: ignore[arg-type]


@pytest.fixture
def channel_for() -> Iterator[Callable[[BackgroundServer], grpc.Channel]]:
    channels: list[grpc.Channel] = []

    def make(server: BackgroundServer) -> grpc.Channel:
        channels.append(grpc.insecure_channel(server.address))
        return channels[-1]

    yield make
    for channel in channels:
        channel.close()


def _stub(channel: grpc.Channel) -> pb2_grpc.RecommenderStub:
    return pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]  # generated, untyped


def _request(user: str) -> pb2.RecommendRequest:
    return pb2.RecommendRequest(user_id=user, k=1)


# --- micro-batching ----------------------------------------------------------------------


def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_answer(
    engine: GatedEngine, channel_for: Callable[[BackgroundServer], grpc.Channel]
) -> None:
    with _server(engine) as server:
        stub = _stub(channel_for(server))
        engine.gate.clear()
        first = stub.Recommend.future(_request("u0"), timeout=WAIT_S)
        assert engine.entered.wait(WAIT_S)  # the only batch slot is now busy
        users = [f"u{i}" for i in range(1, 31)] + ["bad", "ghost"]
        futures = {user: stub.Recommend.future(_request(user), timeout=WAIT_S) for user in users}
        port = server.options.metrics_port
        _wait_for(lambda: _sample(_scrape(port), "recsys_pending_requests") == 33, "33 pending calls")
        engine.gate.set()

        assert [i.item_id for i in first.result().items] == ["item-u0"]
        for user, future in futures.items():
            if user == "bad":
                with pytest.raises(grpc.RpcError) as info:
                    future.result()
                assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                # Named as a single Recommend names it, not by its position in the batch.
                assert info.value.details() == "filters[0].attribute: unknown item attribute 'colour'"
            elif user == "ghost":
                assert future.result().fallback
            else:
                assert [i.item_id for i in future.result().items] == [f"item-{user}"]

        # One call for u0, one for the 32 queued (the invalid one named), one without it.
        assert [len(b) for b in engine.batches] == [1, 32, 31]
        assert "bad" not in engine.batches[2]
        metrics = _scrape(port)
    assert _sample(metrics, "recsys_batch_size_count") == 2
    assert _sample(metrics, "recsys_batch_size_sum") == 33
    assert _sample(metrics, "recsys_batch_size_bucket", le="16.0") == 1  # the batch of 32 is > 16
    assert _sample(metrics, "recsys_fallback_total", reason="unknown_user") == 1


def test_answer_queries_isolates_failures() -> None:
    engine = GatedEngine()
    queries = [RecommendQuery(u, 1) for u in ("a", "boom", "bad", "b")]
    outcomes = answer_queries(engine, queries)
    assert isinstance(outcomes[0], Recommendation)
    assert outcomes[0].items[0].item_id == "item-a"
    assert isinstance(outcomes[1], RuntimeError)
    assert isinstance(outcomes[2], InvalidArgumentError)
    assert outcomes[2].field == "filters[0].attribute"
    assert isinstance(outcomes[3], Recommendation)
    assert outcomes[3].items[0].item_id == "item-b"
    # The batch, the batch without "bad" (still crashing), then one call per query.
    assert engine.batches == [["a", "boom", "bad", "b"], ["a", "boom", "b"], ["a"], ["boom"], ["b"]]


# --- admission control and deadlines -----------------------------------------------------


def test_overload_is_refused_quickly_with_resource_exhausted(
    engine: GatedEngine, channel_for: Callable[[BackgroundServer], grpc.Channel]
) -> None:
    with _server(engine, max_pending=4) as server:
        stub = _stub(channel_for(server))
        engine.gate.clear()
        admitted = [stub.Recommend.future(_request(f"u{i}"), timeout=WAIT_S) for i in range(3)]
        admitted.append(
            stub.GetUserEmbedding.future(pb2.GetUserEmbeddingRequest(user_id="u"), timeout=WAIT_S)
        )
        port = server.options.metrics_port
        _wait_for(lambda: _sample(_scrape(port), "recsys_pending_requests") == 4, "4 pending calls")

        for call in (
            lambda: stub.Recommend(_request("late"), timeout=WAIT_S),
            lambda: stub.BatchRecommend(pb2.BatchRecommendRequest(requests=[_request("x")]), timeout=WAIT_S),
            lambda: stub.SimilarItems(pb2.SimilarItemsRequest(item_id="i1", k=1), timeout=WAIT_S),
        ):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() - started < 1.0
        engine.gate.set()
        for future in admitted:
            future.result()
        # Capacity is back once the work is done.
        assert stub.Recommend(_request("again"), timeout=WAIT_S).items[0].item_id == "item-again"
        metrics = _scrape(port)
    assert _sample(metrics, "recsys_rejected_total") == 3
    method = "/recsys.v1.Recommender/Recommend"
    assert (
        _sample(metrics, "recsys_rpc_duration_seconds_count", code="RESOURCE_EXHAUSTED", method=method) == 1
    )


def test_deadline_passed_in_queue_is_answered_without_work(
    engine: GatedEngine, channel_for: Callable[[BackgroundServer], grpc.Channel]
) -> None:
    with _server(engine) as server:
        stub = _stub(channel_for(server))
        engine.gate.clear()
        blocker = stub.Recommend.future(_request("blocker"), timeout=WAIT_S)
        assert engine.entered.wait(WAIT_S)
        with pytest.raises(grpc.RpcError) as info:
            stub.Recommend(_request("hurried"), timeout=0.2)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        engine.gate.set()
        blocker.result()
        assert stub.Recommend(_request("after"), timeout=WAIT_S).items[0].item_id == "item-after"
    assert engine.batches == [["blocker"], ["after"]]  # "hurried" never reached the engine


def test_batcher_expired_requests_do_no_work() -> None:
    engine = GatedEngine()
    engine.gate.clear()

    async def scenario() -> None:
        with ThreadPoolExecutor(max_workers=1) as executor:
            batcher = MicroBatcher(executor, BatchOptions(max_wait_ms=0, max_pending=2, max_concurrent=1))
            blocker = asyncio.ensure_future(batcher.recommend(engine, RecommendQuery("blocker", 1), None))
            while not engine.entered.is_set():
                await asyncio.sleep(0.005)
            with pytest.raises(DeadlineExpired):
                await batcher.recommend(engine, RecommendQuery("hurried", 1), 0.05)
            with pytest.raises(DeadlineExpired):  # already expired: not even queued
                await batcher.recommend(engine, RecommendQuery("late", 1), 0.0)
            assert batcher.pending == 2  # the blocker, and the abandoned entry until dispatch
            with pytest.raises(OverloadedError):
                await batcher.recommend(engine, RecommendQuery("third", 1), None)
            engine.gate.set()
            assert (await blocker).items[0].item_id == "item-blocker"
            assert batcher.pending == 0

    asyncio.run(scenario())
    assert engine.batches == [["blocker"]]


# --- metrics and request ids ---------------------------------------------------------------


def test_metrics_endpoint_serves_histograms_and_model_version(
    engine: GatedEngine, channel_for: Callable[[BackgroundServer], grpc.Channel]
) -> None:
    with _server(engine) as server:
        stub = _stub(channel_for(server))
        stub.Recommend(_request("alice"), timeout=WAIT_S)
        stub.Recommend(_request("ghost"), timeout=WAIT_S)
        with pytest.raises(grpc.RpcError):
            stub.Recommend(pb2.RecommendRequest(user_id="alice", k=0), timeout=WAIT_S)
        method = "/recsys.v1.Recommender/Recommend"
        # An aborted call is observed after its status is on the wire (the interceptor's finally), so
        # the caller can see the error a moment before the metric moves: wait for it, bounded.
        deadline = time.monotonic() + WAIT_S
        text = _scrape(server.options.metrics_port)
        while (
            _sample(text, "recsys_rpc_duration_seconds_count", code="INVALID_ARGUMENT", method=method) < 1
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
            text = _scrape(server.options.metrics_port)
    assert _sample(text, "recsys_rpc_duration_seconds_count", code="OK", method=method) == 2
    assert _sample(text, "recsys_rpc_duration_seconds_count", code="INVALID_ARGUMENT", method=method) == 1
    assert _sample(text, "recsys_rpc_duration_seconds_bucket", code="OK", le="10.0", method=method) == 2
    assert _sample(text, "recsys_model_info", model_version=MODEL_VERSION) == 1
    assert _sample(text, "recsys_fallback_total", reason="unknown_user") == 1
    assert _sample(text, "recsys_batch_size_count") == 2
    assert "alice" not in text


def test_request_id_is_echoed_given_or_generated(
    engine: GatedEngine,
    channel_for: Callable[[BackgroundServer], grpc.Channel],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def request_id(metadata: Sequence[tuple[str, str]] | None) -> str:
        (value,) = [v for k, v in metadata or () if k == REQUEST_ID_KEY]
        return value

    with caplog.at_level("INFO", logger="serving.access"), _server(engine, access_log=True) as server:
        stub = _stub(channel_for(server))
        _, call = stub.Recommend.with_call(
            _request("alice"), metadata=[(REQUEST_ID_KEY, "req-42.a")], timeout=WAIT_S
        )
        assert request_id(call.trailing_metadata()) == "req-42.a"

        _, call = stub.Recommend.with_call(_request("alice"), timeout=WAIT_S)
        generated = request_id(call.trailing_metadata())
        assert re.fullmatch(r"[0-9a-f]{32}", generated)

        # A value that could forge log lines is replaced; errors carry the id too.
        with pytest.raises(grpc.RpcError) as info:
            stub.Recommend(
                pb2.RecommendRequest(user_id="alice", k=0),
                metadata=[(REQUEST_ID_KEY, "forged code=OK")],
                timeout=WAIT_S,
            )
        replaced = request_id(info.value.trailing_metadata())  # type: ignore[attr-defined]
        assert re.fullmatch(r"[0-9a-f]{32}", replaced)
        assert replaced != generated
        _wait_for(
            lambda: len([r for r in caplog.records if r.name == "serving.access"]) >= 3, "3 access lines"
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "serving.access"]
    assert any("request_id=req-42.a" in m and "code=OK" in m for m in lines)
    assert any(f"request_id={generated}" in m for m in lines)
    assert any(f"request_id={replaced}" in m and "code=INVALID_ARGUMENT" in m for m in lines)
    assert not any("alice" in m for m in lines)


# --- several worker processes ----------------------------------------------------------------


def test_workers_share_one_port_and_stop_on_sigterm(trained: object, tmp_path: Path) -> None:
    port, metrics_port = _free_port(), _free_port()
    log = tmp_path / "serve.log"
    bundle = trained.bundle  # type: ignore[attr-defined]
    argv = [
        *(sys.executable, "-m", "serving", "--bundle", str(bundle), "--port", str(port)),
        *("--workers", "2", "--threads", "1", "--metrics-port", str(metrics_port), "--access-log"),
        *("--grace", "2"),
    ]
    with log.open("wb") as out:
        parent = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while "2 workers serving" not in log.read_text():
            assert parent.poll() is None, f"server exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"workers never became ready:\n{log.read_text()}"
            time.sleep(0.1)
        assert healthcheck.check(address, timeout=2)[0]
        # Children: the two workers (each listening on the port) and multiprocessing's
        # resource tracker.
        workers = [
            child
            for child in psutil.Process(parent.pid).children()
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in child.net_connections("tcp")
            )
        ]
        assert len(workers) == 2

        calls = 24
        for _ in range(calls):  # a fresh connection each time: the kernel spreads connections
            with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                assert (
                    len(_stub(ch).Recommend(pb2.RecommendRequest(user_id="u1", k=3), timeout=10).items) == 3
                )
        _wait_for(lambda: log.read_text().count("Recommend code=OK") == calls, "access lines", 10)
        answered_by = set(
            re.findall(
                r"\[worker \d pid (\d+)\]: rpc method=/recsys.v1.Recommender/Recommend", log.read_text()
            )
        )
        assert answered_by == {str(w.pid) for w in workers}

        metrics = _scrape(metrics_port)  # served by the parent, summed over the workers
        method = "/recsys.v1.Recommender/Recommend"
        assert _sample(metrics, "recsys_rpc_duration_seconds_count", code="OK", method=method) == calls
        version = trained.model_version  # type: ignore[attr-defined]
        assert _sample(metrics, "recsys_model_info", model_version=version) == 1

        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=20) == 0, log.read_text()
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_workers_fail_the_start_when_a_worker_cannot_start(tmp_path: Path) -> None:
    # The loader must be importable in a spawned interpreter; opening a missing file fails
    # the way a missing bundle does, without importing torch in the workers.
    load = functools.partial(open, tmp_path / "missing-bundle")
    options = ServerOptions(port=_free_port(), grace_seconds=1.0)
    with pytest.raises(ServerStartupError, match="during start-up"):
        run_workers(options, 2, load)  # type: ignore[arg-type]


def test_workers_refuse_a_busy_port_and_port_zero() -> None:
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # even a sharing-friendly listener
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServerStartupError, match=f"127.0.0.1:{port}"):
            run_workers(ServerOptions(port=port), 2, GatedEngine)
    with pytest.raises(ValueError, match="port"):
        run_workers(ServerOptions(port=0), 2, GatedEngine)


# --- the load benchmark's arithmetic -------------------------------------------------------


def test_bench_load_framing_and_percentiles(tmp_path: Path) -> None:
    from benchmarks.load import _latencies, _percentile, frame, write_bodies

    (body,) = write_bodies(["u7"], 5, tmp_path)
    raw = body.read_bytes()
    assert raw[0] == 0
    assert int.from_bytes(raw[1:5], "big") == len(raw) - 5
    assert pb2.RecommendRequest.FromString(raw[5:]) == pb2.RecommendRequest(user_id="u7", k=5)
    assert frame(b"") == b"\x00\x00\x00\x00\x00"

    log = tmp_path / "h2load.log"  # start (us since epoch), HTTP status, duration (us)
    log.write_text("999\t200\t7000\n1000\t200\t1000\n1500\t200\t2000\n1600\t503\t1\n2000\t200\t9000\n")
    assert _latencies([log], 1000, 2000) == [1.0, 2.0]  # the window, 200s only, in ms
    values = [float(v) for v in range(1, 101)]
    assert (_percentile(values, 0.5), _percentile(values, 0.99), _percentile(values, 1.0)) == (
        50.0,
        99.0,
        100.0,
    )


def test_bench_server_floors_layers_run_the_real_request_path(tmp_path: Path) -> None:
    """The floors of ``benchmarks.server_floors`` are the server's own layers, not stand-ins: the
    ``interceptor`` layer answers a real Recommend through the servicer (its k items, the request id in the
    trailers) and maps a bad request to INVALID_ARGUMENT; the ``batcher`` layer echoes the bytes."""
    from benchmarks.load import free_port

    ports = {layer: free_port() for layer in ("interceptor", "batcher")}
    procs = []
    for layer, port in ports.items():
        with (tmp_path / f"{layer}.log").open("wb") as log:  # why a layer that never came up died
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.server_floors", "--serve", layer, "--port", str(port)],
                    cwd=REPO_ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{ports['interceptor']}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            stub = pb2_grpc.RecommenderStub(channel)
            response, call = stub.Recommend.with_call(pb2.RecommendRequest(user_id="u1", k=10), timeout=10)
            assert [len(response.items), response.model_version] == [10, "constant"]
            assert any(key == REQUEST_ID_KEY for key, _ in call.trailing_metadata())
            with pytest.raises(grpc.RpcError) as refused:
                stub.Recommend(pb2.RecommendRequest(user_id="u1", k=0), timeout=10)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with grpc.insecure_channel(f"127.0.0.1:{ports['batcher']}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
            echo = channel.unary_unary("/recsys.v1.Recommender/Recommend")
            assert echo(b"\x08\x01", timeout=10) == b"\x08\x01"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
