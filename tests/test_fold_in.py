"""Recent items folded into a stored user's pooled history equal a tower pass over the appended window."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import TrainedBundle

from serving.model.fold_in import fold_in, foldable, folded_user_vectors, window_sums
from serving.model.history import append_recent
from serving.model.inputs import to_inputs
from serving.model.towers import FieldSpec, TowerSpec, TwoTowerModel, TwoTowerSpec
from serving.recommend.engine import TwoTowerEngine
from serving.recommend.types import RecommendQuery

LENGTH = 8


def _model(decay: float, shared: bool) -> TwoTowerModel:
    torch.manual_seed(0)
    spec = TwoTowerSpec(
        user=TowerSpec(id_cardinality=12, fields=(FieldSpec("region", "categorical", 4),)),
        item=TowerSpec(id_cardinality=40, fields=()),
        embedding_dim=8,
        hidden_dims=(16,),
        output_dim=6,
        dropout=0.0,
        temperature=0.1,
        history_length=LENGTH,
        history_decay=decay,
        shared_history_embedding=shared,
    )
    return TwoTowerModel(spec).eval()


@pytest.mark.parametrize(("decay", "shared"), [(0.0, True), (0.3, False), (2.0, True)])
def test_folding_recent_items_in_equals_the_tower_on_the_appended_window(decay: float, shared: bool) -> None:
    model = _model(decay, shared)
    assert foldable(model)
    rng = np.random.default_rng(1)
    stored = np.zeros((6, LENGTH), dtype=np.int64)
    for b, used in enumerate([0, 1, 3, 7, 8, 8]):  # empty, short, nearly full, full windows
        stored[b, LENGTH - used :] = rng.integers(1, 40, used)  # index 1 (unknown) counts as an item
    appended = [rng.integers(2, 40, n) for n in (1, 3, 2, 5, 1, LENGTH - 1)]
    features = {"id": rng.integers(0, 12, 6), "region": rng.integers(0, 4, 6)}
    got = folded_user_vectors(model, features, window_sums(model, stored), stored, appended)
    windows = np.stack([append_recent(stored[b], appended[b]) for b in range(6)])
    with torch.inference_mode():
        want = model.user_embedding(to_inputs(features, history=windows)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_pool_of_an_empty_window_plus_items_is_their_mean() -> None:
    model = _model(0.0, True)
    stored = np.zeros((1, LENGTH), dtype=np.int64)
    pooled = fold_in(model, window_sums(model, stored), stored, [np.array([5, 9])]).numpy()
    rows = model.user_tower.item_ids.weight.detach().numpy()
    np.testing.assert_allclose(pooled[0], (rows[5] + rows[9]) / 2, rtol=1e-6)


def test_only_mean_encoders_fold() -> None:
    model = _model(0.0, True)
    causal = TwoTowerModel(dataclasses.replace(model.spec, history_encoder="causal"))
    assert not foldable(causal)


def test_the_engine_folds_a_known_users_recent_items_in_with_the_same_answers(trained: TrainedBundle) -> None:
    """A served bundle: the folded request-time vectors give the lists and scores of the tower pass."""
    folding, full = TwoTowerEngine.load(trained.bundle), TwoTowerEngine.load(trained.bundle)
    assert folding._history_sums is not None
    full._history_sums = None  # this copy takes the tower pass over the appended windows
    users = folding.bundle.users.get_column("user_id").to_list()[:24]
    items = folding.bundle.item_encoder.ids.tokens.to_list()
    rng = np.random.default_rng(3)
    queries = [
        RecommendQuery(
            user, 10, recent_item_ids=tuple(items[i] for i in rng.choice(len(items), n, replace=False))
        )
        for user, n in zip(users, rng.integers(1, 6, len(users)), strict=True)
    ]
    for got, want in zip(folding.recommend_many(queries), full.recommend_many(queries), strict=True):
        assert [i.item_id for i in got.items] == [i.item_id for i in want.items]
        np.testing.assert_allclose([i.score for i in got.items], [i.score for i in want.items], atol=1e-5)
    assert len(folding._history_sums) == len({q.user_id for q in queries})
