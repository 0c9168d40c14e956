"""The ``linear`` objective: a closed-form item-item model written into the two towers.

The item-item weights ``B`` are EASE's (below) or, with ``train.linear_model = "slist"``, SLIST's
next-item closed form (:mod:`training.fit.linear.slist`); everything after ``B`` is the same.

EASE (Steck 2019) is the strongest closed-form recommender on bag-of-items data: with the binary
user x item matrix ``X`` and ``P = (X^T X + l2 I)^-1``, the item-item weights are ``B = -P / diag(P)``
(zero diagonal) and a user's scores are ``x_u B``. ``x_u B`` is a sum over the user's items, which is
what a two-tower model with a *mean* history encoder computes up to a per-user scale (that never
changes a ranking), so EASE is a configuration of our model, not a second model family:

* ``B ~= U S V^T`` (randomised SVD at ``train.linear_rank``, exact when the catalogue is smaller),
  of which the towers keep the leading ``train.linear_tower_rank`` components (chosen on validation:
  :func:`choose_tower_rank`);
  history rows ``U sqrt(S)`` form the user tower's own history table, target rows ``V sqrt(S)`` the
  item tower's id table (``sqrt(S)`` on both sides, so that item-item inner products keep the
  spectrum's weight and :rpc:`SimilarItems` stays meaningful);
* the towers are linear (no hidden layer, identity on the id / history part, zero on the attributes,
  which the closed form does not use); the item vectors are augmented with one coordinate
  ``sqrt(1 - |q|^2 / M^2)`` after scaling by the largest norm ``M``, so that they are unit vectors
  as the item tower's normalisation requires while their inner products with a user's vector keep
  the ranking of ``x_u B`` (the classic inner-product-to-cosine reduction; user vectors get 0 there).

The result is an ordinary bundle: serving runs the same towers on the same histories (the request's
recent items included), with nothing to know about how the weights were found. The fit is one
"epoch" for :class:`~training.fit.trainer.TrainingRun` (``closed_form``): the validation split
scores it once, and a refit replays that one epoch on all the training data.
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import polars as pl
import scipy.linalg

from serving.model.towers import TwoTowerModel
from training.config import Config, TrainConfig
from training.evaluation.baselines import EASE
from training.evaluation.evaluate import rank_test_users, two_tower_scores
from training.evaluation.metrics import paired_lower_bound
from training.features import Prepared
from training.fit.linear.closed_form import ClosedFormTask, linear_tower_spec, write_linear
from training.fit.linear.slist import slist_weights

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

POWER_ITERATIONS = 2
"""Subspace iterations of the randomised SVD (Halko et al. 2011); what the BENCHMARKS.md figures
were measured with."""
OVERSAMPLING = 16
"""Extra random directions of the randomised SVD's range finder."""


def factorise(weights: FloatArray, rank: int, seed: int) -> tuple[FloatArray, FloatArray]:
    """(history rows ``U sqrt(S)``, target rows ``V sqrt(S)``), each ``(n, min(rank, n))``, with
    ``history @ target.T`` the best rank-``rank`` approximation of ``weights`` (exact at full rank)."""
    n = weights.shape[0]
    if rank + OVERSAMPLING >= n:  # the range finder would ask for as many directions as there are items
        u, s, vt = np.linalg.svd(weights, full_matrices=False)
    else:
        rng = np.random.default_rng(seed)
        y = weights @ rng.standard_normal((n, rank + OVERSAMPLING)).astype(weights.dtype)
        for _ in range(POWER_ITERATIONS):
            y = weights @ (weights.T @ orthonormal(y))
        q = orthonormal(y)
        small = q.T @ weights
        # The SVD of the short, wide ``small`` through its Gram matrix's eigenvectors: LAPACK's SVD of
        # a 2,064 x 12,101 matrix took 94 s on 2 cores, this takes a few.
        gram = (small @ small.T).astype(np.float64)
        values, vectors = np.linalg.eigh(gram)
        order = np.argsort(values)[::-1]
        values, vectors = np.maximum(values[order], 0.0), vectors[:, order]
        s = np.sqrt(values)
        vt = (vectors.T @ small) / np.maximum(s, 1e-12)[:, None]
        u = q @ vectors
    d = min(rank, n)
    root = np.sqrt(np.maximum(s[:d], 0.0))
    return (u[:, :d] * root).astype(np.float32), (vt[:d].T * root).astype(np.float32)


