"""A small synchronous client of the service (demo, ``recsys query``, health checks).

Other services use the generated stubs from ``protos/recsys/v1`` in their own language;
this wrapper only saves Python callers the boilerplate.

:func:`open_channel` is the one way this project opens a channel: plaintext, TLS
(:class:`ClientTLS`: the CA to trust, and a client certificate for mutual TLS) and/or a bearer
token sent as ``authorization: Bearer <token>`` metadata on every call. Tokens come from the
environment (:func:`token_from_env`), never from a command-line argument (which every user
of the machine can read in ``ps``); they never appear in a ``repr`` or an error message.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc

AUTHORIZATION_KEY = "authorization"


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """TLS for a channel: ``ca`` = the CA certificate(s) to trust (None: the system's roots);
    ``cert``/``key`` = a client certificate and key for mutual TLS; ``server_name`` overrides
    the name checked against the server certificate (when dialling an IP or a proxy)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str = ""

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("--tls-cert and --tls-key: give both or neither")

    def credentials(self) -> grpc.ChannelCredentials:
        """SSL channel credentials; raises :class:`ValueError` naming a file it cannot read."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "--tls-ca"),
            private_key=_read(self.key, "--tls-key"),
            certificate_chain=_read(self.cert, "--tls-cert"),
        )


def _read(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot read it: {exc.strerror or exc}") from None


def token_from_env(variable: str) -> str:
    """The token in ``$variable``; :class:`ValueError` naming the variable (never a value)
    when it is unset or empty."""
    token = os.environ.get(variable, "").strip()
    if not token:
        raise ValueError(f"--token-env {variable}: the environment variable is not set or empty")
    return token


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,  # type: ignore[misc]  # grpc ships no type hints
):
    pass


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds ``authorization: Bearer <token>`` to every call's metadata (plaintext or TLS alike;
    gRPC's own call credentials refuse plaintext channels, loopback included)."""

    def __init__(self, token: str) -> None:
        self._entry = (AUTHORIZATION_KEY, f"Bearer {token}")

    def __repr__(self) -> str:
        return "_BearerToken(<hidden>)"

    def _details(self, details: Any) -> _CallDetails:
        metadata = [*(details.metadata or ()), self._entry]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def open_channel(
    address: str,
    *,
    tls: ClientTLS | None = None,
    token: str | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A channel to ``address``: TLS when ``tls`` is given (else plaintext), and ``token`` sent
    as a bearer token on every call when given."""
    channel_options = list(options)
    if tls is not None and tls.server_name:
        channel_options.append(("grpc.ssl_target_name_override", tls.server_name))
    if tls is not None:
        channel = grpc.secure_channel(address, tls.credentials(), options=channel_options)
    else:
        channel = grpc.insecure_channel(address, options=channel_options)
    if token:
        return grpc.intercept_channel(channel, _BearerToken(token))
    return channel


class RecommenderClient:
    """``Recommender`` calls, health and reflection over one channel (:func:`open_channel`)."""

    def __init__(
        self, address: str, timeout: float = 5.0, *, tls: ClientTLS | None = None, token: str | None = None
    ) -> None:
        self.timeout = timeout
        self.channel = open_channel(address, tls=tls, token=token)
        self.stub = pb2_grpc.RecommenderStub(self.channel)  # type: ignore[no-untyped-call]

    def recommend(
        self,
        user_id: str,
        k: int,
        *,
        recent_item_ids: Iterable[str] = (),
        user_attributes: Mapping[str, str] | None = None,
        exclude_item_ids: Iterable[str] = (),
        filters: Iterable[pb2.ItemFilter] = (),
        diversity: pb2.Diversity | None = None,
        experiment: str = "",
        force_variant: str = "",
    ) -> pb2.RecommendResponse:
        """``Recommend``; options as in ``recsys.v1.RecommendRequest`` (all off by default)."""
        request = recommend_request(
            user_id,
            k,
            recent_item_ids=recent_item_ids,
            user_attributes=user_attributes,
            exclude_item_ids=exclude_item_ids,
            filters=filters,
            diversity=diversity,
            experiment=experiment,
            force_variant=force_variant,
        )
        response: pb2.RecommendResponse = self.stub.Recommend(request, timeout=self.timeout)
        return response

    def batch_recommend(self, requests: Sequence[pb2.RecommendRequest]) -> pb2.BatchRecommendResponse:
        """``BatchRecommend``: one response per request, in order (at most 1000 requests)."""
        response: pb2.BatchRecommendResponse = self.stub.BatchRecommend(
            pb2.BatchRecommendRequest(requests=requests), timeout=self.timeout
        )
        return response

    def similar_items(
        self,
        item_id: str,
        k: int,
        *,
        filters: Iterable[pb2.ItemFilter] = (),
        exclude_item_ids: Iterable[str] = (),
    ) -> pb2.SimilarItemsResponse:
        """``SimilarItems``: the k nearest items to ``item_id`` (itself excluded)."""
        request = pb2.SimilarItemsRequest(
            item_id=item_id, k=k, filters=list(filters), exclude_item_ids=list(exclude_item_ids)
        )
        response: pb2.SimilarItemsResponse = self.stub.SimilarItems(request, timeout=self.timeout)
        return response

    def user_embedding(self, user_id: str) -> pb2.UserEmbedding:
        response: pb2.UserEmbedding = self.stub.GetUserEmbedding(
            pb2.GetUserEmbeddingRequest(user_id=user_id), timeout=self.timeout
        )
        return response

    def health(self, service: str = "") -> str:
        stub = health_pb2_grpc.HealthStub(self.channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def list_services(self) -> list[str]:
        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        for reply in stub.ServerReflectionInfo(iter([request]), timeout=self.timeout):
            return sorted(s.name for s in reply.list_services_response.service)
        return []

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def recommend_request(
    user_id: str,
    k: int,
    *,
    recent_item_ids: Iterable[str] = (),
    user_attributes: Mapping[str, str] | None = None,
    exclude_item_ids: Iterable[str] = (),
    filters: Iterable[pb2.ItemFilter] = (),
    diversity: pb2.Diversity | None = None,
    experiment: str = "",
    force_variant: str = "",
) -> pb2.RecommendRequest:
    """A ``RecommendRequest`` (also for :meth:`RecommenderClient.batch_recommend`)."""
    return pb2.RecommendRequest(
        user_id=user_id,
        k=k,
        recent_item_ids=list(recent_item_ids),
        user_attributes=dict(user_attributes or {}),
        exclude_item_ids=list(exclude_item_ids),
        filters=list(filters),
        diversity=diversity,
        experiment=experiment,
        force_variant=force_variant,
    )
