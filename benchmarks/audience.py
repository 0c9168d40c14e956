"""Lookalike audiences at scale: build and calibrate a user index over N synthetic users,
then time :meth:`serving.audiences.search.UserAudiences.expand` and measure its recall against
exact search, for several seed counts and audience sizes (one FAISS thread, as a server
engine thread runs; the seeds' user-tower pass is not included: vectors are given).

    python -m benchmarks.audience --users 200000 [--dim 64]
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
import numpy.typing as npt
import polars as pl

from serving.audiences.search import SeedScoring, SimilarUsersQuery, UserAudiences, build_user_index
from serving.bundle.index_options import IndexOptions

FloatArray = npt.NDArray[np.float32]
CASES: tuple[tuple[int, int, SeedScoring], ...] = (
    (50, 1_000, SeedScoring.CONTRAST),
    (1_000, 10_000, SeedScoring.CONTRAST),
    (10_000, 100_000, SeedScoring.CONTRAST),
    (50, 1_000, SeedScoring.CENTROID),
    (50, 1_000, SeedScoring.NEAREST_SEED),
)


def clustered_users(n: int, dim: int, seed: int = 0) -> FloatArray:
    """Unit vectors around 200 random centres (users form taste clusters)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((200, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 200, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    unit: FloatArray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit


def exact_top(
    vectors: FloatArray, seed_rows: npt.NDArray[np.int64], size: int, scoring: SeedScoring
) -> set[int]:
    """The exact answer of ``scoring`` (brute force over every vector)."""
    seeds = vectors[seed_rows]
    if scoring is SeedScoring.NEAREST_SEED:
        scores = np.full(len(vectors), -np.inf, dtype=np.float32)
        for start in range(0, len(seeds), 256):
            scores = np.maximum(scores, (vectors @ seeds[start : start + 256].T).max(axis=1))
    else:
        direction = seeds.mean(axis=0)
        if scoring is SeedScoring.CONTRAST:
            direction = direction - vectors.mean(axis=0)
        scores = vectors @ direction
    scores[seed_rows] = -np.inf
    return set(np.argpartition(-scores, size)[:size].tolist())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(1)
    vectors = clustered_users(args.users, args.dim)
    started = time.perf_counter()
    user_index = build_user_index(vectors, IndexOptions())
    built = user_index.built
    print(
        f"{args.users} users x {args.dim}: {built.spec.type} params {dict(built.spec.params)} calibrated "
        f"{dict(built.spec.search_params)} (recall@{built.k} {built.recall_at_k:.3f}); build + calibration "
        f"{time.perf_counter() - started:.1f} s"
    )
    ids = pl.Series("user_id", [f"u{i}" for i in range(args.users)])
    audiences = UserAudiences(
        built.index, ids, lambda u: int(u[1:]), lambda rows: vectors[rows], "bench", user_index.mean
    )
    rng = np.random.default_rng(1)
    print("| scoring | seeds | size | ms | recall vs exact |\n|---|---|---|---|---|")
    for seeds, size, scoring in CASES:
        if seeds + size > args.users:
            continue
        rows = rng.choice(args.users, seeds, replace=False).astype(np.int64)
        query = SimilarUsersQuery(tuple(f"u{r}" for r in rows), size, scoring)
        audiences.expand(query)  # warm-up
        started = time.perf_counter()
        audience = audiences.expand(query)
        ms = 1000 * (time.perf_counter() - started)
        found = {int(u.user_id[1:]) for u in audience.users}
        recall = len(found & exact_top(vectors, rows, size, scoring)) / size
        print(f"| {scoring.value} | {seeds} | {size} | {ms:.0f} | {recall:.3f} |")


if __name__ == "__main__":
    main()
