"""``recsys lookalike``: a lookalike audience as a file (for e-mail, SMS or push campaigns).

Seeds come from a CSV/Parquet file with a ``user_id`` column, or a text file with one id
per line (the ``recsys recommend --users`` format). The output has one row per lookalike
user: ``user_id``, ``rank`` (from 1), ``score`` (cosine to the seed direction), best first,
seeds excluded; ``.parquet`` or CSV (any other suffix), written atomically. Members flagged
for abnormal behaviour are left out unless ``--include-flagged``; ``--min-clv V`` keeps only
members with a predicted lifetime value of at least V (the list still has ``--size`` members when
enough qualify); ``--order-by propensity|clv`` lists the likeliest buyers / the highest lifetime
values first (``rank`` is then the position in that order) with the score's column
(:mod:`serving.profiles.campaign`).

Only argparse-level imports at module level: ``recsys`` builds its parser from
:func:`add_lookalike_arguments` for every command.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from serving.errors import InvalidArgumentError
from serving.profiles.campaign import add_campaign_arguments

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
    add_campaign_arguments(parser)


def lookalike_command(args: argparse.Namespace) -> None:
    import polars as pl

    from serving.audiences.search import MAX_SIZE, SeedScoring, SimilarUsersQuery, validate_size
    from serving.campaigns.holdout import write_campaign_list
    from serving.profiles.campaign import (
        ListRules,
        apply_campaign_rules,
        check_clv_available,
        excluded_members,
        member_flags,
    )
    from serving.recommend.engine import TwoTowerEngine

    started = time.perf_counter()
    rules = ListRules.from_arguments(args)
    engine = TwoTowerEngine.load(args.bundle)
    check_clv_available(engine.bundle.manifest, rules)
    seeds = read_seed_ids(args.seed_users)
    size = validate_size(args.size, "--size")
    flags = member_flags(engine.bundle.path, engine.bundle.manifest)
    # Ask for as many more as the rules leave out, so that leaving them out still fills the list.
    extra = excluded_members(flags, rules)
    audience = engine.similar_users(
        SimilarUsersQuery(seeds, min(size + extra, MAX_SIZE), SeedScoring(args.scoring))
    )
    listed = audience_frame(audience)
    # Audience ids are the bundle's own (pseudonyms when the bundle is pseudonymised).
    keep = dataclasses.replace(rules, order_by=None)
    campaign = apply_campaign_rules(listed, listed.get_column("user_id"), flags, keep)
    # The `size` most similar members the rules keep, then (when asked) ordered by the score;
    # rank = position in the written list.
    chosen = campaign.frame.head(size)
    if rules.order_by is not None:
        order = ListRules(include_flagged=True, order_by=rules.order_by)
        chosen = apply_campaign_rules(chosen, chosen.get_column("user_id"), flags, order).frame
    frame = chosen.with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).alias("rank"))
    ids = frame.get_column("user_id")
    held_out = write_campaign_list(args, frame, ids, flags, "lookalike", audience.model_version)
    note = f" ({campaign.note})" if campaign.note else ""
    print(
        f"wrote {frame.height} lookalike users of {audience.known_seeds} seed users "
        f"({audience.unknown_seeds} unknown seed ids ignored; {campaign.flagged_removed} flagged members "
        f"left out{note}"
        + (f", {campaign.below_min_clv_removed} below --min-clv" if rules.min_clv is not None else "")
        + f") to {args.out} in {time.perf_counter() - started:.2f} s, "
        f"model {audience.model_version}" + (f"; {held_out}" if held_out else "")
    )
