"""Blends: a weighted sum of two trained candidates' scores, itself a two-tower model.

``score = a * s1 + b * s2`` is the inner product of the concatenated user vectors ``[a u1, b u2]`` with
the concatenated item vectors ``[i1, i2]`` (:func:`serving.model.towers.blend_spec`), so a blend is an
ordinary bundle: serving runs both parts' towers on the same request and searches one index.

Each part's scores are first divided by their spread (the standard deviation of its validation
scores), so that the share ``w`` of the second part means the same whatever the parts' scales; the
share is chosen on half of the validation users (every tenth of 0.1 .. 0.9) and the blend is kept only
where, on the *other* half, its per-user NDCG beats the better part's with a one-sided 95 % lower bound
above zero: a blend must win by more than noise, measured on users its weight was not chosen on.
With ``auto``'s guard (:mod:`training.fit.guard`) only blends that keep its floor on the other shape
of future can be chosen, against the better part that keeps it.

Cost: every weighting (each part alone and the nine shares) is ranked in one pass over the users
(:func:`~training.evaluation.evaluate.rank_test_users_many`): each part's scores are computed once per
batch of users, not once per share (on Amazon Beauty with a 2,048-wide part: 119 s -> 26 s a blend,
with the faster top-k of :func:`~training.evaluation.top_k_excluding`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from serving.model.embedding import embed_items, embed_users
from serving.model.towers import TwoTowerModel, blend_spec
from training.evaluation.evaluate import Ranking, rank_test_users_many, score_batch_rows
from training.evaluation.metrics import paired_lower_bound
from training.features import Prepared
from training.fit.guard import Guard

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

SHARES = tuple(round(0.1 * i, 1) for i in range(1, 10))
"""Shares of the second part tried (the first part gets the rest)."""
SCALE_USERS = 512
"""Users whose scores measure a part's spread."""


@dataclass(frozen=True)
class BlendChoice:
    """Two candidates and the share of the second, as chosen on validation."""

    names: tuple[str, str]
    share: float
    """Weight of the second part's spread-normalised scores (the first gets ``1 - share``)."""
    validation_ndcg: float
    """The blend's NDCG@k on the held-out half of the validation users."""
    best_part_ndcg: float
    """The better part's NDCG@k on the same users."""
    gain_lower_bound: float
    """One-sided 95 % lower bound of the per-user gain over the better part (> 0 to be kept)."""
    guard_ndcg: float | None = None
    """The blend's NDCG@k on the guard's users (:mod:`training.fit.guard`; None without a guard)."""

    def weights(self, scales: tuple[float, float]) -> tuple[float, float]:
        """User-vector weights of the two parts given their score spreads."""
        return (1.0 - self.share) / scales[0], self.share / scales[1]


def score_spread(model: TwoTowerModel, prepared: Prepared) -> float:
    """Standard deviation of ``model``'s scores of every item for a fixed sample of users."""
    rows = np.arange(min(prepared.n_users, SCALE_USERS), dtype=np.int64)
    users = embed_users(model, prepared.user_features, prepared.sequences, rows)
    items = embed_items(model, prepared.item_features)
    return max(float(np.std(users @ items.T)), 1e-12)


def blended(first: TwoTowerModel, second: TwoTowerModel, weights: tuple[float, float]) -> TwoTowerModel:
    """The blend of two trained models as one model (their weights copied, nothing trained)."""
    model = TwoTowerModel(blend_spec((first.spec, second.spec), weights))
    for part, trained in zip(model.parts, (first, second), strict=True):
        part.load_state_dict(trained.state_dict())
    return model.eval()


@dataclass(frozen=True)
class EvaluatedBlend:
    """A blend's best share and its per-user NDCG@k on the held-out half of the validation users."""

    choice: BlendChoice
    held_out: npt.NDArray[np.float64]
    """Per-user NDCG@k on the held-out half, in validation-user order (the same users and order for
    every blend ranked on the same validation rows, so two blends compare user by user)."""

    @property
    def kept(self) -> bool:
        """Whether it beats the better (eligible) part by more than noise."""
        return len(self.held_out) > 1 and self.choice.gain_lower_bound > 0


