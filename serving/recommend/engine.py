"""The online recommender: a loaded bundle answering recommendation requests.

A request (:class:`~serving.recommend.types.RecommendQuery`) is first *planned* (validated, ids
resolved, tower inputs decided), then answered together with the other requests of its
batch: one user-tower pass for every personalised request, one index search per
distinct filter list (:mod:`serving.recommend.retrieval`), popularity fallbacks for unknown users
without request-time signals. Plain requests (user id and k only) take the same path
with no extra work: stored features, stored history, no selector.

All methods are CPU-bound and thread-safe for concurrent calls; the gRPC layer runs
them in an executor, never on the event loop. With tracing on, the steps are spans
(:mod:`serving.observability.tracing`): filters, user tower, index search and diversity
(:mod:`serving.recommend.retrieval`), explanations. Item vectors are copied out of the index
once at load (n_items x dim float32) for diversity and explanations.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from serving.audiences.search import Audience, SimilarUsersQuery, UserAudiences, stored_mean
from serving.bundle.format import INDEX, Bundle, load_bundle
from serving.bundle.index import item_vectors, search
from serving.bundle.quantized_vectors import QuantizedVectors, RowVectors
from serving.bundle.user_vectors import StoredUserVectors
from serving.errors import BundleError, InvalidArgumentError, NotFoundError
from serving.model.embedding import embed_user_inputs, embed_users
from serving.model.features import FIRST_TOKEN_INDEX, PAD_INDEX, EncodedFeatures
from serving.model.fold_in import foldable, folded_user_vectors, window_sums
from serving.model.history import append_recent, last_items
from serving.model.inputs import gather
from serving.observability import tracing
from serving.pseudonym import Pseudonymiser, user_id_mapper
from serving.recommend.cold_start import RequestAttributes
from serving.recommend.diversity import Categories, candidate_count, capped
from serving.recommend.explain import EXPLAINED_HISTORY, explain
from serving.recommend.filters import AllowedRows, ItemFilters
from serving.recommend.retrieval import Retriever, Wanted
from serving.recommend.types import (
    Diversity,
    FallbackReason,
    Recommendation,
    RecommendQuery,
    ScoredItem,
    SimilarItemsQuery,
)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
_NO_ROWS: IntArray = np.zeros(0, dtype=np.int64)
_NO_SCORES: FloatArray = np.zeros(0, dtype=np.float32)


@dataclass(frozen=True)
class _Plan:
    """A validated query: who the user is, what the tower reads, what the search needs.

    ``row``: the user's table row (None: unknown). ``features`` / ``history``: request-time
    tower inputs (1 row / (L,) window) replacing the stored ones; None = stored.
    """

    query: RecommendQuery
    row: int | None
    features: EncodedFeatures | None
    history: IntArray | None
    allowed: AllowedRows | None
    wanted: Wanted
    appended: IntArray | None = None
    """A known user's recent items (history indices, oldest first) appended to the stored window:
    the tower may fold them into the stored pool (:mod:`serving.model.fold_in`)."""

    @property
    def personalised(self) -> bool:
        return self.row is not None or self.history is not None


class TwoTowerEngine:
    """Implements :class:`serving.recommend.types.RecommenderEngine` over a :class:`Bundle`."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        # Raw request ids -> the bundle's ids (pseudonyms when the manifest says so); raises
        # BundleError without the right key, so a server never starts unable to find users.
        self.bundle_user_id = user_id_mapper(bundle.manifest)
        # Row -> item id, as one Arrow array, not a list: the ids stay in Arrow buffers instead
        # of one Python str per item (~0.7 GB at 10M items), and ``take`` reads a whole answer's
        # ids in ~12 us (20 ids) to ~21 us (320), where a Polars gather costs 30-400 us.
        self._item_ids: pa.Array = bundle.item_encoder.ids.tokens.rechunk().to_arrow()
        popularity = bundle.popularity.astype(np.float64)
        self._popular_rows = np.argsort(-popularity, kind="stable")
        total = popularity.sum()
        self._popular_scores = popularity / total if total > 0 else popularity
        # Exact vectors: a compressed index holds none (the bundle maps them from their own
        # file, for ground truth only); the others hold them (copied out here).
        self.item_vectors = (
            bundle.item_vectors if bundle.item_vectors is not None else item_vectors(bundle.index)
        )
        # What the request path reads (explanations, re-ranking, subset search): a compressed
        # index's own SQ8 codes, decoded per read, so that no page of the mapped exact file
        # becomes resident; otherwise the exact vectors.
        self._row_vectors: RowVectors = self.item_vectors
        if bundle.item_vectors is not None:
            try:
                self._row_vectors = QuantizedVectors(bundle.index)
            except ValueError as exc:
                raise BundleError(f"{bundle.path / INDEX}: cannot read its refine codes: {exc}") from exc
        attributes = [c for c in bundle.item_encoder.attribute_columns if c in bundle.items.columns]
        self.filters = ItemFilters(bundle.items, attributes)
        self.categories = Categories(bundle.items, bundle.item_encoder, attributes)
        self.request_attributes = RequestAttributes(bundle.user_encoder, bundle.users, bundle.user_features)
        self.retriever = Retriever(bundle.index, self._row_vectors)
        self._stored_vectors = StoredUserVectors(self._tower_rows, bundle.spec.output_dim)
        # The pooled sums of stored windows, for recent items folded in (mean encoders only).
        self._history_sums = (
            StoredUserVectors(self._window_sums, bundle.spec.embedding_dim + 1)
            if foldable(bundle.model)
            else None
        )
        self.audiences = UserAudiences(
            bundle.user_index,
            bundle.users.get_column("user_id"),
            self.user_row,
            self.embed_rows,
            self.model_version,
            stored_mean(bundle.manifest, bundle.spec.output_dim),
        )

    @classmethod
    def load(cls, path: Path) -> TwoTowerEngine:
        return cls(load_bundle(path))

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    # ------------------------------------------------------------------ look-ups
    def user_row(self, user_id: str) -> int | None:
        """Table row of a known user (a raw request id), else None."""
        index = self.bundle.user_encoder.ids.index_of(self.bundle_user_id(user_id))
        return None if index is None else index - FIRST_TOKEN_INDEX

    def bundle_user_ids(self, user_ids: pl.Series) -> pl.Series:
        """Raw user ids as the bundle holds them (pseudonymised when the bundle is)."""
        mapper = self.bundle_user_id
        return mapper.series(user_ids) if isinstance(mapper, Pseudonymiser) else user_ids

    def item_rows(self, item_ids: Collection[str]) -> IntArray:
        """Index rows of the known ids, in order; unknown ids are skipped."""
        if not item_ids:  # most requests name none
            return _NO_ROWS
        index_of = self.bundle.item_encoder.ids.index_of
        indices = [i for i in map(index_of, item_ids) if i is not None]
        return np.asarray(indices, dtype=np.int64) - FIRST_TOKEN_INDEX

    def embed_rows(self, rows: IntArray) -> FloatArray:
        """User tower output for known users (table rows) on their stored inputs.

        Computed once per user (one batched pass for the rows not seen before) and kept:
        see :mod:`serving.bundle.user_vectors`.
        """
        return self._stored_vectors.get(rows)

    def _window_sums(self, rows: IntArray) -> FloatArray:
        bundle = self.bundle
        return window_sums(bundle.model, last_items(bundle.sequences, rows, bundle.spec.history_length))

    def _tower_rows(self, rows: IntArray) -> FloatArray:
        bundle = self.bundle
        embeddings: FloatArray = embed_users(bundle.model, bundle.user_features, bundle.sequences, rows)
        return embeddings

    def user_embedding(self, user_id: str) -> FloatArray:
        row = self.user_row(user_id)
        if row is None:
            raise NotFoundError("user", user_id)
        with tracing.span(tracing.USER_TOWER):
            embedding: FloatArray = self.embed_rows(np.array([row], dtype=np.int64))[0]
        return embedding

    def similar_users(self, query: SimilarUsersQuery) -> Audience:
        """Lookalike audience of the seed users (see :mod:`serving.audiences.search`)."""
        return self.audiences.expand(query)

    # ------------------------------------------------------------ recommending
    def recommend(self, query: RecommendQuery) -> Recommendation:
        """Top-k for one query (``RecommendQuery(user_id, k)`` is the plain request)."""
        return self._answer([self._plan(query)])[0]

    def recommend_many(self, queries: Sequence[RecommendQuery]) -> list[Recommendation]:
        """Answers in query order: one tower pass, one search per distinct filter list.

        An invalid query raises :class:`InvalidArgumentError` naming ``requests[i].<field>``.
        """
        return self._answer(self._plans(queries))

    def recommend_popular(self, queries: Sequence[RecommendQuery]) -> list[Recommendation]:
        """The ``popularity`` serving strategy (an experiment variant): the most popular
        eligible items for every user, known or not, validated as :meth:`recommend_many`.

        Seen, recent and excluded items are left out; filters and the category cap apply.
        ``fallback_reason`` is None: the variant chose popularity, it is not a fallback.
        """
        return [self._fallback(plan, None) for plan in self._plans(queries)]

    def _plans(self, queries: Sequence[RecommendQuery]) -> list[_Plan]:
        """Validated plans in query order; errors name ``requests[i].<field>``."""
        plans = []
        for i, query in enumerate(queries):
            try:
                plans.append(self._plan(query))
            except InvalidArgumentError as exc:
                raise InvalidArgumentError(f"requests[{i}].{exc.field}", exc.problem) from exc
        return plans

    def similar_items(self, query: SimilarItemsQuery) -> list[ScoredItem]:
        """The k items nearest to a known item (cosine), the item itself excluded."""
        _check_k(query.k)
        index = self.bundle.item_encoder.ids.index_of(query.item_id)
        if index is None:
            raise NotFoundError("item", query.item_id)
        row = index - FIRST_TOKEN_INDEX
        allowed = self.filters.allowed(query.filters)
        exclude = np.concatenate([[row], self.item_rows(query.exclude_item_ids)]).astype(np.int64)
        ((rows, scores),) = self.retriever.top_k(
            self._row_vectors[row : row + 1], [Wanted(query.k, exclude)], allowed
        )
        names = self._names(rows)
        return [ScoredItem(name, s) for name, s in zip(names, scores.tolist(), strict=True)]

    def _plan(self, query: RecommendQuery) -> _Plan:
        """Validate ``query`` and decide the tower inputs; raises InvalidArgumentError."""
        _check_k(query.k)
        if query.filters:  # most requests have none: no span for no work
            with tracing.span(tracing.FILTERS, {"recsys.filters": len(query.filters)}):
                allowed = self.filters.allowed(query.filters)
        else:
            allowed = None
        self.categories.validate(query.diversity)
        row = self.user_row(query.user_id)
        recent = self.item_rows(query.recent_item_ids)
        features, history = self._request_inputs(query, row, recent)
        excluded = [recent, self.item_rows(query.exclude_item_ids)]
        if row is not None:
            excluded.append(self.bundle.sequences.row(row) - FIRST_TOKEN_INDEX)
        wanted = Wanted(query.k, _joined(excluded), query.diversity, self.categories.codes(query.diversity))
        appended = recent + FIRST_TOKEN_INDEX if row is not None and len(recent) else None
        return _Plan(query, row, features, history, allowed, wanted, appended)

    def _request_inputs(
        self, query: RecommendQuery, row: int | None, recent: IntArray
    ) -> tuple[EncodedFeatures | None, IntArray | None]:
        """(features, history window) replacing the stored ones; None = stored.

        An unknown user with neither recent items nor attributes gets (None, None): the
        popularity fallback answers. Any other unknown user gets the OOV id, the given
        attributes and the recent items as the whole history.
        """
        attributes = query.user_attributes
        length = self.bundle.spec.history_length
        if row is None:
            if not (attributes or len(recent)):
                return None, None
            empty = np.full(length, PAD_INDEX, dtype=np.int64)
            features = self.request_attributes.encode(query.user_id, None, attributes)
            return features, append_recent(empty, recent + FIRST_TOKEN_INDEX)
        stored_features = (
            self.request_attributes.encode(query.user_id, row, attributes) if attributes else None
        )
        if not len(recent):
            return stored_features, None
        stored = last_items(self.bundle.sequences, np.array([row], dtype=np.int64), length)[0]
        return stored_features, append_recent(stored, recent + FIRST_TOKEN_INDEX)

    def _answer(self, plans: Sequence[_Plan]) -> list[Recommendation]:
        results: list[Recommendation | None] = [None] * len(plans)
        model = [i for i, plan in enumerate(plans) if plan.personalised]
        if model:
            with tracing.span(tracing.USER_TOWER, {"recsys.users": len(model)}):
                embeddings, explained = self._embed([plans[i] for i in model])
            groups: dict[object, list[int]] = defaultdict(list)
            for position, i in enumerate(model):
                groups[plans[i].query.filters].append(position)
            ranked: list[tuple[IntArray, FloatArray]] = [(_NO_ROWS, _NO_SCORES)] * len(model)
            for members in groups.values():
                found = self.retriever.top_k(
                    embeddings[members],
                    [plans[model[m]].wanted for m in members],
                    plans[model[members[0]]].allowed,
                )
                for m, pair in zip(members, found, strict=True):
                    ranked[m] = pair
            histories = np.where(explained >= FIRST_TOKEN_INDEX, explained - FIRST_TOKEN_INDEX, -1)
            with tracing.span(tracing.EXPLANATIONS):
                because = explain(self._row_vectors, [rows for rows, _ in ranked], histories)
            for i, recommendation in zip(model, self._personalised(ranked, because), strict=True):
                results[i] = recommendation
        for i, plan in enumerate(plans):
            if results[i] is None:
                results[i] = self._fallback(plan)
        return [r for r in results if r is not None]

    def _embed(self, plans: Sequence[_Plan]) -> tuple[FloatArray, IntArray]:
        """(user embeddings, the most recent history items that explanations draw on) for
        personalised plans; the second is (B, min(history length, EXPLAINED_HISTORY)).

        Plans on stored inputs read their user's stored vector; the others (recent items,
        request attributes) go through the user tower together, in one pass. Only those read
        their whole history window: a 1,000-item window per request cost more than the
        stored-vector answer itself.
        """
        bundle = self.bundle
        length = bundle.spec.history_length
        rows = np.array([0 if p.row is None else p.row for p in plans], dtype=np.int64)
        explained = last_items(bundle.sequences, rows, min(length, EXPLAINED_HISTORY))
        custom = [j for j, p in enumerate(plans) if p.features is not None or p.history is not None]
        if not custom:
            return self.embed_rows(rows), explained
        is_custom = np.zeros(len(plans), dtype=bool)
        is_custom[custom] = True
        embeddings = np.empty((len(plans), bundle.spec.output_dim), dtype=np.float32)
        embeddings[~is_custom] = self.embed_rows(rows[~is_custom])
        features = gather(bundle.user_features, rows[custom])
        stored = last_items(bundle.sequences, rows[custom], length)  # before the recent items
        windows = stored.copy()
        for position, j in enumerate(custom):
            plan = plans[j]
            if plan.features is not None:
                for name, values in plan.features.items():
                    features[name][position] = values[0]
            if plan.history is not None:
                windows[position] = plan.history
                explained[j] = plan.history[length - explained.shape[1] :]
        # A known user's recent items fold into the stored pool (a few rows, not the whole window).
        sums = self._history_sums
        folded: list[int] = []  # positions in custom
        appended: list[IntArray] = []
        for position, j in enumerate(custom):
            extra = plans[j].appended
            if sums is not None and extra is not None and len(extra) < length:
                folded.append(position)
                appended.append(extra)
        targets = np.asarray(custom, dtype=np.int64)
        full = np.setdiff1d(np.arange(len(custom)), folded)
        if len(full):
            embeddings[targets[full]] = embed_user_inputs(bundle.model, gather(features, full), windows[full])
        if folded and sums is not None:
            chosen = np.asarray(folded, dtype=np.int64)
            embeddings[targets[chosen]] = folded_user_vectors(
                bundle.model,
                gather(features, chosen),
                sums.get(rows[targets[chosen]]),
                stored[chosen],
                appended,
            )
        return embeddings, explained

    def _names(self, rows: IntArray) -> list[str]:
        """The item ids of ``rows`` (index rows, >= 0), in one gather."""
        names: list[str] = self._item_ids.take(rows).to_pylist()
        return names

    def _personalised(
        self, ranked: Sequence[tuple[IntArray, FloatArray]], because: Sequence[IntArray]
    ) -> list[Recommendation]:
        """One recommendation per (rows, scores) list, each item with the history item that explains it
        (row -1: none). The ids of the whole batch are read in one gather: per-item Series look-ups
        cost ~5 us each, as much as the rest of a narrow model's request."""
        rows = [r for r, _ in ranked]
        wanted = np.concatenate([*rows, *because]) if rows else _NO_ROWS
        names = self._names(np.maximum(wanted, 0))
        out, start, reasons = [], 0, sum(len(r) for r in rows)
        for (found, scores), why in zip(ranked, because, strict=True):
            n = len(found)
            items, explained = names[start : start + n], names[reasons : reasons + n]
            start, reasons = start + n, reasons + n
            # tolist() first: plain Python floats box far faster than NumPy scalars.
            out.append(
                Recommendation(
                    [
                        ScoredItem(item, score, reason if w >= 0 else "")
                        for item, score, reason, w in zip(
                            items, scores.tolist(), explained, why.tolist(), strict=True
                        )
                    ],
                    self.model_version,
                )
            )
        return out

    def _fallback(
        self, plan: _Plan, reason: FallbackReason | None = FallbackReason.UNKNOWN_USER
    ) -> Recommendation:
        """Most popular eligible items: filters, exclusions, MMR and the category cap applied."""
        k, exclude, cap = plan.wanted.k, plan.wanted.exclude, plan.wanted.categories
        diversity = plan.query.diversity
        order = self._popular_rows
        if plan.allowed is None and cap is None:
            # Enough: at most len(exclude) of them drop out.
            order = order[: candidate_count(k, diversity) + len(exclude)]
        if plan.allowed is not None:
            order = order[plan.allowed.mask[order]]
        if len(exclude):
            order = order[~self.retriever.excluded(order, exclude)]
        if 0.0 < diversity.mmr_lambda < 1.0:
            order = self._popular_mmr(order, k, diversity, cap)
        else:
            if cap is not None:
                order = order[capped(cap[order], diversity.max_per_category)]
            order = order[:k]
        names, scores = self._names(order), self._popular_scores[order].tolist()
        items = [ScoredItem(name, s) for name, s in zip(names, scores, strict=True)]
        return Recommendation(items, self.model_version, reason)

    def _popular_mmr(
        self, eligible: IntArray, k: int, diversity: Diversity, cap: IntArray | None
    ) -> IntArray:
        """MMR (and the cap) over the most popular of ``eligible`` (rows, most popular first),
        through the retriever's pick, which widens the candidates as for model answers.

        Relevance is the popularity share divided by the most popular eligible item's, so that
        it lies in [0, 1] like the cosine similarities it is traded against (raw shares are
        ~1e-3 and MMR would then rank by dissimilarity alone).
        """
        top = float(self._popular_scores[eligible[0]]) if len(eligible) else 0.0

        def candidates(n: int) -> tuple[IntArray, FloatArray]:
            rows = eligible[:n]
            shares = self._popular_scores[rows]
            return rows, (shares / top if top > 0 else np.zeros(len(rows))).astype(np.float32)

        fetch = candidate_count(k, diversity)
        want = Wanted(k, _NO_ROWS, diversity, cap)
        rows, _ = self.retriever.pick(want, candidates(fetch), fetch, len(eligible), candidates)
        return rows

    # ------------------------------------------------------- batch (campaign) lists
    def top_k_rows(self, rows: IntArray, k: int) -> tuple[IntArray, FloatArray]:
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

    def popular_rows(self, k: int) -> tuple[IntArray, FloatArray]:
        """The fallback: most popular items (index rows) and their interaction shares."""
        rows = self._popular_rows[:k]
        return rows, self._popular_scores[rows].astype(np.float32)


def _joined(parts: list[IntArray]) -> IntArray:
    """``np.concatenate(parts)``, without a copy when at most one part has rows."""
    filled = [part for part in parts if len(part)]
    if len(filled) > 1:
        return np.concatenate(filled)
    return filled[0] if filled else _NO_ROWS


def _check_k(k: int) -> None:
    if k < 1:
        raise InvalidArgumentError("k", f"must be >= 1, got {k}")