def orthonormal(columns: FloatArray) -> FloatArray:
    """An orthonormal basis of the span of ``columns`` (n x r, n >> r) by CholeskyQR2: two rounds of
    ``Q = Y R^-1`` with ``R`` the Cholesky factor of the small Gram matrix ``Y^T Y``. A tall QR
    (LAPACK) took 15-40 s at 12,101 x 2,064 on 2 cores, this a fraction; the second round restores
    the orthogonality the first loses to the squared condition number."""
    basis = columns
    for _ in range(2):
        gram = (basis.T @ basis).astype(np.float64)
        gram[np.diag_indices_from(gram)] += 1e-10 * max(float(np.trace(gram)), 1e-30)
        factor = scipy.linalg.cholesky(gram, lower=True)
        basis = scipy.linalg.solve_triangular(factor, basis.T.astype(np.float64), lower=True).T
    result: FloatArray = basis.astype(np.float32)
    return result


def to_unit_targets(targets: FloatArray) -> FloatArray:
    """``(n, d + 1)`` unit rows ``[t / M, sqrt(1 - |t|^2 / M^2)]`` (``M`` the largest row norm): inner
    products with ``[h, 0]`` are ``h . t / M``, the same ranking for every ``h``."""
    norms = np.linalg.norm(targets, axis=1)
    largest = float(norms.max()) if len(norms) else 1.0
    scaled = targets / max(largest, 1e-12)
    extra = np.sqrt(np.clip(1.0 - (norms / max(largest, 1e-12)) ** 2, 0.0, 1.0))
    return np.concatenate([scaled, extra[:, None]], axis=1).astype(np.float32)


def tower_rank(n_items: int, config: Config) -> int:
    """How many leading components of the factorisation the towers keep (``train.linear_tower_rank``,
    0 meaning ``linear_rank``), at most the factorisation's own rank."""
    cfg = config.train
    factorised = min(cfg.linear_rank, n_items)
    return min(cfg.linear_tower_rank, factorised) if cfg.linear_tower_rank > 0 else factorised


def closed_form_dim(n_items: int, config: Config) -> int:
    """The towers' width for the linear objective: the kept rank plus the unit coordinate."""
    return tower_rank(n_items, config) + 1


Factors = tuple[FloatArray, FloatArray]
_FITS_KEPT = 2
_recent_fits: list[tuple[weakref.ref[Prepared], tuple[object, ...], Factors]] = []
"""The most recent fits (newest last), kept while their data lives: ``auto`` tries several history
decays over the same closed form (the decay only weighs the history rows), EASE and SLIST side by side,
and several tower ranks over the winner's factorisation (a rank keeps the leading columns); the fit is
the expensive part."""


def fit_key(config: Config) -> tuple[object, ...]:
    """What a fit depends on besides the data: two configurations with the same key share it."""
    cfg = config.train
    common = (cfg.linear_model, cfg.linear_rank, cfg.linear_max_items, cfg.seed)
    if cfg.linear_model == "slist":
        return (*common, cfg.slist_alpha, cfg.slist_decay, cfg.slist_l2, config.data.history_length)
    return (*common, cfg.linear_l2)


def item_item_weights(prepared: Prepared, config: Config) -> FloatArray:
    """The closed form's ``items x items`` weights ``B`` (``train.linear_model``), zero diagonal."""
    cfg = config.train
    if cfg.linear_model == "slist":
        return slist_weights(
            prepared,
            alpha=cfg.slist_alpha,
            decay=cfg.slist_decay,
            l2=cfg.slist_l2,
            longest=config.data.history_length,
            max_items=cfg.linear_max_items,
        )
    ease = EASE(l2=cfg.linear_l2, max_items=cfg.linear_max_items)
    ease.fit(prepared)
    assert ease.weights is not None
    weights: FloatArray = ease.weights
    return weights


def fit_factors(prepared: Prepared, config: Config) -> Factors:
    """(history rows, target rows) of the closed form on ``prepared`` at ``train.linear_rank``, leading
    components first (module docstring); the target rows are not yet unit (:func:`to_unit_targets`)."""
    key = fit_key(config)
    _recent_fits[:] = [fit for fit in _recent_fits if fit[0]() is not None]
    for fit in _recent_fits:
        if fit[0]() is prepared and fit[1] == key:
            return fit[2]
    del _recent_fits[: max(len(_recent_fits) - _FITS_KEPT + 1, 0)]  # release before computing anew
    weights = item_item_weights(prepared, config)
    factors = factorise(weights, config.train.linear_rank, config.train.seed)
    del weights
    _recent_fits.append((weakref.ref(prepared), key, factors))
    return factors


