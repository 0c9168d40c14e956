"""The ``mf`` objective: implicit-feedback matrix factorisation (iALS) written into the two towers.

iALS (Hu, Koren, Volinsky 2008; the ``implicit`` package, as the benchmark's baseline) factorises the
binary user x item matrix into user factors ``x_u`` and item factors ``y_i`` with scores ``x_u . y_i``.
That is a two-tower model whose user tower is the user-id embedding alone: the factors go into the
user-id and item-id tables, both towers are linear (identity on the id part, zero on the history and
the attributes), and the item rows are made unit vectors with the extra coordinate of
:func:`training.fit.linear_task.to_unit_targets`, so the inner product keeps iALS's ranking. It is
strongest where the future is the user's whole taste rather than the next item (time splits); a user
it has no factors for (unknown, or new since the fit) gets the unknown bucket's zero vector, and
serving's fallback. Like :class:`~training.fit.linear_task.LinearTask`, a one-step closed-form task.
"""

from __future__ import annotations

import numpy as np

from training.config import Config
from training.evaluation.baselines import IALS
from training.features import Prepared
from training.fit.closed_form import ClosedFormTask, linear_tower_spec, write_linear
from training.fit.linear_task import to_unit_targets


class FactorTask(ClosedFormTask):
    """iALS fitted and written into linear towers (module docstring)."""

    def __init__(self, prepared: Prepared, config: Config) -> None:
        spec = linear_tower_spec(
            prepared,
            config,
            config.train.mf_factors + 1,
            user_id_embedding=True,
            shared_history_embedding=True,
            history_decay=0.0,
        )
        super().__init__(prepared, config, spec)

    def fit(self) -> str:
        """User rows (plus a zero coordinate) into the user-id table, unit item rows into the item-id
        table; the user tower's first inputs are its id embedding."""
        cfg = self.config.train
        als = IALS(factors=cfg.mf_factors, regularization=cfg.mf_regularization, seed=cfg.seed)
        als.fit(self.prepared)
        assert als.user_factors is not None
        assert als.item_factors is not None
        users = np.concatenate([als.user_factors, np.zeros((len(als.user_factors), 1), np.float32)], axis=1)
        items = to_unit_targets(als.item_factors)
        user, item = self.model.user_tower, self.model.item_tower
        assert user.user_ids is not None
        write_linear(self.model, [(user.user_ids, users), (item.item_ids, items)], items.shape[1])
        return f"mf: {len(users)} users, {len(items)} items"
