"""The sharded path's held-out split and early stopping, in one process (rank 0 of 1) on real shards.

* The holdout carves the same test rows as single-process training's split (every user sampled),
  and training never reads a held-out row (nor, with ``time``, any event after the cut).
* Early stopping: the run stops at a plateau and returns the best epoch's weights.
(The 2-rank run, with the figures in the bundle and MLflow: tests/test_distributed.py.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from serving.model.features import FIRST_TOKEN_INDEX
from training.config import Config, load_config
from training.data.io import load_dataset
from training.data.shards import PreparedShards, open_prepared
from training.data.stream_prepare import prepare_shards
from training.data.synth import SynthConfig, synthesize
from training.evaluation import split_for
from training.evaluation.evaluate import evaluate
from training.fit.distributed import SINGLE, ShardedTraining
from training.fit.shard_holdout import carve_holdout

SMALL_MODEL = (
    "train.progress=false",
    "train.device=cpu",
    "train.objective=interaction",
    "train.batch_size=64",
    "model.embedding_dim=16",
    "model.output_dim=16",
    "model.hidden_dims=[32]",
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PreparedShards]:
    out = tmp_path_factory.mktemp("synth")
    synthesize(SynthConfig(users=150, items=50, events=3000, seed=3), out)
    prepared = out / "prepared"
    prepare_shards(out / "interactions.parquet", None, None, prepared, load_config(None, []).data, shards=3)
    return out, open_prepared(prepared)


def _config(*overrides: str) -> Config:
    return load_config(None, [*SMALL_MODEL, *overrides])


def _pairs(frame: pl.DataFrame) -> set[tuple[str, str]]:
    return set(frame.select("user_id", "item_id").iter_rows())


@pytest.mark.parametrize("protocol", ["llo", "rand"])
def test_holdout_of_every_user_is_the_single_process_test_split(
    synth: tuple[Path, PreparedShards], protocol: str
) -> None:
    root, data = synth
    config = _config(f"eval.protocol={protocol}", "train.patience=0")
    holdout = carve_holdout(data, config)
    assert holdout is not None
    assert len(holdout.users) == data.entities.n_users
    test = holdout.test_data(data.entities)
    assert test is not None
    single = split_for(load_dataset(root / "interactions.parquet").interactions, protocol, 3)  # type: ignore[arg-type]
    if protocol == "llo":  # the same rows (rand's draw depends on row order, which differs)
        assert _pairs(test[1]) == _pairs(single.test)
    else:
        assert abs(test[1].height - single.test.height) <= 0.05 * single.test.height


@pytest.mark.parametrize("protocol", ["llo", "time"])
def test_training_reads_no_held_out_row(synth: tuple[Path, PreparedShards], protocol: str) -> None:
    _, data = synth
    holdout = carve_holdout(data, _config(f"eval.protocol={protocol}"), limit=60)
    assert holdout is not None
    assert len(holdout.users) == 60
    assert holdout.validation.height > 0
    assert holdout.test.height > 0
    trained = data.prepared(range(data.shards), holdout.training_rows)
    seqs = trained.sequences
    for frame in (holdout.test, holdout.validation):
        for user, item in frame.select("user_index", "item_index").iter_rows():
            row = user - FIRST_TOKEN_INDEX
            assert item not in seqs.items[seqs.indptr[row] : seqs.indptr[row + 1]]
    # A sampled user's trained history is exactly its training rows, in time order.
    user = int(holdout.users[0])
    expected = holdout.trained.filter(pl.col("user_index") == user).get_column("item_index").to_list()
    row = user - FIRST_TOKEN_INDEX
    assert seqs.items[seqs.indptr[row] : seqs.indptr[row + 1]].tolist() == expected
    others = pl.concat([data.read_shard(s) for s in range(data.shards)]).filter(
        ~pl.col("user_index").is_in(pl.Series(holdout.users).implode())
    )
    if protocol == "time":  # every event after the cut is held out, whoever's it is
        assert holdout.cut is not None
        assert others.filter(pl.col("timestamp") > holdout.cut).height > 0
        others = others.filter(pl.col("timestamp") <= holdout.cut)
    assert trained.sequences.items.size == others.height + holdout.trained.height


def test_early_stopping_keeps_the_best_epoch(synth: tuple[Path, PreparedShards]) -> None:
    _, data = synth
    config = _config("train.patience=1", "train.lr_cuts=0", "train.epochs=40", "train.learning_rate=0.05")
    holdout = carve_holdout(data, config)
    assert holdout is not None
    result = ShardedTraining(data, config, SINGLE, "cpu", holdout=holdout).run()
    scores = result.validation
    assert 2 <= len(scores) < 40  # stopped at the first epoch without a better score
    assert scores[-1] <= max(scores[:-1])
    assert result.best_epoch == int(np.argmax(scores)) + 1
    assert len(result.schedule) == result.best_epoch
    validation = holdout.validation_data(data.entities)
    assert validation is not None
    again = evaluate(result.model, validation[0], validation[1], config.eval.k)["ndcg@10"]
    assert again == pytest.approx(max(scores), abs=1e-6)  # the best epoch's weights, not the last's


def test_a_schedule_replays_its_epochs_without_validation(synth: tuple[Path, PreparedShards]) -> None:
    _, data = synth
    config = _config("train.epochs=40")
    result = ShardedTraining(data, config, SINGLE, "cpu", schedule=[0.01, 0.005]).run(max_steps=2)
    assert len(result.epoch_losses) == 2
    assert result.validation == []
    assert result.schedule == [0.01, 0.005]
