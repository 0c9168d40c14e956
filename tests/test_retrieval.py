"""Retriever.top_k: exactly k eligible rows, best first, whatever path answers.

Exact indexes are ranked from the full score matrix (exclusions set to -inf), approximate
ones through FAISS with over-fetch; both must equal a brute-force ranking of the eligible
rows, including when exclusions leave fewer than k.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from serving.bundle.index import build_index, item_vectors
from serving.recommend.filters import ItemFilters
from serving.recommend.retrieval import Retriever, Wanted
from serving.recommend.types import ItemFilter


def _brute_force(query: np.ndarray, vectors: np.ndarray, eligible: np.ndarray, k: int) -> np.ndarray:
    rows = np.flatnonzero(eligible)
    scores = vectors[rows] @ query
    return rows[np.argsort(-scores, kind="stable")][:k]


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("filtered", [False, True])
def test_exact_top_k_equals_brute_force_with_exclusions_and_filters(batch: int, filtered: bool) -> None:
    rng = np.random.default_rng(3)
    n = 500
    vectors = rng.standard_normal((n, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = build_index(vectors)
    stored = item_vectors(index)
    retriever = Retriever(index, stored)
    items = pl.DataFrame({"item_id": [str(i) for i in range(n)], "colour": ["red", "blue"] * (n // 2)})
    allowed = (
        ItemFilters(items, ["colour"]).allowed((ItemFilter("colour", any_of=("red",)),)) if filtered else None
    )
    queries = rng.standard_normal((batch, 16)).astype(np.float32)
    wanted = [
        Wanted(10, rng.choice(n, size=int(rng.integers(0, 300)), replace=False).astype(np.int64))
        for _ in range(batch)
    ]
    for query, want, (rows, scores) in zip(
        queries, wanted, retriever.top_k(queries, wanted, allowed), strict=True
    ):
        eligible = np.ones(n, dtype=bool) if allowed is None else allowed.mask.copy()
        eligible[want.exclude] = False
        assert len(rows) == 10
        np.testing.assert_array_equal(rows, _brute_force(query, stored, eligible, 10))
        assert np.all(np.diff(scores) <= 1e-6)


def test_exclusions_leaving_fewer_than_k_return_every_eligible_row() -> None:
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((40, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = build_index(vectors)
    retriever = Retriever(index, item_vectors(index))
    exclude = np.arange(35, dtype=np.int64)
    ((rows, _),) = retriever.top_k(vectors[:1], [Wanted(10, exclude)], None)
    assert sorted(rows.tolist()) == [35, 36, 37, 38, 39]


def test_explanations_come_from_the_most_recent_history_only() -> None:
    from serving.recommend.explain import EXPLAINED_HISTORY, explain

    vectors = np.eye(4, dtype=np.float32)
    # Item 1 is recommended; it is in the history only beyond the explained window: not named.
    history = np.full((2, EXPLAINED_HISTORY + 50), -1, dtype=np.int64)
    history[0, 0] = 1
    history[0, -3:] = [2, 3, 2]
    history[1, -1] = 1  # inside the window (and after leading empty columns): named
    found = explain(vectors, [np.array([1]), np.array([1])], history)
    assert found[0].tolist() == [2]  # all similarities 0: the earliest explained position
    assert found[1].tolist() == [1]
    empty = explain(vectors, [np.array([1, 2])], np.full((1, 5), -1, dtype=np.int64))
    assert empty[0].tolist() == [-1, -1]
