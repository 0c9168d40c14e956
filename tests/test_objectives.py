"""Sequence, bag and mixed objectives, every-position towers, early stopping and ``objective = auto``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import polars as pl
import pytest
import scipy.sparse as sp
import torch
from conftest import tiny_config
from realtime_contract import lists_moved_by_recent_items, unknown_user_lists

from serving.model.features import PAD_INDEX
from serving.model.history import Sequences
from serving.model.towers import (
    HISTORY,
    ID,
    FieldSpec,
    TowerSpec,
    TwoTowerModel,
    TwoTowerSpec,
    decayed_mean,
    masked_mean,
    prefix_mean,
)
from training.config import CLOSED_FORM_OBJECTIVES, ConfigError, load_config
from training.data.synth import SynthSummary
from training.evaluation import split_for
from training.evaluation.baselines import EASE, IALS, baseline_scores, interaction_matrix
from training.evaluation.evaluate import batched, evaluate, rank_test_users, two_tower_scores
from training.features import Prepared, prepare
from training.fit.auto import CANDIDATES, Selection, candidates_of, family, fit_selected, select_objective
from training.fit.linear.factor_task import fit_factors
from training.fit.linear.linear_task import choose_tower_rank, factorise, to_unit_targets
from training.fit.losses import candidate_softmax_loss
from training.fit.sequences import bag_arrays, sequence_windows, window_arrays
from training.fit.trainer import TrainingRun, train_model


def _spec(encoder: str) -> TwoTowerSpec:
    return TwoTowerSpec(
        user=TowerSpec(id_cardinality=6, fields=(FieldSpec("region", "categorical", 4),)),
        item=TowerSpec(id_cardinality=20, fields=(FieldSpec("brand", "categorical", 3),)),
        embedding_dim=8,
        hidden_dims=(16,),
        output_dim=6,
        dropout=0.0,
        temperature=0.1,
        history_length=5,
        history_encoder=encoder,
    )


def _inputs(history: list[list[int]]) -> dict[str, torch.Tensor]:
    rows = len(history)
    return {
        ID: torch.arange(2, 2 + rows),
        "region": torch.ones(rows, dtype=torch.long),
        HISTORY: torch.tensor(history),
    }


@pytest.mark.parametrize("encoder", ["mean", "causal"])
def test_the_last_position_is_what_serving_computes(encoder: str) -> None:
    torch.manual_seed(0)
    model = TwoTowerModel(_spec(encoder)).eval()
    inputs = _inputs([[0, 0, 3, 4, 5], [0, 0, 0, 0, 0], [2, 3, 4, 5, 6], [0, 0, 0, 0, 9]])
    every = model.user_embedding_every_position(inputs)
    assert every.shape == (4, 5, 6)
    torch.testing.assert_close(every[:, -1], model.user_embedding(inputs), atol=1e-6, rtol=1e-5)
    assert torch.isfinite(every).all()


def test_mean_prefix_positions_equal_the_tower_on_the_cut_history() -> None:
    torch.manual_seed(0)
    model = TwoTowerModel(_spec("mean")).eval()
    full = _inputs([[0, 3, 4, 5, 6]])
    every = model.user_embedding_every_position(full)
    cut = _inputs([[0, 0, 0, 3, 4]])  # the history up to position 2, right-aligned
    torch.testing.assert_close(every[0, 2], model.user_embedding(cut)[0], atol=1e-6, rtol=1e-5)


def test_causal_positions_do_not_see_the_future() -> None:
    torch.manual_seed(0)
    model = TwoTowerModel(_spec("causal")).eval()
    a = model.user_embedding_every_position(_inputs([[1, 3, 4, 5, 6]]))
    b = model.user_embedding_every_position(_inputs([[1, 3, 4, 9, 12]]))
    torch.testing.assert_close(a[0, :3], b[0, :3])
    assert not torch.allclose(a[0, 3:], b[0, 3:])


def test_prefix_mean_ignores_padding() -> None:
    vectors = torch.tensor([[[9.0], [1.0], [3.0]]])
    assert prefix_mean(vectors, torch.tensor([[0, 5, 6]]))[0, :, 0].tolist() == [0.0, 1.0, 2.0]


def test_windows_cover_every_target_once_and_align_inputs_with_targets() -> None:
    sequences = Sequences.from_lists([[2, 3, 4, 5, 6, 7, 8], [9], [10, 11], []])
    windows = sequence_windows(sequences, length=3)
    assert windows.users.tolist() == [0, 0, 1 + 1]  # user 0 twice, user 2 once, users 1 and 3 none
    inputs, targets = window_arrays(sequences, windows, 3)
    valid = targets != PAD_INDEX
    assert sorted(targets[valid].tolist()) == [3, 4, 5, 6, 7, 8, 11]
    assert inputs.tolist() == [[5, 6, 7], [2, 3, 4], [PAD_INDEX, PAD_INDEX, 10]]
    assert targets.tolist() == [[6, 7, 8], [3, 4, 5], [PAD_INDEX, PAD_INDEX, 11]]
    assert ((inputs != PAD_INDEX) == valid).all()


def test_bag_draw_hides_some_items_and_never_shows_a_hidden_one() -> None:
    sequences = Sequences.from_lists([list(range(2, 40)), [50], [60, 61, 62]])
    history, owner, items = bag_arrays(sequences, np.array([0, 1, 2]), 8, 0.5, np.random.default_rng(3))
    assert history.shape == (3, 8)
    for row in range(3):
        hidden = set(items[owner == row].tolist())
        shown = set(history[row][history[row] != PAD_INDEX].tolist())
        assert hidden, "every user contributes a target"
        assert not hidden & shown
        assert hidden | shown <= set(sequences.row(row).tolist())
    assert history[1].tolist() == [PAD_INDEX] * 8  # a one-item user: the item is the target


def test_candidate_softmax_masks_accidental_hits_by_hand() -> None:
    users = torch.tensor([[1.0, 0.0]])
    positives = torch.tensor([[1.0, 0.0]])
    candidates = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = candidate_softmax_loss(users, positives, torch.tensor([5]), candidates, torch.tensor([5, 6]), 1.0)
    # The candidate equal to the positive is not a negative: logits [1 (positive), 0 (item 6)].
    expected = -np.log(np.exp(1.0) / (np.exp(1.0) + np.exp(0.0)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope="module")
def interactions(synth_data: SynthSummary) -> pl.DataFrame:
    return pl.read_parquet(synth_data.interactions_path)


@pytest.fixture(scope="module")
def prepared(synth_data: SynthSummary, interactions: pl.DataFrame) -> Prepared:
    return prepare(interactions, pl.read_parquet(synth_data.users_path), None, tiny_config().data)


@pytest.mark.parametrize(
    "overrides",
    [
        ("train.objective=sequence",),
        ("train.objective=sequence", "model.history_encoder=causal", "train.uniform_negatives=64"),
        ("train.objective=bag", "train.uniform_negatives=64"),
        ("train.objective=bag",),
        ("train.objective=mixed", "train.bag_weight=0.3"),
    ],
)
def test_sequence_objectives_learn_and_are_deterministic(
    prepared: Prepared, overrides: tuple[str, ...]
) -> None:
    config = tiny_config("train.epochs=3", "train.window_batch_size=32", *overrides)
    first = train_model(prepared, config)
    assert first.epoch_losses[-1] < first.epoch_losses[0]
    assert all(np.isfinite(first.epoch_losses))
    second = train_model(prepared, config)
    assert first.epoch_losses == second.epoch_losses


def test_the_sequence_objective_needs_an_encoder_with_positions() -> None:
    with pytest.raises(ConfigError, match=r"model\.history_encoder"):
        load_config(None, ["train.objective=sequence", "model.history_encoder=attention"])


def test_early_stopping_keeps_the_best_epoch_and_its_schedule_replays(
    prepared: Prepared, interactions: pl.DataFrame
) -> None:
    config = tiny_config("train.objective=sequence", "train.epochs=12", "train.patience=1", "train.lr_cuts=1")
    parts = split_for(interactions, "llo", 3)
    train_part = prepare(parts.train, None, None, config.data)
    result = train_model(train_part, config, validation=parts.test)
    assert 1 <= result.best_epoch <= len(result.validation)
    assert result.validation[result.best_epoch - 1] == max(result.validation)
    # The returned weights are the best epoch's: evaluating them again gives the best score.
    assert evaluate(result.model, train_part, parts.test, 10)["ndcg@10"] == pytest.approx(
        max(result.validation)
    )
    assert len(result.schedule) == result.best_epoch
    assert result.schedule[0] == config.train.learning_rate
    replay = train_model(train_part, config, schedule=result.schedule)
    assert len(replay.epoch_losses) == result.best_epoch


def test_auto_tries_every_candidate_on_a_validation_split_and_picks_the_best(
    interactions: pl.DataFrame,
) -> None:
    config = tiny_config("train.objective=auto", "train.epochs=4", "train.patience=1", "train.lr_cuts=0")
    selection = select_objective(interactions, None, None, config, "llo")
    assert [c.name for c in selection.candidates] == [name for name, _ in CANDIDATES]
    best = max(selection.candidates, key=lambda c: c.validation_ndcg)
    assert selection.name == best.name
    expected = candidates_of(config)[[n for n, _ in CANDIDATES].index(best.name)][1]
    if expected.train.objective == "linear":  # the winner's served width is chosen after the comparison
        chosen = selection.config.train.linear_tower_rank
        assert chosen in [rank for rank, _ in selection.tower_ranks]
        expected = dataclasses.replace(
            expected, train=dataclasses.replace(expected.train, linear_tower_rank=chosen)
        )
    assert selection.config == expected
    assert selection.epochs == best.best_epoch
    assert json.loads(json.dumps(selection.manifest()))["chosen"] == best.name
    final = fit_selected(prepare(interactions, None, None, config.data), selection)
    assert len(final.epoch_losses) == selection.epochs


def test_auto_probes_every_candidate_then_trains_each_familys_leader_to_convergence(
    interactions: pl.DataFrame,
) -> None:
    config = tiny_config(
        "train.objective=auto", "train.epochs=4", "train.patience=5", "train.auto_probe_epochs=1"
    )
    selection = select_objective(interactions, None, None, config, "rand")
    ran = {c.name: c.epochs_run for c in selection.candidates}
    budget = selection.budget
    assert budget is not None
    assert budget.probe_epochs == 1
    iterative = {n: c for n, c in candidates_of(config) if c.train.objective not in CLOSED_FORM_OBJECTIVES}
    leaders = {leader.name: leader for leader in budget.leaders}
    # The probe: one epoch each (a closed form is done after its one fit) ...
    assert {n: e for n, e in ran.items() if n not in leaders} == {
        name: 1 for name, _ in CANDIDATES if name not in leaders
    }
    # ... then the best iterative candidate of the probe in each family trains on: here to
    # train.epochs, since patience is never exhausted (not converged), within auto_max_s.
    assert {leader.family for leader in budget.leaders} == {"sequence", "set"}
    for leader in budget.leaders:
        assert family(iterative[leader.name]) == leader.family
        probed = [n for n, c in iterative.items() if family(c) == leader.family]
        assert ran[leader.name] == 4
        assert not leader.converged
        assert leader.seconds > 0
        # It led its family's probe (the others kept their probe's figure).
        scores = {c.name: c.validation_ndcg for c in selection.candidates}
        assert max(probed, key=scores.__getitem__) == leader.name
    manifest = json.loads(json.dumps(selection.manifest()))
    assert [leader["name"] for leader in manifest["budget"]["leaders"]] == list(leaders)
    capped = select_objective(
        interactions,
        None,
        None,
        dataclasses.replace(config, train=dataclasses.replace(config.train, auto_max_s=1e-6)),
        "rand",
    )
    # A limit shorter than an epoch: each leader gets one more epoch (whole epochs), no more.
    assert capped.budget is not None
    capped_runs = {c.name: c.epochs_run for c in capped.candidates}
    assert capped.budget.leaders
    assert all(capped_runs[leader.name] == 2 for leader in capped.budget.leaders)


def test_a_run_advanced_in_slices_is_the_run_advanced_at_once(interactions: pl.DataFrame) -> None:
    config = tiny_config("train.objective=sequence", "train.epochs=4", "train.patience=1")
    parts = split_for(interactions, "llo", config.eval.min_interactions)
    prepared = prepare(parts.train, None, None, config.data)
    whole = TrainingRun(prepared, config, validation=parts.test)
    whole.advance()
    sliced = TrainingRun(prepared, config, validation=parts.test)
    while not sliced.done:
        sliced.advance(0.0)
    a, b = whole.finish(), sliced.finish()
    assert a.validation == b.validation
    assert a.schedule == b.schedule
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[name]), name


def test_a_concrete_objective_without_patience_trains_as_configured(interactions: pl.DataFrame) -> None:
    config = tiny_config("train.objective=bag", "train.epochs=3")
    selection = select_objective(interactions, None, None, config, "llo")
    assert selection.schedule is None
    assert selection.epochs == 3
    assert selection.candidates == []


@pytest.mark.parametrize("rank", [2048, 40])
def test_the_linear_objective_ranks_like_the_closed_form(interactions: pl.DataFrame, rank: int) -> None:
    """Full rank: the towers rank every user's unseen items exactly as EASE does; a lower rank
    (randomised SVD) keeps most of its lists."""
    config = tiny_config("train.objective=linear", f"train.linear_rank={rank}", "data.history_length=200")
    # EASE reads a binary matrix, the towers a history: repeated events would weigh an item more.
    once = interactions.unique(["user_id", "item_id"], keep="first", maintain_order=True)
    parts = split_for(once, "rand", 3)
    train_part = prepare(parts.train, None, None, config.data)
    result = train_model(train_part, config)
    assert len(result.epoch_losses) == 1
    spec = result.model.spec
    assert spec.embedding_dim == spec.output_dim == min(rank, train_part.n_items) + 1
    assert (spec.hidden_dims, spec.history_encoder, spec.user_id_embedding) == ((), "mean", False)
    ease = EASE(l2=config.train.linear_l2)
    ease.fit(train_part)
    ours = rank_test_users(two_tower_scores(result.model, train_part), train_part, parts.test, 10)
    theirs = rank_test_users(baseline_scores(ease), train_part, parts.test, 10)
    same = (ours.topk == theirs.topk).mean()
    if rank >= train_part.n_items:
        assert same > 0.99  # float32 ties aside, the same lists
        assert ours.metrics(10)["ndcg@10"] == pytest.approx(theirs.metrics(10)["ndcg@10"], abs=1e-3)
    else:
        assert same > 0.5


def test_factorise_is_exact_at_full_rank_and_near_the_best_low_rank() -> None:
    rng = np.random.default_rng(0)
    weights = (rng.standard_normal((60, 8)) @ rng.standard_normal((8, 60))).astype(np.float32)
    weights += 0.01 * rng.standard_normal((60, 60)).astype(np.float32)
    history, targets = factorise(weights, 100, seed=1)
    np.testing.assert_allclose(history @ targets.T, weights, atol=1e-3)
    history, targets = factorise(weights, 8, seed=1)
    u, s, vt = np.linalg.svd(weights)
    best = np.linalg.norm(weights - (u[:, :8] * s[:8]) @ vt[:8])
    assert np.linalg.norm(weights - history @ targets.T) <= 1.01 * best


def test_unit_targets_keep_the_ranking_of_every_history() -> None:
    rng = np.random.default_rng(0)
    scales = rng.uniform(0.1, 3, (30, 1)).astype(np.float32)
    targets = rng.standard_normal((30, 5)).astype(np.float32) * scales
    unit = to_unit_targets(targets)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    history = rng.standard_normal((7, 5)).astype(np.float32)
    padded = np.concatenate([history, np.zeros((7, 1), np.float32)], axis=1)
    np.testing.assert_array_equal(np.argsort(-(history @ targets.T)), np.argsort(-(padded @ unit.T)))


def test_a_linear_bundle_serves_the_closed_form_lists(synth_data: SynthSummary, tmp_path: Path) -> None:
    """The closed form goes through the ordinary bundle: serving rebuilds the linear towers from the
    manifest and answers a known user with EASE's own top items (seen items excluded)."""
    from serving.recommend.engine import TwoTowerEngine
    from serving.recommend.types import RecommendQuery
    from training.pipeline import train

    once = pl.read_parquet(synth_data.interactions_path).unique(
        ["user_id", "item_id"], keep="first", maintain_order=True
    )
    path = tmp_path / "interactions.parquet"
    once.write_parquet(path)
    config = tiny_config(
        "train.objective=linear",
        "data.history_length=200",
        "eval.protocol=none",
        "tracking.enabled=false",
        "profiles.enabled=false",
    )
    train(config, path, None, None, tmp_path / "bundle")
    engine = TwoTowerEngine.load(tmp_path / "bundle")
    assert engine.bundle.spec.hidden_dims == ()
    assert engine.bundle.spec.output_dim == engine.bundle.spec.embedding_dim == engine.bundle.index.d
    prepared = prepare(once, None, None, config.data)
    ease = EASE(l2=config.train.linear_l2)
    ease.fit(prepared)
    assert ease.weights is not None
    assert ease.user_items is not None
    item_ids = prepared.item_table.get_column("item_id").to_list()
    agree = 0
    users = prepared.user_table.get_column("user_id").to_list()[:20]
    for row, user in enumerate(users):
        scores = np.asarray(ease.user_items[row] @ ease.weights).ravel()
        scores[ease.user_items[row].indices] = -np.inf
        expected = [item_ids[i] for i in np.argsort(-scores, kind="stable")[:5]]
        answer = engine.recommend(RecommendQuery(user, 5))
        assert answer.fallback_reason is None
        agree += [item.item_id for item in answer.items] == expected
    assert agree >= 18  # float32 near-ties aside


