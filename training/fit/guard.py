"""The other shape of future: ``auto`` must not choose a model that collapses on it.

A validation split has one shape. Leave-last-out asks "what next" (a session, a basket to
complete); a random split asks "what else do they like" (a campaign list, a member's whole taste).
A model chosen on one can collapse on the other: on ml-100k SASRec leads next-item validation and
scores 0.39x EASE on a random 75/25 split, because the recent items that win "what next" say little
about the rest of a member's taste. A caller who never said which future they want (the default
``eval.protocol``) gets both asked of the same bundle.

So ``auto`` (:func:`training.fit.auto.select_objective`) holds out a seeded quarter of the validation
users (at most :data:`GUARD_MAX_USERS`) in the *other* shape (:data:`GUARD_SHAPES`): their whole
history is split again with that protocol, the held-out rows are the guard's validation, and those
users leave the primary validation (each user is validated on one shape, nothing is seen twice).

The bar is the field's baseline on the other shape, not the best candidate there: the best of the
plain item-item and factor models (:data:`BASELINES`: EASE, iALS and ELSA, its low-rank form), whose
level on either shape is what "not collapsed" means (a next-item model is not asked to match the best
"what else" model, nor the reverse). A model (a candidate or a blend) is *ineligible* when its guard
NDCG@k is below ``train.auto_guard_keep`` times the baseline's *beyond noise*: the one-sided 95 % upper
bound of the paired per-user difference is below zero. Next-item hits on a few hundred users are
sparse, so a point estimate would reject good models by chance; a collapse (ml-100k: SASRec at 0.40x
the baseline on a random split) is far outside that noise. The chosen model is the best eligible one
on the primary validation. The time protocol has no guard: its future is a mix of both shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from serving.model.towers import TwoTowerModel
from training.evaluation import Split, split_for
from training.evaluation.evaluate import rank_test_users, two_tower_scores
from training.evaluation.metrics import paired_lower_bound
from training.features import Prepared

__all__ = [
    "BASELINES",
    "GUARD_MAX_USERS",
    "GUARD_SHAPES",
    "GUARD_SHARE",
    "Guard",
    "GuardedSplit",
    "guard_ndcg",
    "guarded_split",
]

BASELINES = ("linear", "mf", "elsa")
"""The candidates that stand for the field's baselines (EASE, iALS, ELSA) on the other shape."""
FloatArray = npt.NDArray[np.float64]

GUARD_SHAPES: Mapping[str, str] = {"llo": "rand", "rand": "llo"}
"""The other shape of each validation protocol that has one."""
GUARD_SHARE = 0.25
"""Share of the validation users held out in the other shape."""
GUARD_MAX_USERS = 4000
"""At most this many guard users (the guard's figure is a ratio between candidates on the same users:
a few thousand pin it well below the 10 % it tolerates)."""
GUARD_MIN_USERS = 20
"""Below this many guard users there is no guard (the figure would be noise)."""


@dataclass(frozen=True)
class GuardedSplit:
    """The selection's data once the guard users are carved out."""

    shape: str
    """Protocol of the guard's validation (the other shape)."""
    train: pl.DataFrame
    """Training rows: the primary split's, minus what the guard holds out of the guard users."""
    validation: pl.DataFrame
    """The primary split's validation rows of the other users."""
    guard: pl.DataFrame
    """The guard users' held-out rows, split with ``shape``."""
    users: int


@dataclass(frozen=True)
class Guard:
    """The guard's validation rows, every candidate's per-user NDCG@k on them, and the baseline's."""

    shape: str
    rows: pl.DataFrame
    keep: float
    users: int
    per_user: Mapping[str, FloatArray]
    """Every candidate's per-user guard NDCG@k, by name (the same users in the same order)."""
    baseline: str
    """The candidate whose guard NDCG@k sets the bar (the best of :data:`BASELINES` there)."""

    @property
    def scores(self) -> dict[str, float]:
        """Every candidate's mean guard NDCG@k, by name."""
        return {name: _mean(scores) for name, scores in self.per_user.items()}

    @property
    def floor(self) -> float:
        """``keep`` times the baseline's mean guard NDCG@k (a model is held to it within noise)."""
        return self.keep * _mean(self.per_user[self.baseline])

    def eligible(self, name: str) -> bool:
        """Whether candidate ``name`` keeps the floor within noise."""
        return self.keeps(self.per_user[name])

    def keeps(self, per_user: FloatArray) -> bool:
        """Whether a model with these per-user guard NDCG@k keeps the floor within noise: the one-sided
        95 % upper bound of its paired difference to ``keep`` times the baseline is not below zero."""
        difference = per_user - self.keep * self.per_user[self.baseline]
        if len(difference) < 2:
            return True
        return -paired_lower_bound(-difference) >= 0.0

    def manifest(self) -> dict[str, object]:
        return {
            "shape": self.shape,
            "users": self.users,
            "keep": self.keep,
            "baseline": self.baseline,
            "floor": self.floor,
            "ndcg": self.scores,
            "eligible": {name: self.eligible(name) for name in self.per_user},
        }


def guard_for(guarded: GuardedSplit, per_user: Mapping[str, FloatArray], keep: float) -> Guard:
    """The guard over candidates' per-user scores (:func:`guard_ndcg`); the baseline is the best of
    :data:`BASELINES` among them (the best candidate when none is there)."""
    present = [name for name in BASELINES if name in per_user] or list(per_user)
    baseline = max(present, key=lambda name: _mean(per_user[name]))
    return Guard(guarded.shape, guarded.guard, keep, guarded.users, per_user, baseline)


def _mean(scores: FloatArray) -> float:
    return float(scores.mean()) if len(scores) else 0.0


def guarded_split(parts: Split, protocol: str, min_interactions: int, seed: int) -> GuardedSplit | None:
    """``parts`` with a seeded share of its validation users re-split in the other shape, or None when
    ``protocol`` has no other shape or there are too few users for a guard (module docstring)."""
    shape = GUARD_SHAPES.get(protocol)
    if shape is None:
        return None
    users = parts.test.get_column("user_id").unique().sort()
    n = min(GUARD_MAX_USERS, round(GUARD_SHARE * users.len()))
    if n < GUARD_MIN_USERS:
        return None
    chosen = pl.col("user_id").is_in(users.sample(n, seed=seed).implode())
    whole = pl.concat([parts.train.filter(chosen), parts.test.filter(chosen)], how="vertical_relaxed")
    other = split_for(whole, shape, min_interactions)  # type: ignore[arg-type]
    return GuardedSplit(
        shape=shape,
        train=pl.concat([parts.train.filter(~chosen), other.train], how="vertical_relaxed"),
        validation=parts.test.filter(~chosen),
        guard=other.test,
        users=n,
    )


def guard_ndcg(model: TwoTowerModel, prepared: Prepared, rows: pl.DataFrame, k: int) -> FloatArray:
    """``model``'s per-user NDCG@k on the guard's rows (ranked users in ascending row order)."""
    return rank_test_users(two_tower_scores(model, prepared), prepared, rows, k).per_user_ndcg(k)
