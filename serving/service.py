"""The ``recsys.v1.Recommender`` servicer: validation, deadlines, proto mapping.

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
from serving.errors import InvalidArgumentError, NotReadyError
from serving.types import FallbackReason, Recommendation, RecommenderEngine

MIN_K = 1
MAX_K = 1000

_T = TypeVar("_T")

_FALLBACK_REASONS: dict[FallbackReason, pb2.FallbackReason] = {
    FallbackReason.UNKNOWN_USER: pb2.FALLBACK_REASON_UNKNOWN_USER,
}


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


def validate_user_id(user_id: str) -> str:
    """``user_id`` unchanged; raises :class:`InvalidArgumentError` when it is empty."""
    if not user_id:
        raise InvalidArgumentError("user_id", "must not be empty")
    return user_id


def validate_k(k: int) -> int:
    """``k`` unchanged; raises :class:`InvalidArgumentError` outside ``MIN_K..MAX_K``."""
    if not MIN_K <= k <= MAX_K:
        raise InvalidArgumentError("k", f"must be in {MIN_K}..{MAX_K}, got {k}")
    return k


def to_response(recommendation: Recommendation) -> pb2.RecommendResponse:
    """Map a :class:`Recommendation` to its wire form, preserving item order."""
    reason = recommendation.fallback_reason
    return pb2.RecommendResponse(
        items=[pb2.ScoredItem(item_id=item.item_id, score=item.score) for item in recommendation.items],
        model_version=recommendation.model_version,
        fallback=recommendation.fallback,
        fallback_reason=pb2.FALLBACK_REASON_UNSPECIFIED if reason is None else _FALLBACK_REASONS[reason],
    )


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
        user_id = validate_user_id(request.user_id)
        k = validate_k(request.k)
        engine = self._holder.get()
        recommendation = await self._run(context, lambda: engine.recommend(user_id, k))
        return to_response(recommendation)

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
