"""Lookalike lift on MovieLens: do lookalikes of a genre's fans watch that genre later?

A marketer's question: "I have a seed group who bought X; if I send the X campaign to
their N lookalikes instead of N random members, how many more respond?" Measured:

1. Split the interactions in time: the *training part* is everything before the 80 %
   timestamp quantile (``--split global``, the default: the future period of a campaign),
   or each user's first 80 % of interactions (``--split user``: every user has a future).
2. Train a bundle on the training part only (``--epochs``, default 5).
3. For each genre G and each of ``--repeats`` draws: seeds = ``--seeds`` users sampled from
   the seed pool; lookalikes = the ``--size`` users the bundle finds for them (seeds
   excluded), per seed scoring (centroid, nearest seed); for reference, the ``genre_share_rule``
   audience: the non-seed users with the highest training share of G (no model, no seeds).
   Seed pools (``--seed-pool``):
   ``raters``, users who rated a G movie in the training part (on MovieLens 84-100 % of all
   users per common genre: such seeds are close to random users), and ``fans``, the quarter
   of users (with at least 10 training ratings) with the highest share of G among their
   training ratings: "people who love horror", what a campaign's seed group usually is.
4. Response: a user *responds* when they rate at least one G movie in the test part.
   ``response`` = responders / audience size (inactive users count as non-responders, as in
   a campaign); ``active response`` = responders / audience members active in the test part
   (genre affinity alone); ``genre share`` = the audience's G ratings / all its ratings in the
   test part. The random baseline is the expectation of a random audience: the same
   quantities over every non-seed user the model knows. ``lift`` = lookalike / random.

Figures are means over the draws (the baseline too, as seeds change with each draw).

    python -m benchmarks.lookalike_lift --data data/ml-100k --work runs/lookalike-lift
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from serving.audiences.search import SeedScoring, SimilarUsersQuery
from serving.recommend.engine import TwoTowerEngine
from serving.storage import atomic_write_parquet
from training.config import Config, load_config
from training.data.io import load_dataset
from training.pipeline import train

log = logging.getLogger(__name__)

_FAN_MIN_RATINGS = 10
RULE = "genre_share_rule"
"""Not a lookalike: the non-seed users with the highest training share of the genre (what a
marketer with the behaviour data at hand would target without a model), for reference."""
DEFAULT_GENRES = ("Action", "Comedy", "Drama", "Romance", "Thriller", "Children's", "Horror", "Sci-Fi")


@dataclass(frozen=True)
class GroupRates:
    """Response figures of one group of users (see the module docstring)."""

    response: float
    active_response: float
    genre_share: float


@dataclass(frozen=True)
class GenreLift:
    genre: str
    fans_share: float
    random: GroupRates
    lookalike: dict[str, GroupRates]


def split_parts(interactions: pl.DataFrame, mode: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(training part, test part) by time: global 80 % quantile, or per user's first 80 %."""
    if mode == "global":
        cut = interactions.get_column("timestamp").quantile(0.8)
        return (
            interactions.filter(pl.col("timestamp") < cut),
            interactions.filter(pl.col("timestamp") >= cut),
        )
    ranked = interactions.sort(["user_id", "timestamp", "item_id"]).with_columns(
        (pl.int_range(pl.len()).over("user_id") < (pl.len().over("user_id") * 0.8).ceil()).alias("_train")
    )
    return (
        ranked.filter(pl.col("_train")).drop("_train"),
        ranked.filter(~pl.col("_train")).drop("_train"),
    )


def train_bundle(data: Path, train_part: pl.DataFrame, work: Path, config: Config) -> Path:
    """A bundle trained on the training part only (MovieLens user and item attributes)."""
    work.mkdir(parents=True, exist_ok=True)
    interactions = work / "train_interactions.parquet"
    atomic_write_parquet(interactions, train_part)
    users, items = data / "users.parquet", data / "items.parquet"
    bundle = work / "bundle"
    dataset = load_dataset(interactions, users, items)
    train(config, interactions, users, items, bundle, overwrite=True, dataset=dataset)
    return bundle


def _rates(users: list[str], test: pl.DataFrame) -> GroupRates:
    """Response figures of ``users`` in ``test`` (columns user_id, in_genre)."""
    if not users:
        return GroupRates(0.0, 0.0, 0.0)
    mine = test.filter(pl.col("user_id").is_in(users))
    per_user = mine.group_by("user_id").agg(pl.col("in_genre").any().alias("responded"))
    responders = int(per_user.get_column("responded").sum())
    active = per_user.height
    return GroupRates(
        response=responders / len(users),
        active_response=responders / active if active else 0.0,
        genre_share=int(mine.get_column("in_genre").sum()) / mine.height if mine.height else 0.0,
    )


def _genre_shares(train_g: pl.DataFrame) -> pl.DataFrame:
    """Per user: ``share`` of training ratings in the genre and their number ``n``."""
    return (
        train_g.with_columns(pl.col("in_genre").fill_null(False))
        .group_by("user_id")
        .agg(pl.col("in_genre").mean().alias("share"), pl.len().alias("n"))
    )


def _by_genre_share(shares: pl.DataFrame, known: set[str]) -> list[str]:
    """Known users by their training share of the genre, highest first (ties: more ratings)."""
    ranked = shares.sort(["share", "n", "user_id"], descending=[True, True, False])
    return [u for u in ranked.get_column("user_id").to_list() if u in known]


def _seed_pool(shares: pl.DataFrame, pool: str, known: set[str]) -> list[str]:
    """Users eligible as seeds for one genre (``shares``: :func:`_genre_shares`)."""
    if pool == "raters":
        return sorted(set(shares.filter(pl.col("share") > 0).get_column("user_id").to_list()) & known)
    active = shares.filter(pl.col("n") >= _FAN_MIN_RATINGS)
    cut = active.get_column("share").quantile(0.75)
    fans = active.filter(pl.col("share") >= cut).get_column("user_id").to_list()
    return sorted(set(fans) & known)