def evaluate_blend(
    prepared: Prepared,
    validation: pl.DataFrame,
    k: int,
    first: tuple[str, TwoTowerModel],
    second: tuple[str, TwoTowerModel],
    guard: Guard | None = None,
) -> EvaluatedBlend | None:
    """The best share of ``second`` blended with ``first`` (chosen on one half of the validation users,
    measured on the other) and its gain over the better part, or None when no share can take part.

    With a ``guard`` (:mod:`training.fit.guard`) only eligible models take part: shares whose blend
    falls below the guard's floor are not chosen, and the part to beat is the better *eligible* one
    (None when neither part is eligible)."""
    models = (first[1], second[1])
    eligible_parts = [guard is None or guard.eligible(name) for name in (first[0], second[0])]
    if not any(eligible_parts):
        return None
    scales = (score_spread(models[0], prepared), score_spread(models[1], prepared))
    users = [
        embed_users(
            m, prepared.user_features, prepared.sequences, np.arange(prepared.n_users, dtype=np.int64)
        )
        for m in models
    ]
    items = [embed_items(m, prepared.item_features) for m in models]

    def rankings(weightings: list[tuple[float, float]], rows: pl.DataFrame) -> list[Ranking]:
        """One ranking of ``rows`` per weighting; each part's scores are computed once per batch."""

        def weighted(batch: npt.NDArray[np.int64]) -> Iterator[FloatArray]:
            parts = (users[0][batch] @ items[0].T, users[1][batch] @ items[1].T)  # this batch's, bound here
            return (w[0] * parts[0] + w[1] * parts[1] for w in weightings)

        def batches(user_rows: npt.NDArray[np.int64]) -> Iterator[Iterator[FloatArray]]:
            step = score_batch_rows(prepared.n_items)
            for start in range(0, len(user_rows), step):
                yield weighted(user_rows[start : start + step])

        return rank_test_users_many(batches, prepared, rows, k, len(weightings))

    share_weights = [((1.0 - share) / scales[0], share / scales[1]) for share in SHARES]
    on_validation = rankings([(1.0, 0.0), (0.0, 1.0), *share_weights], validation)
    on_guard: list[npt.NDArray[np.float64] | None] = (
        [None] * len(SHARES)
        if guard is None
        else [r.per_user_ndcg(k) for r in rankings(share_weights, guard.rows)]
    )
    user_rows = on_validation[0].user_rows
    alone_first, alone_second = (r.per_user_ndcg(k) for r in on_validation[:2])
    choose, confirm = user_rows % 2 == 0, user_rows % 2 == 1
    best_share, best_choose, best_scores, best_guard = 0.0, -1.0, alone_first, None
    for share, ranked, guarded in zip(SHARES, on_validation[2:], on_guard, strict=True):
        if guard is not None and guarded is not None and not guard.keeps(guarded):
            continue
        scores = ranked.per_user_ndcg(k)
        if scores[choose].mean() > best_choose:
            best_share, best_choose, best_scores, best_guard = (
                share,
                float(scores[choose].mean()),
                scores,
                guarded,
            )
    if best_choose < 0:
        return None  # no share is eligible
    parts = [p for p, ok in zip((alone_first, alone_second), eligible_parts, strict=True) if ok]
    better = max(parts, key=lambda p: float(p[confirm].mean()))
    gain = best_scores[confirm] - better[confirm]
    bound = paired_lower_bound(gain)
    choice = BlendChoice(
        names=(first[0], second[0]),
        share=best_share,
        validation_ndcg=float(best_scores[confirm].mean()),
        best_part_ndcg=float(better[confirm].mean()),
        gain_lower_bound=bound,
        guard_ndcg=None if best_guard is None else float(best_guard.mean()) if len(best_guard) else 0.0,
    )
    log.info(
        "blend %s + %s at share %.1f: held-out validation ndcg %.4f vs %.4f (gain >= %+.4f at 95%%)%s",
        *choice.names,
        choice.share,
        choice.validation_ndcg,
        choice.best_part_ndcg,
        bound,
        "" if choice.guard_ndcg is None else f", guard ndcg {choice.guard_ndcg:.4f}",
    )
    return EvaluatedBlend(choice, best_scores[confirm])
