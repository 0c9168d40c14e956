"""Who may call what: bearer tokens, scopes and per-caller rates, checked before a request is parsed.

:class:`AuthInterceptor` (installed by :mod:`serving.api.server` when ``--auth-tokens`` is
given) looks at every call's method and metadata, before any request byte is parsed:

* ``grpc.health.v1.Health`` is open: load balancers probe it without credentials;
* every other call needs ``authorization: Bearer <token>`` metadata naming a token of the
  tokens file (:mod:`serving.security.tokens`); missing, malformed or unknown ->
  :class:`~serving.errors.UnauthenticatedError` (``UNAUTHENTICATED``);
* a ``recsys.v1`` service needs its scope (:data:`SERVICE_SCOPES`), else
  :class:`~serving.errors.PermissionDeniedError` (``PERMISSION_DENIED``); server reflection
  needs any valid token;
* a client with ``requests_per_s`` over its rate gets
  :class:`~serving.errors.RateLimitedError` (``RESOURCE_EXHAUSTED``).

A refused call is answered by a *denial handler* of the method's shape that raises the
domain error; :class:`~serving.api.interceptors.ErrorMappingInterceptor` (outside this one)
turns it into the status code, like every other domain error, and writes the access line.
The caller's name (never the token) is put in :data:`CALLER` for that access line and the
per-client metrics. Error messages never repeat the presented token.

Runs on the event loop thread only (the rate buckets rely on it).
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

import grpc

from serving._proto.recsys.v1 import audiences_pb2, events_pb2, profiles_pb2
from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving.errors import PermissionDeniedError, RateLimitedError, RecsysError, UnauthenticatedError
from serving.metrics import ServingMetrics
from serving.security.rate_limit import ClientRates
from serving.security.tokens import ClientSpec, Scope, TokenTable

AUTHORIZATION_KEY: Final = "authorization"
_BEARER: Final = "bearer "

SERVICE_SCOPES: Final[dict[str, Scope]] = {
    pb2.DESCRIPTOR.services_by_name["Recommender"].full_name: Scope.RECOMMENDER,
    profiles_pb2.DESCRIPTOR.services_by_name["MemberProfiles"].full_name: Scope.PROFILES,
    audiences_pb2.DESCRIPTOR.services_by_name["Audiences"].full_name: Scope.AUDIENCES,
    events_pb2.DESCRIPTOR.services_by_name["EventCollector"].full_name: Scope.EVENTS,
}
OPEN_SERVICES: Final = frozenset({"grpc.health.v1.Health"})

NO_CALLER: Final = "-"
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("recsys_caller", default=NO_CALLER)
"""The authenticated caller's name for the current call (``-``: none, or no tokens)."""
_DENIAL: contextvars.ContextVar[RecsysError | None] = contextvars.ContextVar("recsys_denial", default=None)

_REASONS: Final[tuple[tuple[type[RecsysError], str], ...]] = (
    (UnauthenticatedError, "unauthenticated"),
    (PermissionDeniedError, "permission_denied"),
    (RateLimitedError, "rate_limited"),
)


def service_of(method: str) -> str:
    """``/recsys.v1.Recommender/Recommend`` -> ``recsys.v1.Recommender``."""
    return method.lstrip("/").partition("/")[0]


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of the ``authorization: Bearer <token>`` entry; None when absent or malformed."""
    for key, value in metadata or ():
        if key == AUTHORIZATION_KEY:
            if isinstance(value, str) and value[: len(_BEARER)].lower() == _BEARER:
                token = value[len(_BEARER) :].strip()
                return token or None
            return None
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no type hints
    """Authenticates, authorises and rate-limits every call (see the module docstring)."""

    def __init__(self, tokens: TokenTable, metrics: ServingMetrics | None = None) -> None:
        self._metrics = metrics
        self._rates = ClientRates()
        self._tokens = tokens
        self.install(tokens)
        # method -> denial handler of its shape (cached: the error itself travels in _DENIAL).
        self._denials: dict[str, grpc.RpcMethodHandler] = {}

    @property
    def tokens(self) -> TokenTable:
        return self._tokens

    def install(self, tokens: TokenTable) -> None:
        """Use ``tokens`` for every call from now on (a reloaded file). Event loop thread only."""
        self._rates.update(tokens.by_name())
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        service = service_of(method)
        if service in OPEN_SERVICES:
            return await continuation(handler_call_details)
        try:
            client = self._authenticate(handler_call_details.invocation_metadata)
            CALLER.set(client.name)
            self._authorise(client, service)
        except (UnauthenticatedError, PermissionDeniedError, RateLimitedError) as exc:
            self._count_refusal(exc)
            _DENIAL.set(exc)
            return self._denial(method, await continuation(handler_call_details))
        return await continuation(handler_call_details)

    def _authenticate(self, metadata: Any) -> ClientSpec:
        token = bearer_token(metadata)
        if token is None:
            raise UnauthenticatedError(
                f"missing credentials: send '{AUTHORIZATION_KEY}: Bearer <token>' call metadata"
            )
        client = self._tokens.authenticate(token)
        if client is None:
            raise UnauthenticatedError("unknown or revoked token")
        return client

    def _authorise(self, client: ClientSpec, service: str) -> None:
        scope = SERVICE_SCOPES.get(service)
        # Services without a scope (reflection, unknown names -> UNIMPLEMENTED) need only a
        # valid token.
        if scope is not None and scope not in client.scopes:
            raise PermissionDeniedError(
                f"client {client.name!r} lacks the {scope.value!r} scope for {service}"
            )
        if not self._rates.allow(client.name):
            rate = client.requests_per_s
            raise RateLimitedError(f"client {client.name!r} is over its rate of {rate:g} requests/s")

    def _denial(self, method: str, handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
        """A handler of ``handler``'s shape (unary-unary when the method is unknown) that
        raises the call's denial without reading the request. ``recsys.v1`` has no
        client-streaming methods; reflection is bidirectional, health watching server-streaming."""
        if handler is None:
            # An unknown method: one shared handler, so that made-up method names cannot grow
            # the cache without bound.
            return _UNKNOWN_METHOD_DENIAL
        denial = self._denials.get(method)
        if denial is not None:
            return denial
        serializer = handler.response_serializer
        if handler.request_streaming and handler.response_streaming:
            denial = grpc.stream_stream_rpc_method_handler(_deny_stream, response_serializer=serializer)
        elif handler.response_streaming:
            denial = grpc.unary_stream_rpc_method_handler(_deny_stream, response_serializer=serializer)
        else:
            denial = grpc.unary_unary_rpc_method_handler(_deny_unary, response_serializer=serializer)
        self._denials[method] = denial
        return denial

    def _count_refusal(self, exc: RecsysError) -> None:
        if self._metrics is None:
            return
        for kind, reason in _REASONS:
            if isinstance(exc, kind):
                self._metrics.auth_refused.labels(reason).inc()
                return


def _current_denial() -> RecsysError:
    denial = _DENIAL.get()
    return denial if denial is not None else UnauthenticatedError("call refused")


async def _deny_unary(request: object, context: grpc.aio.ServicerContext) -> Any:
    raise _current_denial()


async def _deny_stream(request: object, context: grpc.aio.ServicerContext) -> Any:
    raise _current_denial()
    yield  # an async generator, like the handlers it stands in for


_UNKNOWN_METHOD_DENIAL: Final = grpc.unary_unary_rpc_method_handler(_deny_unary)
