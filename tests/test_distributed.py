"""Data-parallel training with real gloo processes on CPU (no mocks).

* The N-rank loss is the single-process objective: 2 ranks, each with half of a global batch,
  all-gathered item embeddings and DDP's gradient averaging, give the gradients of 1 process on the
  whole batch (this file re-runs itself as the rank processes); so does ELSA's item matrix.
* ``recsys train --nproc 2`` streams, trains on 2 ranks and writes one bundle (rank 0), registered.
* A worker that dies fails the run naming its rank; nothing is written.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from training.cli.main import main
from training.config import Config, DataConfig, load_config
from training.data.stream_prepare import prepare_shards
from training.data.synth import SynthConfig, synthesize
from training.features import Prepared, prepare
from training.fit.auto import with_overrides
from training.fit.distributed import RankInfo, _StepLoss, per_rank_config
from training.fit.interaction_task import InteractionTask
from training.fit.linear.elsa_task import ElsaTask
from training.sharded_pipeline import DistributedTrainingError, ShardedInputs, launch_training

GLOBAL_BATCH = 24
KEY_ENV = "RECSYS_TEST_ID_KEY"
WORKER_OVERRIDES = (
    "train.progress=false",
    "train.device=cpu",
    "model.embedding_dim=16",
    "model.output_dim=16",
    "model.hidden_dims=[32]",
)


def _tiny() -> tuple[Prepared, Config]:
    """A deterministic tiny data set and a model without randomness in the step (no dropout, in-batch
    negatives only: the part that must cross the ranks)."""
    rng = np.random.default_rng(0)
    frame = pl.DataFrame(
        {
            "user_id": [f"u{u}" for u in rng.integers(0, 12, 200)],
            "item_id": [f"i{i}" for i in rng.integers(0, 40, 200)],
            "timestamp": np.arange(200, dtype=np.int64),
        }
    )
    config = load_config(
        None,
        [
            "train.objective=interaction",
            f"train.batch_size={GLOBAL_BATCH}",
            "train.uniform_negatives=0",
            "train.others_history_share=0.0",
            "train.device=cpu",
            "model.dropout=0.0",
            "model.id_dropout=0.0",
            "model.embedding_dim=8",
            "model.output_dim=8",
            "model.hidden_dims=[16]",
        ],
    )
    return prepare(frame, None, None, DataConfig()), config


def _gradients(info: RankInfo) -> dict[str, torch.Tensor]:
    """Gradients after one step on this rank's part of the global batch (the whole batch for 1 rank)."""
    prepared, config = _tiny()
    rank_config = per_rank_config(config, info.world_size)
    task = InteractionTask(prepared, rank_config)
    task.negatives.expect_draws(prepared.popularity, len(task), info.world_size)
    size = GLOBAL_BATCH // info.world_size
    positions = np.arange(info.rank * size, (info.rank + 1) * size, dtype=np.int64)
    module: torch.nn.Module = _StepLoss(task, info)
    if info.world_size > 1:
        module = torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)
    task.model.train()
    loss = module(task.build(positions), torch.tensor(1.0))
    loss.backward()
    return {n: p.grad.clone() for n, p in task.model.named_parameters() if p.grad is not None}


ELSA_USERS = 12


def _elsa_gradients(info: RankInfo) -> dict[str, torch.Tensor]:
    """The ELSA item matrix's gradient after one step on this rank's half of 12 users (all 12 for 1)."""
    prepared, config = _tiny()
    config = with_overrides(
        config, {"train": {"objective": "elsa", "elsa_rank": 8, "elsa_batch_size": ELSA_USERS}}
    )
    task = ElsaTask(prepared, per_rank_config(config, info.world_size))
    size = ELSA_USERS // info.world_size
    positions = np.arange(info.rank * size, (info.rank + 1) * size, dtype=np.int64)
    module: torch.nn.Module = _StepLoss(task, info)
    if info.world_size > 1:
        module = torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)
    loss = module(task.build(positions), torch.tensor(1.0))
    loss.backward()
    assert task.weights.grad is not None
    return {"weights": task.weights.grad.clone()}


