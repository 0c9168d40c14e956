"""The ``mf`` objective: implicit-feedback matrix factorisation (iALS) written into the two towers.

iALS (Hu, Koren, Volinsky 2008; the ``implicit`` package, as the benchmark's baseline) factorises the
binary user x item matrix into user factors ``x_u`` and item factors ``y_i`` with scores ``x_u . y_i``.
With ``alpha = 1`` on a binary matrix every entry weighs the same (``implicit`` takes ``alpha * X`` as
the observed entries' confidence), and the user factor that best fits a history ``H`` given the item
factors is the ridge solution ``x_u = (Y^T Y + reg I)^-1 sum_{h in H} y_h``: a *linear map of the sum
of the history's item rows*. So the user tower is a history tower, not a user-id table: its own
history table holds ``y_h (Y^T Y + reg I)^-1`` and the mean encoder pools it (the mean is the sum up to
a per-user scale, which never changes a ranking). Known users get iALS's fold-in on their stored
history; the request's recent items move the answer; an unknown user with recent items gets a real
list from them (the serving contract every objective keeps). The towers are linear (identity on the
history part, zero on the attributes), and the item rows are made unit vectors with the extra
coordinate of :func:`training.fit.linear.linear_task.to_unit_targets`, so the inner product keeps the
ranking. Like :class:`~training.fit.linear.linear_task.LinearTask`, a one-step closed-form task.

**Regularisation that fits the data** (Rendle et al., "Revisiting the performance of iALS on item
recommendation benchmarks", RecSys 2022, google-research/ials): each row's ridge is
``reg * (its count + unobserved weight * the other side's size) ** exponent``, with the unobserved
weight 1 here (every entry weighs alike, which keeps the fold-in linear). A fixed ridge means
something different on every data set: 10 collapsed a 60-item synthetic catalogue's factors to one
(popularity) direction, while on ml-100k it is mild. Scaled by the row's share of the loss, one
``train.mf_regularization`` carries across data sets (``train.mf_regularization_exponent`` 0 is the
fixed ridge of ``implicit``). ``implicit`` takes one ridge for all rows, so the fit is our own: with
every entry weighing 1 the row solve is ``(G + reg_r I) x_r = (X Y)_r`` with one Gram matrix
``G = Y^T Y`` for all rows, i.e. one eigendecomposition of ``G`` per half-iteration and
``O(nnz x k + rows x k^2)`` work, no per-row solve. The served fold-in uses the users' ridge at their
mean history length (users' ridges differ by ``(n_u - mean) / (n_u + items)``, well under 1 % of
the catalogue on every measured data set).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from training.config import Config
from training.evaluation.baselines import interaction_matrix
from training.features import Prepared
from training.fit.linear.closed_form import ClosedFormTask, FloatArray, linear_tower_spec, write_linear
from training.fit.linear.linear_task import to_unit_targets

ALS_ITERATIONS = 15
"""Alternations of the fit (``implicit``'s default, as the benchmark's baseline)."""
INIT_SCALE = 0.01
"""Standard deviation of the random initial item factors (``implicit``'s)."""


def frequency_scaled_ridges(
    counts: FloatArray, others: int, regularization: float, exponent: float
) -> FloatArray:
    """Each row's ridge: ``regularization * (count + others) ** exponent`` (module docstring)."""
    ridges: FloatArray = (regularization * (counts.astype(np.float64) + others) ** exponent).astype(
        np.float32
    )
    return ridges


def solve_rows(
    matrix: sp.csr_matrix, other: npt.NDArray[np.float64], ridges: FloatArray
) -> npt.NDArray[np.float64]:
    """Each row's ridge least-squares fit to its row of ``matrix`` (every entry weighing 1) given the
    other side's factors: ``(G + ridge_r I)^-1 (X Y)_r`` through one eigendecomposition of ``G``."""
    values, vectors = np.linalg.eigh(other.T @ other)
    projected = np.asarray(matrix @ other) @ vectors
    solved: npt.NDArray[np.float64] = (projected / (values[None, :] + ridges[:, None])) @ vectors.T
    return solved


def fit_factors(
    matrix: sp.csr_matrix, factors: int, regularization: float, exponent: float, seed: int
) -> tuple[FloatArray, FloatArray, float]:
    """(user factors, item factors, the users' ridge at their mean count) of the frequency-scaled
    fit of the binary ``matrix`` (users x items) at ``factors`` (at most the catalogue's size)."""
    n_users, n_items = matrix.shape
    user_counts = np.diff(matrix.indptr).astype(np.float32)
    item_counts = np.bincount(matrix.indices, minlength=n_items).astype(np.float32)
    user_ridges = frequency_scaled_ridges(user_counts, n_items, regularization, exponent)
    item_ridges = frequency_scaled_ridges(item_counts, n_users, regularization, exponent)
    transposed = matrix.T.tocsr()
    items = np.random.default_rng(seed).normal(0.0, INIT_SCALE, (n_items, min(factors, n_items)))
    users = np.zeros((n_users, items.shape[1]))
    for _ in range(ALS_ITERATIONS):
        users = solve_rows(matrix, items, user_ridges)
        items = solve_rows(transposed, users, item_ridges)
    mean_ridge = float(
        frequency_scaled_ridges(
            np.array([user_counts.mean()], np.float32), n_items, regularization, exponent
        )[0]
    )
    return users.astype(np.float32), items.astype(np.float32), mean_ridge


def fold_in_rows(item_factors: FloatArray, regularization: float) -> FloatArray:
    """``Y (Y^T Y + reg I)^-1``: row ``h`` is what history item ``h`` adds to the ridge fold-in of a
    user's factor (module docstring), so a history's sum of rows is its iALS user factor."""
    factors = item_factors.astype(np.float64)
    gram = factors.T @ factors
    gram[np.diag_indices_from(gram)] += max(regularization, 1e-6)
    rows: FloatArray = np.linalg.solve(gram, factors.T).T.astype(np.float32)
    return rows


class FactorTask(ClosedFormTask):
    """iALS fitted and written into linear towers (module docstring)."""

    def __init__(self, prepared: Prepared, config: Config) -> None:
        spec = linear_tower_spec(
            prepared,
            config,
            min(config.train.mf_factors, prepared.n_items) + 1,
            user_id_embedding=False,
            shared_history_embedding=False,
            history_decay=0.0,
        )
        super().__init__(prepared, config, spec)

    def fit(self) -> str:
        """Fold-in rows into the user tower's own history table, unit item rows into the item-id
        table."""
        cfg = self.config.train
        _, item_factors, ridge = fit_factors(
            interaction_matrix(self.prepared),
            cfg.mf_factors,
            cfg.mf_regularization,
            cfg.mf_regularization_exponent,
            cfg.seed,
        )
        history = fold_in_rows(item_factors, ridge)
        items = to_unit_targets(item_factors)
        user, item = self.model.user_tower, self.model.item_tower
        write_linear(self.model, [(user.item_ids, history), (item.item_ids, items)], items.shape[1])
        return f"mf: {len(items)} items, {items.shape[1] - 1} factors, users folded in from their history"