def _mean(rates: list[GroupRates]) -> GroupRates:
    return GroupRates(
        response=float(np.mean([r.response for r in rates])),
        active_response=float(np.mean([r.active_response for r in rates])),
        genre_share=float(np.mean([r.genre_share for r in rates])),
    )


def measure(
    engine: TwoTowerEngine,
    train_part: pl.DataFrame,
    test_part: pl.DataFrame,
    items: pl.DataFrame,
    genres: tuple[str, ...],
    *,
    seeds: int,
    size: int,
    repeats: int,
    seed_pool: str = "raters",
    rng_seed: int = 42,
) -> list[GenreLift]:
    """Lift per genre (see the module docstring); seeds and candidates are users the model knows."""
    known = set(engine.bundle.users.get_column("user_id").to_list())
    results = []
    for genre in genres:
        in_genre = items.select("item_id", pl.col("genres").list.contains(genre).alias("in_genre"))
        train_g = train_part.join(in_genre, on="item_id", how="left")
        test_g = test_part.join(in_genre, on="item_id", how="left").with_columns(
            pl.col("in_genre").fill_null(False)
        )
        shares = _genre_shares(train_g)
        fans = _seed_pool(shares, seed_pool, known)
        rng = np.random.default_rng(rng_seed)
        random_rates: list[GroupRates] = []
        lookalike_rates: dict[str, list[GroupRates]] = {s.value: [] for s in SeedScoring}
        lookalike_rates[RULE] = []
        by_share = _by_genre_share(shares, known)
        for _ in range(repeats):
            chosen = [fans[i] for i in rng.choice(len(fans), size=min(seeds, len(fans)), replace=False)]
            others = sorted(known - set(chosen))
            random_rates.append(_rates(others, test_g))
            for scoring in SeedScoring:
                audience = engine.audiences.expand(SimilarUsersQuery(tuple(chosen), size, scoring))
                lookalike_rates[scoring.value].append(_rates([u.user_id for u in audience.users], test_g))
            seeds_set = set(chosen)
            rule = [u for u in by_share if u not in seeds_set][:size]
            lookalike_rates[RULE].append(_rates(rule, test_g))
        results.append(
            GenreLift(
                genre=genre,
                fans_share=len(fans) / max(len(known), 1),
                random=_mean(random_rates),
                lookalike={name: _mean(rates) for name, rates in lookalike_rates.items()},
            )
        )
    return results


def _lift(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base > 0 else "n/a"


def format_table(results: list[GenreLift]) -> str:
    """Markdown table: per genre, random vs lookalike response (and lifts) per seed scoring."""
    methods = list(results[0].lookalike) if results else []
    header = ["genre", "seed pool (share of users)", "random response", "random active resp.", "random share"]
    for m in methods:
        header += [f"{m} response", f"{m} lift", f"{m} active lift", f"{m} share lift"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        row = [
            r.genre,
            f"{r.fans_share:.0%}",
            f"{r.random.response:.3f}",
            f"{r.random.active_response:.3f}",
            f"{r.random.genre_share:.3f}",
        ]
        for m in methods:
            g = r.lookalike[m]
            row += [
                f"{g.response:.3f}",
                _lift(g.response, r.random.response),
                _lift(g.active_response, r.random.active_response),
                _lift(g.genre_share, r.random.genre_share),
            ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="`recsys import movielens` output directory")
    parser.add_argument("--work", type=Path, required=True, help="working directory (the bundle goes here)")
    parser.add_argument("--split", choices=["global", "user"], default="global")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=50, help="seed users per draw")
    parser.add_argument("--size", type=int, default=100, help="lookalike audience size")
    parser.add_argument("--repeats", type=int, default=10, help="seed draws per genre")
    parser.add_argument("--genres", nargs="+", default=list(DEFAULT_GENRES))
    parser.add_argument(
        "--seed-pool", choices=["raters", "fans"], default="fans", help="who seeds are drawn from"
    )
    parser.add_argument("--reuse-bundle", action="store_true", help="skip training if WORK/bundle exists")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    dataset = load_dataset(args.data / "interactions.parquet", None, args.data / "items.parquet")
    train_part, test_part = split_parts(dataset.interactions, args.split)
    config = load_config(
        None,
        [
            f"train.epochs={args.epochs}",
            "train.progress=false",
            "eval.protocol=none",
            "tracking.enabled=false",
            *args.overrides,
        ],
    )
    bundle = args.work / "bundle"
    if not (args.reuse_bundle and bundle.exists()):
        bundle = train_bundle(args.data, train_part, args.work, config)
    engine = TwoTowerEngine.load(bundle)
    assert dataset.items is not None
    results = measure(
        engine,
        train_part,
        test_part,
        dataset.items,
        tuple(args.genres),
        seeds=args.seeds,
        size=args.size,
        repeats=args.repeats,
        seed_pool=args.seed_pool,
    )
    known = engine.bundle.users.height
    active = test_part.filter(
        pl.col("user_id").is_in(engine.bundle.users.get_column("user_id").to_list())
    ).get_column("user_id")
    print(
        f"split {args.split}: {train_part.height} training / {test_part.height} test ratings; "
        f"{known} users known to the model, {active.n_unique()} of them active in the test part; "
        f"{args.repeats} draws of {args.seeds} seeds from the {args.seed_pool} pool, audiences of {args.size}"
    )
    print(format_table(results))


if __name__ == "__main__":
    main()
