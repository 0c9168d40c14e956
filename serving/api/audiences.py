"""The ``recsys.v1.Audiences`` servicer: lookalike audiences over the serving engine.

Same rules as :mod:`serving.api.recommender`: the request is validated and mapped here (no
model needed), the engine work (seed tower pass, FAISS search) runs on the server's
executor through the :class:`~serving.api.batcher.MicroBatcher`'s admission control, domain
errors are raised and mapped to status codes by :mod:`serving.api.interceptors` only, and
``DEADLINE_EXCEEDED`` is the one code set here.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import grpc

from serving._proto.recsys.v1 import audiences_pb2 as pb2
from serving._proto.recsys.v1 import audiences_pb2_grpc as pb2_grpc
from serving.api.batcher import MicroBatcher
from serving.api.bounds import check_seeds
from serving.audiences.search import (
    DEFAULT_SCORING,
    Audience,
    SeedScoring,
    SimilarUsersQuery,
)
from serving.errors import FeatureUnavailableError, InvalidArgumentError
from serving.lifecycle.engine_holder import EngineHolder

_SCORINGS: dict[int, SeedScoring] = {
    pb2.SEED_SCORING_UNSPECIFIED: DEFAULT_SCORING,
    pb2.SEED_SCORING_CONTRAST: SeedScoring.CONTRAST,
    pb2.SEED_SCORING_CENTROID: SeedScoring.CENTROID,
    pb2.SEED_SCORING_NEAREST_SEED: SeedScoring.NEAREST_SEED,
}


@runtime_checkable
class AudienceEngine(Protocol):
    """An engine that can build lookalike audiences (:class:`serving.recommend.engine.TwoTowerEngine`)."""

    @property
    def model_version(self) -> str: ...

    def similar_users(self, query: SimilarUsersQuery) -> Audience: ...


def to_similar_users_query(request: pb2.FindSimilarUsersRequest) -> SimilarUsersQuery:
    """The request as a query; raises :class:`~serving.errors.InvalidArgumentError` for an
    unknown scoring. Seeds and size are validated once, where the audience is built
    (:meth:`serving.audiences.search.UserAudiences.expand`)."""
    scoring = _SCORINGS.get(request.scoring)
    if scoring is None:
        raise InvalidArgumentError("scoring", f"unknown value {request.scoring}")
    return SimilarUsersQuery(tuple(request.seed_user_ids), request.size, scoring)


def to_similar_users_response(audience: Audience) -> pb2.FindSimilarUsersResponse:
    return pb2.FindSimilarUsersResponse(
        users=[pb2.SimilarUser(user_id=u.user_id, score=u.score) for u in audience.users],
        model_version=audience.model_version,
        unknown_seed_count=audience.unknown_seeds,
        known_seed_count=audience.known_seeds,
    )


class AudiencesServicer(pb2_grpc.AudiencesServicer):
    """Implements ``recsys.v1.Audiences`` on the engine in ``holder``; ``batcher`` runs the
    engine calls on the server's executor and counts them against its admission limit."""

    def __init__(self, holder: EngineHolder, batcher: MicroBatcher) -> None:
        self._holder = holder
        self._batcher = batcher

    async def FindSimilarUsers(  # noqa: N802  (name fixed by the generated servicer)
        self, request: pb2.FindSimilarUsersRequest, context: grpc.aio.ServicerContext
    ) -> pb2.FindSimilarUsersResponse:
        check_seeds(request)  # bounded before any work, and before admission
        engine = self._holder.get()
        if not isinstance(engine, AudienceEngine):
            raise FeatureUnavailableError("the loaded engine cannot build lookalike audiences")

        def answer() -> pb2.FindSimilarUsersResponse:
            # Validating up to 100,000 seeds and building as many answers is CPU work: all of it
            # runs on the executor, never on the event loop.
            audience = engine.similar_users(to_similar_users_query(request))
            return to_similar_users_response(audience)

        return await self._batcher.run(answer, context.time_remaining())
