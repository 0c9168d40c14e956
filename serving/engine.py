"""The online recommender: a loaded bundle answering per-user requests.

All methods are CPU-bound and thread-safe for concurrent calls; the gRPC layer runs
them in an executor, never on the event loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from serving.bundle import Bundle, load_bundle
from serving.embedding import embed_users
from serving.errors import NotFoundError
from serving.features import FIRST_TOKEN_INDEX
from serving.index import search
from serving.types import FallbackReason, Recommendation, ScoredItem

FloatArray = npt.NDArray[np.float32]


class TwoTowerEngine:
    """Implements :class:`serving.types.RecommenderEngine` over a :class:`Bundle`."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self._item_ids: list[str] = bundle.item_ids.to_list()
        popularity = bundle.popularity.astype(np.float64)
        self._popular_rows = np.argsort(-popularity, kind="stable")
        total = popularity.sum()
        self._popular_scores = popularity / total if total > 0 else popularity

    @classmethod
    def load(cls, path: Path) -> TwoTowerEngine:
        return cls(load_bundle(path))

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    def user_row(self, user_id: str) -> int | None:
        """Table row of a known user, else None."""
        index = self.bundle.user_encoder.ids.index_of(user_id)
        return None if index is None else index - FIRST_TOKEN_INDEX

    def embed_rows(self, rows: npt.NDArray[np.int64]) -> FloatArray:
        """User tower output for known users (table rows), one batched pass."""
        bundle = self.bundle
        embeddings: FloatArray = embed_users(bundle.model, bundle.user_features, bundle.sequences, rows)
        return embeddings

    def user_embedding(self, user_id: str) -> FloatArray:
        row = self.user_row(user_id)
        if row is None:
            raise NotFoundError("user", user_id)
        embedding: FloatArray = self.embed_rows(np.array([row], dtype=np.int64))[0]
        return embedding

    def recommend(self, user_id: str, k: int) -> Recommendation:
        return self.recommend_many([user_id], k)[0]

    def recommend_many(self, user_ids: list[str], k: int) -> list[Recommendation]:
        """Recommendations for many users with one tower pass and one index search."""
        rows = [self.user_row(u) for u in user_ids]
        known = [i for i, r in enumerate(rows) if r is not None]
        results: list[Recommendation | None] = [None] * len(user_ids)
        if known:
            known_rows = np.array([rows[i] for i in known], dtype=np.int64)
            for position, items in zip(known, self._search(known_rows, k), strict=True):
                results[position] = Recommendation(items, self.model_version)
        fallback = Recommendation(self._popular(k), self.model_version, FallbackReason.UNKNOWN_USER)
        return [r if r is not None else fallback for r in results]

    def top_k_rows(self, rows: npt.NDArray[np.int64], k: int) -> tuple[npt.NDArray[np.int64], FloatArray]:
        """(index rows, scores), both (B, k), best first, seen items removed; -1 pads.

        Over-fetches by the largest seen set in the batch, so that after removing seen
        items k remain whenever k eligible items exist.
        """
        sequences = self.bundle.sequences.take(rows)
        n_items = self.bundle.index.ntotal
        fetch = min(n_items, k + int(sequences.lengths().max(initial=0)))
        scores, found = search(self.bundle.index, self.embed_rows(rows), fetch)
        out_rows = np.full((len(rows), k), -1, dtype=np.int64)
        out_scores = np.zeros((len(rows), k), dtype=np.float32)
        for i in range(len(rows)):
            seen = sequences.row(i) - FIRST_TOKEN_INDEX
            keep = (found[i] >= 0) & ~np.isin(found[i], seen)
            chosen = found[i][keep][:k]
            out_rows[i, : len(chosen)] = chosen
            out_scores[i, : len(chosen)] = scores[i][keep][:k]
        return out_rows, out_scores

    def _search(self, rows: npt.NDArray[np.int64], k: int) -> list[list[ScoredItem]]:
        found, scores = self.top_k_rows(rows, k)
        return [
            [
                ScoredItem(self._item_ids[r], float(s))
                for r, s in zip(user_rows, user_scores, strict=True)
                if r >= 0
            ]
            for user_rows, user_scores in zip(found, scores, strict=True)
        ]

    def popular_rows(self, k: int) -> tuple[npt.NDArray[np.int64], FloatArray]:
        """The fallback: most popular items (index rows) and their interaction shares."""
        rows = self._popular_rows[:k]
        return rows, self._popular_scores[rows].astype(np.float32)

    def _popular(self, k: int) -> list[ScoredItem]:
        rows, scores = self.popular_rows(k)
        return [ScoredItem(self._item_ids[r], float(s)) for r, s in zip(rows, scores, strict=True)]
