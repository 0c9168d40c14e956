"""Shared fixtures: one tiny synthetic data set and one trained bundle (with its MLflow store).

Training runs once per test session (a few seconds on CPU); the integration and bundle
tests share the result read-only. Tests that need to damage a bundle copy it first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import polars as pl
import pytest

from serving.recommend.engine import TwoTowerEngine
from training.config import Config, load_config
from training.data.synth import SynthConfig, SynthSummary, synthesize

TINY_OVERRIDES: tuple[str, ...] = (
    # The interaction objective without early stopping: one short, deterministic run per fit.
    "train.objective=interaction",
    "train.patience=0",
    "train.epochs=2",
    "train.progress=false",
    "train.device=cpu",
    "model.embedding_dim=16",
    "model.output_dim=16",
    "model.hidden_dims=[32]",
    "train.batch_size=256",
)


def tiny_config(*extra: str) -> Config:
    """The tiny, CPU-only training configuration used by every test that trains."""
    return load_config(None, [*TINY_OVERRIDES, *extra])


@dataclass(frozen=True)
class TrainedBundle:
    """What the session's single training run produced."""

    workdir: Path
    data: SynthSummary
    config: Config
    tracking_uri: str
    bundle: Path
    model_version: str
    run_id: str | None
    registered_version: str | None
    metrics: dict[str, float]
    interactions: pl.DataFrame
    manifest: dict[str, Any]


@pytest.fixture(scope="session", autouse=True)
def _single_compute_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and spinning OpenMP threads make training
    many times slower when other processes share the CPU cores."""
    import faiss
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    """200 users, 60 items, ~4000 events (users, items and interactions Parquet files)."""
    return synthesize(SynthConfig(users=200, items=60, events=4000), tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, synth_data: SynthSummary) -> TrainedBundle:
    """Run ``training.pipeline.train`` once: bundle + MLflow SQLite store + artifacts in a tmp dir."""
    import json

    from training.pipeline import train

    workdir = tmp_path_factory.mktemp("trained")
    tracking_uri = f"sqlite:///{workdir}/mlflow.db"
    config = tiny_config(f'tracking.tracking_uri="{tracking_uri}"')
    bundle = workdir / "bundle"
    # MLflow writes artifacts relative to the working directory: keep them out of the repo.
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        summary = train(
            config, synth_data.interactions_path, synth_data.users_path, synth_data.items_path, bundle
        )
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    return TrainedBundle(
        workdir=workdir,
        data=synth_data,
        config=config,
        tracking_uri=tracking_uri,
        bundle=bundle,
        model_version=summary.model_version,
        run_id=summary.run_id,
        registered_version=summary.registered_version,
        metrics=summary.metrics,
        interactions=pl.read_parquet(synth_data.interactions_path),
        manifest=manifest,
    )


@pytest.fixture(scope="session")
def engine(trained: TrainedBundle) -> TwoTowerEngine:
    """The shared bundle, loaded and verified (read-only: do not mutate)."""
    return TwoTowerEngine.load(trained.bundle)


@pytest.fixture(scope="session")
def served_channel(trained: TrainedBundle) -> Iterator[grpc.Channel]:
    """A channel to a real server on a free loopback port, serving the shared bundle with default
    options (every service registered). Read-only: tests must not change the server's state."""
    from serving.api.background import BackgroundServer
    from serving.api.server import ServerOptions

    options = ServerOptions(host="127.0.0.1", port=0, grace_seconds=0.5, max_workers=2)
    with (
        BackgroundServer(options, lambda: TwoTowerEngine.load(trained.bundle), start_timeout=30) as running,
        grpc.insecure_channel(running.address) as connected,
    ):
        yield connected
