"""The real-time serving contract, checked on a loaded engine (every objective's bundle keeps it):
the request's recent items move a known user's list, and an unknown user with recent items gets a
real list made from them (not the fallback, not all-zero scores, different for different items)."""

from __future__ import annotations

import numpy as np

from serving.recommend.engine import TwoTowerEngine
from serving.recommend.types import RecommendQuery


def lists_moved_by_recent_items(engine: TwoTowerEngine, users: list[str], recent: int) -> int:
    """How many of ``users``' top-10 lists change when the request carries ``recent`` random
    catalogue items (seeded); every plain answer is personalised."""
    items = engine.bundle.item_encoder.ids.tokens.to_list()
    rng = np.random.default_rng(0)
    moved = 0
    for user in users:
        recent_ids = tuple(items[i] for i in rng.choice(len(items), recent, replace=False))
        before = engine.recommend(RecommendQuery(user, 10))
        after = engine.recommend(RecommendQuery(user, 10, recent_item_ids=recent_ids))
        assert before.fallback_reason is None
        moved += [i.item_id for i in before.items] != [i.item_id for i in after.items]
    return moved


def unknown_user_lists(engine: TwoTowerEngine, recent: int) -> int:
    """Distinct top-10 lists of an unknown user over five requests carrying ``recent`` different
    catalogue items each; every answer is personalised with a non-zero score."""
    items = engine.bundle.item_encoder.ids.tokens.to_list()
    lists = set()
    for start in range(0, 50, 10):
        answer = engine.recommend(
            RecommendQuery("never-seen", 10, recent_item_ids=tuple(items[start : start + recent]))
        )
        assert answer.fallback_reason is None
        assert any(item.score != 0.0 for item in answer.items)
        lists.add(tuple(item.item_id for item in answer.items))
    return len(lists)
