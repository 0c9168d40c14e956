"""Blends of two trained candidates: one two-tower model, chosen on held-out validation users, served."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import tiny_config

from serving.bundle.format import write_bundle
from serving.model.embedding import embed_items, embed_users
from serving.model.towers import TwoTowerModel, TwoTowerSpec
from serving.recommend.engine import TwoTowerEngine
from serving.recommend.types import RecommendQuery
from training.data.synth import SynthSummary
from training.evaluation import split_for
from training.evaluation.evaluate import rank_test_users, two_tower_scores
from training.features import prepare
from training.fit.auto import Partner, Selection, _blend_judge, fit_selected, select_objective
from training.fit.blend import BlendChoice, blended, evaluate_blend, score_spread
from training.fit.trainer import train_model
from training.pipeline import bundle_contents


@pytest.fixture(scope="module")
def interactions(synth_data: SynthSummary) -> pl.DataFrame:
    return pl.read_parquet(synth_data.interactions_path)


def _selection(share: float) -> Selection:
    linear = tiny_config("train.objective=linear", "data.history_length=200", "train.linear_tower_rank=16")
    sequence = tiny_config(
        "train.objective=sequence",
        "model.history_encoder=causal",
        "model.head=tied",
        "model.user_id_embedding=false",
        "train.epochs=2",
    )
    choice = BlendChoice(("linear", "sasrec"), share, 0.0, 0.0, 0.0)
    return Selection(
        config=linear, name="linear", schedule=None, blend=choice, partner=Partner("sasrec", sequence, None)
    )


def test_a_blend_scores_the_weighted_sum_of_its_parts_and_serves(
    interactions: pl.DataFrame, synth_data: SynthSummary, tmp_path: Path
) -> None:
    selection = _selection(0.3)
    prepared = prepare(interactions, None, None, selection.config.data)
    result = fit_selected(prepared, selection)
    model = result.model
    assert model.spec.head == "blend"
    assert model.spec.history_length == 200  # the longest part's; each part reads its own
    parts = [train_model(prepared, selection.config), train_model(prepared, selection.partner.config)]  # type: ignore[union-attr]
    scales = [score_spread(p.model, prepared) for p in parts]
    rows = np.arange(20, dtype=np.int64)
    scores = [
        embed_users(p.model, prepared.user_features, prepared.sequences, rows)
        @ embed_items(p.model, prepared.item_features).T
        for p in parts
    ]
    expected = (0.7 * scores[0] / scales[0] + 0.3 * scores[1] / scales[1]) / np.sqrt(2)
    got = (
        embed_users(model, prepared.user_features, prepared.sequences, rows)
        @ embed_items(model, prepared.item_features).T
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # An ordinary bundle: the spec round-trips, the index holds unit vectors, serving answers.
    assert TwoTowerSpec.from_dict(json.loads(json.dumps(model.spec.to_dict()))) == model.spec
    assembled = bundle_contents(
        model, prepared, selection.config.index, config=selection.config.to_dict(), metrics={}, info={}
    )
    write_bundle(tmp_path / "b", assembled.contents)
    engine = TwoTowerEngine.load(tmp_path / "b")
    np.testing.assert_allclose(np.linalg.norm(engine.item_vectors, axis=1), 1.0, atol=1e-4)
    user = engine.bundle.users.get_column("user_id")[0]
    items = engine.bundle.item_encoder.ids.tokens.to_list()
    plain = engine.recommend(RecommendQuery(user, 10))
    assert plain.fallback_reason is None
    moved = engine.recommend(RecommendQuery(user, 10, recent_item_ids=tuple(items[:5])))
    assert [i.item_id for i in moved.items] != [i.item_id for i in plain.items]
    unknown = engine.recommend(RecommendQuery("never-seen", 10, recent_item_ids=tuple(items[5:8])))
    assert unknown.fallback_reason is None


def test_a_model_blended_with_itself_is_not_kept(interactions: pl.DataFrame) -> None:
    """Nothing to gain from a copy: the held-out gain is zero, not above noise."""
    config = tiny_config("train.objective=linear", "data.history_length=200")
    parts = split_for(interactions, "llo", 3)
    prepared = prepare(parts.train, None, None, config.data)
    model = train_model(prepared, config).model
    evaluated = evaluate_blend(prepared, parts.test, 10, ("a", model), ("b", model))
    assert evaluated is not None
    assert not evaluated.kept


def test_auto_records_whether_a_blend_won(interactions: pl.DataFrame) -> None:
    config = tiny_config(
        "train.objective=auto", "train.epochs=2", "train.patience=5", "train.auto_probe_epochs=1"
    )
    selection = select_objective(interactions, None, None, config, "llo")
    record = json.loads(json.dumps(selection.manifest()))
    if selection.blend is None:
        assert record["blend"] is None
    else:
        assert record["blend"]["partner"] == selection.partner.name  # type: ignore[union-attr]
        assert record["blend"]["gain_lower_bound"] > 0
    off = select_objective(
        interactions,
        None,
        None,
        dataclasses.replace(config, train=dataclasses.replace(config.train, auto_blend=False)),
        "llo",
    )
    assert off.blend is None


def test_a_blends_linear_part_is_judged_by_the_blend_fit_selected_would_serve(
    interactions: pl.DataFrame,
) -> None:
    """auto's judge for a blend's linear rank scores the blend joined as fit_selected joins it, with
    the linear part on its own side (first or second), not the linear model alone."""
    selection = _selection(0.3)
    parts = split_for(interactions, "llo", 3)
    prepared = prepare(parts.train, None, None, selection.config.data)
    linear = train_model(prepared, selection.config).model
    sequence = train_model(prepared, selection.partner.config).model  # type: ignore[union-attr]

    def served(choice: BlendChoice, first: TwoTowerModel, second: TwoTowerModel) -> np.ndarray:
        weights = choice.weights((score_spread(first, prepared), score_spread(second, prepared)))
        model = blended(first, second, weights)
        return rank_test_users(two_tower_scores(model, prepared), prepared, parts.test, 10).per_user_ndcg(10)

    first = BlendChoice(("linear", "sasrec"), 0.3, 0.0, 0.0, 0.0)
    judge = _blend_judge(prepared, parts.test, 10, first, sequence, linear_first=True)
    np.testing.assert_array_equal(judge(linear), served(first, linear, sequence))
    second = BlendChoice(("sasrec", "linear"), 0.2, 0.0, 0.0, 0.0)
    judge = _blend_judge(prepared, parts.test, 10, second, sequence, linear_first=False)
    np.testing.assert_array_equal(judge(linear), served(second, sequence, linear))
    alone = rank_test_users(two_tower_scores(linear, prepared), prepared, parts.test, 10).per_user_ndcg(10)
    assert not np.array_equal(judge(linear), alone)
