"""Offline evaluation: full ranking over the catalogue, seen items excluded.

One scoring loop serves every model: a model is reduced to a *score-batches function* that, given the
user rows to rank, yields ``(batch, n_items)`` score matrices over the training items. The two-tower model
(:func:`evaluate`) and the baselines of :mod:`training.evaluation.baselines` are ranked and scored by
exactly the same code, so their metrics are comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from serving.model.embedding import embed_items, embed_users
from serving.model.features import FIRST_TOKEN_INDEX
from serving.model.history import Sequences
from serving.model.towers import TwoTowerModel
from training.evaluation import ranking_metrics, top_k_excluding, truth_csr
from training.evaluation.metrics import per_user_ndcg
from training.features import Prepared

__all__ = [
    "SCORE_BATCH",
    "SCORE_CELLS",
    "ManyScoreBatches",
    "Ranking",
    "ScoreBatches",
    "batched",
    "evaluate",
    "evaluate_scores",
    "rank_test_users",
    "rank_test_users_many",
    "score_batch_rows",
    "two_tower_scores",
]

SCORE_BATCH = 1024
"""Users scored per batch at most: bounds the dense (batch, n_items) score matrix."""
SCORE_CELLS = 1 << 24
"""Score cells per batch at most (64 MiB of float32; ranking holds a masked copy and the top-k
selection's indices beside it): at 1,000,000 items 1,024 users would be 4 GiB a batch and ~16 GiB with
the ranking's copies, which is what killed the 100M-event run's validation."""


def score_batch_rows(n_items: int) -> int:
    """Users per score batch over ``n_items`` items: :data:`SCORE_BATCH`, fewer where the catalogue
    would take the batch past :data:`SCORE_CELLS`."""
    return max(1, min(SCORE_BATCH, SCORE_CELLS // max(n_items, 1)))


IntArray = npt.NDArray[np.int64]

ScoreBatches = Callable[[IntArray], Iterable[npt.NDArray[np.floating[Any]]]]
"""``fn(user_rows)`` yields float score matrices ``(b_j, n_items)`` for consecutive slices of ``user_rows``
(train user rows, ascending), in order, together covering every row exactly once. Column ``i`` scores item
row ``i`` of the training :class:`Prepared`; higher is better; NaN is not allowed."""

ManyScoreBatches = Callable[[IntArray], Iterable[Iterable[npt.NDArray[np.floating[Any]]]]]
""":data:`ScoreBatches` for several scorers: each batch is an iterable of the scorers' matrices of the same
rows, in scorer order (see :func:`rank_test_users_many`)."""


@dataclass(frozen=True)
class Ranking:
    """Top-``k`` lists of the evaluated users and what they should have found.

    Attributes:
        user_rows: Train user rows that were ranked (those with at least one rankable test item), ascending.
        topk: ``(len(user_rows), k)`` item rows, best first, ``-1`` for empty slots; train items excluded.
        truth: Per ranked user (same order), the test item rows.
        n_items: Catalogue size (training items).
    """

    user_rows: IntArray
    topk: IntArray
    truth: Sequences
    n_items: int

    def metrics(self, k: int) -> dict[str, float]:
        """:func:`training.evaluation.ranking_metrics` of this ranking at cut-off ``k``."""
        return ranking_metrics(self.topk, self.truth.indptr, self.truth.items, self.n_items, k)

    def per_user_ndcg(self, k: int) -> npt.NDArray[np.float64]:
        """NDCG@``k`` of each ranked user (``user_rows`` order): :meth:`metrics`' mean, per user."""
        return per_user_ndcg(self.topk, self.truth.indptr, self.truth.items, self.n_items, k)


def rank_test_users(score_batches: ScoreBatches, train: Prepared, test: pl.DataFrame, k: int) -> Ranking:
    """Rank the training items for every user with something to find in ``test``.

    Test rows whose user or item is unknown to ``train``'s vocabularies cannot be ranked and are ignored;
    users left without test items are not ranked at all. Each user's train items are excluded from their
    list.

    Raises:
        ValueError: if ``score_batches`` yields a badly shaped matrix or does not cover the rows exactly.
    """

    def single(user_rows: IntArray) -> Iterator[Iterable[npt.NDArray[np.floating[Any]]]]:
        return ((scores,) for scores in score_batches(user_rows))

    return rank_test_users_many(single, train, test, k, 1)[0]


def rank_test_users_many(
    score_batches: ManyScoreBatches, train: Prepared, test: pl.DataFrame, k: int, count: int
) -> list[Ranking]:
    """:func:`rank_test_users` for ``count`` scorers at once, in one pass over the users.

    Each batch of ``score_batches`` yields the ``count`` scorers' matrices of the same rows, one at a
    time: scorers that share work (the parts of a blend, scored once and weighted many ways) do it once
    per batch, and one score matrix is ranked before the next is made.

    Raises:
        ValueError: if a batch yields a badly shaped matrix or not ``count`` of them, or the batches do
            not cover the rows exactly, or ``count`` < 1.
    """
    if count < 1:
        raise ValueError(f"count: must be >= 1, got {count}")
    mapped = test.select(
        train.user_encoder.ids.expr(pl.col("user_id")).alias("u"),
        train.item_encoder.ids.expr(pl.col("item_id")).alias("i"),
    ).filter((pl.col("u") >= FIRST_TOKEN_INDEX) & (pl.col("i") >= FIRST_TOKEN_INDEX))
    user_rows = mapped.get_column("u").to_numpy().astype(np.int64) - FIRST_TOKEN_INDEX
    item_rows = mapped.get_column("i").to_numpy().astype(np.int64) - FIRST_TOKEN_INDEX
    truth_indptr, truth_indices = truth_csr(user_rows, item_rows, train.n_users)

    # Only users with something to find are scored.
    eval_rows = np.flatnonzero(np.diff(truth_indptr) > 0).astype(np.int64)
    seen = train.sequences.take(eval_rows)
    seen_indptr, seen_indices = seen.indptr, seen.items - FIRST_TOKEN_INDEX

    topks = [np.empty((len(eval_rows), k), dtype=np.int64) for _ in range(count)]
    start = 0
    for matrices in score_batches(eval_rows):
        rows = -1
        made = 0
        for scores in matrices:
            if made == count:
                raise ValueError(f"a score batch yields more than {count} matrices")
            if scores.ndim != 2 or scores.shape[1] != train.n_items:
                raise ValueError(f"score batch has shape {scores.shape}, expected (batch, {train.n_items})")
            if rows not in (-1, len(scores)):
                raise ValueError("the matrices of one score batch cover different rows")
            rows = len(scores)
            if start + rows > len(eval_rows):
                raise ValueError("score batches cover more rows than were requested")
            topks[made][start : start + rows] = top_k_excluding(
                scores, k, seen_indptr, seen_indices, row_offset=start
            )
            made += 1
            del scores  # before the next matrix is made: one held at a time
        if made != count:
            raise ValueError(f"a score batch yields {made} matrices, expected {count}")
        start += rows
    if start != len(eval_rows):
        raise ValueError(f"score batches covered {start} of {len(eval_rows)} users")

    truth = Sequences(truth_indptr, truth_indices).take(eval_rows)
    return [Ranking(user_rows=eval_rows, topk=topk, truth=truth, n_items=train.n_items) for topk in topks]


def evaluate_scores(
    score_batches: ScoreBatches, train: Prepared, test: pl.DataFrame, k: int
) -> dict[str, float]:
    """Ranking metrics (see :func:`training.evaluation.ranking_metrics`) of any scorer on ``test``."""
    return rank_test_users(score_batches, train, test, k).metrics(k)


def batched(
    score: Callable[[IntArray], npt.NDArray[np.floating[Any]]], batch_size: int = SCORE_BATCH
) -> ScoreBatches:
    """Turn a per-batch scorer ``score(user_rows) -> (len(user_rows), n_items)`` into :data:`ScoreBatches`."""

    def batches(user_rows: IntArray) -> Iterator[npt.NDArray[np.floating[Any]]]:
        for start in range(0, len(user_rows), batch_size):
            yield score(user_rows[start : start + batch_size])

    return batches


def two_tower_scores(model: TwoTowerModel, train: Prepared) -> ScoreBatches:
    """Dot products of user- and item-tower outputs; user histories come from ``train.sequences``."""

    def batches(user_rows: IntArray) -> Iterator[npt.NDArray[np.floating[Any]]]:
        items = embed_items(model, train.item_features)
        # All users in one tower pass (the tower batches internally), then dense scores batch by batch.
        users = embed_users(model, train.user_features, train.sequences, user_rows)
        rows = score_batch_rows(train.n_items)
        for start in range(0, len(user_rows), rows):
            yield users[start : start + rows] @ items.T

    return batches


def evaluate(model: TwoTowerModel, train: Prepared, test: pl.DataFrame, k: int) -> dict[str, float]:
    """Ranking metrics of ``model`` on ``test`` interactions.

    Every user known to ``train`` is ranked against every training item; the items
    the user has in ``train`` are excluded. Test rows with users or items unknown to
    the training vocabularies cannot be ranked and are ignored.
    """
    return evaluate_scores(two_tower_scores(model, train), train, test, k)