def test_decayed_mean_weighs_recent_items_more_and_ignores_padding() -> None:
    vectors = torch.tensor([[[9.0], [1.0], [3.0]], [[5.0], [7.0], [2.0]]])
    history = torch.tensor([[0, 5, 6], [4, 5, 6]])
    torch.testing.assert_close(decayed_mean(vectors, history, 0.0), masked_mean(vectors, history))
    w = float(np.exp(-0.5))
    expected = torch.tensor([[(w * 1 + 3) / (w + 1)], [(w * w * 5 + w * 7 + 2) / (w * w + w + 1)]])
    torch.testing.assert_close(decayed_mean(vectors, history, 0.5), expected)


def test_history_decay_round_trips_and_is_refused_where_it_has_no_meaning() -> None:
    spec = dataclasses.replace(_spec("mean"), history_decay=0.3)
    assert TwoTowerSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    legacy = spec.to_dict()
    del legacy["history_decay"]  # bundles written before the field: a plain mean
    assert TwoTowerSpec.from_dict(legacy).history_decay == 0.0
    with pytest.raises(ValueError, match="history_decay"):
        TwoTowerModel(dataclasses.replace(_spec("causal"), history_decay=0.3))
    with pytest.raises(ConfigError, match=r"model\.history_decay"):
        load_config(None, ["train.objective=sequence", "model.history_decay=0.2"])
    with pytest.raises(ConfigError, match=r"model\.history_decay"):
        load_config(None, ["model.history_decay=-1"])


