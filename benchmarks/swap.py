"""Hot-swap benchmark: move ``models:/NAME@champion`` under closed-loop load, count failures.

::

    python -m benchmarks.swap --bundles runs/a runs/b [--clients 8] [--seconds 12] [--poll 0.5]

Registers the two bundles as versions 1 and 2 of a model in a temporary MLflow store
(needs MLflow), serves ``models:/bench-swap@champion`` (alias on version 1) in this process
on loopback, starts ``--clients`` threads that call ``Recommend`` in a loop (random users of
the first bundle, k = 10) through real channels, moves the alias to version 2 a third of the
way in, and prints: calls made and failed, the swap's own time (download, verification,
warm-up), the time from the alias move to the first answer of the new model, and latency
percentiles before, across and after the swap. A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import polars as pl

from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api.background import BackgroundServer
from serving.api.server import ServerOptions
from serving.bundle.format import read_manifest
from serving.lifecycle.live_models import LiveModelOptions
from serving.lifecycle.mlflow_store import ModelRegistry

MODEL = "bench-swap"


@dataclass
class Calls:
    """Every call: (start, seconds, model_version or "" for a failure)."""

    rows: list[tuple[float, float, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client(address: str, users: list[str], seed: int, stop: threading.Event, calls: Calls) -> None:
    rng = random.Random(seed)
    with grpc.insecure_channel(address) as channel:
        stub = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
        while not stop.is_set():
            started = time.perf_counter()
            try:
                answer = stub.Recommend(pb2.RecommendRequest(user_id=rng.choice(users), k=10), timeout=10)
                version = str(answer.model_version)
            except grpc.RpcError as exc:
                version = ""
                with calls.lock:
                    calls.errors.append(f"{exc.code()}: {exc.details()}")
            with calls.lock:
                calls.rows.append((started, time.perf_counter() - started, version))


def _percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    values = np.asarray(seconds) * 1000
    return {
        "calls": len(seconds),
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "max_ms": round(float(values.max()), 2),
    }


def _register(registry: ModelRegistry, bundle: Path, artifacts: str) -> str:
    manifest = read_manifest(bundle)
    evaluation = manifest.get("config", {}).get("eval", {})
    return registry.register_bundle(
        bundle,
        MODEL,
        artifact_location=artifacts,
        metrics=manifest.get("metrics") or {},
        params={"eval.protocol": evaluation.get("protocol", ""), "eval.k": evaluation.get("k", "")},
        tags={"model_version": str(manifest["model_version"])},
    )


def run(
    bundles: tuple[Path, Path], clients: int, seconds: float, poll: float, threads: int
) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        registry = ModelRegistry(uri)
        artifacts = (root / "artifacts").as_uri()
        first, second = (_register(registry, b, artifacts) for b in bundles)
        new_model = str(read_manifest(bundles[1])["model_version"])
        registry.set_alias(MODEL, "champion", first)
        users = pl.read_parquet(bundles[0] / "users.parquet", columns=["user_id"])["user_id"].to_list()
        source = LiveModelOptions(
            model=f"models:/{MODEL}@champion", poll_seconds=poll, cache_dir=root / "cache", tracking_uri=uri
        )
        calls = Calls()
        stop = threading.Event()
        server = BackgroundServer(ServerOptions(port=0, max_workers=threads, grace_seconds=5), source)
        with server:
            workers = [
                threading.Thread(target=_client, args=(server.address, users, i, stop, calls), daemon=True)
                for i in range(clients)
            ]
            for worker in workers:
                worker.start()
            time.sleep(seconds / 3)
            moved = time.perf_counter()
            registry.set_alias(MODEL, "champion", second)
            while True:
                with calls.lock:
                    first_new = next((s + d for s, d, v in calls.rows if v == new_model and s >= moved), None)
                if first_new is not None or time.perf_counter() - moved > 120:
                    break
                time.sleep(0.01)
            time.sleep(max(0.0, seconds - (time.perf_counter() - moved) - seconds / 3))
            stop.set()
            for worker in workers:
                worker.join(30)
            swaps = server.models.swaps if server.models is not None else []
        rows = calls.rows
        end_of_swap = first_new if first_new is not None else float("inf")
        return {
            "clients": clients,
            "engine_threads": threads,
            "poll_seconds": poll,
            "calls": len(rows),
            "failed": len(calls.errors),
            "errors": sorted(set(calls.errors))[:5],
            "answers_by_model_version": {
                v: sum(1 for _, _, x in rows if x == v) for v in sorted({x for _, _, x in rows if x})
            },
            "swap_seconds": [round(s.seconds, 3) for s in swaps],
            "swap_outcomes": [s.outcome for s in swaps],
            "alias_move_to_first_new_answer_s": None if first_new is None else round(first_new - moved, 3),
            "latency_before_move": _percentiles([d for s, d, _ in rows if s < moved]),
            "latency_move_to_first_new_answer": _percentiles(
                [d for s, d, _ in rows if moved <= s < end_of_swap]
            ),
            "latency_after": _percentiles([d for s, d, _ in rows if s >= end_of_swap]),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--bundles", type=Path, nargs=2, required=True, help="version 1 and version 2")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop client threads (default 8)")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of the run (default 12)")
    parser.add_argument("--poll", type=float, default=0.5, help="alias poll interval (default 0.5 s)")
    parser.add_argument("--threads", type=int, default=2, help="engine threads (default 2)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    figures = run((args.bundles[0], args.bundles[1]), args.clients, args.seconds, args.poll, args.threads)
    print(json.dumps(figures, indent=2))
    return 0 if figures["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
