"""``recsys train`` flags for sharded, data-parallel training, and the shell that dispatches them.

Three ways in, one job (:mod:`training.sharded_pipeline`):

* ``--nproc N`` (N >= 1): this process runs ``recsys prepare`` unless ``--prepared DIR`` is given,
  then starts N local workers through ``torch.distributed.run`` (torchrun's library);
* ``--prepared DIR`` alone: the same with one worker;
* started by ``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment): this process *is* a worker
  (multi-machine: ``torchrun --nnodes M --nproc-per-node N --rdzv-endpoint HOST:PORT -m training
  train --prepared DIR ...``; DIR must be on storage every machine sees).

Argparse only at import: ``recsys serve`` must not pay for torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.config import Config


def add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nproc",
        type=int,
        default=0,
        help="data-parallel training with N local workers (torch.distributed, gloo on CPU, NCCL on GPUs) "
        "over streamed, user-sharded examples",
    )
    parser.add_argument(
        "--prepared", type=Path, help="train on a directory written by `recsys prepare` (sharded path)"
    )
    parser.add_argument(
        "--prepared-out",
        type=Path,
        help="where --nproc writes the prepared shards (default: OUT.prepared beside the bundle)",
    )
    parser.add_argument("--shards", type=int, help="shards for the feature pass (default: ~1M events each)")
    parser.add_argument("--max-steps", type=int, help="sharded path: at most this many steps per epoch")


def launched_by_torchrun() -> bool:
    """True in a worker process started by torchrun / ``torch.distributed.run``."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def is_sharded_run(args: argparse.Namespace) -> bool:
    return bool(args.nproc) or args.prepared is not None or launched_by_torchrun()


def run_sharded_train(args: argparse.Namespace, config: Config) -> None:
    from training.sharded_pipeline import (
        DistributedTrainingError,
        ShardedInputs,
        launch_training,
        worker_main,
    )

    if launched_by_torchrun():
        if args.prepared is None:
            raise ValueError(
                "a torchrun worker needs --prepared DIR (run `recsys prepare` once, on storage every "
                "machine sees)"
            )
        worker_main(config, args.prepared, args.out, overwrite=args.overwrite, max_steps=args.max_steps)
        return
    if args.nproc < 0:
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    inputs = ShardedInputs(
        interactions=args.interactions,
        users=args.users,
        items=args.items,
        prepared=args.prepared,
        prepared_out=args.prepared_out,
        shards=args.shards,
    )
    try:
        summary = launch_training(
            config,
            inputs,
            args.out,
            nproc=max(args.nproc, 1),
            overwrite=args.overwrite,
            max_steps=args.max_steps,
        )
    except DistributedTrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"model {summary.model_version} -> {summary.bundle} ({summary.world_size} worker(s))")
    print(
        f"training {summary.train_seconds:.1f} s ({summary.samples_per_second:.0f} samples/s in all; "
        f"per rank: {', '.join(f'{r:.0f}' for r in summary.rank_samples_per_second)}), "
        f"peak RSS per rank during training: {', '.join(f'{m:.0f}' for m in summary.rank_peak_rss_mb)} MiB"
    )
    if summary.metrics:
        print("metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in summary.metrics.items()))
    if summary.validation:
        print(f"validation ndcg per epoch: {', '.join(f'{v:.4f}' for v in summary.validation)}")
    if summary.registered_version:
        print(f"MLflow run {summary.run_id}, registered version {summary.registered_version}")
