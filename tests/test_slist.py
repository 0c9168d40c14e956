"""The next-item closed form (``train.linear_model = "slist"``): its rows, what it learns that EASE
cannot, its configuration, and its bundle's serving contract."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import tiny_config
from realtime_contract import lists_moved_by_recent_items, unknown_user_lists

from training.config import ConfigError
from training.data.synth import SynthSummary
from training.evaluation.evaluate import rank_test_users, two_tower_scores
from training.features import Prepared, prepare
from training.fit.auto import with_overrides
from training.fit.linear.linear_task import LinearTask
from training.fit.linear.slist import next_item_rows, slist_weights

CYCLE = 12
"""Items of the synthetic cycle: item ``i`` is always followed by item ``i + 1`` (mod ``CYCLE``)."""


def _cycle_walks(users: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(training walks, each walk's next item): every user walks 3 to 8 steps along the cycle from a
    random start, so no item repeats and the next item is unseen, but it follows from the last one
    alone; a bag of the walk's items points as much to the item before its start."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str, int]] = []
    nexts: list[tuple[str, str]] = []
    for user in range(users):
        start, length = int(rng.integers(CYCLE)), int(rng.integers(3, 9))
        walk = [(start + step) % CYCLE for step in range(length + 1)]
        rows += [(f"u{user}", f"i{item}", time) for time, item in enumerate(walk[:-1])]
        nexts.append((f"u{user}", f"i{walk[-1]}"))
    schema = {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64}
    train = pl.DataFrame(rows, schema=schema, orient="row")
    return train, pl.DataFrame(nexts, schema=["user_id", "item_id"], orient="row")


def _hit_rate_at_1(model: str, train: pl.DataFrame, truth: pl.DataFrame) -> float:
    config = tiny_config("train.objective=linear", f"train.linear_model={model}", "data.history_length=50")
    prepared = prepare(train, None, None, config.data)
    task = LinearTask(prepared, config)
    task.fit()
    ranking = rank_test_users(two_tower_scores(task.model, prepared), prepared, truth, 1)
    return float(ranking.metrics(1)["hit_rate@1"])


def test_slist_ranks_the_true_next_item_first_where_ease_cannot_tell_the_ends_of_a_walk() -> None:
    """Plain mean history for both (``model.history_decay = 0``): the difference is the closed form."""
    train, truth = _cycle_walks(300, seed=0)
    slist = _hit_rate_at_1("slist", train, truth)
    ease = _hit_rate_at_1("ease", train, truth)
    assert slist >= 0.95
    assert ease <= 0.75  # the item before the walk's start scores alike
    assert slist > ease + 0.2


def test_next_item_rows_are_recency_weighted_prefixes_and_what_follows() -> None:
    train = pl.DataFrame(
        {"user_id": ["u"] * 3, "item_id": ["a", "b", "c"], "timestamp": [0, 1, 2]},
        schema={"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64},
    )
    prepared = prepare(train, None, None, tiny_config().data)
    column = {token: row for row, token in enumerate(prepared.item_encoder.ids.tokens.to_list())}
    prefix, targets = next_item_rows(prepared, decay=np.log(2), longest=10)
    a, b, c = column["a"], column["b"], column["c"]
    dense_prefix, dense_targets = prefix.toarray(), targets.toarray()
    # Position 0: prefix [a], next b then c (c half as much); position 1: prefix b (2/3) + a (1/3).
    np.testing.assert_allclose(dense_prefix[0, [a, b, c]], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(dense_targets[0, [a, b, c]], [0.0, 1.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(dense_prefix[1, [a, b, c]], [1 / 3, 2 / 3, 0.0], atol=1e-6)
    np.testing.assert_allclose(dense_targets[1, [a, b, c]], [0.0, 0.0, 1.0], atol=1e-6)
    assert dense_prefix[2].sum() == dense_targets[2].sum() == 0  # the last position predicts nothing
    # The window stops where the weight falls below a thousandth: one place at decay 10.
    short, _ = next_item_rows(prepared, decay=10.0, longest=10)
    assert short.toarray()[1, a] == 0
    assert short.toarray()[1, b] == 1


def test_slist_weights_have_a_zero_diagonal_and_refuse_a_catalogue_too_large(
    synth_data: SynthSummary,
) -> None:
    prepared: Prepared = prepare(
        pl.read_parquet(synth_data.interactions_path), None, None, tiny_config().data
    )
    weights = slist_weights(prepared, alpha=0.5, decay=0.5, l2=10.0, longest=50, max_items=10_000)
    assert weights.shape == (prepared.n_items, prepared.n_items)
    assert weights.dtype == np.float32
    assert weights.flags.c_contiguous
    assert not weights.diagonal().any()
    assert np.isfinite(weights).all()
    with pytest.raises(ValueError, match="linear_max_items"):
        slist_weights(prepared, 0.5, 0.5, 10.0, 50, max_items=prepared.n_items - 1)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.linear_model=slim", "train.linear_model"),
        ("train.slist_alpha=1.5", "train.slist_alpha"),
        ("train.slist_decay=-1", "train.slist_decay"),
        ("train.slist_l2=0", "train.slist_l2"),
    ],
)
def test_bad_slist_settings_are_refused_naming_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(field)):
        tiny_config("train.objective=linear", override)


def test_an_unknown_linear_model_is_refused_after_overrides_too() -> None:
    """Overrides replaced in code (``auto``'s candidates) are validated as well as parsed ones."""
    with pytest.raises(ConfigError, match=r"train\.linear_model"):
        with_overrides(tiny_config(), {"train": {"linear_model": "slim"}})


def test_an_slist_bundle_keeps_the_real_time_contract(synth_data: SynthSummary, tmp_path: Path) -> None:
    """Through the ordinary bundle: recent items move a known user's list, and an unknown user with
    recent items gets a list made from them."""
    from serving.recommend.engine import TwoTowerEngine
    from training.pipeline import train

    config = tiny_config(
        "train.objective=linear",
        "train.linear_model=slist",
        "model.history_decay=0.5",
        "data.history_length=200",
        "eval.protocol=none",
        "tracking.enabled=false",
        "profiles.enabled=false",
    )
    train(config, synth_data.interactions_path, None, None, tmp_path / "bundle")
    engine = TwoTowerEngine.load(tmp_path / "bundle")
    assert engine.bundle.spec.hidden_dims == ()
    assert engine.bundle.spec.history_decay == 0.5
    users = engine.bundle.users.get_column("user_id").to_list()[:30]
    # The most recent items weigh most: they move nearly every list.
    assert lists_moved_by_recent_items(engine, users, 3) >= 0.8 * len(users)
    assert unknown_user_lists(engine, 2) >= 4
