"""``recsys lookalike``: a lookalike audience as a file (for e-mail, SMS or push campaigns).

Seeds come from a CSV/Parquet file with a ``user_id`` column, or a text file with one id
per line (the ``recsys recommend --users`` format). The output has one row per lookalike
user: ``user_id``, ``rank`` (from 1), ``score`` (cosine to the seed direction), best first,
seeds excluded; ``.parquet`` or CSV (any other suffix), written atomically.

Only argparse-level imports at module level: ``recsys`` builds its parser from
:func:`add_lookalike_arguments` for every command.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from serving.errors import InvalidArgumentError

if TYPE_CHECKING:
    import polars as pl

    from serving.audiences.search import Audience


def read_seed_ids(path: Path) -> tuple[str, ...]:
    """Distinct seed ids from ``path`` (see the module docstring); errors name ``--seed-users``."""
    from serving.recommend.batch import read_user_ids

    try:
        return tuple(read_user_ids(path).to_list())
    except InvalidArgumentError as exc:
        raise InvalidArgumentError("--seed-users", exc.problem) from exc


def audience_frame(audience: Audience) -> pl.DataFrame:
    """``user_id``, ``rank`` (Int32, from 1), ``score`` (Float32), best first."""
    import polars as pl

    return pl.DataFrame(
        {
            "user_id": [u.user_id for u in audience.users],
            "rank": range(1, len(audience.users) + 1),
            "score": [u.score for u in audience.users],
        },
        schema={"user_id": pl.Utf8, "rank": pl.Int32, "score": pl.Float32},
    )


def add_lookalike_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument(
        "--seed-users",
        type=Path,
        required=True,
        help="seed user ids: CSV/Parquet with a user_id column, or a text file, one per line",
    )
    parser.add_argument("--size", type=int, required=True, help="lookalike users wanted (1..100000)")
    parser.add_argument(
        "--scoring",
        choices=["contrast", "centroid", "nearest_seed"],
        default="contrast",
        help="contrast (default): what distinguishes the seeds from the average member; centroid: "
        "typical users near the seeds; nearest_seed: the closest to any one seed",
    )
    parser.add_argument("--out", type=Path, required=True, help="output .csv or .parquet")


def lookalike_command(args: argparse.Namespace) -> None:
    from serving.audiences.search import SeedScoring, SimilarUsersQuery
    from serving.recommend.engine import TwoTowerEngine
    from serving.storage import atomic_write_table

    started = time.perf_counter()
    engine = TwoTowerEngine.load(args.bundle)
    seeds = read_seed_ids(args.seed_users)
    audience = engine.similar_users(SimilarUsersQuery(seeds, args.size, SeedScoring(args.scoring)))
    atomic_write_table(args.out, audience_frame(audience))
    print(
        f"wrote {len(audience.users)} lookalike users of {audience.known_seeds} seed users "
        f"({audience.unknown_seeds} unknown seed ids ignored) to {args.out} in "
        f"{time.perf_counter() - started:.2f} s, model {audience.model_version}"
    )
