"""The ``recsys.v1.Recommender`` servicer: engine calls behind the batcher, within deadlines.

Request validation and proto mapping live in :mod:`serving.api.wire`.

The servicer never decides status codes: it raises domain errors (including the
batcher's :class:`~serving.errors.DeadlineExpired`) and :mod:`serving.api.interceptors`
maps them.

Every engine call goes through the server's :class:`~serving.api.batcher.MicroBatcher`:
``Recommend`` is micro-batched with concurrent calls; ``BatchRecommend``,
``SimilarItems`` and ``GetUserEmbedding`` run on the executor directly. All of them count
against its admission limit (over it: :class:`~serving.errors.OverloadedError`). Engine
calls are CPU-bound, so they run on the bounded executor, never on the event loop: a slow
engine call must not stall health checks or other RPCs. ``BatchRecommend`` also
validates and maps its (up to 1000) messages on the executor.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor

import grpc
import numpy as np

from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api.batcher import BatchOptions, MicroBatcher
from serving.api.bounds import check_batch_size
from serving.api.wire import (
    to_queries,
    to_query,
    to_response,
    to_similar_query,
    to_similar_response,
    validate_user_id,
)
from serving.lifecycle.routing import Route, Router, recommend_routed
from serving.metrics import ServingMetrics
from serving.observability import tracing
from serving.recommend.types import Recommendation


class RecommenderServicer(pb2_grpc.RecommenderServicer):
    """Implements ``recsys.v1.Recommender`` on top of a :class:`~serving.lifecycle.routing.Router`.

    ``router`` picks the engine of each Recommend request (:mod:`serving.lifecycle.routing`); its
    default holder answers everything else (SimilarItems, GetUserEmbedding). ``executor``
    runs the engine calls; its size bounds how many run at once. The servicer does not own
    it: whoever created it shuts it down. ``batcher`` (default: a :class:`MicroBatcher` with
    default :class:`BatchOptions` on ``executor``) batches and admits the calls; ``metrics``
    (optional) counts fallback and variant answers.
    """

    def __init__(
        self,
        router: Router,
        executor: Executor | None,
        *,
        batcher: MicroBatcher | None = None,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self._router = router
        self._batcher = batcher if batcher is not None else MicroBatcher(executor, BatchOptions(), metrics)
        self._metrics = metrics

    async def Recommend(  # noqa: N802  (name fixed by the generated servicer)
        self, request: pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb2.RecommendResponse:
        query = to_query(request)
        # One read of the routing table and of the variant's engine for the whole call.
        with tracing.span(tracing.ROUTING) as routing:
            route = self._router.route(query.user_id, request.experiment, request.force_variant)
            if routing is not None:
                routing.set_attributes(
                    {"recsys.experiment": route.experiment, "recsys.variant": route.variant}
                )
        recommendation = await self._batcher.recommend(
            route.engine, route.query(query), context.time_remaining()
        )
        self._count((recommendation,), (route,))
        return to_response(recommendation, route.variant)

    async def BatchRecommend(  # noqa: N802  (name fixed by the generated servicer)
        self, request: pb2.BatchRecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb2.BatchRecommendResponse:
        router = self._router
        check_batch_size(request.requests)  # before admission: no work for an oversized batch

        def answer() -> pb2.BatchRecommendResponse:
            queries = to_queries(request)
            pairs = zip(queries, request.requests, strict=True)
            with tracing.span(tracing.ROUTING):
                routes = router.routes([(q.user_id, r.experiment, r.force_variant) for q, r in pairs])
            routed = [route.query(query) for route, query in zip(routes, queries, strict=True)]
            recommendations = recommend_routed(routes, routed)
            self._count(recommendations, routes)
            return pb2.BatchRecommendResponse(
                responses=[to_response(r, rt.variant) for r, rt in zip(recommendations, routes, strict=True)]
            )

        return await self._batcher.run(answer, context.time_remaining())

    async def SimilarItems(  # noqa: N802  (name fixed by the generated servicer)
        self, request: pb2.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb2.SimilarItemsResponse:
        query = to_similar_query(request)
        engine = self._router.default.get()
        items = await self._batcher.run(lambda: engine.similar_items(query), context.time_remaining())
        # The engine that answered names the version (a hot swap must not mislabel it).
        return to_similar_response(items, engine.model_version)

    async def GetUserEmbedding(  # noqa: N802  (name fixed by the generated servicer)
        self, request: pb2.GetUserEmbeddingRequest, context: grpc.aio.ServicerContext
    ) -> pb2.UserEmbedding:
        user_id = validate_user_id(request.user_id)
        engine = self._router.default.get()
        vector = await self._batcher.run(lambda: engine.user_embedding(user_id), context.time_remaining())
        return pb2.UserEmbedding(
            user_id=user_id,
            values=np.asarray(vector, dtype=np.float32).ravel().tolist(),
            # Read from the engine that computed the vector, not from the holder: a hot
            # swap in between must not mislabel the answer.
            model_version=engine.model_version,
        )

    def _count(self, recommendations: Sequence[Recommendation], routes: Sequence[Route]) -> None:
        """Count fallback answers and answers per experiment variant."""
        if self._metrics is None:
            return
        for recommendation, route in zip(recommendations, routes, strict=True):
            if recommendation.fallback_reason is not None:
                self._metrics.fallbacks.labels(recommendation.fallback_reason.value).inc()
            if route.variant:
                self._metrics.variant_answers.labels(route.experiment, route.variant).inc()
