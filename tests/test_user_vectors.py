"""Stored user vectors: computed once per user, bounded, equal to the tower's output."""

from __future__ import annotations

import numpy as np
import pytest

from serving.bundle.user_vectors import StoredUserVectors
from serving.model.embedding import embed_users
from serving.recommend.engine import TwoTowerEngine
from serving.recommend.types import RecommendQuery

DIM = 3


class _Tower:
    """A stand-in tower pass that records which rows it computed: row r -> (r, r, r)."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.calls.append(rows.tolist())
        return np.repeat(rows.astype(np.float32)[:, None], DIM, axis=1)


def test_each_row_is_computed_once_and_answers_keep_request_order() -> None:
    tower = _Tower()
    stored = StoredUserVectors(tower, DIM)
    first = stored.get(np.array([5, 2, 5, 9]))
    assert first[:, 0].tolist() == [5, 2, 5, 9]
    assert tower.calls == [[2, 5, 9]]  # distinct rows, one pass
    second = stored.get(np.array([9, 7, 2]))
    assert second[:, 0].tolist() == [9, 7, 2]
    assert tower.calls == [[2, 5, 9], [7]]  # only the new row
    assert stored.get(np.array([], dtype=np.int64)).shape == (0, DIM)


def test_capacity_drops_the_longest_kept_users_first() -> None:
    tower = _Tower()
    stored = StoredUserVectors(tower, DIM, capacity=3)
    stored.get(np.array([1, 2, 3]))
    stored.get(np.array([4]))
    assert len(stored) == 3
    stored.get(np.array([2, 3, 4]))  # still kept
    assert tower.calls[-1] == [4]
    stored.get(np.array([1]))  # dropped when 4 came in: computed again
    assert tower.calls[-1] == [1]
    # A call larger than the capacity still answers every row.
    assert stored.get(np.arange(10, 20))[:, 0].tolist() == list(range(10, 20))
    assert len(stored) == 3
    with pytest.raises(ValueError, match="capacity"):
        StoredUserVectors(tower, DIM, capacity=0)


def test_engine_stored_vectors_equal_the_tower_output(engine: TwoTowerEngine) -> None:
    bundle = engine.bundle
    rows = np.array([3, 0, 17, 3], dtype=np.int64)
    expected = embed_users(bundle.model, bundle.user_features, bundle.sequences, rows)
    np.testing.assert_allclose(engine.embed_rows(rows), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(engine.embed_rows(rows[:1]), expected[:1], rtol=1e-5, atol=1e-6)


def test_passes_in_history_length_order_answer_in_the_rows_order(engine: TwoTowerEngine) -> None:
    """embed_users takes the rows shortest history first (less padding per pass) and puts every
    vector back at its row's position: rows shuffled, repeated, over many small passes."""
    bundle = engine.bundle
    lengths = bundle.sequences.lengths()
    assert lengths.min() < lengths.max()  # passes of different widths
    rows = np.random.default_rng(3).permutation(np.repeat(np.arange(len(lengths)), 2)).astype(np.int64)
    one_pass = embed_users(bundle.model, bundle.user_features, bundle.sequences, rows, batch_size=len(rows))
    passes = embed_users(bundle.model, bundle.user_features, bundle.sequences, rows, batch_size=7)
    np.testing.assert_allclose(passes, one_pass, atol=1e-5)
    single = embed_users(bundle.model, bundle.user_features, bundle.sequences, rows[5:6])
    np.testing.assert_allclose(passes[5:6], single, atol=1e-5)


def test_a_batch_mixing_plain_and_session_requests_answers_each_as_alone(engine: TwoTowerEngine) -> None:
    users = bundle_users(engine)[:4]
    recent_item = engine.bundle.item_ids[0]
    queries = [
        RecommendQuery(users[0], 5),
        RecommendQuery(users[1], 5, recent_item_ids=(recent_item,)),
        RecommendQuery(users[2], 5),
        RecommendQuery(users[3], 5, recent_item_ids=(recent_item,)),
    ]
    together = engine.recommend_many(queries)
    for query, answer in zip(queries, together, strict=True):
        alone = engine.recommend(query)
        assert [i.item_id for i in answer.items] == [i.item_id for i in alone.items]
        np.testing.assert_allclose(
            [i.score for i in answer.items], [i.score for i in alone.items], rtol=1e-4, atol=1e-5
        )


def bundle_users(engine: TwoTowerEngine) -> list[str]:
    ids: list[str] = engine.bundle.users.get_column("user_id").to_list()
    return ids
