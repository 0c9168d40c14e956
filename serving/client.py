"""A small synchronous client of the service (demo, ``recsys query``, health checks).

Other services use the generated stubs from ``protos/recsys/v1`` in their own language;
this wrapper only saves Python callers the boilerplate.
"""

from __future__ import annotations

from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc


class RecommenderClient:
    def __init__(self, address: str, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.channel = grpc.insecure_channel(address)
        self.stub = pb2_grpc.RecommenderStub(self.channel)  # type: ignore[no-untyped-call]

    def recommend(self, user_id: str, k: int) -> pb2.RecommendResponse:
        response: pb2.RecommendResponse = self.stub.Recommend(
            pb2.RecommendRequest(user_id=user_id, k=k), timeout=self.timeout
        )
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
