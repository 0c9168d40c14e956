"""Offline evaluation: full ranking over the catalogue, seen items excluded."""

from __future__ import annotations

import numpy as np
import polars as pl

from serving.embedding import embed_items, embed_users
from serving.features import FIRST_TOKEN_INDEX
from serving.history import Sequences
from serving.model import TwoTowerModel
from training.evaluation import ranking_metrics, top_k_excluding, truth_csr
from training.features import Prepared

_SCORE_BATCH = 1024


def evaluate(model: TwoTowerModel, train: Prepared, test: pl.DataFrame, k: int) -> dict[str, float]:
    """Ranking metrics of ``model`` on ``test`` interactions.

    Every user known to ``train`` is ranked against every training item; the items
    the user has in ``train`` are excluded. Test rows with users or items unknown to
    the training vocabularies cannot be ranked and are ignored.
    """
    mapped = test.select(
        train.user_encoder.ids.expr(pl.col("user_id")).alias("u"),
        train.item_encoder.ids.expr(pl.col("item_id")).alias("i"),
    ).filter((pl.col("u") >= FIRST_TOKEN_INDEX) & (pl.col("i") >= FIRST_TOKEN_INDEX))
    user_rows = mapped.get_column("u").to_numpy().astype(np.int64) - FIRST_TOKEN_INDEX
    item_rows = mapped.get_column("i").to_numpy().astype(np.int64) - FIRST_TOKEN_INDEX
    truth_indptr, truth_indices = truth_csr(user_rows, item_rows, train.n_users)

    # Only users with something to find are scored.
    eval_rows = np.flatnonzero(np.diff(truth_indptr) > 0).astype(np.int64)
    items = embed_items(model, train.item_features)
    users = embed_users(model, train.user_features, train.sequences, eval_rows)
    seen = train.sequences.take(eval_rows)
    seen_indptr, seen_indices = seen.indptr, seen.items - FIRST_TOKEN_INDEX

    topk = np.empty((len(eval_rows), k), dtype=np.int64)
    for start in range(0, len(eval_rows), _SCORE_BATCH):
        scores = users[start : start + _SCORE_BATCH] @ items.T
        topk[start : start + len(scores)] = top_k_excluding(
            scores, k, seen_indptr, seen_indices, row_offset=start
        )

    truth = Sequences(truth_indptr, truth_indices).take(eval_rows)
    return ranking_metrics(topk, truth.indptr, truth.items, train.n_items, k)
