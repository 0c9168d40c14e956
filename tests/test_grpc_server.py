"""The real gRPC server on a loopback port, driven through real channels.

The server runs on its own event loop in a background thread (as in production, where
it owns the process' loop); tests use the synchronous client stack.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serving._proto import regenerate
from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api import healthcheck
from serving.api.interceptors import INTERNAL_MESSAGE, status_for
from serving.api.recommender import RecommenderServicer
from serving.api.server import RECOMMENDER_SERVICE, ServerOptions, ServerStartupError, serve
from serving.api.wire import MAX_BATCH, to_query
from serving.errors import (
    DeadlineExpired,
    InvalidArgumentError,
    NotFoundError,
    NotReadyError,
    OverloadedError,
    RecsysError,
)
from serving.lifecycle.engine_holder import EngineHolder
from serving.lifecycle.routing import Router
from serving.recommend.types import (
    Diversity,
    FallbackReason,
    ItemFilter,
    Recommendation,
    RecommenderEngine,
    RecommendQuery,
    ScoredItem,
    SimilarItemsQuery,
)

MODEL_VERSION = "test-model-7"
SECRET = "postgres://admin:hunter2@db.internal/recsys"  # must never reach a client
START_TIMEOUT_S = 5.0
REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


class FakeEngine:
    """Deterministic in-memory engine.

    ``"boom"`` raises a RuntimeError carrying an internal detail; ``"slow"`` signals
    ``slow_started`` and then takes ``slow_s`` seconds. Excluded items are dropped; the
    last query seen is kept in ``queries`` (tests check the wire mapping with it).
    """

    def __init__(self, *, slow_s: float = 0.6) -> None:
        self.slow_s = slow_s
        self.slow_started = threading.Event()
        self._items = {
            "alice": [
                ScoredItem("i3", 0.9),
                ScoredItem("i1", 0.5),
                ScoredItem("i7", 0.25),
                ScoredItem("i2", 0.1),
            ],
            "slow": [ScoredItem("i9", 1.0)],
        }
        self._popular = [ScoredItem("p1", 1.0), ScoredItem("p2", 0.5), ScoredItem("p3", 0.2)]
        self._embeddings = {"alice": np.array([0.6, 0.8], dtype=np.float32)}
        self._similar = {"i1": [ScoredItem("i3", 0.8), ScoredItem("i2", 0.4), ScoredItem("i7", 0.1)]}
        self.queries: list[RecommendQuery] = []

    @property
    def model_version(self) -> str:
        return MODEL_VERSION

    def recommend(self, query: RecommendQuery) -> Recommendation:
        self.queries.append(query)
        if query.user_id == "boom":
            raise RuntimeError(f"lost connection to {SECRET}")
        if query.user_id == "slow":
            self.slow_started.set()
            time.sleep(self.slow_s)
        items = self._items.get(query.user_id)
        reason = None if items is not None else FallbackReason.UNKNOWN_USER
        eligible = [i for i in items or self._popular if i.item_id not in query.exclude_item_ids]
        return Recommendation(eligible[: query.k], MODEL_VERSION, reason)

    def recommend_many(self, queries: Sequence[RecommendQuery]) -> list[Recommendation]:
        return [self.recommend(query) for query in queries]

    def similar_items(self, query: SimilarItemsQuery) -> list[ScoredItem]:
        if query.item_id not in self._similar:
            raise NotFoundError("item", query.item_id)
        return self._similar[query.item_id][: query.k]

    def user_embedding(self, user_id: str) -> npt.NDArray[np.float32]:
        if user_id not in self._embeddings:
            raise NotFoundError("user", user_id)
        return self._embeddings[user_id]


class ServerThread:
    """Runs :func:`serving.api.server.serve` on its own loop in a daemon thread."""

    def __init__(
        self, load_engine: Callable[[], RecommenderEngine], options: ServerOptions | None = None
    ) -> None:
        self.options = options or ServerOptions(port=0, max_workers=4, grace_seconds=5.0)
        self.bound = threading.Event()
        self.ready = threading.Event()
        self.port = 0
        self.error: BaseException | None = None
        self._load_engine = load_engine
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="test-grpc-server", daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        assert self.bound.wait(START_TIMEOUT_S), "server did not bind in time"
        if self.error is not None:
            raise self.error
        return self

    def wait_ready(self) -> None:
        assert self.ready.wait(START_TIMEOUT_S), f"server not ready in time (error: {self.error!r})"

    def request_stop(self) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.request_stop()
        self._thread.join(self.options.grace_seconds + START_TIMEOUT_S)
        assert not self._thread.is_alive(), "server did not stop"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # handed to the test thread
            self.error = exc
        finally:
            self.bound.set()  # unblock start() if serve failed before binding

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        ready = asyncio.Event()

        def on_bound(port: int) -> None:
            self.port = port
            self.bound.set()

        async def relay_ready() -> None:
            await ready.wait()
            self.ready.set()

        relay = asyncio.create_task(relay_ready())
        try:
            await serve(
                self.options,
                self._load_engine,
                ready=ready,
                stop=self._stop,
                on_bound=on_bound,
                handle_signals=False,
            )
        finally:
            relay.cancel()


@pytest.fixture(scope="module")
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture(scope="module")
def server(engine: FakeEngine) -> Iterator[ServerThread]:
    running = ServerThread(lambda: engine).start()
    running.wait_ready()
    yield running
    running.stop()
    assert running.error is None


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as ch:
        yield ch


def _recommender(channel: grpc.Channel) -> pb2_grpc.RecommenderStub:
    return pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]  # generated, untyped


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb2_grpc.RecommenderStub:
    return _recommender(channel)


def _health(channel: grpc.Channel, service: str) -> Any:
    request = health_pb2.HealthCheckRequest(service=service)
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status


def _rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# --- lifecycle -------------------------------------------------------------------------


def test_health_not_serving_until_engine_loaded() -> None:
    release = threading.Event()

    def load() -> RecommenderEngine:
        assert release.wait(START_TIMEOUT_S)
        return FakeEngine()

    running = ServerThread(load).start()
    try:
        with grpc.insecure_channel(running.address) as ch:
            for service in ("", RECOMMENDER_SERVICE):
                assert _health(ch, service) == health_pb2.HealthCheckResponse.NOT_SERVING
            assert healthcheck.main(["--address", running.address, "--timeout", "2"]) == 1
            # Calls during loading are refused as retryable, not failed.
            err = _rpc_error(lambda: _recommender(ch).Recommend(pb2.RecommendRequest(user_id="a", k=1)))
            assert err.code() is grpc.StatusCode.UNAVAILABLE

            release.set()
            running.wait_ready()
            for service in ("", RECOMMENDER_SERVICE):
                assert _health(ch, service) == health_pb2.HealthCheckResponse.SERVING
            assert healthcheck.main(["--address", running.address]) == 0
    finally:
        release.set()
        running.stop()
    assert running.error is None


def test_engine_load_failure_raises_and_never_serves() -> None:
    def load() -> RecommenderEngine:
        raise OSError("bundle.json: no such file")

    running = ServerThread(load).start()
    running.stop()
    assert isinstance(running.error, ServerStartupError)
    assert "bundle.json: no such file" in str(running.error)
    assert not running.ready.is_set()


def test_bind_failure_names_the_address(server: ServerThread) -> None:
    options = ServerOptions(port=server.port)  # already taken by the module's server

    with pytest.raises(ServerStartupError, match=f"127.0.0.1:{server.port}"):
        asyncio.run(serve(options, FakeEngine, handle_signals=False))


def test_graceful_stop_lets_in_flight_call_finish() -> None:
    engine = FakeEngine(slow_s=0.5)
    running = ServerThread(lambda: engine).start()
    running.wait_ready()
    with grpc.insecure_channel(running.address) as ch:
        future = _recommender(ch).Recommend.future(pb2.RecommendRequest(user_id="slow", k=1), timeout=5)
        assert engine.slow_started.wait(START_TIMEOUT_S)
        running.request_stop()
        response = future.result()
    running.stop()
    assert [item.item_id for item in response.items] == ["i9"]
    assert running.error is None


def _free_port() -> int:
    """A port nobody listens on right now (another process could take it; fine for tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_healthcheck_fails_for_unreachable_server() -> None:
    assert healthcheck.main(["--address", f"127.0.0.1:{_free_port()}", "--timeout", "0.5"]) == 1


def test_healthcheck_module_as_docker_runs_it(server: ServerThread) -> None:
    probe = [sys.executable, "-m", "serving.api.healthcheck", "--address", server.address, "--timeout", "2"]
    assert subprocess.run(probe, cwd=REPO_ROOT, check=False, timeout=20).returncode == 0


# run_server in a child process: the real entry point, with real process signals.
_CHILD_SCRIPT = """
import sys
from serving.api.server import ServerOptions, run_server
from serving.recommend.types import Recommendation

class Engine:
    model_version = "child-1"
    def recommend(self, query):
        return Recommendation([], self.model_version)
    def recommend_many(self, queries):
        return [self.recommend(q) for q in queries]
    def similar_items(self, query):
        return []
    def user_embedding(self, user_id):
        raise KeyError(user_id)

run_server(ServerOptions(port=int(sys.argv[1]), grace_seconds=2.0), Engine)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_run_server_stops_cleanly_on_signal(sig: signal.Signals) -> None:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    child = subprocess.Popen([sys.executable, "-c", _CHILD_SCRIPT, str(port)], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 10
        while not healthcheck.check(address, timeout=0.5)[0]:
            assert child.poll() is None, f"server exited early with {child.returncode}"
            assert time.monotonic() < deadline, "child server never became SERVING"
            time.sleep(0.05)
        child.send_signal(sig)
        assert child.wait(timeout=10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# --- reflection ------------------------------------------------------------------------


def _reflect(channel: grpc.Channel, request: reflection_pb2.ServerReflectionRequest) -> Any:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=2))
    return response


def test_reflection_lists_services(channel: grpc.Channel) -> None:
    response = _reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {service.name for service in response.list_services_response.service}
    # A subset: other services (Audiences, Events, ...) are registered alongside.
    assert {RECOMMENDER_SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_reflection_serves_the_contract_under_its_proto_path(channel: grpc.Channel) -> None:
    response = _reflect(
        channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=RECOMMENDER_SERVICE)
    )
    (raw,) = response.file_descriptor_response.file_descriptor_proto
    descriptor = descriptor_pb2.FileDescriptorProto.FromString(raw)
    assert descriptor.name == "recsys/v1/recommender.proto"
    assert [m.name for m in descriptor.service[0].method] == [
        "Recommend",
        "GetUserEmbedding",
        "SimilarItems",
        "BatchRecommend",
    ]


# --- Recommend / GetUserEmbedding ------------------------------------------------------


def test_recommend_returns_items_in_order(stub: pb2_grpc.RecommenderStub) -> None:
    response = stub.Recommend(pb2.RecommendRequest(user_id="alice", k=3), timeout=2)
    assert [(i.item_id, round(i.score, 4)) for i in response.items] == [
        ("i3", 0.9),
        ("i1", 0.5),
        ("i7", 0.25),
    ]
    assert response.model_version == MODEL_VERSION
    assert not response.fallback
    assert response.fallback_reason == pb2.FALLBACK_REASON_UNSPECIFIED


def test_unknown_user_gets_fallback(stub: pb2_grpc.RecommenderStub) -> None:
    response = stub.Recommend(pb2.RecommendRequest(user_id="nobody", k=2), timeout=2)
    assert [i.item_id for i in response.items] == ["p1", "p2"]
    assert response.fallback
    assert response.fallback_reason == pb2.FALLBACK_REASON_UNKNOWN_USER
    assert response.model_version == MODEL_VERSION


@pytest.mark.parametrize(
    ("user_id", "k", "field"),
    [("alice", 0, "k"), ("alice", 1001, "k"), ("alice", -3, "k"), ("", 5, "user_id")],
)
def test_invalid_recommend_request(stub: pb2_grpc.RecommenderStub, user_id: str, k: int, field: str) -> None:
    err = _rpc_error(lambda: stub.Recommend(pb2.RecommendRequest(user_id=user_id, k=k), timeout=2))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"{field}: ")
    if field == "k":
        assert err.details() == f"k: must be in 1..1000, got {k}"


def test_boundary_k_is_accepted(stub: pb2_grpc.RecommenderStub) -> None:
    assert len(stub.Recommend(pb2.RecommendRequest(user_id="alice", k=1), timeout=2).items) == 1
    assert len(stub.Recommend(pb2.RecommendRequest(user_id="alice", k=1000), timeout=2).items) == 4


def test_recommend_options_reach_the_engine(stub: pb2_grpc.RecommenderStub, engine: FakeEngine) -> None:
    request = pb2.RecommendRequest(
        user_id="alice",
        k=3,
        recent_item_ids=["i5", "i6"],
        user_attributes={"age": "31", "region": "north"},
        exclude_item_ids=["i1"],
        filters=[
            pb2.ItemFilter(attribute="category", any_of=["books"], none_of=["toys"]),
            pb2.ItemFilter(attribute="price", min=0.0),
        ],
        diversity=pb2.Diversity(mmr_lambda=0.5, max_per_category=2, category_attribute="brand"),
    )
    response = stub.Recommend(request, timeout=2)
    assert [i.item_id for i in response.items] == ["i3", "i7", "i2"]  # i1 excluded
    assert engine.queries[-1] == RecommendQuery(
        user_id="alice",
        k=3,
        recent_item_ids=("i5", "i6"),
        user_attributes={"age": "31", "region": "north"},
        exclude_item_ids=("i1",),
        filters=(
            ItemFilter("category", any_of=("books",), none_of=("toys",)),
            ItemFilter("price", min=0.0),  # an unset max stays None, a set 0.0 stays 0.0
        ),
        diversity=Diversity(mmr_lambda=0.5, max_per_category=2, category_attribute="brand"),
    )


def test_plain_request_maps_to_a_plain_query() -> None:
    assert to_query(pb2.RecommendRequest(user_id="alice", k=4)) == RecommendQuery("alice", 4)


def test_batch_recommend_answers_in_request_order(stub: pb2_grpc.RecommenderStub) -> None:
    users = ["nobody", "alice", "alice", "ghost"]
    request = pb2.BatchRecommendRequest(
        requests=[pb2.RecommendRequest(user_id=u, k=2 + i % 2) for i, u in enumerate(users)]
    )
    responses = stub.BatchRecommend(request, timeout=2).responses
    assert len(responses) == len(users)
    for i, (user, response) in enumerate(zip(users, responses, strict=True)):
        single = stub.Recommend(pb2.RecommendRequest(user_id=user, k=2 + i % 2), timeout=2)
        assert response == single
    assert stub.BatchRecommend(pb2.BatchRecommendRequest(), timeout=2).responses == []


def test_batch_recommend_limits_and_names_the_bad_request(stub: pb2_grpc.RecommenderStub) -> None:
    too_many = pb2.BatchRecommendRequest(
        requests=[pb2.RecommendRequest(user_id="alice", k=1)] * (MAX_BATCH + 1)
    )
    err = _rpc_error(lambda: stub.BatchRecommend(too_many, timeout=5))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == f"requests: at most {MAX_BATCH} requests per call, got {MAX_BATCH + 1}"
    at_limit = pb2.BatchRecommendRequest(requests=too_many.requests[:MAX_BATCH])
    assert len(stub.BatchRecommend(at_limit, timeout=5).responses) == MAX_BATCH
    bad = pb2.BatchRecommendRequest(
        requests=[pb2.RecommendRequest(user_id="alice", k=1), pb2.RecommendRequest(user_id="alice", k=0)]
    )
    err = _rpc_error(lambda: stub.BatchRecommend(bad, timeout=2))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "requests[1].k: must be in 1..1000, got 0"


def test_similar_items(stub: pb2_grpc.RecommenderStub) -> None:
    response = stub.SimilarItems(pb2.SimilarItemsRequest(item_id="i1", k=2), timeout=2)
    assert [(i.item_id, round(i.score, 4)) for i in response.items] == [("i3", 0.8), ("i2", 0.4)]
    assert response.model_version == MODEL_VERSION
    err = _rpc_error(lambda: stub.SimilarItems(pb2.SimilarItemsRequest(item_id="nope", k=2), timeout=2))
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert "nope" in err.details()
    for k in (0, 1001):
        err = _rpc_error(lambda k=k: stub.SimilarItems(pb2.SimilarItemsRequest(item_id="i1", k=k), timeout=2))
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == f"k: must be in 1..1000, got {k}"
    err = _rpc_error(lambda: stub.SimilarItems(pb2.SimilarItemsRequest(k=2), timeout=2))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "item_id: must not be empty"


def test_user_embedding(stub: pb2_grpc.RecommenderStub) -> None:
    response = stub.GetUserEmbedding(pb2.GetUserEmbeddingRequest(user_id="alice"), timeout=2)
    assert response.user_id == "alice"
    assert list(response.values) == pytest.approx([0.6, 0.8])
    assert response.model_version == MODEL_VERSION


def test_user_embedding_unknown_user_is_not_found(stub: pb2_grpc.RecommenderStub) -> None:
    err = _rpc_error(lambda: stub.GetUserEmbedding(pb2.GetUserEmbeddingRequest(user_id="ghost"), timeout=2))
    assert err.code() is grpc.StatusCode.NOT_FOUND
    assert "ghost" in err.details()


def test_user_embedding_empty_user_id(stub: pb2_grpc.RecommenderStub) -> None:
    err = _rpc_error(lambda: stub.GetUserEmbedding(pb2.GetUserEmbeddingRequest(user_id=""), timeout=2))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "user_id: must not be empty"


def test_engine_crash_is_internal_without_leaking(
    stub: pb2_grpc.RecommenderStub, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="serving"):
        err = _rpc_error(lambda: stub.Recommend(pb2.RecommendRequest(user_id="boom", k=1), timeout=2))
    assert err.code() is grpc.StatusCode.INTERNAL
    assert err.details() == INTERNAL_MESSAGE
    assert "hunter2" not in (err.details() or "")
    # The operator gets the traceback; the caller does not.
    (record,) = [r for r in caplog.records if r.name == "serving" and r.exc_info]
    assert "/recsys.v1.Recommender/Recommend" in record.getMessage()
    assert isinstance(record.exc_info[1], RuntimeError)  # type: ignore[index]


def test_slow_call_past_client_deadline(stub: pb2_grpc.RecommenderStub) -> None:
    err = _rpc_error(lambda: stub.Recommend(pb2.RecommendRequest(user_id="slow", k=1), timeout=0.15))
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_access_log_has_method_code_duration_and_no_payload(
    stub: pb2_grpc.RecommenderStub, caplog: pytest.LogCaptureFixture
) -> None:
    def access_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "serving.access"]

    with caplog.at_level(logging.DEBUG, logger="serving.access"):
        stub.Recommend(pb2.RecommendRequest(user_id="alice", k=2), timeout=2)
        _rpc_error(lambda: stub.GetUserEmbedding(pb2.GetUserEmbeddingRequest(user_id="ghost"), timeout=2))
        # An aborted call's status reaches the client before the server thread writes
        # the line; give it a moment.
        deadline = time.monotonic() + 2
        while not any("code=NOT_FOUND" in m for m in access_lines()) and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = access_lines()
    assert any(
        "/recsys.v1.Recommender/Recommend" in m and "code=OK" in m and "duration_ms=" in m for m in lines
    )
    assert any("/recsys.v1.Recommender/GetUserEmbedding" in m and "code=NOT_FOUND" in m for m in lines)
    assert not any("alice" in m or "ghost" in m for m in lines)


# --- units without a network -----------------------------------------------------------


class _FakeContext:
    """Just enough of ``grpc.aio.ServicerContext`` for the deadline paths."""

    def __init__(self, remaining: float | None) -> None:
        self._remaining = remaining

    def time_remaining(self) -> float | None:
        return self._remaining


@pytest.mark.parametrize(("remaining", "slow_s"), [(0.0, 0.0), (-1.0, 0.0), (0.05, 0.3)])
def test_servicer_deadline_paths(remaining: float, slow_s: float) -> None:
    engine = FakeEngine(slow_s=slow_s)
    servicer = RecommenderServicer(Router(EngineHolder(engine)), executor=None)  # type: ignore[arg-type]
    context = _FakeContext(remaining)

    async def call() -> None:
        await servicer.Recommend(pb2.RecommendRequest(user_id="slow", k=1), context)

    # The servicer raises; the interceptor maps it (test_status_mapping, and end to end above).
    with pytest.raises(DeadlineExpired):
        asyncio.run(call())
    # An already-expired deadline must not start engine work at all.
    assert engine.slow_started.is_set() == (remaining > 0)


def test_engine_holder_swap_and_not_ready() -> None:
    holder = EngineHolder()
    with pytest.raises(NotReadyError):
        holder.get()
    first, second = FakeEngine(), FakeEngine()
    assert holder.swap(first) is None
    assert holder.get() is first
    assert holder.swap(second) is first
    assert holder.get() is second


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (InvalidArgumentError("k", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFoundError("user", "u1"), grpc.StatusCode.NOT_FOUND),
        (OverloadedError(), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (NotReadyError(), grpc.StatusCode.UNAVAILABLE),
        (DeadlineExpired("deadline exceeded"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (RecsysError("internal bundle detail"), grpc.StatusCode.INTERNAL),
        (KeyError("secret"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_mapping(exc: Exception, code: grpc.StatusCode) -> None:
    mapped_code, message = status_for(exc)
    assert mapped_code is code
    assert message  # never empty
    if code is grpc.StatusCode.INTERNAL:
        assert message == INTERNAL_MESSAGE


def test_server_options_validation() -> None:
    assert ServerOptions().address == "127.0.0.1:50051"
    assert ServerOptions(host="::1", port=0).address == "[::1]:0"
    with pytest.raises(ValueError, match="port"):
        ServerOptions(port=70000)
    with pytest.raises(ValueError, match="max_workers"):
        ServerOptions(max_workers=0)


def test_generated_code_is_up_to_date() -> None:
    assert regenerate.main(["--check"]) == 0
