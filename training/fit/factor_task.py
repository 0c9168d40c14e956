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
coordinate of :func:`training.fit.linear_task.to_unit_targets`, so the inner product keeps the
ranking. Like :class:`~training.fit.linear_task.LinearTask`, a one-step closed-form task.
"""

from __future__ import annotations

import numpy as np

from training.config import Config
from training.evaluation.baselines import IALS
from training.features import Prepared
from training.fit.closed_form import ClosedFormTask, FloatArray, linear_tower_spec, write_linear
from training.fit.linear_task import to_unit_targets


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
            config.train.mf_factors + 1,
            user_id_embedding=False,
            shared_history_embedding=False,
            history_decay=0.0,
        )
        super().__init__(prepared, config, spec)

    def fit(self) -> str:
        """Fold-in rows into the user tower's own history table, unit item rows into the item-id
        table."""
        cfg = self.config.train
        als = IALS(factors=cfg.mf_factors, regularization=cfg.mf_regularization, seed=cfg.seed)
        als.fit(self.prepared)
        assert als.item_factors is not None
        history = fold_in_rows(als.item_factors, cfg.mf_regularization)
        items = to_unit_targets(als.item_factors)
        user, item = self.model.user_tower, self.model.item_tower
        write_linear(self.model, [(user.item_ids, history), (item.item_ids, items)], items.shape[1])
        return f"mf: {len(items)} items, {items.shape[1] - 1} factors, users folded in from their history"