GRADIENTS = {"interaction": _gradients, "elsa": _elsa_gradients}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("objective", sorted(GRADIENTS))
def test_two_gloo_ranks_take_the_gradient_of_one_process_on_the_global_batch(
    tmp_path: Path, objective: str
) -> None:
    port = _free_port()
    ranks = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), "2", str(port), str(tmp_path / f"g{rank}.pt"), objective]
        )
        for rank in range(2)
    ]
    assert [p.wait(timeout=600) for p in ranks] == [0, 0]
    single = GRADIENTS[objective](RankInfo(rank=0, world_size=1, local_rank=0))
    for rank in range(2):
        averaged = torch.load(tmp_path / f"g{rank}.pt")
        assert averaged.keys() == single.keys()
        for name, gradient in single.items():
            torch.testing.assert_close(averaged[name], gradient, rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize(SynthConfig(users=200, items=60, events=4000, seed=5), out)
    return out


def test_train_nproc_2_writes_one_registered_bundle(
    synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.bundle.format import load_bundle

    monkeypatch.chdir(tmp_path)  # rank 0 inherits it: nothing but the listed outputs may land here
    monkeypatch.setenv(KEY_ENV, "test-key-0123456789-abcdef")  # so do the workers' key variable

    bundle = tmp_path / "bundle"
    args = [
        "train",
        "--interactions",
        str(synth / "interactions.parquet"),
        "--items",
        str(synth / "items.parquet"),
    ]
    args += ["--out", str(bundle), "--nproc", "2", "--shards", "4"]
    for override in (
        *WORKER_OVERRIDES,
        "train.objective=auto",
        "train.auto_probe_epochs=1",
        "train.auto_max_s=2",
        "privacy.pseudonymise_user_ids=true",
        f'privacy.key_env="{KEY_ENV}"',
        "train.epochs=2",
        "train.patience=1",
        "train.batch_size=64",
    ):
        args += ["--set", override]
    tracking = f'tracking.tracking_uri="sqlite:///{tmp_path}/mlflow.db"'
    args += ["--set", tracking]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(2 worker(s))" in out
    assert "registered version 1" in out
    assert "metrics: recall@10=" in out
    loaded = load_bundle(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["info"]["distributed"]["world_size"] == 2
    assert len(manifest["info"]["distributed"]["rank_samples_per_second"]) == 2
    # Only rank 0 wrote: the bundle, its prepared shards beside it and the MLflow store (its
    # artifacts beside its database).
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "artifacts",
        "bundle",
        "bundle.prepared",
        "mlflow.db",
    ]
    # Held-out figures as single-process training writes them: the manifest, the MLflow run, the gate.
    metrics = manifest["metrics"]
    assert {"ndcg@10", "recall@10"} <= metrics.keys()
    assert 0.0 < metrics["ndcg@10"] <= 1.0
    # auto chose among the data-parallel candidates on the sampled users; the winner ran on every shard.
    objective = manifest["info"]["objective"]
    tried = {c["name"] for c in objective["candidates"]}
    assert tried == {"bag", "interaction", "sasrec", "elsa", "elsa-decay-0.5"}
    assert objective["chosen"] in tried
    assert objective["sharded"]["not_tried"] == [
        "linear",
        "linear-decay-0.1",
        "linear-decay-0.5",
        "slist",
        "mf",
    ]
    assert objective["validation_protocol"] == "llo"
    assert 1 <= len(objective["schedule"]) <= 2
    assert manifest["config"]["train"]["objective"] in {"bag", "interaction", "sequence", "elsa"}
    prepared_users = json.loads((tmp_path / "bundle.prepared" / "manifest.json").read_text())["users"]
    assert manifest["info"]["distributed"]["holdout"]["users"] == prepared_users  # every user sampled
    assert manifest["info"]["distributed"]["refit_full"] is True
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    logged = client.get_run(str(client.get_model_version("recsys-two-tower", "1").run_id)).data.metrics
    assert logged["ndcg_at_10"] == pytest.approx(metrics["ndcg@10"])
    assert "validation_ndcg_at_10" in logged
    assert main(["promote", "--version", "1", "--alias", "champion", "--set", tracking]) == 0
    assert f"ndcg@10 {metrics['ndcg@10']:.4f}" in capsys.readouterr().out
    # Member profiles of every member, by pseudonym; served by raw id (the key hashes it) as any bundle's.
    assert manifest["privacy"]["key_env"] == KEY_ENV
    profiles = pl.read_parquet(bundle / "profiles.parquet")
    assert profiles.height == prepared_users
    assert profiles.get_column("user_id").str.starts_with("p_").all()
    assert profiles.get_column("segment").null_count() == 0
    raw_user = pl.read_parquet(synth / "interactions.parquet").get_column("user_id")[0]
    assert main(["profile", "--bundle", str(bundle), "--user", raw_user]) == 0
    profile = json.loads(capsys.readouterr().out)
    assert profile["user_id"] == raw_user
    assert profile["lifecycle"]
    assert main(["segments-report", "--bundle", str(bundle), "--out", str(tmp_path / "segments.html")]) == 0
    assert "segment" in (tmp_path / "segments.html").read_text().lower()
    assert loaded.sequences.items.size == open_count(tmp_path / "bundle.prepared")


def open_count(prepared: Path) -> int:
    return int(json.loads((prepared / "manifest.json").read_text())["interactions"])


def test_a_dead_worker_fails_the_run_naming_its_rank(synth: Path, tmp_path: Path) -> None:
    tracking = f'tracking.tracking_uri="sqlite:///{tmp_path}/mlflow.db"'
    # No held-out split (every rank would read every shard for it): each rank reads its own shards only.
    overrides = ["train.objective=sequence", "train.epochs=1", "eval.protocol=none", "train.patience=0"]
    config = load_config(None, [*WORKER_OVERRIDES, *overrides, tracking])
    prepared = tmp_path / "prepared"
    prepare_shards(synth / "interactions.parquet", None, None, prepared, config.data, shards=2)
    # Rank 1 of 2 reads shard 1 (and only it): damaged, so that worker dies on reading it.
    (prepared / "shards" / "part-00001.parquet").write_bytes(b"not parquet")
    with pytest.raises(DistributedTrainingError, match=r"worker rank 1 of 2 failed .*part-00001\.parquet"):
        launch_training(config, ShardedInputs(prepared=prepared), tmp_path / "bundle", nproc=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no bundle, no MLflow store


def test_elsa_trains_on_2_ranks_into_a_served_bundle(synth: Path, tmp_path: Path) -> None:
    from serving.recommend.engine import TwoTowerEngine
    from serving.recommend.types import RecommendQuery

    tracking = f'tracking.tracking_uri="sqlite:///{tmp_path}/mlflow.db"'
    overrides = ["train.objective=elsa", "train.elsa_rank=16", "train.epochs=2", "eval.protocol=none"]
    config = load_config(None, [*WORKER_OVERRIDES, *overrides, "train.patience=0", tracking])
    prepared = tmp_path / "prepared"
    prepare_shards(synth / "interactions.parquet", None, None, prepared, config.data, shards=4)
    launch_training(config, ShardedInputs(prepared=prepared), tmp_path / "bundle", nproc=2)
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["config"]["train"]["objective"] == "elsa"
    assert manifest["info"]["distributed"]["world_size"] == 2
    engine = TwoTowerEngine.load(tmp_path / "bundle")
    # The towers hold ELSA's rows (unit vectors, trained: the loss fell) and serve the history.
    np.testing.assert_allclose(np.linalg.norm(engine.item_vectors, axis=1), 1.0, atol=1e-4)
    losses = manifest["info"]["epoch_losses"]
    assert losses[-1] < losses[0]
    user = engine.bundle.users.get_column("user_id")[0]
    items = engine.bundle.item_encoder.ids.tokens.to_list()
    plain = engine.recommend(RecommendQuery(user, 10))
    moved = engine.recommend(RecommendQuery(user, 10, recent_item_ids=tuple(items[:5])))
    assert [i.item_id for i in moved.items] != [i.item_id for i in plain.items]


@pytest.mark.parametrize("objective", ["linear", "mf"])
def test_sharded_training_refuses_the_closed_forms(tmp_path: Path, objective: str) -> None:
    config = load_config(None, [f"train.objective={objective}"])
    with pytest.raises(ValueError, match=rf"train\.objective = '{objective}' is a closed form"):
        launch_training(config, ShardedInputs(prepared=tmp_path), tmp_path / "b", nproc=2)


if __name__ == "__main__":
    # One rank of the gradient test: python tests/test_distributed.py RANK WORLD PORT OUT OBJECTIVE
    import torch.distributed as dist

    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.save(GRADIENTS[sys.argv[5]](RankInfo(rank=rank, world_size=world, local_rank=rank)), out)
    # Both ranks past their last collective before either tears the group down; then leave without
    # running C++ destructors: a gloo/DDP thread still joinable at interpreter exit aborted one rank
    # ("terminate called without an active exception", exit -6) in about one CI run in three.
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)