def test_the_mf_objective_ranks_as_the_fold_in_of_its_factors(interactions: pl.DataFrame) -> None:
    """The user tower folds the item factors in from the history: it ranks as the ridge fold-in
    ``(Y^T Y + reg I)^-1 Y^T p_u`` does (each pair once: the fit sees the binary matrix, the tower the
    history with its repeats), and about as well as ``implicit``'s iALS with its own user factors."""
    config = tiny_config("train.objective=mf", "train.mf_factors=8", "data.history_length=1000")
    once = interactions.unique(["user_id", "item_id"], keep="first", maintain_order=True)
    parts = split_for(once, "rand", 3)
    train_part = prepare(parts.train, None, None, config.data)
    result = train_model(train_part, config)
    assert len(result.epoch_losses) == 1
    assert result.model.spec.output_dim == 9
    assert not result.model.spec.user_id_embedding  # nothing per user: recent items and new users work
    cfg = config.train
    _, items, ridge = fit_factors(
        interaction_matrix(train_part), 8, cfg.mf_regularization, cfg.mf_regularization_exponent, cfg.seed
    )
    y = items.astype(np.float64)
    x = interaction_matrix(train_part, np.float64)
    folded = np.linalg.solve(y.T @ y + ridge * np.eye(8), (x @ y).T).T

    def fold_in_scores(rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        scores: npt.NDArray[np.float64] = folded[rows] @ y.T
        return scores

    ours = rank_test_users(two_tower_scores(result.model, train_part), train_part, parts.test, 10)
    fold_in = rank_test_users(batched(fold_in_scores), train_part, parts.test, 10)
    assert (ours.topk == fold_in.topk).mean() > 0.99
    als = IALS(factors=8, seed=config.train.seed)
    als.fit(train_part)
    theirs = rank_test_users(baseline_scores(als), train_part, parts.test, 10)
    assert ours.metrics(10)["ndcg@10"] >= 0.9 * theirs.metrics(10)["ndcg@10"]


def test_each_mf_half_step_is_every_rows_own_ridge_solution() -> None:
    """The shared eigendecomposition solves each row with its own frequency-scaled ridge
    ``reg * (count + other side's size) ** exponent``: the last item factors are, row by row, the
    ridge solution given the user factors (checked with one solve per row)."""
    rng = np.random.default_rng(0)
    matrix = sp.csr_matrix((rng.random((60, 25)) < 0.2).astype(np.float32))
    users, items, ridge = fit_factors(matrix, 4, 0.05, 1.0, 0)
    counts = np.diff(matrix.tocsc().indptr)
    x = users.astype(np.float64)
    for i in range(25):
        own = 0.05 * (counts[i] + 60)
        expected = np.linalg.solve(x.T @ x + own * np.eye(4), x.T @ matrix[:, [i]].toarray().ravel())
        np.testing.assert_allclose(items[i], expected, rtol=1e-4, atol=1e-5)
    assert ridge == pytest.approx(0.05 * (matrix.sum() / 60 + 25), rel=1e-5)  # at the mean user


def test_an_mf_bundle_keeps_the_real_time_contract(synth_data: SynthSummary, tmp_path: Path) -> None:
    """Recent items move a known user's list; an unknown user with recent items gets a list made from
    them (not the fallback, not all-zero scores, different for different items)."""
    from serving.recommend.engine import TwoTowerEngine
    from training.pipeline import train

    config = tiny_config(
        "train.objective=mf",
        "train.mf_factors=8",
        # The frequency-scaled ridge: the default fixed ridge of 10 collapses this 60-item
        # catalogue's factors to one direction (tests/test_scalable_objectives.py).
        "train.mf_regularization=0.01",
        "train.mf_regularization_exponent=1.0",
        "data.history_length=1000",
        "eval.protocol=none",
        "tracking.enabled=false",
        "profiles.enabled=false",
    )
    train(config, synth_data.interactions_path, None, None, tmp_path / "bundle")
    engine = TwoTowerEngine.load(tmp_path / "bundle")
    users = engine.bundle.users.get_column("user_id").to_list()[:40]
    # Long synthetic histories: 5 items among hundreds (ml-100k: BENCHMARKS.md).
    assert lists_moved_by_recent_items(engine, users, 5) >= 0.5 * len(users)
    assert unknown_user_lists(engine, 3) >= 4


def test_the_linear_towers_keep_the_narrowest_rank_that_holds_the_validation_figure(
    interactions: pl.DataFrame,
) -> None:
    def select(keep: float) -> Selection:
        config = tiny_config("train.objective=linear", "train.patience=1", f"train.linear_rank_keep={keep}")
        return select_objective(interactions, None, None, config, "llo")

    lenient, strict = select(0.5), select(1.0)
    *narrower, (full, reference) = lenient.tower_ranks
    assert narrower, "the tiny catalogue has room for at least one narrower rank"
    assert [r for r, _ in narrower] == [32 * 2**i for i in range(len(narrower))]
    assert lenient.config.train.linear_tower_rank in dict(lenient.tower_ranks)
    # Asking to keep more never chooses a narrower rank (same data, same fit, same validation).
    assert lenient.config.train.linear_tower_rank <= strict.config.train.linear_tower_rank
    manifest = json.loads(json.dumps(lenient.manifest()))
    assert manifest["tower_ranks"][-1] == {"rank": full, "validation_ndcg": reference}
    final = fit_selected(prepare(interactions, None, None, lenient.config.data), lenient).model
    assert final.spec.output_dim == lenient.config.train.linear_tower_rank + 1  # plus the unit coordinate


def test_a_tower_rank_keeps_the_leading_columns_of_the_same_factorisation(prepared: Prepared) -> None:
    wide = tiny_config("train.objective=linear", "train.linear_rank=48")
    narrow = tiny_config("train.objective=linear", "train.linear_rank=48", "train.linear_tower_rank=16")
    wide_model, narrow_model = train_model(prepared, wide).model, train_model(prepared, narrow).model
    assert (wide_model.spec.output_dim, narrow_model.spec.output_dim) == (49, 17)
    wide_rows = wide_model.user_tower.item_ids.weight.detach().numpy()
    narrow_rows = narrow_model.user_tower.item_ids.weight.detach().numpy()
    np.testing.assert_allclose(narrow_rows[:, :16], wide_rows[:, :16], rtol=1e-6)


def test_a_judge_decides_the_linear_rank_by_what_is_served(interactions: pl.DataFrame) -> None:
    """A blend's linear part is judged by the blend (training.fit.auto._blend_judge): whatever the
    judge scores alike keeps the narrowest rank; a judge that loses with width lost keeps the full."""
    config = tiny_config("train.objective=linear")
    parts = split_for(interactions, "llo", 3)
    prepared = prepare(parts.train, None, None, config.data)
    full = min(config.train.linear_rank, prepared.n_items)
    seen: list[int] = []

    def alike(model: TwoTowerModel) -> npt.NDArray[np.float64]:
        seen.append(model.spec.output_dim)
        return np.full(40, 0.5)

    rank, tried = choose_tower_rank(prepared, config, parts.test, alike)
    assert (rank, seen) == (32, [full + 1, 33])  # the full rank is the reference, then the ladder
    assert tried == [(32, 0.5), (full, 0.5)]

    def narrow_loses(model: TwoTowerModel) -> npt.NDArray[np.float64]:
        return np.linspace(0.4, 0.6, 40) * (model.spec.output_dim / (full + 1))

    assert choose_tower_rank(prepared, config, parts.test, narrow_loses)[0] == full
