"""A small synchronous client of the service (demo, ``recsys query``, health checks).

Other services use the generated stubs from ``protos/recsys/v1`` in their own language;
this wrapper only saves Python callers the boilerplate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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
