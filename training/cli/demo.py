"""``recsys demo``: the main job end to end on an embedded default.

Synthesises an e-commerce data set, trains and evaluates the two-tower model (MLflow
run in the embedded SQLite store), writes the bundle, starts the real gRPC server on
a free loopback port, sends a few calls through a real channel and prints them.
"""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl

from serving.api.background import BackgroundServer
from serving.api.server import ServerOptions
from serving.client import RecommenderClient
from serving.recommend.engine import TwoTowerEngine
from training.config import Config
from training.data.synth import SynthConfig, synthesize
from training.pipeline import train


def run_demo(
    config: Config, out: Path, *, users: int = 2000, items: int = 500, events: int = 100_000
) -> None:
    started = time.perf_counter()
    out = Path(out)
    data = out / "data"
    print(f"[1/4] synthesising {users} users, {items} items, ~{events} events -> {data}")
    synth = synthesize(SynthConfig(users=users, items=items, events=events), data)

    print(
        "[2/4] training and evaluating the two-tower model (MLflow: embedded store unless "
        "MLFLOW_TRACKING_URI is set)"
    )
    summary = train(
        config, synth.interactions_path, synth.users_path, synth.items_path, out / "bundle", overwrite=True
    )
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in summary.metrics.items() if k != "users")
    print(f"      model {summary.model_version}: {metrics}")
    print(
        f"      training {summary.train_seconds:.1f} s; MLflow run {summary.run_id}, "
        f"registered version {summary.registered_version}"
    )

    print("[3/4] serving the bundle over gRPC on a free loopback port")
    bundle = summary.bundle
    options = ServerOptions(host="127.0.0.1", port=0, grace_seconds=2.0)
    known = pl.read_parquet(synth.interactions_path).get_column("user_id").unique().sort().head(3).to_list()
    with (
        BackgroundServer(options, lambda: TwoTowerEngine.load(bundle)) as server,
        RecommenderClient(server.address) as client,
    ):
        print(
            f"      {server.address}: health {client.health()}, services {', '.join(client.list_services())}"
        )
        print("[4/4] Recommend calls")
        for user in [*known, "new-visitor-42"]:
            response = client.recommend(user, 5)
            kind = "fallback (unknown user)" if response.fallback else "personalised"
            items_text = ", ".join(f"{i.item_id} ({i.score:.3f})" for i in response.items)
            print(f"      user {user}: {kind}: {items_text}")
        embedding = client.user_embedding(known[0])
        print(
            f"      GetUserEmbedding({known[0]}): {len(embedding.values)} dims, "
            f"first 4 = {[round(v, 3) for v in embedding.values[:4]]}"
        )
    print(
        f"done in {time.perf_counter() - started:.1f} s (peak RSS {summary.peak_rss_mb:.0f} MiB); "
        f"bundle at {bundle}"
    )
