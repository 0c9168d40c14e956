"""OpenTelemetry traces of the server: off unless the standard ``OTEL_*`` environment asks for them.

Switching on (:func:`from_environment`, called by the process entry points: ``recsys serve`` and
each ``--workers`` process). Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter
(``otlp``, ``console``; ``none`` is off) or, with ``OTEL_TRACES_EXPORTER`` unset, when an OTLP
endpoint is given (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``).
``OTEL_SDK_DISABLED=true`` turns it off whatever else is set. Everything else is the SDK's and the
exporter's own, standard variables: ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``grpc``, the default, or
``http/protobuf``), endpoint, headers, certificates, compression and timeout, ``OTEL_SERVICE_NAME``
and ``OTEL_RESOURCE_ATTRIBUTES`` (service name default ``recsys-serve``), ``OTEL_TRACES_SAMPLER``,
``OTEL_BSP_*`` (the batch span processor), ``OTEL_PROPAGATORS`` (W3C ``traceparent`` by default).
The SDK and the OTLP exporter are the ``tracing`` extra (``pip install 'recsys-service[tracing]'``);
when the environment asks for traces without them the start fails with
:class:`TracingConfigError` saying so.

Cost when off: the OpenTelemetry packages are not even imported. Every hook below reads one
module global and returns a shared no-op context manager (or None), so the request path creates no
span, context or SDK object.

The span tree of one ``Recommend`` call (names are the constants below)::

    recsys.v1.Recommender/Recommend            SERVER span (serving.api.interceptors), parent: the
    │                                          caller's traceparent from the gRPC metadata
    ├── recommend.routing                      experiment / variant (serving.api.recommender)
    └── recommend.batch                        the micro-batch that answered it, on an engine thread
        ├── recommend.filters                  evaluation of the request's item filters (filtered queries)
        ├── recommend.user_tower               user vectors: stored ones, or a tower pass
        ├── recommend.index_search             the index search (filters applied inside it)
        ├── recommend.diversity                exclusions + MMR / category-cap re-ranking (when asked)
        └── recommend.explanations             "because you viewed X"

A batch answers several calls at once: its span is a child of the oldest call's span and carries
links to the spans of the others (and ``recsys.batch.size``), so each of those traces points to
the work done for it. With a sampler (``OTEL_TRACES_SAMPLER=parentbased_traceidratio``), a call
left out of the sample gets its (non-recorded) SERVER span only: no child span is even started,
and a batch links only the recorded calls. ``LogEvents`` has ``events.append`` (the durable
append: WAL group commit).
Spans carry no user ids, payloads or exception messages (which may quote an id): a failed span has
status ERROR with the exception's type name only.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from serving.errors import RecsysError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

logger = logging.getLogger("serving")

TRACER_NAME = "recsys.serving"
DEFAULT_SERVICE_NAME = "recsys-serve"

ROUTING = "recommend.routing"
BATCH = "recommend.batch"
FILTERS = "recommend.filters"
USER_TOWER = "recommend.user_tower"
INDEX_SEARCH = "recommend.index_search"
DIVERSITY = "recommend.diversity"
EXPLANATIONS = "recommend.explanations"
EVENT_LOG_APPEND = "events.append"

EXPORTERS = ("otlp", "console")
"""Values of ``OTEL_TRACES_EXPORTER`` this server knows (``none``: off)."""
PROTOCOLS = ("grpc", "http/protobuf")

UNTRACED_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Method prefixes that get no span: health probes (every few seconds from each orchestrator and
load balancer) and server reflection would flood the traces and say nothing about requests."""

# Server-side gRPC codes that mark a span as failed (OpenTelemetry's RPC conventions): the
# others (NOT_FOUND, INVALID_ARGUMENT, ...) are the caller's business, not the server's fault.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
# W3C trace context: version-traceid-parentid-flags (lower-case hex; all-zero ids are invalid).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACEPARENT_KEY = "traceparent"

_NOOP: AbstractContextManager[None] = contextlib.nullcontext()
_T = TypeVar("_T")

# The one switch: None = off (the request path checks only this).
_on: _On | None = None


class TracingConfigError(RecsysError, ValueError):
    """The ``OTEL_*`` environment asks for something this server cannot do (the message says what)."""


# ------------------------------------------------------------------------ switching on/off
def enabled() -> bool:
    return _on is not None


def enable(provider: TracerProvider) -> None:
    """Trace this process's calls with ``provider`` (tests pass one with an in-memory exporter).

    The provider is not made OpenTelemetry's global one: other libraries in the process keep theirs.
    """
    global _on
    _on = _On(provider.get_tracer(TRACER_NAME))


