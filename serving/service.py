"""The ``recsys.v1.Recommender`` servicer: deadlines and the executor around engine calls.

Request validation and proto mapping live in :mod:`serving.wire`.

The servicer never decides status codes for domain errors: it raises them and
:mod:`serving.interceptors` maps them. The only codes set here are
``DEADLINE_EXCEEDED`` (which is about the call, not the domain).

Engine calls are CPU-bound, so they run on the bounded executor given to the servicer,
never on the event loop: a slow engine call must not stall health checks or other RPCs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

import grpc
import numpy as np

from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.errors import NotReadyError
from serving.types import RecommenderEngine
from serving.wire import to_items, to_queries, to_query, to_response, to_similar_query, validate_user_id

_T = TypeVar("_T")


class EngineHolder:
    """Holds the engine currently serving; safe to read and swap from any thread.

    Each RPC reads the engine once and uses that object for the whole call, so a swap
    never mixes two models within one response.
    """

    def __init__(self, engine: RecommenderEngine | None = None) -> None:
        self._lock = threading.Lock()
        self._engine = engine

    def get(self) -> RecommenderEngine:
        """The current engine. Raises :class:`NotReadyError` when none is loaded yet."""
        with self._lock:
            engine = self._engine
        if engine is None:
            raise NotReadyError("model not loaded yet; retry later")
        return engine

    def swap(self, engine: RecommenderEngine) -> RecommenderEngine | None:
        """Install ``engine`` for subsequent calls; returns the previous one (None if empty).

        Calls already running keep the engine they started with.
        """
        with self._lock:
            previous, self._engine = self._engine, engine
        return previous


class RecommenderServicer(pb2_grpc.RecommenderServicer):
    """Implements ``recsys.v1.Recommender`` on top of an :class:`EngineHolder`.

    ``executor`` runs the engine calls; its size bounds how many run at once (calls
    beyond that queue). The servicer does not own it: whoever created it shuts it down.
    """

    def __init__(self, holder: EngineHolder, executor: Executor) -> None:
        self._holder = holder
        self._executor = executor

    async def Recommend(  # noqa: N802  (name fixed by the generated servicer)
        self, request: pb2.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb2.RecommendResponse:
        query = to_query(request)
        engine = self._holder.get()
        recommendation = await self._run(context, lambda: engine.recommend(query))
        return to_response(recommendation)

    async def BatchRecommend(  # noqa: N802  (name fixed by the generated servicer)
        self, request: pb2.BatchRecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb2.BatchRecommendResponse:
        queries = to_queries(request)
        engine = self._holder.get()
        recommendations = await self._run(context, lambda: engine.recommend_many(queries))
        return pb2.BatchRecommendResponse(responses=[to_response(r) for r in recommendations])

    async def SimilarItems(  # noqa: N802  (name fixed by the generated servicer)
        self, request: pb2.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb2.SimilarItemsResponse:
        query = to_similar_query(request)
        engine = self._holder.get()
        items = await self._run(context, lambda: engine.similar_items(query))
        # The engine that answered names the version (a hot swap must not mislabel it).
        return pb2.SimilarItemsResponse(items=to_items(items), model_version=engine.model_version)

    async def GetUserEmbedding(  # noqa: N802  (name fixed by the generated servicer)
        self, request: pb2.GetUserEmbeddingRequest, context: grpc.aio.ServicerContext
    ) -> pb2.UserEmbedding:
        user_id = validate_user_id(request.user_id)
        engine = self._holder.get()
        vector = await self._run(context, lambda: engine.user_embedding(user_id))
        return pb2.UserEmbedding(
            user_id=user_id,
            values=np.asarray(vector, dtype=np.float32).ravel().tolist(),
            # Read from the engine that computed the vector, not from the holder: a hot
            # swap in between must not mislabel the answer.
            model_version=engine.model_version,
        )

    async def _run(self, context: grpc.aio.ServicerContext, call: Callable[[], _T]) -> _T:
        """Run ``call`` on the executor within the caller's deadline.

        Aborts with ``DEADLINE_EXCEEDED`` when the deadline has already passed (no work
        is started) or passes while waiting. A call that times out keeps running in its
        worker thread until it returns (threads cannot be interrupted); its result is
        dropped.
        """
        remaining: float | None = context.time_remaining()
        if remaining is not None and remaining <= 0:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired before work started")
        future = asyncio.get_running_loop().run_in_executor(self._executor, call)
        try:
            return await asyncio.wait_for(future, timeout=remaining)
        except TimeoutError:
            # wait_for cancels the future on timeout; a TimeoutError raised by the engine
            # itself leaves it completed, and is a bug for the interceptor to report.
            if not future.cancelled():
                raise
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            raise  # unreachable: abort always raises
