"""Argument definitions shared by the ``recsys`` sub-commands (argparse only: cheap to import)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.config import Config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeatable ``--set SECTION.KEY=VALUE``."""
    parser.add_argument("--config", type=Path, help="TOML config file (see `recsys config`)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set train.epochs=5 (repeatable)",
    )


def config_from_arguments(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    """Defaults, then ``--config``, then ``--set`` flags, then ``extra`` overrides."""
    from training.config import load_config

    return load_config(args.config, [*args.overrides, *(extra or [])])
