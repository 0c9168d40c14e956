"""The one place where domain errors become gRPC status codes, plus the cross-cutting
per-call concerns: request ids, the access log and the latency metrics.

:class:`ErrorMappingInterceptor` wraps every coroutine unary-unary handler of a
``grpc.aio`` server:

* :class:`~serving.errors.InvalidArgumentError` -> ``INVALID_ARGUMENT`` ("<field>: <problem>")
* :class:`~serving.errors.NotFoundError`        -> ``NOT_FOUND``
* :class:`~serving.errors.OverloadedError`      -> ``RESOURCE_EXHAUSTED``
* :class:`~serving.errors.NotReadyError`        -> ``UNAVAILABLE``
* :class:`~serving.errors.StorageFullError`     -> ``RESOURCE_EXHAUSTED`` (the event store is out
  of space or quota: retry with backoff) and :class:`~serving.errors.StorageUnavailableError` ->
  ``UNAVAILABLE`` (read-only, permission denied, directory gone: retry, here or elsewhere); the
  OSError behind them is classified once, in :mod:`serving.observability.io_faults`
* :class:`~serving.errors.FeatureUnavailableError` -> ``FAILED_PRECONDITION``
  (and its sub-class :class:`~serving.errors.NotConfiguredError`: no event log)
* :class:`~serving.errors.UnauthenticatedError` -> ``UNAUTHENTICATED``,
  :class:`~serving.errors.PermissionDeniedError` -> ``PERMISSION_DENIED`` and
  :class:`~serving.errors.RateLimitedError` (an overload) -> ``RESOURCE_EXHAUSTED``: raised by
  the denial handlers of :class:`~serving.security.auth.AuthInterceptor`, which runs inside this one
* any other exception -> ``INTERNAL`` with a generic message; the traceback goes to the
  ``serving`` logger only, never to the caller.

Aborts the handler issued itself (``context.abort``), cancellations, and failures of
calls that already ended (deadline passed mid-handler) pass through unchanged.
Synchronous handlers are returned untouched (the aio server runs them on its own thread
pool, where awaiting ``context.abort`` is not possible); every servicer in this service is
``async``. Streaming handlers written as async generators (server reflection) get the same
mapping and access line; other streaming handlers (health watching) are left alone.

Unary requests reach the handler already parsed, but parsed here
(:func:`serving.api.decode.parse_request`) rather than by gRPC: gRPC answers undecodable bytes
with ``INTERNAL``, while they are the caller's fault -> ``INVALID_ARGUMENT`` naming the field
that holds invalid UTF-8 (or saying the bytes are not a message of the method's type).

Each wrapped call

* has a request id: the caller's ``x-request-id`` metadata when it is a plausible id
  (1..128 characters from ``[A-Za-z0-9._:/+=@-]``), else a generated one (32 hex
  digits, unique per process and across processes); it is echoed in the trailing
  metadata (``x-request-id``) whatever the status;
* logs one access line on ``serving.access``: method, status code, duration in
  milliseconds, the request id, the caller's name from the tokens file
  (``client=-`` without tokens) and the trace id (the call's span's with tracing on, else the
  caller's ``traceparent``; ``-`` without either); the same values ride on the record as
  structured fields for ``--log-format json`` (:mod:`serving.observability.log_format`). Request and response
  payloads and credentials are never logged: payloads hold user ids and histories, which are
  personal data;
* is one SERVER span when tracing is on (:mod:`serving.observability.tracing`), child of the caller's
  ``traceparent``, current while the handler runs, with the status code and request id;
* is observed in ``recsys_rpc_duration_seconds{method, code}`` and
  ``recsys_client_calls_total{client, code}`` when metrics are given.

Calls refused by gRPC itself (``maximum_concurrent_rpcs``) never reach the interceptor.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc

from serving.api.decode import parse_request
from serving.errors import (
    DeadlineExpired,
    FeatureUnavailableError,
    InvalidArgumentError,
    NotFoundError,
    NotReadyError,
    OverloadedError,
    PermissionDeniedError,
    StorageFullError,
    StorageUnavailableError,
    UnauthenticatedError,
)
from serving.metrics import ServingMetrics
from serving.observability import tracing
from serving.observability.log_format import FIELDS
from serving.security.auth import CALLER

if TYPE_CHECKING:
    from opentelemetry.trace import Span

logger = logging.getLogger("serving")
access_logger = logging.getLogger("serving.access")

INTERNAL_MESSAGE = "internal error"
REQUEST_ID_KEY = "x-request-id"
# What a caller-given id may look like; anything else (too long, spaces, control
# characters that could forge log lines) is replaced by a generated id.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
# Generated ids: a random per-process prefix and a counter (unique without a system call
# per request; the prefix tells processes and restarts apart).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)

# Message used when a domain error carries no text of its own.
_DEFAULT_MESSAGES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: "server overloaded; retry with backoff",
    grpc.StatusCode.UNAVAILABLE: "model not loaded yet; retry later",
}

# Order matters only if the domain hierarchy ever grows sub-classes of these.
_DOMAIN_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotReadyError, grpc.StatusCode.UNAVAILABLE),
    (StorageFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StorageUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (FeatureUnavailableError, grpc.StatusCode.FAILED_PRECONDITION),
    (DeadlineExpired, grpc.StatusCode.DEADLINE_EXCEEDED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
)

_MAX_CACHED_METHODS = 256

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]
Deserializer = Callable[[bytes], Any]
Metadata = Iterable[tuple[str, str | bytes]]


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and caller-visible message for an exception a handler raised.

    Domain errors keep their own message (they are written for callers); anything else
    becomes ``INTERNAL`` with :data:`INTERNAL_MESSAGE` so no internal detail leaks.
    """
    for error_type, code in _DOMAIN_CODES:
        if isinstance(exc, error_type):
            return code, str(exc) or _DEFAULT_MESSAGES.get(code, code.name.lower())
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def request_id_of(metadata: Metadata | None) -> str:
    """The caller's ``x-request-id`` when it is a plausible id, else a fresh one.

    Generated ids are 32 hex digits: 16 random per process, then a 16-digit counter.
    """
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no type hints
    """Maps domain errors to status codes; request id, access-log line and metrics per unary call.

    ``access_log_level`` is the level of the per-call line for calls that end ``OK``;
    calls that end with any other status are logged at ``INFO`` or above so that they are
    visible with the default production level. ``metrics`` (optional) receives each
    call's duration by method and status code.
    """

    def __init__(
        self, *, access_log_level: int = logging.DEBUG, metrics: ServingMetrics | None = None
    ) -> None:
        self._access_log_level = access_log_level
        self._metrics = metrics
        # method -> (handler as registered, wrapped handler): handlers are looked up per
        # call, but the registered object is the same each time, so wrap it once.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._observers: dict[tuple[str, grpc.StatusCode], Callable[[float], None]] = {}
        self._client_counters: dict[tuple[str, grpc.StatusCode], Callable[[], None]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap_handler(method, handler)
        if wrapped is None:
            return handler
        # Bounded: method names come from callers (a made-up one may reach here as the auth
        # interceptor's shared denial handler), and the services have a few dozen real ones.
        if len(self._wrapped) < _MAX_CACHED_METHODS or method in self._wrapped:
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        """The wrapped handler, or None when this kind of handler is left alone."""
        if handler is None:
            return None
        if not handler.request_streaming and not handler.response_streaming:
            if not inspect.iscoroutinefunction(handler.unary_unary):
                return None
            # Bytes in, parsed by the wrapper: see the module docstring.
            return grpc.unary_unary_rpc_method_handler(
                self._wrap(method, handler.unary_unary, handler.request_deserializer),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.request_streaming and handler.response_streaming:
            if not inspect.isasyncgenfunction(handler.stream_stream):
                return None
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.response_streaming and inspect.isasyncgenfunction(handler.unary_stream):
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return None

    def _wrap(self, method: str, behavior: UnaryBehavior, deserialize: Deserializer | None) -> UnaryBehavior:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            metadata = context.invocation_metadata()
            request_id = request_id_of(metadata)
            # Kept by gRPC when the call is later aborted (abort without trailing metadata).
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            code: grpc.StatusCode | None = None
            # Current for the whole call: the servicer's and the engine's spans nest under it.
            with tracing.server_span(method, metadata) as span:
                try:
                    if deserialize is not None:
                        request = parse_request(deserialize, request)
                    response = await behavior(request, context)
                    # A handler may set a code without raising; None means OK.
                    code = context.code() or grpc.StatusCode.OK
                    return response
                except grpc.aio.AbortError:
                    # The handler aborted on purpose (e.g. DEADLINE_EXCEEDED); the code is set.
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                except Exception as exc:
                    if context.done():
                        # The call already ended (deadline passed or client left) while the
                        # handler finished, so no status can be sent; the exception is gRPC's
                        # failed send, which the server ignores for closed calls.
                        code = context.code() or grpc.StatusCode.CANCELLED
                        raise
                    code, message = status_for(exc)
                    if code is grpc.StatusCode.INTERNAL:
                        logger.exception("unhandled error in %s (request_id=%s)", method, request_id)
                    await context.abort(code, message)
                finally:
                    # code stays None only when the call was cancelled (client gone, deadline hit
                    # while waiting, server shutting down): CancelledError is not an Exception.
                    self._record(
                        method, code or grpc.StatusCode.CANCELLED, started, request_id, span, metadata
                    )

        return wrapped

    def _wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            metadata = context.invocation_metadata()
            request_id = request_id_of(metadata)
            context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
            code: grpc.StatusCode | None = None
            # Not made current: an async generator's steps need not run in one context.
            with tracing.server_span(method, metadata, current=False) as span:
                try:
                    async for response in behavior(request, context):
                        yield response
                    code = context.code() or grpc.StatusCode.OK
                except grpc.aio.AbortError:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                except Exception as exc:
                    if context.done():
                        code = context.code() or grpc.StatusCode.CANCELLED
                        raise
                    code, message = status_for(exc)
                    if code is grpc.StatusCode.INTERNAL:
                        logger.exception("unhandled error in %s (request_id=%s)", method, request_id)
                    await context.abort(code, message)
                finally:
                    self._record(
                        method, code or grpc.StatusCode.CANCELLED, started, request_id, span, metadata
                    )

        return wrapped

    def _record(
        self,
        method: str,
        code: grpc.StatusCode,
        started: float,
        request_id: str,
        span: Span | None,
        metadata: Metadata | None,
    ) -> None:
        elapsed = time.perf_counter() - started
        tracing.finish_server_span(span, code, request_id)
        client = CALLER.get()
        if self._metrics is not None:
            observe = self._observers.get((method, code))
            if observe is None:
                observe = self._metrics.rpc_duration.labels(method, code.name).observe
                self._observers[(method, code)] = observe
            observe(elapsed)
            count = self._client_counters.get((client, code))
            if count is None:
                count = self._metrics.client_calls.labels(client, code.name).inc
                self._client_counters[(client, code)] = count
            count()
        level = self._access_log_level
        if code is not grpc.StatusCode.OK:
            level = max(level, logging.INFO)
        if access_logger.isEnabledFor(level):
            duration_ms = round(elapsed * 1000.0, 1)
            trace_id = tracing.trace_id_of(span, metadata)
            # The same values as fields, for --log-format json (serving.observability.log_format).
            fields = {
                "method": method,
                "code": code.name,
                "duration_ms": duration_ms,
                "request_id": request_id,
                "client": client,
                "trace_id": trace_id,
            }
            access_logger.log(
                level,
                "rpc method=%s code=%s duration_ms=%.1f request_id=%s client=%s trace_id=%s",
                method,
                code.name,
                duration_ms,
                request_id,
                client,
                trace_id or "-",
                extra={FIELDS: fields},
            )
