"""Engine cost per query, in-process: where a Recommend call's CPU goes once gRPC is taken away.

``python -m benchmarks.engine --bundle DIR [--batch 16] [--queries 4000] [--recent 5] [--profile]``

Loads the bundle as the server does (:class:`~serving.recommend.engine.TwoTowerEngine`), warms the
stored user vectors (as serving's warm-up does), then answers ``--queries`` plain requests (a random
known user, k = 10) in batches of ``--batch`` through ``recommend_many``, the call the micro-batcher
makes; then the same with ``--recent`` request-time recent items per query (the user tower runs).
Beside each it times the floor of the same batches: the index search alone for the same user vectors
(``serving.bundle.index.search`` at k plus the seen items), so the engine's figure reads as a multiple
of a search. ``--profile`` prints the top functions by cumulative time for the plain run (cProfile,
one thread). One BLAS/FAISS thread throughout (``threadpoolctl``), as one serving worker thread has.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from serving.bundle.index import search
from serving.recommend.engine import TwoTowerEngine
from serving.recommend.types import RecommendQuery


def _batches(users: list[str], batch: int, recent: list[list[str]] | None) -> list[list[RecommendQuery]]:
    out = []
    for start in range(0, len(users), batch):
        chunk = range(start, min(start + batch, len(users)))
        out.append(
            [RecommendQuery(users[i], 10, recent_item_ids=tuple(recent[i]) if recent else ()) for i in chunk]
        )
    return out


def _time(run: object, repeat: int = 1) -> float:
    assert callable(run)
    started = time.perf_counter()
    for _ in range(repeat):
        run()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--queries", type=int, default=4000)
    parser.add_argument("--recent", type=int, default=5, help="recent items per query in the second run")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    with threadpool_limits(1):
        import torch

        torch.set_num_threads(1)
        started = time.perf_counter()
        engine = TwoTowerEngine.load(args.bundle)
        load_s = time.perf_counter() - started
        bundle = engine.bundle
        rng = np.random.default_rng(args.seed)
        all_users = bundle.users.get_column("user_id").to_list()
        item_ids = bundle.item_encoder.ids.tokens
        users = [all_users[i] for i in rng.integers(0, len(all_users), args.queries)]
        recent = [
            [item_ids[int(r)] for r in rng.integers(0, len(item_ids), args.recent)]
            for _ in range(args.queries)
        ]
        started = time.perf_counter()
        engine.embed_rows(np.arange(len(all_users), dtype=np.int64))
        warm_s = time.perf_counter() - started

        plain = _batches(users, args.batch, None)
        with_recent = _batches(users, args.batch, recent)
        rows = [np.array([engine.user_row(q.user_id) for q in b], dtype=np.int64) for b in plain]
        vectors = [engine.embed_rows(r) for r in rows]
        fetch = [
            10 + int(bundle.sequences.take(r).lengths().max(initial=0)) for r in rows
        ]  # what the engine over-fetches for seen items

        def floor() -> None:
            for v, f in zip(vectors, fetch, strict=True):
                search(bundle.index, v, min(f, bundle.index.ntotal))

        def run_plain() -> None:
            for b in plain:
                engine.recommend_many(b)

        def run_recent() -> None:
            for b in with_recent:
                engine.recommend_many(b)

        run_plain()  # warm caches and lazy look-ups
        n = args.queries
        floor_s = min(_time(floor) for _ in range(3))
        plain_s = min(_time(run_plain) for _ in range(3))
        recent_s = min(_time(run_recent) for _ in range(2))
        spec = bundle.spec
        print(
            f"bundle {args.bundle}: {bundle.index.ntotal} items, tower width {spec.output_dim}, "
            f"history {spec.history_length} ({spec.history_encoder}, decay {spec.history_decay}); "
            f"load {load_s:.2f} s, stored user vectors {warm_s:.2f} s"
        )
        print(f"batches of {args.batch}, {n} queries, one thread, ms per query:")
        print(f"  index search alone (floor)    {1000 * floor_s / n:8.3f}")
        ratio = plain_s / floor_s
        print(f"  recommend_many, plain         {1000 * plain_s / n:8.3f}   ({ratio:.2f}x the floor)")
        print(f"  recommend_many, {args.recent} recent items {1000 * recent_s / n:8.3f}")
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            run_plain()
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
            print(out.getvalue())
            profiler = cProfile.Profile()
            profiler.enable()
            run_recent()
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(20)
            print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
