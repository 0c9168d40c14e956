"""OpenTelemetry traces and JSON access lines of a real server on loopback.

The spans go to the SDK's in-memory exporter (or, for the ``OTEL_*`` environment path, over OTLP/gRPC
to a receiver speaking the OpenTelemetry collector's trace service on loopback); the server serves
the session's tiny trained bundle, with an event log.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serving._proto.recsys.v1 import events_pb2, events_pb2_grpc
from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api.background import BackgroundServer
from serving.api.batcher import answer_batch
from serving.api.server import ServerOptions
from serving.observability import tracing
from serving.observability.log_format import FIELDS, JsonFormatter, configure_logging
from serving.recommend.engine import TwoTowerEngine
from serving.recommend.types import Diversity, ItemFilter, RecommendQuery
from tests.conftest import TrainedBundle

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
RECOMMEND = "recsys.v1.Recommender/Recommend"
ENGINE_SPANS = {
    tracing.FILTERS,
    tracing.USER_TOWER,
    tracing.INDEX_SEARCH,
    tracing.DIVERSITY,
    tracing.EXPLANATIONS,
}


@pytest.fixture(scope="module")
def server(trained: TrainedBundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    options = ServerOptions(
        host="127.0.0.1",
        port=0,
        grace_seconds=0.5,
        max_workers=2,
        events_dir=tmp_path_factory.mktemp("events"),
    )
    with BackgroundServer(options, lambda: TwoTowerEngine.load(trained.bundle), start_timeout=30) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server: BackgroundServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as connected:
        yield connected


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, every span exported synchronously to memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.disable()
        provider.shutdown()


@pytest.fixture
def user(trained: TrainedBundle) -> str:
    return str(trained.interactions.get_column("user_id")[0])


def _traceparent() -> tuple[str, str, str]:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent_id}-01", trace_id, parent_id


def _wait_for(
    exporter: InMemorySpanExporter, done: Callable[[list[ReadableSpan]], bool]
) -> list[ReadableSpan]:
    """The finished spans once ``done`` holds (the server span ends as the answer leaves)."""
    deadline = time.monotonic() + 5
    while True:
        finished = list(exporter.get_finished_spans())
        if done(finished) or time.monotonic() > deadline:
            return finished
        time.sleep(0.01)


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    named = [s for s in spans if s.name == name]
    assert len(named) == 1, f"{name}: {len(named)} spans in {[s.name for s in spans]}"
    return named[0]


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _recommend_request(user: str) -> pb2.RecommendRequest:
    # A filter and MMR, so that every engine step does work (and has its span).
    return pb2.RecommendRequest(
        user_id=user,
        k=5,
        filters=[pb2.ItemFilter(attribute="price", min=0.0)],
        diversity=pb2.Diversity(mmr_lambda=0.7),
    )


def test_recommend_span_tree_continues_the_callers_trace(
    channel: grpc.Channel, spans: InMemorySpanExporter, user: str
) -> None:
    header, trace_id, parent_id = _traceparent()
    stub = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
    response = stub.Recommend(
        _recommend_request(user),
        metadata=(("traceparent", header), ("x-request-id", "trace-test-1")),
        timeout=10,
    )
    assert len(response.items) == 5
    finished = _wait_for(spans, lambda s: any(x.name == RECOMMEND for x in s))

    rpc = _one(finished, RECOMMEND)
    assert rpc.kind is otel_trace.SpanKind.SERVER
    assert f"{rpc.context.trace_id:032x}" == trace_id
    assert _parent_id(rpc) == int(parent_id, 16)
    assert rpc.parent is not None
    assert rpc.parent.is_remote
    assert rpc.attributes is not None
    assert rpc.attributes["rpc.system"] == "grpc"
    assert rpc.attributes["rpc.service"] == "recsys.v1.Recommender"
    assert rpc.attributes["rpc.method"] == "Recommend"
    assert rpc.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    assert rpc.attributes["recsys.request_id"] == "trace-test-1"

    routing = _one(finished, tracing.ROUTING)
    batch = _one(finished, tracing.BATCH)
    assert _parent_id(routing) == rpc.context.span_id
    # Across the micro-batcher onto an engine thread, still under the call's span.
    assert _parent_id(batch) == rpc.context.span_id
    assert batch.attributes is not None
    assert batch.attributes["recsys.batch.size"] == 1
    for name in ENGINE_SPANS:
        assert _parent_id(_one(finished, name)) == batch.context.span_id, name
    assert {s.context.trace_id for s in finished} == {int(trace_id, 16)}
    # Spans are timed inside their parents.
    assert rpc.start_time is not None
    assert batch.start_time is not None
    assert batch.end_time is not None
    assert rpc.end_time is not None
    assert rpc.start_time <= batch.start_time <= batch.end_time <= rpc.end_time
    # Nothing of the request's payload rides on a span.
    for span in finished:
        assert user not in json.dumps(dict(span.attributes or {}))


def test_call_without_traceparent_starts_its_own_trace(
    channel: grpc.Channel, spans: InMemorySpanExporter, user: str
) -> None:
    stub = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
    stub.Recommend(pb2.RecommendRequest(user_id=user, k=3), timeout=10)
    finished = _wait_for(spans, lambda s: any(x.name == RECOMMEND for x in s))
    rpc = _one(finished, RECOMMEND)
    assert rpc.parent is None
    # A plain request: no filter or diversity work, so no span for it.
    names = {s.name for s in finished}
    assert {tracing.ROUTING, tracing.BATCH, tracing.USER_TOWER, tracing.INDEX_SEARCH} <= names
    assert not names & {tracing.FILTERS, tracing.DIVERSITY}


def test_failed_call_marks_its_span_without_the_message(
    channel: grpc.Channel, spans: InMemorySpanExporter
) -> None:
    stub = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetUserEmbedding(pb2.GetUserEmbeddingRequest(user_id="ghost-user-42"), timeout=10)
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    name = "recsys.v1.Recommender/GetUserEmbedding"
    finished = _wait_for(spans, lambda s: any(x.name == name for x in s))
    rpc = _one(finished, name)
    assert rpc.attributes is not None
    assert rpc.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    # NOT_FOUND is the caller's business (OpenTelemetry's RPC conventions): not a server error.
    assert rpc.status.status_code is otel_trace.StatusCode.UNSET
    # The engine refused the unknown user before any tower work.
    assert tracing.USER_TOWER not in {s.name for s in finished}
    for span in finished:
        assert "ghost-user-42" not in json.dumps(dict(span.attributes or {})) + str(span.status.description)
        assert not span.events


def test_log_events_append_span(channel: grpc.Channel, spans: InMemorySpanExporter) -> None:
    header, trace_id, _ = _traceparent()
    now_ms = int(time.time() * 1000)
    events = [
        events_pb2.Event(
            user_id=f"u{i}",
            item_id=f"i{i}",
            event_type=events_pb2.EVENT_TYPE_CLICK,
            timestamp_ms=now_ms - i,
            event_id=f"trace-e{i}",
        )
        for i in range(3)
    ]
    stub = events_pb2_grpc.EventCollectorStub(channel)  # type: ignore[no-untyped-call]
    response = stub.LogEvents(
        events_pb2.LogEventsRequest(events=events), metadata=(("traceparent", header),), timeout=10
    )
    assert response.accepted == 3
    name = "recsys.v1.EventCollector/LogEvents"
    finished = _wait_for(spans, lambda s: any(x.name == name for x in s))
    rpc = _one(finished, name)
    append = _one(finished, tracing.EVENT_LOG_APPEND)
    assert f"{rpc.context.trace_id:032x}" == trace_id
    assert _parent_id(append) == rpc.context.span_id
    assert append.attributes is not None
    assert append.attributes["recsys.events"] == 3


def test_batch_span_is_a_child_of_the_oldest_call_and_links_the_others(
    engine: TwoTowerEngine, spans: InMemorySpanExporter, trained: TrainedBundle
) -> None:
    """One micro-batch answering three traced calls (run as the batcher runs it, off the loop)."""
    users = [str(u) for u in trained.interactions.get_column("user_id").unique().sort().head(3)]
    # Three calls' SERVER spans (recorded: the batch links recorded calls only).
    scopes = [tracing.server_span("/" + RECOMMEND, [("traceparent", _traceparent()[0])]) for _ in users]
    callers = [scope.__enter__() for scope in scopes]
    assert all(c is not None and c.is_recording() for c in callers)
    contexts = [otel_trace.set_span_in_context(c) for c in callers if c is not None]
    work = [(engine, RecommendQuery(user, 4, diversity=Diversity(mmr_lambda=0.5))) for user in users]
    outcomes = answer_batch(work, contexts)
    for scope in scopes:
        scope.__exit__(None, None, None)
    assert all(not isinstance(o, BaseException) for o in outcomes)

    finished = list(spans.get_finished_spans())
    batch = _one(finished, tracing.BATCH)
    assert callers[0] is not None
    assert batch.context.trace_id == callers[0].get_span_context().trace_id
    assert _parent_id(batch) == callers[0].get_span_context().span_id
    assert batch.attributes is not None
    assert batch.attributes["recsys.batch.size"] == 3
    linked = {(link.context.trace_id, link.context.span_id) for link in batch.links}
    assert linked == {(c.get_span_context().trace_id, c.get_span_context().span_id) for c in callers[1:] if c}
    # One tower pass and one search for the three of them, under the batch.
    for name in (tracing.USER_TOWER, tracing.INDEX_SEARCH, tracing.DIVERSITY, tracing.EXPLANATIONS):
        assert _parent_id(_one(finished, name)) == batch.context.span_id


def test_health_checks_are_not_traced(channel: grpc.Channel, spans: InMemorySpanExporter) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == 1  # SERVING
    stub = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.RpcError):  # a traced call after it, to know the probe's span would be there
        stub.GetUserEmbedding(pb2.GetUserEmbeddingRequest(user_id="nobody-at-all"), timeout=10)
    name = "recsys.v1.Recommender/GetUserEmbedding"
    finished = _wait_for(spans, lambda s: any(x.name == name for x in s))
    assert [s.name for s in finished] == [name]


def test_tracing_off_costs_no_span_objects() -> None:
    assert not tracing.enabled()
    first, second = tracing.span(tracing.ROUTING), tracing.span(tracing.USER_TOWER)
    assert first is second  # one shared no-op: nothing is built per call
    with first as inside:
        assert inside is None
    assert tracing.current_context() is None
    assert tracing.batch_span([None, None]) is first

    def call() -> int:
        return 1

    assert tracing.bind(call) is call


@pytest.mark.parametrize(
    ("environ", "exporters"),
    [
        ({}, ()),
        ({"OTEL_TRACES_EXPORTER": "none"}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"}, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, ("otlp", "console")),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, ("otlp",)),
    ],
)
def test_environment_decides_the_exporters(environ: dict[str, str], exporters: tuple[str, ...]) -> None:
    assert tracing.requested_exporters(environ) == exporters


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: unknown exporter 'zipkin'"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"},
            "OTEL_EXPORTER_OTLP_PROTOCOL: unknown protocol 'carrier-pigeon'",
        ),
    ],
)
def test_environment_errors_name_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(tracing.TracingConfigError, match=named):
        tracing.requested_exporters(environ)


class _Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """The collector's OTLP/gRPC trace service: keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(  # noqa: N802  (OTLP's method name)
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_otel_environment_exports_over_otlp(
    channel: grpc.Channel, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = _Receiver()
    collector = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, collector)  # type: ignore[no-untyped-call]
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    try:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
        monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
        header, trace_id, _ = _traceparent()
        stub = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
        with tracing.from_environment() as on:
            assert on
            assert tracing.enabled()
            stub.Recommend(_recommend_request(user), metadata=(("traceparent", header),), timeout=10)
            time.sleep(0.2)  # the server span ends as the answer leaves
        # Leaving the block flushed the batch processor: the spans have arrived.
        assert not tracing.enabled()
    finally:
        collector.stop(0)
    received = [
        (resource.resource, span)
        for request in receiver.requests
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    names = {span.name for _, span in received}
    assert {RECOMMEND, tracing.ROUTING, tracing.BATCH, *ENGINE_SPANS} <= names
    assert {span.trace_id.hex() for _, span in received} == {trace_id}
    services = {
        a.value.string_value
        for resource, _ in received
        for a in resource.attributes
        if a.key == "service.name"
    }
    assert services == {tracing.DEFAULT_SERVICE_NAME}


def test_server_says_when_otel_asks_for_traces_without_the_sdk(tmp_path: Path) -> None:
    """The tracing extra absent (its imports made to fail): the start fails naming the fix."""
    script = (
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'opentelemetry':\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "from serving.__main__ import main\n"
        "sys.exit(main(['--bundle', sys.argv[1], '--port', '0']))\n"
    )
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "otlp"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "no-bundle")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "OTEL_TRACES_EXPORTER=otlp asks for traces" in done.stderr
    assert "pip install 'recsys-service[tracing]'" in done.stderr


