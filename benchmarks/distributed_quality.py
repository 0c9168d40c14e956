"""1 rank vs N ranks on the same config: quality and throughput of data-parallel training.

    python -m benchmarks.distributed_quality --data DIR [--protocol llo] [--nproc 1,2] [--epochs 8]
        [--set S.K=V ...] [--work /tmp/dq]

``DIR`` holds canonical files (``recsys import movielens``). The evaluation is the one of
``recsys benchmark``: the protocol's split (:func:`training.evaluation.split_for`), the model trained on
the training part only, full-ranking metrics on the test part (:func:`training.evaluation.evaluate.evaluate`,
seen items excluded). The training part goes through ``recsys prepare`` once; each world size then runs
``recsys train --prepared`` (:func:`training.sharded_pipeline.launch_training`, real gloo workers), and
the bundle's model is evaluated. Prints one row per world size: NDCG@k, Recall@k, training seconds,
samples/s in all and per rank, peak RSS per rank.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from serving.bundle.format import load_bundle
from training.config import load_config
from training.data.io import find_canonical_files, load_dataset
from training.data.stream_prepare import prepare_shards
from training.evaluation import split_for
from training.evaluation.evaluate import evaluate
from training.features import prepare
from training.sharded_pipeline import ShardedInputs, launch_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--protocol", default="llo", choices=["llo", "rand", "time"])
    parser.add_argument("--nproc", default="1,2", help="world sizes to compare (comma-separated)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("runs/distributed-quality"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    overrides = [
        "train.objective=interaction",
        f"train.epochs={args.epochs}",
        # Exactly --epochs on the whole training part: the split and the evaluation are this script's.
        "eval.protocol=none",
        "train.patience=0",
        "train.progress=false",
        f'tracking.tracking_uri="sqlite:///{work.resolve()}/mlflow.db"',
        *args.overrides,
    ]
    config = load_config(None, overrides)
    interactions, users, items = find_canonical_files(args.data)
    data = load_dataset(interactions, users, items)
    parts = split_for(data.interactions, args.protocol, config.eval.min_interactions)
    train_file = work / "train.parquet"
    parts.train.write_parquet(train_file)
    prepared = work / "prepared"
    prepare_shards(train_file, users, items, prepared, config.data, shards=args.shards, overwrite=True)
    # The same encoders as the shards' (one fitting code, same rows): the evaluation's view.
    reference = prepare(parts.train, data.users, data.items, config.data)

    k = config.eval.k
    rows = []
    for nproc in (int(n) for n in args.nproc.split(",")):
        bundle = work / f"bundle-x{nproc}"
        summary = launch_training(
            config, ShardedInputs(prepared=prepared), bundle, nproc=nproc, overwrite=True
        )
        metrics = evaluate(load_bundle(bundle).model, reference, parts.test, k)
        row = {
            "nproc": nproc,
            f"ndcg@{k}": round(metrics[f"ndcg@{k}"], 4),
            f"recall@{k}": round(metrics[f"recall@{k}"], 4),
            "train_seconds": round(summary.train_seconds, 1),
            "samples_per_second": round(summary.samples_per_second, 1),
            "rank_samples_per_second": [round(r, 1) for r in summary.rank_samples_per_second],
            "rank_peak_rss_mb": [round(m) for m in summary.rank_peak_rss_mb],
            "final_loss": round(summary.epoch_losses[-1], 4),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    (work / "results.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