RANK_LADDER_START = 32
"""The narrowest tower rank tried when the rank is chosen on validation; each next one doubles."""

Judge = Callable[[TwoTowerModel], npt.NDArray[np.float64]]
"""Per-user validation NDCG@k of what a candidate linear model is served as (itself, or a blend's part)."""


def choose_tower_rank(
    prepared: Prepared,
    config: Config,
    validation: pl.DataFrame,
    judge: Judge | None = None,
) -> tuple[int, list[tuple[int, float]]]:
    """The narrowest tower rank (32, 64, 128, ... below the factorisation's) that keeps
    ``train.linear_rank_keep`` of the full factorisation's NDCG@k on ``validation`` with 95 %
    confidence, and every tried rank's validation NDCG, the full rank last.

    Served cost (index search, explanations, re-ranking) grows with the width, and the leading
    components often rank as well as all of them. But a validation split of a few hundred users
    cannot tell 1 % apart: on ml-100k llo rank 32 scored 1.02x the full rank on validation and 0.97x on
    the test. So the test is paired and one-sided: the per-user NDCG differences (narrow minus full, same
    users) must have a lower 95 % bound of at least ``-(1 - keep)`` times the full NDCG; a narrow rank
    passes where its lists barely differ from the full rank's, or where it is clearly better.

    ``judge``: the per-user NDCG@k on ``validation`` of what is served with the linear towers at a
    rank (a blend's part: the blend, see :func:`training.fit.auto.select_objective`); default the
    linear model alone. A part that carries a tenth of a blend's score rarely needs its full rank.
    """
    full = min(config.train.linear_rank, prepared.n_items)  # what the factorisation has
    k = config.eval.k

    def per_user(rank: int) -> npt.NDArray[np.float64]:
        task = LinearTask(prepared, dataclasses.replace(config, train=_with_tower_rank(config, rank)))
        task.fit()
        if judge is not None:
            return judge(task.model)
        ranking = rank_test_users(two_tower_scores(task.model, prepared), prepared, validation, k)
        return ranking.per_user_ndcg(k)

    reference = per_user(full)
    allowed = -(1.0 - config.train.linear_rank_keep) * float(reference.mean())
    tried: list[tuple[int, float]] = []
    rank = RANK_LADDER_START
    while rank < full:
        difference = per_user(rank) - reference
        bound = paired_lower_bound(difference)
        tried.append((rank, float(reference.mean() + difference.mean())))
        log.info(
            "linear tower rank %d: validation ndcg %.4f (rank %d: %.4f), change >= %+.4f at 95%%",
            rank,
            tried[-1][1],
            full,
            float(reference.mean()),
            bound,
        )
        if len(difference) > 1 and bound >= allowed:
            return rank, [*tried, (full, float(reference.mean()))]
        rank *= 2
    return full, [*tried, (full, float(reference.mean()))]


def _with_tower_rank(config: Config, rank: int) -> TrainConfig:
    return dataclasses.replace(config.train, linear_tower_rank=rank)


class LinearTask(ClosedFormTask):
    """EASE or SLIST fitted and written into linear towers (module docstring)."""

    def __init__(self, prepared: Prepared, config: Config) -> None:
        spec = linear_tower_spec(
            prepared,
            config,
            closed_form_dim(prepared.n_items, config),
            user_id_embedding=False,
            shared_history_embedding=False,
        )
        super().__init__(prepared, config, spec)

    def fit(self) -> str:
        """The leading tower-rank columns of the history rows into the user tower's own table, the
        unit target rows (rank + 1) into the item tower's."""
        history, targets = fit_factors(self.prepared, self.config)
        factorised, rank = history.shape[1], tower_rank(self.prepared.n_items, self.config)
        history, targets = history[:, :rank], to_unit_targets(targets[:, :rank])
        user, item = self.model.user_tower, self.model.item_tower
        write_linear(self.model, [(user.item_ids, history), (item.item_ids, targets)], targets.shape[1])
        model = self.config.train.linear_model
        return f"linear ({model}): {self.prepared.n_items} items, tower rank {rank} of {factorised}"
