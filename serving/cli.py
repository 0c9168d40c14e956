"""Command-line entry points of the serving side (no training dependencies).

``python -m serving serve ...`` / ``recsys serve ...`` and ``recsys recommend ...``
share these argument definitions and functions.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import faiss
import torch

from serving.batch import read_user_ids, recommend_batch, write_recommendations
from serving.engine import TwoTowerEngine
from serving.server import ServerOptions, run_server

log = logging.getLogger(__name__)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50051, help="port (0 picks a free one)")
    parser.add_argument("--threads", type=int, default=4, help="engine threads (CPU-bound work)")
    parser.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=256,
        help="calls admitted at once; more get RESOURCE_EXHAUSTED",
    )
    parser.add_argument("--grace", type=float, default=10.0, help="seconds in-flight calls get on SIGTERM")


def configure_compute_threads(threads: int) -> None:
    """One intra-op thread per engine thread: requests are parallel across threads, and
    nested parallelism inside each small request only adds contention."""
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    log.debug("engine threads: %d", threads)


def serve_command(args: argparse.Namespace) -> None:
    options = ServerOptions(
        host=args.host,
        port=args.port,
        max_workers=args.threads,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        grace_seconds=args.grace,
    )
    configure_compute_threads(args.threads)
    bundle: Path = args.bundle
    run_server(options, lambda: TwoTowerEngine.load(bundle))


def add_recommend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument(
        "--users",
        type=Path,
        required=True,
        help="user ids: CSV/Parquet with a user_id column, or a text file, one per line",
    )
    parser.add_argument("--k", type=int, default=10, help="items per user (1..1000)")
    parser.add_argument("--out", type=Path, required=True, help="output .csv or .parquet")


def recommend_command(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    engine = TwoTowerEngine.load(args.bundle)
    users = read_user_ids(args.users)
    frame = recommend_batch(engine, users, args.k)
    write_recommendations(args.out, frame)
    seconds = time.perf_counter() - started
    fallback_users = frame.filter(frame["fallback"]).get_column("user_id").n_unique()
    print(
        f"wrote {frame.height} rows for {len(users)} users ({fallback_users} unknown: popularity fallback) "
        f"to {args.out} in {seconds:.2f} s ({len(users) / max(seconds, 1e-9):.0f} users/s), "
        f"model {engine.model_version}"
    )
