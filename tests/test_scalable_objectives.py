"""The candidates that need no items x items matrix: ``elsa`` (low-rank linear item-item model trained
by mini-batches) and ``mf`` with frequency-scaled regularisation, both in linear towers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import tiny_config
from realtime_contract import lists_moved_by_recent_items, unknown_user_lists

from serving.model.features import FIRST_TOKEN_INDEX
from training.config import ConfigError, load_config
from training.data.synth import SynthSummary
from training.evaluation import split_for
from training.evaluation.baselines import Popularity, baseline_scores, interaction_matrix
from training.evaluation.evaluate import (
    SCORE_BATCH,
    SCORE_CELLS,
    batched,
    rank_test_users,
    score_batch_rows,
    two_tower_scores,
)
from training.features import Prepared, prepare
from training.fit.linear.elsa_task import ElsaTask, elsa_batch_size, elsa_loss
from training.fit.linear.factor_task import fit_factors
from training.fit.trainer import train_model

ELSA = ("train.objective=elsa", "train.elsa_rank=16", "train.elsa_batch_size=32", "data.history_length=1000")


@pytest.fixture(scope="module")
def interactions(synth_data: SynthSummary) -> pl.DataFrame:
    return pl.read_parquet(synth_data.interactions_path)


@pytest.fixture(scope="module")
def prepared(interactions: pl.DataFrame) -> Prepared:
    return prepare(interactions, None, None, tiny_config(*ELSA).data)


def test_the_elsa_loss_is_the_normalised_mse_of_the_dense_prediction(prepared: Prepared) -> None:
    """The Gram-matrix form of the loss equals ELSA's normalised MSE of ``x (A A^T - I)`` computed
    items-wide (up to its constant ``2 / items``), gradient included."""
    task = ElsaTask(prepared, tiny_config(*ELSA))
    batch = task.build(np.arange(40, dtype=np.int64))
    ours = elsa_loss(task.weights, batch)
    (ours_grad,) = torch.autograd.grad(ours, task.weights)
    x = torch.from_numpy(interaction_matrix(prepared)[task.users[:40]].toarray())
    a = torch.nn.functional.normalize(task.weights, dim=-1)
    prediction = x @ a @ a.T - x
    nmse = torch.nn.functional.mse_loss(
        torch.nn.functional.normalize(prediction, dim=-1), torch.nn.functional.normalize(x, dim=-1)
    )
    (dense_grad,) = torch.autograd.grad(nmse * prepared.n_items / 2, task.weights)
    assert ours.item() == pytest.approx(nmse.item() * prepared.n_items / 2, rel=1e-4)
    torch.testing.assert_close(ours_grad, dense_grad, rtol=1e-3, atol=1e-6)


def test_elsa_trains_ranks_as_its_item_matrix_and_beats_popularity(interactions: pl.DataFrame) -> None:
    """Loss falls; the towers rank unseen items as ``x A A^T`` does (the ``-I`` only touches seen
    items); the lists beat popularity on held-out interactions; memory is items x rank. Each pair
    once: the fit sees the binary matrix, the tower the history with its repeats."""
    config = tiny_config(*ELSA, "train.epochs=15", "train.learning_rate=0.01")
    once = interactions.unique(["user_id", "item_id"], keep="first", maintain_order=True)
    parts = split_for(once, "rand", 3)
    train_part = prepare(parts.train, None, None, config.data)
    result = train_model(train_part, config)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    table = result.model.item_tower.item_ids.weight.detach()
    assert table.shape == (train_part.n_items + FIRST_TOKEN_INDEX, 16)  # items x rank, nothing items-wide
    a = table[FIRST_TOKEN_INDEX:].double().numpy()
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    x = interaction_matrix(train_part, np.float64)

    def dense_scores(rows: np.ndarray) -> np.ndarray:
        scores: np.ndarray = np.asarray(x[rows] @ a) @ a.T
        return scores

    ours = rank_test_users(two_tower_scores(result.model, train_part), train_part, parts.test, 10)
    dense = rank_test_users(batched(dense_scores), train_part, parts.test, 10)
    assert (ours.topk == dense.topk).mean() > 0.98
    popularity = Popularity()
    popularity.fit(train_part)
    baseline = rank_test_users(baseline_scores(popularity), train_part, parts.test, 10)
    assert ours.metrics(10)["ndcg@10"] > 1.1 * baseline.metrics(10)["ndcg@10"]


def test_an_elsa_bundle_keeps_the_real_time_contract(synth_data: SynthSummary, tmp_path: Path) -> None:
    """Trained with early stopping through the pipeline and served from the bundle: recent items move
    known users' lists, an unknown user with recent items gets a personalised list (not the fallback,
    non-zero scores, different lists for different items)."""
    from serving.recommend.engine import TwoTowerEngine
    from training.pipeline import train

    config = tiny_config(
        *ELSA,
        "train.patience=2",
        "train.epochs=12",
        "eval.protocol=none",
        "tracking.enabled=false",
        "profiles.enabled=false",
    )
    train(config, synth_data.interactions_path, None, None, tmp_path / "bundle")
    engine = TwoTowerEngine.load(tmp_path / "bundle")
    spec = engine.bundle.spec
    assert spec.hidden_dims == ()
    assert spec.output_dim == 16
    assert not spec.user_id_embedding
    users = engine.bundle.users.get_column("user_id").to_list()[:40]
    assert lists_moved_by_recent_items(engine, users, 5) >= 0.5 * len(users)
    assert unknown_user_lists(engine, 3) >= 4


def test_elsa_step_size_follows_the_data_unless_set() -> None:
    """Every ELSA step pays for the Gram matrix whatever its size: by default a step holds a sixteenth
    of the users, at least 128 and at most 1,024, and a size that is set is used as it is."""
    default = load_config(None, []).train
    assert [elsa_batch_size(default, users) for users in (40, 943, 2_048, 4_000, 22_363, 10**6)] == [
        128,
        128,
        128,
        250,
        1024,
        1024,
    ]
    assert elsa_batch_size(load_config(None, ["train.elsa_batch_size=32"]).train, 10**6) == 32


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.objective=elsaa", "train.objective"),
        ("train.elsa_rank=0", "train.elsa_rank"),
        ("train.elsa_batch_size=-1", "train.elsa_batch_size"),
        ("train.mf_regularization_exponent=-1", "train.mf_regularization_exponent"),
        ("train.mf_regularization_exponent=3", "train.mf_regularization_exponent"),
    ],
)
def test_bad_scalable_settings_are_refused_naming_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def _distinct_top_lists(prepared: Prepared, regularization: float, exponent: float) -> int:
    """Distinct top-10 lists (seen items excluded) among the users under the fold-in of the fit."""
    matrix = interaction_matrix(prepared, np.float64)
    _, items, ridge = fit_factors(matrix.astype(np.float32).tocsr(), 8, regularization, exponent, 0)
    y = items.astype(np.float64)
    users = np.linalg.solve(y.T @ y + ridge * np.eye(y.shape[1]), (matrix @ y).T).T
    scores = users @ y.T
    scores[matrix.nonzero()] = -np.inf
    return len({tuple(np.argsort(-row, kind="stable")[:10]) for row in scores})


def test_frequency_scaled_mf_keeps_the_tiny_catalogue_apart(prepared: Prepared) -> None:
    """A fixed ridge of 10 (the default, best on the dev pairs) collapses the 60-item catalogue's
    factors to one (popularity) direction, so users get nearly one list; the frequency-scaled ridge
    keeps their lists apart."""
    config = tiny_config()
    collapsed = _distinct_top_lists(
        prepared, config.train.mf_regularization, config.train.mf_regularization_exponent
    )
    scaled = _distinct_top_lists(prepared, 0.01, 1.0)
    assert scaled >= 0.8 * prepared.n_users
    assert scaled > 2 * collapsed


def test_score_batches_stay_bounded_at_a_million_items() -> None:
    """Ranking 1,024 users at once over 1M items held ~16 GiB (the score batch, its masked copy and the
    top-k indices) and killed a 100M-event run's validation: batches shrink with the catalogue."""
    assert score_batch_rows(1_682) == SCORE_BATCH  # small catalogues: unchanged
    rows = score_batch_rows(1_000_000)
    assert rows * 1_000_000 <= SCORE_CELLS
    assert rows >= 1
    assert score_batch_rows(10**9) == 1
