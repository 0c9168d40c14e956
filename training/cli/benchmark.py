"""The ``recsys benchmark`` sub-command (registered by :func:`add_benchmark_parser`).

Kept out of :mod:`training.cli.main` so the heavy benchmark imports (torch, scipy, implicit) happen only when
the command runs; importing this module costs nothing beyond argparse.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from training.cli.args import add_config_arguments, config_from_arguments

__all__ = ["PROTOCOL_CHOICES", "add_benchmark_parser", "cmd_benchmark"]

PROTOCOL_CHOICES = ("llo", "rand", "time")
"""Same as ``training.evaluation.PROTOCOLS`` (a test checks it), spelled out to keep imports light."""


def _model_list(text: str) -> list[str]:
    """``"ease,ials"`` -> ``["ease", "ials"]``; names are validated by ``run_benchmark``."""
    return [name.strip() for name in text.split(",") if name.strip()]


def add_benchmark_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``benchmark`` on ``subparsers``; the parsed namespace's ``func`` runs it."""
    p = subparsers.add_parser(
        "benchmark",
        help="compare the two-tower model with popularity, EASE and iALS on one split",
        description=(
            "Split once, fit every model on the same training part, score all of them with the same "
            "full-ranking metrics, print one table and log a parent MLflow run with a child per model."
        ),
    )
    p.add_argument(
        "--data", type=Path, required=True, help="directory with interactions (+ users, items) .parquet/.csv"
    )
    p.add_argument("--protocol", choices=PROTOCOL_CHOICES, required=True, help="splitting protocol")
    p.add_argument("--k", type=int, default=10, help="cut-off of every metric (default 10)")
    p.add_argument(
        "--models",
        type=_model_list,
        default=None,
        metavar="A,B",
        help="comma-separated subset of two_tower,popularity,ease,ials (default: all)",
    )
    p.add_argument(
        "--diversity-attribute",
        default=None,
        metavar="COLUMN",
        help="item column for diversity@k (default: the first categorical or list item attribute)",
    )
    p.add_argument(
        "--validation-protocol",
        choices=PROTOCOL_CHOICES,
        default=None,
        help=(
            "protocol of the two-tower model's validation split (default: --protocol); "
            "e.g. --protocol rand --validation-protocol llo scores what a default bundle "
            "(eval.protocol = llo) does on a random future"
        ),
    )
    add_config_arguments(p)
    p.set_defaults(func=cmd_benchmark)
    return p


def cmd_benchmark(args: argparse.Namespace) -> None:
    """Run the benchmark for parsed arguments; prints the table and the parent MLflow run."""
    from training.evaluation.benchmark import MODELS, run_benchmark

    config = config_from_arguments(args)
    result = run_benchmark(
        args.data,
        args.protocol,
        k=args.k,
        config=config,
        models=args.models if args.models is not None else MODELS,
        diversity_attribute=args.diversity_attribute,
        validation_protocol=args.validation_protocol,
    )
    if result.run_id:
        print(
            f"MLflow run {result.run_id} (experiment {config.tracking.experiment!r}), one child run per model"
        )
