"""auto's guard: a quarter of the validation users held out in the other shape of future, and the
chosen model keeps the guard's floor there."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import polars as pl
import pytest
from conftest import tiny_config

from training.data.synth import SynthSummary
from training.evaluation import split_for
from training.fit.auto import select_objective
from training.fit.guard import GUARD_SHARE, Guard, guarded_split


@pytest.fixture(scope="module")
def interactions(synth_data: SynthSummary) -> pl.DataFrame:
    """Each (user, item) pair once: the synthetic log repeats pairs, and leave-last-out drops a
    last item seen before, which would leave too few validation users for a guard."""
    frame = pl.read_parquet(synth_data.interactions_path).sort("timestamp", maintain_order=True)
    return frame.unique(["user_id", "item_id"], keep="first", maintain_order=True)


def _pairs(frame: pl.DataFrame) -> set[tuple[str, str, object]]:
    return set(frame.select("user_id", "item_id", "timestamp").iter_rows())


@pytest.mark.parametrize(("protocol", "shape"), [("llo", "rand"), ("rand", "llo")])
def test_the_guard_users_are_split_again_in_the_other_shape(
    interactions: pl.DataFrame, protocol: str, shape: str
) -> None:
    parts = split_for(interactions, protocol, 3)  # type: ignore[arg-type]
    guarded = guarded_split(parts, protocol, 3, seed=7)
    assert guarded is not None
    assert guarded.shape == shape
    validation_users = parts.test.get_column("user_id").n_unique()
    assert guarded.users == round(GUARD_SHARE * validation_users)
    guard_users = set(guarded.guard.get_column("user_id").unique().to_list())
    # Each user is validated on one shape; the guard's rows are never trained on.
    assert guard_users
    assert not guard_users & set(guarded.validation.get_column("user_id").to_list())
    assert not _pairs(guarded.guard) & _pairs(guarded.train)
    # Nothing is lost or seen twice: train + both validations are the original rows.
    assert guarded.train.height + guarded.validation.height + guarded.guard.height == interactions.height
    assert _pairs(guarded.train) | _pairs(guarded.validation) | _pairs(guarded.guard) == _pairs(interactions)
    if shape == "llo":  # one held-out item per guard user: their last
        assert guarded.guard.get_column("user_id").is_unique().all()
    else:  # a random quarter of each guard user's items
        assert guarded.guard.height > len(guard_users)


def test_the_time_protocol_has_no_guard(interactions: pl.DataFrame) -> None:
    assert guarded_split(split_for(interactions, "time", 3), "time", 3, seed=7) is None


def test_auto_chooses_a_model_that_keeps_the_guard_floor(interactions: pl.DataFrame) -> None:
    config = tiny_config(
        "train.objective=auto", "train.epochs=2", "train.patience=5", "train.auto_probe_epochs=1"
    )
    selection = select_objective(interactions, None, None, config, "llo")
    record = json.loads(json.dumps(selection.manifest()))
    guard = record["guard"]
    assert guard["shape"] == "rand"
    assert guard["keep"] == 0.95
    assert guard["users"] > 0
    scores = {c["name"]: c["guard_ndcg"] for c in record["candidates"]}
    assert scores == guard["ndcg"]
    # The bar is the best baseline's figure there, and the baseline itself always keeps it.
    assert guard["baseline"] == max(("linear", "mf", "elsa"), key=lambda n: scores[n])
    assert guard["floor"] == pytest.approx(0.95 * scores[guard["baseline"]])
    assert guard["eligible"][guard["baseline"]]
    if selection.blend is None:
        assert guard["eligible"][selection.name]
        # ... and it is the best on validation among those that keep it.
        eligible = [c for c in record["candidates"] if guard["eligible"][c["name"]]]
        assert selection.name == max(eligible, key=lambda c: c["validation_ndcg"])["name"]
    else:
        assert selection.blend.guard_ndcg is not None
    off = select_objective(
        interactions,
        None,
        None,
        dataclasses.replace(config, train=dataclasses.replace(config.train, auto_guard_keep=0.0)),
        "llo",
    )
    assert off.guard is None
    assert off.manifest()["guard"] is None


def test_a_collapse_is_out_but_a_shortfall_within_noise_is_not() -> None:
    rng = np.random.default_rng(0)
    baseline = rng.uniform(0.2, 0.8, size=400)
    guard = Guard(
        "rand", pl.DataFrame(), keep=0.9, users=400, per_user={"linear": baseline}, baseline="linear"
    )
    assert not guard.keeps(0.5 * baseline)  # a collapse: far below 0.9x on every user
    assert guard.keeps(0.88 * baseline + rng.normal(0, 0.2, size=400))  # 0.88x, well within noise
    assert guard.keeps(baseline)
