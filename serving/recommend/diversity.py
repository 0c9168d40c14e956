"""Diversity re-ranking of a candidate list: MMR and a per-category cap.

:func:`rerank` picks up to k candidates greedily. Each pick maximises
``mmr_lambda * relevance - (1 - mmr_lambda) * (max cosine to the items already picked)``
(plain relevance when MMR is off), skipping candidates whose category already holds
``max_per_category`` picks. The cost is O(k * candidates * dim). Candidates come from an
over-fetched search (:func:`candidate_count`); the caller widens the search when fewer
than k candidates survive the cap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import polars as pl

from serving.errors import InvalidArgumentError
from serving.model.features import EntityEncoder
from serving.recommend.types import Diversity

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
FIELD = "diversity"
NO_CATEGORY = -1
"""Category code of items without a value: never capped."""
OVERFETCH = 5
"""MMR candidates per requested item."""
MIN_CANDIDATES = 50


def candidate_count(k: int, diversity: Diversity) -> int:
    """How many candidates to fetch for ``k`` re-ranked items (before exclusions)."""
    return max(OVERFETCH * k, MIN_CANDIDATES) if diversity.active else k


class Categories:
    """Per-item category codes (row r = FAISS row r) for the item table's categorical attributes."""

    def __init__(self, items: pl.DataFrame, encoder: EntityEncoder, attributes: Sequence[str]) -> None:
        stored = set(attributes)
        self.attributes: tuple[str, ...] = tuple(
            spec.name for spec in encoder.specs if spec.kind == "categorical" and spec.name in stored
        )
        self._codes: dict[str, IntArray] = {}
        for name in self.attributes:
            # Hashing to categorical codes: a dense rank sorts the strings (seconds at 1M items).
            codes = items.get_column(name).cast(pl.Utf8).cast(pl.Categorical).to_physical().cast(pl.Int64)
            self._codes[name] = codes.fill_null(NO_CATEGORY).to_numpy().astype(np.int64)

    def validate(self, diversity: Diversity) -> None:
        """Raise :class:`InvalidArgumentError` for out-of-range values or an unknown attribute."""
        lam = diversity.mmr_lambda
        if math.isnan(lam) or not 0.0 <= lam <= 1.0:
            raise InvalidArgumentError(f"{FIELD}.mmr_lambda", f"must be in 0..1 (0 = off), got {lam}")
        if diversity.max_per_category < 0:
            raise InvalidArgumentError(
                f"{FIELD}.max_per_category", f"must be >= 0 (0 = no cap), got {diversity.max_per_category}"
            )
        name = diversity.category_attribute
        if name and name not in self._codes:
            known = ", ".join(self.attributes) or "none"
            raise InvalidArgumentError(
                f"{FIELD}.category_attribute",
                f"{name!r} is not a single-valued categorical item attribute (known: {known})",
            )
        if diversity.max_per_category and not (name or self.attributes):
            raise InvalidArgumentError(
                f"{FIELD}.max_per_category", "the bundle has no categorical item attribute to cap"
            )

    def codes(self, diversity: Diversity) -> IntArray | None:
        """Category codes for the cap (None when there is no cap). Call :meth:`validate` first."""
        if not diversity.max_per_category:
            return None
        return self._codes[diversity.category_attribute or self.attributes[0]]


def rerank(
    relevance: FloatArray,
    vectors: FloatArray,
    k: int,
    diversity: Diversity,
    categories: IntArray | None,
) -> IntArray:
    """Positions (into the candidate arrays) of up to ``k`` picks, in pick order.

    ``relevance`` (n,) model scores, ``vectors`` (n, d) unit item vectors, ``categories``
    (n,) codes (:data:`NO_CATEGORY` = uncapped) or None.
    """
    n = len(relevance)
    lam = diversity.mmr_lambda
    use_mmr = 0.0 < lam < 1.0
    cap = diversity.max_per_category
    if not use_mmr:
        order = np.argsort(-relevance, kind="stable").astype(np.int64)
        if categories is None or not cap:
            return order[:k]
        return order[capped(categories[order], cap)][:k]
    available = np.ones(n, dtype=np.bool_)
    max_similarity = np.zeros(n, dtype=np.float32)
    counts: dict[int, int] = {}
    picked: list[int] = []
    relevance = relevance.astype(np.float32)
    while len(picked) < k and available.any():
        objective = lam * relevance - (1.0 - lam) * max_similarity if use_mmr and picked else relevance
        position = int(np.argmax(np.where(available, objective, -np.inf)))
        available[position] = False
        if categories is not None and cap:
            category = int(categories[position])
            if category != NO_CATEGORY:
                counts[category] = counts.get(category, 0) + 1
                if counts[category] == cap:
                    available &= categories != category
        picked.append(position)
        if use_mmr:
            np.maximum(max_similarity, vectors @ vectors[position], out=max_similarity)
    return np.asarray(picked, dtype=np.int64)


def capped(categories: IntArray, cap: int) -> npt.NDArray[np.bool_]:
    """Keep-mask over a ranked list: each category's first ``cap`` entries (uncapped: all)."""
    n = len(categories)
    order = np.argsort(categories, kind="stable")
    ordered = categories[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]])) if n else np.zeros(0, int)
    group_start = np.repeat(starts, np.diff(np.append(starts, n)))
    occurrence = np.empty(n, dtype=np.int64)
    occurrence[order] = np.arange(n) - group_start
    keep: npt.NDArray[np.bool_] = (occurrence < cap) | (categories == NO_CATEGORY)
    return keep
