"""The one place where domain errors become gRPC status codes, plus the access log.

:class:`ErrorMappingInterceptor` wraps every coroutine unary-unary handler of a
``grpc.aio`` server:

* :class:`~serving.errors.InvalidArgumentError` -> ``INVALID_ARGUMENT`` ("<field>: <problem>")
* :class:`~serving.errors.NotFoundError`        -> ``NOT_FOUND``
* :class:`~serving.errors.OverloadedError`      -> ``RESOURCE_EXHAUSTED``
* :class:`~serving.errors.NotReadyError`        -> ``UNAVAILABLE``
* any other exception -> ``INTERNAL`` with a generic message; the traceback goes to the
  ``serving`` logger only, never to the caller.

Aborts the handler issued itself (``context.abort``), cancellations, and failures of
calls that already ended (deadline passed mid-handler) pass through unchanged.
Streaming handlers and synchronous handlers are returned untouched (the aio server runs
synchronous handlers on its own thread pool, where awaiting ``context.abort`` is not
possible); every servicer in this service is ``async``.

Each wrapped call logs one access line on ``serving.access``: method, status code and
duration in milliseconds. Request and response payloads are never logged: they hold user
ids, which are personal data.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from serving.errors import InvalidArgumentError, NotFoundError, NotReadyError, OverloadedError

logger = logging.getLogger("serving")
access_logger = logging.getLogger("serving.access")

INTERNAL_MESSAGE = "internal error"

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
)

UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and caller-visible message for an exception a handler raised.

    Domain errors keep their own message (they are written for callers); anything else
    becomes ``INTERNAL`` with :data:`INTERNAL_MESSAGE` so no internal detail leaks.
    """
    for error_type, code in _DOMAIN_CODES:
        if isinstance(exc, error_type):
            return code, str(exc) or _DEFAULT_MESSAGES.get(code, code.name.lower())
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no type hints
    """Maps domain errors to status codes and writes one access-log line per unary call.

    ``access_log_level`` is the level of the per-call line for calls that end ``OK``;
    calls that end with any other status are logged at ``INFO`` or above so that they are
    visible with the default production level.
    """

    def __init__(self, *, access_log_level: int = logging.DEBUG) -> None:
        self._access_log_level = access_log_level

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler.request_streaming
            or handler.response_streaming
            or not inspect.iscoroutinefunction(handler.unary_unary)
        ):
            return handler
        method: str = handler_call_details.method
        return grpc.unary_unary_rpc_method_handler(
            self._wrap(method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code: grpc.StatusCode | None = None
            try:
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
                    logger.exception("unhandled error in %s", method)
                await context.abort(code, message)
            finally:
                # code stays None only when the call was cancelled (client gone, deadline hit
                # while waiting, server shutting down): CancelledError is not an Exception.
                self._log_access(method, code or grpc.StatusCode.CANCELLED, started)

        return wrapped

    def _log_access(self, method: str, code: grpc.StatusCode, started: float) -> None:
        level = self._access_log_level
        if code is not grpc.StatusCode.OK:
            level = max(level, logging.INFO)
        if access_logger.isEnabledFor(level):
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            access_logger.log(level, "rpc method=%s code=%s duration_ms=%.1f", method, code.name, elapsed_ms)
