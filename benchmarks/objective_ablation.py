"""One training configuration on the validation split that ``objective = auto`` compares candidates on.

    python -m benchmarks.objective_ablation --data DIR --protocol llo|rand|time [--set S.K=V ...] [--test]

Splits the interactions by the protocol, carves the validation split out of the training part as
:func:`training.fit.auto.select_objective` does (the same protocol, a seeded sample of at most
8,000 users), trains the configuration to early stopping on it (no time budget, unlike ``auto``) and
prints one JSON line: the overrides, the best validation NDCG@10, the best epoch, the epochs run,
seconds per epoch and the validation curve. ``--test`` also refits on the whole training part with the
same per-epoch learning rates and scores the protocol's test part, as ``recsys benchmark`` does. One
change at a time against the defaults is the ablation in docs/benchmarks/issue-13-auto-objective.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from training.config import load_config
from training.data.io import find_canonical_files, load_dataset
from training.evaluation import PROTOCOLS, split_for
from training.evaluation.evaluate import evaluate
from training.features import prepare
from training.fit.auto import validation_users
from training.fit.trainer import TrainingRun, train_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--protocol", choices=[p for p in PROTOCOLS], required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--test", action="store_true", help="also refit and score the test part")
    args = parser.parse_args(argv)
    config = load_config(None, ["tracking.enabled=false", "train.progress=false", *args.overrides])
    data = load_dataset(*find_canonical_files(args.data))
    parts = split_for(data.interactions, args.protocol, config.eval.min_interactions)
    inner = split_for(parts.train, args.protocol, config.eval.min_interactions)
    prepared = prepare(inner.train, data.users, data.items, config.data)
    validation = validation_users(inner.test, config.train.validation_users, config.train.seed)
    started = time.perf_counter()
    run = TrainingRun(prepared, config, validation=validation)
    run.advance()
    result = run.finish()
    row: dict[str, Any] = {
        "overrides": args.overrides,
        "validation_ndcg@10": round(max(result.validation), 4),
        "best_epoch": result.best_epoch,
        "epochs": len(result.epoch_losses),
        "seconds_per_epoch": round(result.seconds_per_epoch, 1),
        "curve": [round(v, 4) for v in result.validation],
    }
    if args.test:
        full = prepare(parts.train, data.users, data.items, config.data)
        refit = train_model(full, config, schedule=result.schedule)
        row["test_ndcg@10"] = round(evaluate(refit.model, full, parts.test, 10)["ndcg@10"], 4)
    row["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
