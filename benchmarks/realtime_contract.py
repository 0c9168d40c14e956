"""The real-time serving contract of a bundle, measured: do the request's recent items move the answer?

``python -m benchmarks.realtime_contract --bundle DIR [--users 200] [--recent 5] [--seed 0]``

For ``--users`` random known users: the plain list (k = 10) against the list when the request carries
``--recent`` random catalogue items (the share of lists that change). For as many unknown users, each
with ``--recent`` random items: whether the answer is personalised (no fallback), whether any score is
non-zero, and how many distinct lists the distinct item sets give. Prints one line per figure.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from serving.recommend.engine import TwoTowerEngine
from serving.recommend.types import RecommendQuery


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--recent", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    engine = TwoTowerEngine.load(args.bundle)
    rng = np.random.default_rng(args.seed)
    known = engine.bundle.users.get_column("user_id").to_list()
    items = engine.bundle.item_encoder.ids.tokens.to_list()

    def recent() -> tuple[str, ...]:
        return tuple(items[i] for i in rng.choice(len(items), args.recent, replace=False))

    changed = 0
    for user in (known[i] for i in rng.choice(len(known), min(args.users, len(known)), replace=False)):
        plain = [item.item_id for item in engine.recommend(RecommendQuery(user, 10)).items]
        moved = [
            item.item_id
            for item in engine.recommend(RecommendQuery(user, 10, recent_item_ids=recent())).items
        ]
        changed += plain != moved
    personalised = nonzero = 0
    lists = set()
    for i in range(args.users):
        answer = engine.recommend(RecommendQuery(f"unknown-{i}", 10, recent_item_ids=recent()))
        personalised += answer.fallback_reason is None
        nonzero += any(item.score != 0.0 for item in answer.items)
        lists.add(tuple(item.item_id for item in answer.items))
    n = min(args.users, len(known))
    spec = engine.bundle.spec
    print(
        f"bundle {args.bundle}: width {spec.output_dim}, user-id table {spec.user_id_embedding}, "
        f"history {spec.history_length} ({spec.history_encoder}, decay {spec.history_decay})"
    )
    print(
        f"known users whose list changes with {args.recent} recent items: {changed}/{n} ({changed / n:.0%})"
    )
    print(
        f"unknown users with recent items: personalised {personalised}/{args.users}, "
        f"some score non-zero {nonzero}/{args.users}, distinct lists {len(lists)}/{args.users}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