def disable() -> None:
    global _on
    _on = None


def requested_exporters(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The exporters the environment asks for (empty: tracing off); see the module docstring.

    Raises :class:`TracingConfigError` for an exporter or protocol this server does not know.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not named:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        exporters: tuple[str, ...] = ("otlp",) if endpoint else ()
    else:
        exporters = tuple(dict.fromkeys(e.strip() for e in named.split(",") if e.strip() not in ("", "none")))
    unknown = [e for e in exporters if e not in EXPORTERS]
    if unknown:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER: unknown exporter {unknown[0]!r}; this server knows "
            f"{', '.join(EXPORTERS)} and none"
        )
    if "otlp" in exporters:
        protocol = _otlp_protocol(env)
        if protocol not in PROTOCOLS:
            raise TracingConfigError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL: unknown protocol {protocol!r}; use {' or '.join(PROTOCOLS)}"
            )
    return exporters


def _otlp_protocol(env: Mapping[str, str]) -> str:
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    return (protocol or "grpc").strip().lower()


def check_environment(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """:func:`requested_exporters`, plus a check that the packages they need are installed.

    Called before a server starts, so a missing package fails the start with a clear message
    instead of a traceback in every worker.
    """
    env = os.environ if environ is None else environ
    exporters = requested_exporters(env)
    for exporter in exporters:
        _exporter_class(exporter, env)
    return exporters


def _exporter_class(exporter: str, env: Mapping[str, str]) -> Callable[[], Any]:
    """The span exporter class of ``exporter`` (configured from the environment when called)."""
    hint = (
        f"OTEL_TRACES_EXPORTER={exporter} asks for traces, but {{what}} is not installed: "
        "pip install 'recsys-service[tracing]' (or set OTEL_TRACES_EXPORTER=none)"
    )
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        raise TracingConfigError(hint.format(what="the OpenTelemetry SDK (opentelemetry-sdk)")) from None
    if exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter
    if _otlp_protocol(env) == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TracingConfigError(
                hint.format(what="the OTLP/gRPC exporter (opentelemetry-exporter-otlp-proto-grpc)")
            ) from None
        return OTLPSpanExporter
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )
    except ImportError:
        raise TracingConfigError(
            hint.format(what="the OTLP/HTTP exporter (opentelemetry-exporter-otlp-proto-http)")
        ) from None
    return HttpSpanExporter  # type: ignore[no-any-return]


@contextlib.contextmanager
def from_environment(environ: Mapping[str, str] | None = None) -> Iterator[bool]:
    """Trace this process as the ``OTEL_*`` environment says, for the ``with`` block; yields
    whether tracing is on. On exit the spans still buffered are exported (the provider shuts down).

    Raises :class:`TracingConfigError` (see :func:`check_environment`).
    """
    env = os.environ if environ is None else environ
    exporters = check_environment(env)
    if not exporters:
        yield False
        return
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    # Sampler (OTEL_TRACES_SAMPLER) and batching (OTEL_BSP_*) come from the environment.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter_class(exporter, env)()))
    enable(provider)
    logger.info(
        "tracing on: %s exporter(s), service %s",
        ", ".join(exporters),
        resource.attributes.get(SERVICE_NAME),
    )
    try:
        yield True
    finally:
        disable()
        provider.shutdown()


# ------------------------------------------------------------------------- request path
class _On:
    """Tracing switched on: the tracer and the OpenTelemetry API pieces the request path uses,
    looked up once here rather than imported on every call."""

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry import context, propagate, trace

        self.tracer = tracer
        self.attach = context.attach
        self.detach = context.detach
        self.get_current = context.get_current
        self.set_span_in_context = trace.set_span_in_context
        self.get_current_span = trace.get_current_span
        self.extract = propagate.extract
        self.link = trace.Link
        self.server_kind = trace.SpanKind.SERVER
        self.status = trace.Status
        self.error = trace.StatusCode.ERROR


class _Scope:
    """One started span for a ``with`` block: made current (``current``), ended on exit.

    With ``mark_errors`` an exception leaving the block marks the span ERROR with the exception's
    type name only: the SDK's own handling would record its message, which may quote a user id.
    A plain class (no generator): this is the per-span cost when tracing is on.
    """

    __slots__ = ("_current", "_mark_errors", "_on", "_span", "_token")

    def __init__(self, on: _On, started: Span, *, current: bool = True, mark_errors: bool = True) -> None:
        self._on = on
        self._span = started
        self._current = current
        self._mark_errors = mark_errors
        self._token: object = None

    def __enter__(self) -> Span:
        if self._current:
            self._token = self._on.attach(self._on.set_span_in_context(self._span))
        return self._span

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            if self._mark_errors and exc_type is not None and issubclass(exc_type, Exception):
                self._span.set_status(self._on.status(self._on.error, exc_type.__name__))
        finally:
            if self._current:
                self._on.detach(self._token)  # type: ignore[arg-type]
            self._span.end()


