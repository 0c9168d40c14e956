"""Wire (``recsys.v1`` messages) <-> domain (:mod:`serving.recommend.types`) mapping, with the
checks that need no model: the size bounds of :mod:`serving.api.bounds`, non-empty ids, k in
range, batch size.

Checks that need the bundle (attribute names, filter types) happen in the engine. Both
raise :class:`~serving.errors.InvalidArgumentError` naming the field; status codes are
decided in :mod:`serving.api.interceptors` only.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving.api import bounds
from serving.errors import InvalidArgumentError
from serving.recommend.types import (
    NO_DIVERSITY,
    Diversity,
    FallbackReason,
    ItemFilter,
    Recommendation,
    RecommendQuery,
    ScoredItem,
    SimilarItemsQuery,
)

MIN_K = 1
MAX_K = 1000
MAX_BATCH = bounds.MAX_BATCH_REQUESTS

_FALLBACK_REASONS: dict[FallbackReason, pb2.FallbackReason] = {
    FallbackReason.UNKNOWN_USER: pb2.FALLBACK_REASON_UNKNOWN_USER,
}


def validate_user_id(user_id: str, field: str = "user_id") -> str:
    """``user_id`` unchanged; raises :class:`InvalidArgumentError` when it is empty or longer
    than :data:`~serving.api.bounds.MAX_ID_BYTES`."""
    bounds.check_string(user_id, field)
    if not user_id:
        raise InvalidArgumentError(field, "must not be empty")
    return user_id


def validate_k(k: int, field: str = "k") -> int:
    """``k`` unchanged; raises :class:`InvalidArgumentError` outside ``MIN_K..MAX_K``."""
    if not MIN_K <= k <= MAX_K:
        raise InvalidArgumentError(field, f"must be in {MIN_K}..{MAX_K}, got {k}")
    return k


def to_filters(filters: Iterable[pb2.ItemFilter]) -> tuple[ItemFilter, ...]:
    """Domain filters from repeated ``ItemFilter`` (unset min/max stay None)."""
    return tuple(
        ItemFilter(
            attribute=f.attribute,
            any_of=tuple(f.any_of),
            none_of=tuple(f.none_of),
            min=f.min if f.HasField("min") else None,
            max=f.max if f.HasField("max") else None,
        )
        for f in filters
    )


def to_query(request: pb2.RecommendRequest, prefix: str = "") -> RecommendQuery:
    """A validated :class:`RecommendQuery`; field names in errors start with ``prefix``.

    A request that sets no option keeps the query's shared defaults: every Recommend call
    runs this on the event loop, and most set only ``user_id`` and ``k``.
    """
    bounds.check_recommend(request, prefix)
    user_id = validate_user_id(request.user_id, f"{prefix}user_id")
    k = validate_k(request.k, f"{prefix}k")
    has_diversity = request.HasField("diversity")
    if not (
        has_diversity
        or request.recent_item_ids
        or request.user_attributes
        or request.exclude_item_ids
        or request.filters
    ):
        return RecommendQuery(user_id, k)
    return RecommendQuery(
        user_id=user_id,
        k=k,
        recent_item_ids=tuple(request.recent_item_ids),
        user_attributes=dict(request.user_attributes),
        exclude_item_ids=tuple(request.exclude_item_ids),
        filters=to_filters(request.filters),
        diversity=to_diversity(request.diversity) if has_diversity else NO_DIVERSITY,
    )


def to_diversity(diversity: pb2.Diversity) -> Diversity:
    return Diversity(
        mmr_lambda=diversity.mmr_lambda,
        max_per_category=diversity.max_per_category,
        category_attribute=diversity.category_attribute,
    )


def to_queries(request: pb2.BatchRecommendRequest) -> list[RecommendQuery]:
    """Validated queries in request order; at most :data:`MAX_BATCH`."""
    bounds.check_batch_size(request.requests)
    return [to_query(r, f"requests[{i}].") for i, r in enumerate(request.requests)]


def to_similar_query(request: pb2.SimilarItemsRequest) -> SimilarItemsQuery:
    bounds.check_similar_items(request)
    if not request.item_id:
        raise InvalidArgumentError("item_id", "must not be empty")
    return SimilarItemsQuery(
        item_id=request.item_id,
        k=validate_k(request.k),
        filters=to_filters(request.filters),
        exclude_item_ids=tuple(request.exclude_item_ids),
    )


def _add_items(target: RepeatedCompositeFieldContainer[pb2.ScoredItem], items: list[ScoredItem]) -> None:
    """Append ``items`` to a repeated ``ScoredItem`` field, built in place (items passed to a
    message constructor would be built, then copied in)."""
    add = target.add
    for item in items:
        add(item_id=item.item_id, score=item.score, explanation_item_id=item.explanation_item_id)


def to_similar_response(items: list[ScoredItem], model_version: str) -> pb2.SimilarItemsResponse:
    response = pb2.SimilarItemsResponse(model_version=model_version)
    _add_items(response.items, items)
    return response


def to_response(recommendation: Recommendation, variant: str = "") -> pb2.RecommendResponse:
    """Map a :class:`Recommendation` to its wire form, preserving item order.

    ``variant``: the experiment variant that answered (empty: no experiment).
    """
    reason = recommendation.fallback_reason
    response = pb2.RecommendResponse(
        model_version=recommendation.model_version,
        fallback=reason is not None,
        fallback_reason=pb2.FALLBACK_REASON_UNSPECIFIED if reason is None else _FALLBACK_REASONS[reason],
        variant=variant,
    )
    _add_items(response.items, recommendation.items)
    return response
