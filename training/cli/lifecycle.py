"""``recsys promote``, ``recsys rollback`` and ``recsys experiments`` (:func:`add_lifecycle_parsers`).

Thin shells over :func:`training.promotion.promote` / :func:`~training.promotion.rollback`;
the registry is the configured one (``[tracking]``: ``tracking_uri``, ``registered_model``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.lifecycle.mlflow_store import ModelRegistry, resolve_tracking_uri
from training.cli.args import add_config_arguments, config_from_arguments

__all__ = ["add_lifecycle_parsers", "cmd_experiments", "cmd_promote", "cmd_rollback"]


def _common(p: argparse.ArgumentParser) -> None:
    from training.promotion import ALIASES

    p.add_argument("--alias", required=True, choices=ALIASES, help="the alias to move")
    p.add_argument("--model", default="", help="registered model name (default: tracking.registered_model)")
    add_config_arguments(p)


def add_lifecycle_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``promote`` and ``rollback`` on ``subparsers``."""
    p = subparsers.add_parser(
        "promote",
        help="point models:/NAME@ALIAS at a registered version, behind an evaluation gate",
        description=(
            "Refuses a version whose offline metric (default ndcg@K of its training run) is below the "
            "current holder's, or was measured under another protocol, unless --force. Servers serving "
            "models:/NAME@ALIAS hot-swap to it on their next poll."
        ),
    )
    p.add_argument("--version", required=True, help="registered model version to promote")
    p.add_argument("--metric", default="", help="gate metric, e.g. recall@10 (default ndcg@K)")
    p.add_argument("--force", action="store_true", help="promote even when the gate refuses")
    _common(p)
    p.set_defaults(func=cmd_promote)

    p = subparsers.add_parser(
        "rollback", help="move models:/NAME@ALIAS back to the version that held it before the last promote"
    )
    _common(p)
    p.set_defaults(func=cmd_rollback)

    p = subparsers.add_parser(
        "experiments",
        help="check an A/B experiments file and the shares its assignment gives synthetic users",
        description=(
            "Parses the file as `recsys serve --experiments` would (syntax, keys, shares, model reference "
            "syntax; the models themselves are loaded only by the server) and prints, per variant, the "
            "configured share and the share observed over --users synthetic user ids."
        ),
    )
    p.add_argument("file", type=Path, help="experiments TOML file")
    p.add_argument("--users", type=int, default=100_000, help="synthetic user ids to assign (default 100000)")
    p.set_defaults(func=cmd_experiments)


def _registry(args: argparse.Namespace) -> tuple[ModelRegistry, str]:
    config = config_from_arguments(args)
    uri, _ = resolve_tracking_uri(config.tracking.tracking_uri)
    return ModelRegistry(uri), args.model or config.tracking.registered_model


def cmd_promote(args: argparse.Namespace) -> None:
    from training.promotion import promote

    registry, name = _registry(args)
    move = promote(registry, name, str(args.version), args.alias, metric=args.metric, force=args.force)
    values = (
        f"{move.metric} {_fmt(move.value)} vs {_fmt(move.previous_value)} of the previous holder"
        if move.previous is not None
        else f"{move.metric} {_fmt(move.value)}; the alias had no holder"
    )
    print(f"models:/{name}@{move.alias} -> version {move.version} (was {move.previous or 'unset'}); {values}")
    if move.note:
        print(f"note: {move.note}")


def cmd_rollback(args: argparse.Namespace) -> None:
    from training.promotion import rollback

    registry, name = _registry(args)
    move = rollback(registry, name, args.alias)
    print(f"models:/{name}@{move.alias} -> version {move.version} (was {move.previous})")


def cmd_experiments(args: argparse.Namespace) -> None:
    from serving.lifecycle.experiments import load_experiments, simulate_shares

    experiments = load_experiments(args.file)
    checks = simulate_shares(experiments, args.users)
    print(f"{args.file}: {len(experiments.experiments)} experiments, valid")
    print(f"{'experiment':<20} {'variant':<20} {'configured %':>12} {'observed %':>11} {'deviation':>9}")
    for c in checks:
        shares = f"{c.configured:>12.2f} {c.observed:>11.3f} {c.deviation:>9.3f}"
        print(f"{c.experiment:<20} {c.variant:<20} {shares}")
    if checks:
        print(f"largest deviation over {args.users} users: {max(c.deviation for c in checks):.3f} points")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
