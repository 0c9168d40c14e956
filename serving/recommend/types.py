"""Plain request and result types shared by the engine, the gRPC layer and batch jobs."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt


class FallbackReason(enum.Enum):
    """Why a non-personalised answer was given (mirrors ``recsys.v1.FallbackReason``)."""

    UNKNOWN_USER = "unknown_user"


@dataclass(frozen=True, slots=True)
class ItemFilter:
    """A condition on one item attribute (mirrors ``recsys.v1.ItemFilter``).

    ``any_of`` / ``none_of`` compare values as text (list attributes: any element);
    ``min`` / ``max`` are inclusive bounds on numeric attributes. Items with no value
    pass only ``none_of``. Hashable: equal filter lists share one precomputed row set.
    """

    attribute: str
    any_of: tuple[str, ...] = ()
    none_of: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class Diversity:
    """Re-ranking options (mirrors ``recsys.v1.Diversity``); the default is off.

    ``mmr_lambda``: 0 = off, else in (0, 1] (1 = plain ranking). ``max_per_category``:
    0 = no cap. ``category_attribute``: empty = the bundle's first categorical item
    attribute.
    """

    mmr_lambda: float = 0.0
    max_per_category: int = 0
    category_attribute: str = ""

    @property
    def active(self) -> bool:
        return self.mmr_lambda != 0.0 or self.max_per_category != 0


NO_DIVERSITY = Diversity()


def _no_attributes() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RecommendQuery:
    """One recommendation request with every option (mirrors ``recsys.v1.RecommendRequest``).

    ``recent_item_ids`` are in time order (most recent last); unknown ids in it and in
    ``exclude_item_ids`` are ignored. ``user_attributes`` maps training column names to
    text values. ``k`` is validated by the caller (1..1000 on the wire).
    """

    user_id: str
    k: int
    recent_item_ids: tuple[str, ...] = ()
    user_attributes: Mapping[str, str] = field(default_factory=_no_attributes)
    exclude_item_ids: tuple[str, ...] = ()
    filters: tuple[ItemFilter, ...] = ()
    diversity: Diversity = NO_DIVERSITY


@dataclass(frozen=True, slots=True)
class SimilarItemsQuery:
    """Items similar to ``item_id`` (mirrors ``recsys.v1.SimilarItemsRequest``)."""

    item_id: str
    k: int
    filters: tuple[ItemFilter, ...] = ()
    exclude_item_ids: tuple[str, ...] = ()


class ScoredItem(NamedTuple):
    """One recommended item. A named tuple, not a dataclass: a Recommend answer makes k of
    them on the serving path, and a tuple is built in half the time of a frozen dataclass."""

    item_id: str
    score: float
    explanation_item_id: str = ""
    """The history/recent item most similar to this one; empty when there is none."""


@dataclass(frozen=True, slots=True)
class Recommendation:
    """Items best first; ``fallback_reason`` is None when the model answered."""

    items: list[ScoredItem]
    model_version: str
    fallback_reason: FallbackReason | None = None

    @property
    def fallback(self) -> bool:
        return self.fallback_reason is not None


class RecommenderEngine(Protocol):
    """What the gRPC layer and batch jobs need from a loaded model.

    Implementations are thread-safe for concurrent reads; methods are CPU-bound and
    must be called off the event loop. Bad options (unknown attribute names, out-of-range
    values) raise :class:`serving.errors.InvalidArgumentError` naming the field.
    """

    @property
    def model_version(self) -> str: ...

    def recommend(self, query: RecommendQuery) -> Recommendation:
        """Top-k eligible items; unknown users without recent items or attributes get the
        popularity fallback."""
        ...

    def recommend_many(self, queries: Sequence[RecommendQuery]) -> list[Recommendation]:
        """:meth:`recommend` for each query, in order, with batched tower passes and searches.

        Errors name the query by position (``requests[i].<field>``).
        """
        ...

    def similar_items(self, query: SimilarItemsQuery) -> list[ScoredItem]:
        """Nearest items to a known item, itself excluded. Raises
        :class:`serving.errors.NotFoundError` for an unknown item."""
        ...

    def user_embedding(self, user_id: str) -> npt.NDArray[np.float32]:
        """The user tower's output. Raises :class:`serving.errors.NotFoundError` for unknown users."""
        ...