def _child(
    on: _On,
    name: str,
    attributes: Mapping[str, Any] | None,
    parent: Context | None = None,
    links: Sequence[Any] = (),
) -> _Scope:
    started = on.tracer.start_span(
        name,
        context=parent,
        attributes=attributes,
        links=links,
        record_exception=False,
        set_status_on_exception=False,
    )
    return _Scope(on, started)


def span(name: str, attributes: Mapping[str, Any] | None = None) -> AbstractContextManager[Span | None]:
    """A child span of the current one (``with tracing.span(NAME) as s``; ``s`` is None when off,
    and when the current span is not recorded: a call its trace's sampler left out costs no span
    below its SERVER span, which alone carries the sampling decision on)."""
    on = _on
    if on is None or not on.get_current_span().is_recording():
        return _NOOP
    return _child(on, name, attributes)


def server_span(
    method: str, metadata: Iterable[tuple[str, str | bytes]] | None, *, current: bool = True
) -> AbstractContextManager[Span | None]:
    """The SERVER span of one call of ``method`` (``/package.Service/Method``), child of the
    caller's trace context in ``metadata`` (``traceparent``; a new trace without one).

    ``current``: make it the current span for the block (unary calls: child spans nest under
    it). Streaming handlers are async generators whose steps may run in other contexts, so they
    get a span that is not made current. Its status comes from :func:`finish_server_span`.
    Health checks and reflection get none (:data:`UNTRACED_METHODS`).
    """
    on = _on
    if on is None or method.startswith(UNTRACED_METHODS):
        return _NOOP
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    full_name = method.lstrip("/")
    service, _, name = full_name.rpartition("/")
    started = on.tracer.start_span(
        full_name,
        context=on.extract(carrier),
        kind=on.server_kind,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        record_exception=False,
        set_status_on_exception=False,
    )
    return _Scope(on, started, current=current, mark_errors=False)


def finish_server_span(server: Span | None, code: grpc.StatusCode, request_id: str) -> None:
    """Record the call's status code (and request id, to find the trace from a log line)."""
    on = _on
    if server is None or on is None:
        return
    server.set_attribute("rpc.grpc.status_code", code.value[0])
    server.set_attribute("recsys.request_id", request_id)
    if code in _SERVER_ERRORS:
        server.set_status(on.status(on.error, code.name))


def trace_id_of(server: Span | None, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The trace id (32 hex digits) for a call's log line: its span's when tracing is on, else the
    caller's ``traceparent`` (so logs join the caller's traces even with tracing off); None without."""
    if server is not None:
        context = server.get_span_context()
        return f"{context.trace_id:032x}" if context.is_valid else None
    for key, value in metadata or ():
        if key == _TRACEPARENT_KEY and isinstance(value, str):
            match = _TRACEPARENT.fullmatch(value.strip())
            if match is None or match[1] == "ff" or not int(match[2], 16) or not int(match[3], 16):
                return None
            return match[2]
    return None


def current_context() -> Context | None:
    """The current trace context, to hand to work that runs elsewhere (None when off)."""
    on = _on
    return None if on is None else on.get_current()


def bind(call: Callable[[], _T]) -> Callable[[], _T]:
    """``call``, made to run in the current context wherever it runs (an executor thread: spans it
    opens nest under the current span). ``call`` itself when off."""
    if _on is None:
        return call
    return functools.partial(contextvars.copy_context().run, call)


def batch_span(parents: Sequence[Context | None]) -> AbstractContextManager[Span | None]:
    """The span of one micro-batch answering the calls whose contexts are ``parents`` (oldest
    first): a child of the oldest recorded (sampled) call's span, linked to the other recorded
    calls' spans; none when no call is recorded. Opened on the engine thread."""
    on = _on
    if on is None:
        return _NOOP
    recorded = [s for s in (on.get_current_span(p) for p in parents if p is not None) if s.is_recording()]
    if not recorded:
        return _NOOP
    parent = on.set_span_in_context(recorded[0])
    links = [on.link(s.get_span_context()) for s in recorded[1:]]
    return _child(on, BATCH, {"recsys.batch.size": len(parents)}, parent, links)
