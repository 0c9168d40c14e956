"""Index search for many queries at once: filters inside the search, exclusions and
diversity after it, exactly k items whenever k eligible items exist.

One FAISS search serves a group of queries that share a filter list (the filter is an
ID selector, so the search ranks only allowed rows). Per-query exclusions (seen, recent
and explicitly excluded items) are removed afterwards, so the search over-fetches by
the largest exclusion count in the group: after removal at least k remain whenever k
eligible rows exist. Diversity re-ranks an over-fetched candidate list; if a
per-category cap leaves fewer than k, that query is searched again with twice the
candidates until k are found or every allowed row was considered.

With an approximate index (IVF, HNSW) a selective filter (at most
:func:`~serving.bundle.index.exact_subset_limit` allowed rows) is answered by exact search over
the allowed rows' vectors instead: cheaper than probing the index for rare rows, and
exact.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace

import faiss
import numpy as np
import numpy.typing as npt

from serving.bundle.index import (
    EXACT_INNER_PRODUCT,
    exact_subset_limit,
    index_type,
    search,
    search_subset,
    top_positions,
)
from serving.bundle.quantized_vectors import RowVectors
from serving.observability import tracing
from serving.recommend.diversity import candidate_count, rerank
from serving.recommend.filters import AllowedRows
from serving.recommend.types import NO_DIVERSITY, Diversity

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
Ranked = tuple[IntArray, FloatArray]
"""(index rows, scores), best first (re-ranked order with diversity)."""

_NO_ROWS: IntArray = np.zeros(0, dtype=np.int64)
_NO_SPAN: AbstractContextManager[None] = contextlib.nullcontext()
_MATRIX_MAX_CELLS = 1 << 24
"""Exact indexes: a batch whose score matrix (queries x items) has at most this many cells
(64 MiB of float32) is ranked from that matrix instead of through FAISS; see
:meth:`Retriever.top_k`."""


@dataclass(frozen=True)
class Wanted:
    """What one query needs from the search beyond its vector.

    ``exclude``: rows never returned (duplicates allowed). ``categories``: per-row
    category codes for a per-category cap, or None.
    """

    k: int
    exclude: IntArray
    diversity: Diversity = NO_DIVERSITY
    categories: IntArray | None = None


class Retriever:
    """Searches one index; ``vectors`` are its item vectors (row r = index row r)."""

    def __init__(self, index: faiss.Index, vectors: RowVectors) -> None:
        self.index = index
        self.vectors = vectors
        self._subset_limit = exact_subset_limit(index)
        self._exact = index_type(index) == EXACT_INNER_PRODUCT
        # One all-False flag per row and thread, set for a query's excluded rows and reset right
        # after: a lookup costs O(found + excluded), where np.isin sorts both (~25x slower).
        self._scratch = threading.local()

    def excluded(self, found: IntArray, exclude: IntArray) -> npt.NDArray[np.bool_]:
        """For each row of ``found`` (-1 allowed), whether it is in ``exclude`` (rows >= 0)."""
        flags: npt.NDArray[np.bool_] | None = getattr(self._scratch, "flags", None)
        if flags is None:
            flags = np.zeros(int(self.index.ntotal) + 1, dtype=np.bool_)  # [-1] reads the spare slot
            self._scratch.flags = flags
        flags[exclude] = True
        try:
            return flags[found]
        finally:
            flags[exclude] = False

    def search(self, queries: FloatArray, k: int, allowed: AllowedRows | None) -> tuple[FloatArray, IntArray]:
        """(scores, rows), (B, k): the index search (with the filter's selector), or exact
        search over the allowed rows when an approximate index meets a selective filter."""
        if allowed is not None and allowed.count <= self._subset_limit:
            return search_subset(self.vectors, np.flatnonzero(allowed.mask), queries, k)
        return search(self.index, queries, k, None if allowed is None else allowed.params)

    def top_k(
        self, queries: FloatArray, wanted: Sequence[Wanted], allowed: AllowedRows | None
    ) -> list[Ranked]:
        """Per query (rows of ``queries``), its top ``k`` eligible rows among ``allowed``
        (None: every row), excluded rows removed, re-ranked for diversity when asked."""
        limit = self.index.ntotal if allowed is None else allowed.count
        if limit == 0 or not wanted:
            empty: Ranked = (np.zeros(0, np.int64), np.zeros(0, np.float32))
            return [empty for _ in wanted]
        if self._exact and len(wanted) * self.index.ntotal <= _MATRIX_MAX_CELLS:
            return self._top_k_matrix(queries, wanted, allowed, limit)
        fetch = min(limit, max(candidate_count(w.k, w.diversity) + len(w.exclude) for w in wanted))
        with tracing.span(tracing.INDEX_SEARCH, {"recsys.queries": len(wanted), "recsys.fetch": fetch}):
            scores, found = self.search(queries, fetch, allowed)
        out: list[Ranked] = []
        with _diversity_span(wanted):
            for i, want in enumerate(wanted):

                def wider(n: int, i: int = i) -> Ranked:
                    more_scores, more_found = self.search(queries[i : i + 1], n, allowed)
                    return more_found[0], more_scores[0]

                out.append(self.pick(want, (found[i], scores[i]), fetch, limit, wider))
        return out

    def _top_k_matrix(
        self, queries: FloatArray, wanted: Sequence[Wanted], allowed: AllowedRows | None, limit: int
    ) -> list[Ranked]:
        """:meth:`top_k` for an exact index from the full score matrix, ineligible rows
        (filtered out or excluded) set to -inf first: no over-fetch by the exclusion count.

        A FAISS search for k + |excluded| (hundreds for an active user) keeps a heap that
        large per query; masking and one ``argpartition`` cost a fraction of that. The
        scores are the same inner products the flat index computes.
        """
        if not isinstance(self.vectors, np.ndarray):  # an exact index is never compressed
            raise TypeError("the score matrix needs the exact vectors")
        fetch = min(limit, max(candidate_count(w.k, w.diversity) for w in wanted))
        with tracing.span(tracing.INDEX_SEARCH, {"recsys.queries": len(wanted), "recsys.fetch": fetch}):
            scores = np.ascontiguousarray(queries, dtype=np.float32) @ self.vectors.T
            if allowed is not None:
                scores[:, ~allowed.mask] = -np.inf
            counts = [len(w.exclude) for w in wanted]
            if sum(counts):
                owners = np.repeat(np.arange(len(wanted)), counts)
                scores[owners, np.concatenate([w.exclude for w in wanted])] = -np.inf
            best = top_positions(scores, fetch)
            best_scores = np.take_along_axis(scores, best, axis=1)
        # Ineligible rows score -inf, so they sort last: a query whose k-th best is finite has
        # its k items in the first k columns (the common case, answered without per-query work).
        filled = np.isfinite(best_scores)
        out: list[Ranked] = []
        with _diversity_span(wanted):
            for i, want in enumerate(wanted):
                if not want.diversity.active and want.k <= fetch and filled[i, want.k - 1]:
                    out.append((best[i, : want.k], best_scores[i, : want.k]))
                    continue
                row = scores[i]

                def wider(n: int, row: FloatArray = row) -> Ranked:
                    return _eligible(top_positions(row[None, :], n)[0], row)

                unexcluded = replace(want, exclude=_NO_ROWS)  # already -inf in the matrix
                out.append(self.pick(unexcluded, _eligible(best[i], row), fetch, limit, wider))
        return out

    def pick(
        self, want: Wanted, first: Ranked, fetch: int, limit: int, candidates: Callable[[int], Ranked]
    ) -> Ranked:
        """``want``'s pick from ``first`` (``fetch`` candidates, best first, scores as the
        relevance diversity trades against similarity); while exclusions or a category cap
        leave fewer than k, again from ``candidates(n)`` with n doubled up to ``limit``."""
        ranked = self._pick(want, *first)
        while len(ranked[0]) < want.k and fetch < limit:
            fetch = min(limit, 2 * fetch)
            ranked = self._pick(want, *candidates(fetch))
        return ranked

    def _pick(self, want: Wanted, found: IntArray, scores: FloatArray) -> Ranked:
        keep = found >= 0
        if len(want.exclude):
            keep &= ~self.excluded(found, want.exclude)
        rows, kept_scores = found[keep], scores[keep]
        if not want.diversity.active:
            return rows[: want.k], kept_scores[: want.k]
        categories = None if want.categories is None else want.categories[rows]
        positions = rerank(kept_scores, self.vectors[rows], want.k, want.diversity, categories)
        return rows[positions], kept_scores[positions]


def _diversity_span(wanted: Sequence[Wanted]) -> AbstractContextManager[object]:
    """The ``recommend.diversity`` span over the picks of a group with any re-ranking query (its
    exclusions, MMR, category caps and widened searches); no span for a group without one."""
    if not tracing.enabled():
        return _NO_SPAN
    diverse = sum(1 for w in wanted if w.diversity.active)
    if not diverse:
        return _NO_SPAN
    return tracing.span(tracing.DIVERSITY, {"recsys.queries": len(wanted), "recsys.diverse_queries": diverse})


def _eligible(rows: IntArray, scores: FloatArray) -> Ranked:
    """(rows, their scores) without the ineligible (-inf) ones; ``scores`` is the full row."""
    kept = rows[np.isfinite(scores[rows])]
    return kept.astype(np.int64, copy=False), scores[kept]
