"""The ``recsys tune`` sub-command (registered by :func:`add_tune_parser`).

Kept out of :mod:`training.cli.main` so that Optuna and torch are imported only when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.cli.args import add_config_arguments, config_from_arguments

__all__ = ["add_tune_parser", "cmd_tune"]


def add_tune_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``tune`` on ``subparsers``; the parsed namespace's ``func`` runs it."""
    p = subparsers.add_parser(
        "tune",
        help="hyper-parameter search on a validation split; writes the best config as TOML",
        description=(
            "Split by eval.protocol, set the test part aside, split the training part again into fit and "
            "validation parts, run Optuna trials (one MLflow child run each) and write the best full config "
            "to --out for `recsys train --config`."
        ),
    )
    p.add_argument("--data", type=Path, required=True, help="directory with interactions (+ users, items)")
    p.add_argument("--out", type=Path, required=True, help="TOML file for the best config")
    p.add_argument("--trials", type=int, default=20, help="number of trials (default 20)")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_config_arguments(p)
    p.set_defaults(func=cmd_tune)
    return p


def cmd_tune(args: argparse.Namespace) -> None:
    """Run the search for parsed arguments; prints the best trials and where the config went."""
    from training.data.io import find_canonical_files, load_dataset
    from training.fit.tune import format_trials, tune

    config = config_from_arguments(args)
    data = load_dataset(*find_canonical_files(args.data))
    result = tune(
        config, data, args.out, trials=args.trials, timeout_seconds=args.timeout, overwrite=args.overwrite
    )
    print(format_trials(result))
    print(
        f"best {result.metric} {result.best.metrics[result.metric]:.4f} (trial {result.best.number} of "
        f"{len(result.trials)}) -> {result.out}"
    )
    if result.run_id:
        experiment = config.tracking.experiment
        print(f"MLflow run {result.run_id} (experiment {experiment!r}), one child run per trial")