# --- JSON access lines ------------------------------------------------------------------


@pytest.fixture
def access_lines() -> Iterator[list[str]]:
    """The server's access lines as ``--log-format json`` writes them."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect(logging.DEBUG)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("serving.access")
    level = access.level
    access.addHandler(handler)
    access.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        access.removeHandler(handler)
        access.setLevel(level)


def _access_line(lines: list[str], request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in list(lines):
            parsed = json.loads(line)
            if parsed.get("request_id") == request_id:
                return dict(parsed)
        time.sleep(0.01)
    raise AssertionError(f"no access line for {request_id} in {lines}")


@pytest.mark.parametrize("traced", [True, False])
def test_json_access_line_has_request_and_trace_ids(
    channel: grpc.Channel, user: str, access_lines: list[str], traced: bool, request: pytest.FixtureRequest
) -> None:
    if traced:
        request.getfixturevalue("spans")
    header, trace_id, _ = _traceparent()
    request_id = f"json-{secrets.token_hex(4)}"
    stub = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
    stub.Recommend(
        pb2.RecommendRequest(user_id=user, k=2),
        metadata=(("traceparent", header), ("x-request-id", request_id)),
        timeout=10,
    )
    line = _access_line(access_lines, request_id)
    assert line["logger"] == "serving.access"
    assert line["method"] == "/recsys.v1.Recommender/Recommend"
    assert line["code"] == "OK"
    assert isinstance(line["duration_ms"], float)
    assert line["client"] == "-"
    # The call's trace: the server span's with tracing on, the caller's header with it off.
    assert line["trace_id"] == trace_id
    assert f"trace_id={trace_id}" in line["message"]
    assert user not in json.dumps(line)


def test_call_the_caller_left_unsampled_records_no_span(
    channel: grpc.Channel, spans: InMemorySpanExporter, user: str, access_lines: list[str]
) -> None:
    """The default sampler follows the caller: flags 00 (not sampled) = no span at all, not even
    below the SERVER span; the access line still names the trace."""
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    request_id = f"unsampled-{secrets.token_hex(4)}"
    stub = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
    stub.Recommend(
        _recommend_request(user),
        metadata=(("traceparent", f"00-{trace_id}-{parent_id}-00"), ("x-request-id", request_id)),
        timeout=10,
    )
    assert _access_line(access_lines, request_id)["trace_id"] == trace_id
    assert not spans.get_finished_spans()


def test_json_access_line_without_a_trace(channel: grpc.Channel, user: str, access_lines: list[str]) -> None:
    request_id = f"json-{secrets.token_hex(4)}"
    stub = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
    # A malformed traceparent is ignored, like a missing one.
    stub.Recommend(
        pb2.RecommendRequest(user_id=user, k=2),
        metadata=(("traceparent", "00-zz-not-a-trace"), ("x-request-id", request_id)),
        timeout=10,
    )
    line = _access_line(access_lines, request_id)
    assert line["trace_id"] is None
    assert "trace_id=-" in line["message"]


def test_json_formatter_lines(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("json", logging.INFO, worker=3)
        log = logging.getLogger("serving.test")
        log.info("plain %s", "line")
        log.warning("with fields", extra={FIELDS: {"code": "OK", "duration_ms": 1.5}})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["message"] for line in lines] == ["plain line", "with fields", "failed"]
    assert all(line["worker"] == 3 and line["logger"] == "serving.test" for line in lines)
    assert lines[0]["level"] == "INFO"
    assert lines[0]["time"].endswith("Z")
    assert lines[1]["code"] == "OK"
    assert lines[1]["duration_ms"] == 1.5
    assert "RuntimeError: boom" in lines[2]["exception"]


def test_log_format_is_validated() -> None:
    with pytest.raises(ValueError, match="log_format: must be one of text, json"):
        ServerOptions(log_format="xml")
    with pytest.raises(ValueError, match="log_format"):
        configure_logging("yaml", logging.INFO)


def test_serve_flag_parses() -> None:
    import argparse

    from serving.cli import add_serve_arguments

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    assert parser.parse_args(["--bundle", "b"]).log_format == "text"
    assert parser.parse_args(["--bundle", "b", "--log-format", "json"]).log_format == "json"
    with pytest.raises(SystemExit):
        parser.parse_args(["--bundle", "b", "--log-format", "xml"])


def test_filters_span_only_for_filtered_queries(
    engine: TwoTowerEngine, spans: InMemorySpanExporter, user: str
) -> None:
    with tracing.server_span("/" + RECOMMEND, None):  # engine spans are children of a call's
        engine.recommend(RecommendQuery(user, 3))
    assert tracing.FILTERS not in [s.name for s in spans.get_finished_spans()]
    with tracing.server_span("/" + RECOMMEND, None):
        engine.recommend(RecommendQuery(user, 3, filters=(ItemFilter("price", min=0.0),)))
    assert [s.name for s in spans.get_finished_spans()].count(tracing.FILTERS) == 1
    # Outside any call (no recorded span to hang under) the engine opens none.
    spans.clear()
    engine.recommend(RecommendQuery(user, 3, filters=(ItemFilter("price", min=0.0),)))
    assert not spans.get_finished_spans()
