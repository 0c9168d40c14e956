"""Plain result types shared by the engine, the gRPC layer and batch jobs."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt


class FallbackReason(enum.Enum):
    """Why a non-personalised answer was given (mirrors ``recsys.v1.FallbackReason``)."""

    UNKNOWN_USER = "unknown_user"


@dataclass(frozen=True, slots=True)
class ScoredItem:
    item_id: str
    score: float


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
    must be called off the event loop.
    """

    @property
    def model_version(self) -> str: ...

    def recommend(self, user_id: str, k: int) -> Recommendation:
        """Top-k unseen items; unknown users get the popularity fallback."""
        ...

    def user_embedding(self, user_id: str) -> npt.NDArray[np.float32]:
        """The user tower's output. Raises :class:`serving.errors.NotFoundError` for unknown users."""
        ...
