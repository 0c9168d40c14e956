"""``recsys tune``: validation split only, child runs per trial, a best config that train accepts."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from conftest import tiny_config
from mlflow.tracking import MlflowClient

from training.cli.main import build_parser
from training.config import ConfigError, load_config
from training.data.io import load_dataset
from training.data.synth import SynthSummary
from training.evaluation import split
from training.fit.tune import Dimension, tune, validation_split


def test_validation_split_never_contains_test_interactions(synth_data: SynthSummary) -> None:
    frame = pl.read_parquet(synth_data.interactions_path)
    config = tiny_config()
    fit, validation = validation_split(frame, config)
    test = split(frame, "llo", min_interactions=config.eval.min_interactions).test
    keys = ["user_id", "item_id", "timestamp"]
    assert fit.join(test, on=keys, how="semi").height == 0
    assert validation.join(test, on=keys, how="semi").height == 0
    assert validation.height > 0
    assert fit.height + validation.height < frame.height
    with pytest.raises(ConfigError, match=r"eval\.protocol"):
        validation_split(frame, tiny_config("eval.protocol=none"))


def test_tune_logs_child_runs_and_writes_a_config_train_accepts(
    synth_data: SynthSummary, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow writes artifacts relative to the working directory
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = tiny_config("train.epochs=1", f'tracking.tracking_uri="{uri}"', "tracking.experiment=tune")
    data = load_dataset(synth_data.interactions_path, synth_data.users_path, synth_data.items_path)
    space = {
        "train.learning_rate": Dimension(1e-3, 1e-2, log=True),
        "model.history_encoder": Dimension(choices=("mean", "attention")),
    }
    out = tmp_path / "best.toml"

    result = tune(config, data, out, trials=3, space=space)

    assert len(result.trials) == 3
    best_value = result.best.metrics["ndcg@10"]
    assert best_value == max(t.metrics["ndcg@10"] for t in result.trials)
    loaded = load_config(out)  # `recsys train --config best.toml` takes it as it is
    assert loaded.train.learning_rate == pytest.approx(result.best.values["train.learning_rate"])
    assert loaded.model.history_encoder == result.best.values["model.history_encoder"]
    assert loaded.model.embedding_dim == 16  # the base config's other values are kept
    assert f"{best_value:.4f}" in out.read_text().splitlines()[0]

    client = MlflowClient(tracking_uri=uri)
    assert result.run_id is not None
    parent = client.get_run(result.run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    assert len(children) == 3
    assert all("ndcg_at_10" in run.data.metrics for run in children)
    assert parent.data.metrics["best_ndcg_at_10"] == pytest.approx(best_value)

    with pytest.raises(FileExistsError):
        tune(config, data, out, trials=1, space=space)


def test_tune_rejects_a_bad_search_space(synth_data: SynthSummary, tmp_path: Path) -> None:
    data = load_dataset(synth_data.interactions_path)
    config = tiny_config("tracking.enabled=false")
    with pytest.raises(ConfigError, match=r"model\.temperature"):
        tune(config, data, tmp_path / "x.toml", trials=1, space={"model.temperature": Dimension(-1.0, 0.5)})
    with pytest.raises(ConfigError, match=r"train\.nope"):
        tune(config, data, tmp_path / "x.toml", trials=1, space={"train.nope": Dimension(0.0, 1.0)})
    assert not (tmp_path / "x.toml").exists()


def test_cli_registers_tune() -> None:
    args = build_parser().parse_args(["tune", "--data", "d", "--out", "o.toml", "--trials", "5"])
    assert args.trials == 5
    assert args.func.__name__ == "cmd_tune"
