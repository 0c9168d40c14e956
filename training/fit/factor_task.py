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

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from serving.model.features import FIRST_TOKEN_INDEX
from serving.model.towers import TwoTowerModel
from training.config import Config
from training.evaluation.baselines import IALS
from training.features import Prepared
from training.fit.linear_task import to_unit_targets
from training.fit.setup import model_spec, resolve_device, seed_everything

log = logging.getLogger(__name__)


class FactorTask:
    """The trainer's task protocol around an iALS fit: one epoch of one step that fits it."""

    closed_form = True

    def __init__(self, prepared: Prepared, config: Config) -> None:
        seed_everything(config.train.seed)
        self.config = config
        self.prepared = prepared
        self.device = resolve_device(config.train.device)
        dim = config.train.mf_factors + 1
        # The towers' shape follows from the fit (factors + 1, linear, the user-id table), whatever
        # the [model] section says; the bundle stores this spec, so serving builds the same.
        self.spec = dataclasses.replace(
            model_spec(prepared, config),
            embedding_dim=dim,
            output_dim=dim,
            hidden_dims=(),
            history_encoder="mean",
            user_id_embedding=True,
            shared_history_embedding=True,
            history_decay=0.0,
        )
        self.model = TwoTowerModel(self.spec).to(self.device)
        # The trainer sets learning rates on an optimizer each step; nothing is learned by gradient.
        rate = config.train.learning_rate
        self.optimizer: torch.optim.Optimizer = torch.optim.SGD(self.model.parameters(), lr=rate)
        self.rng = np.random.default_rng(config.train.seed)

    def __len__(self) -> int:
        return 1

    def batches(self, order: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int64]]:
        return [order]

    def build(self, positions: npt.NDArray[np.int64]) -> None:
        return None

    def step(self, batch: Any) -> torch.Tensor:
        """Fit the factors on every interaction of the prepared data and write them into the towers."""
        started = time.perf_counter()
        cfg = self.config.train
        als = IALS(factors=cfg.mf_factors, regularization=cfg.mf_regularization, seed=cfg.seed)
        als.fit(self.prepared)
        assert als.user_factors is not None
        assert als.item_factors is not None
        users = np.concatenate([als.user_factors, np.zeros((len(als.user_factors), 1), np.float32)], axis=1)
        self._write(users, to_unit_targets(als.item_factors))
        log.info(
            "mf: %d users, %d items, fitted in %.1f s",
            len(users),
            len(als.item_factors),
            time.perf_counter() - started,
        )
        return torch.zeros(())

    @torch.no_grad()
    def _write(self, users: npt.NDArray[np.float32], items: npt.NDArray[np.float32]) -> None:
        """User rows into the user-id table, unit item rows into the item-id table; both towers' linear
        layers become the identity on the id part (their first ``dim`` inputs) and zero elsewhere."""
        user, item = self.model.user_tower, self.model.item_tower
        assert user.user_ids is not None
        dim = items.shape[1]
        for table, rows in ((user.user_ids, users), (item.item_ids, items)):
            table.weight.zero_()
            table.weight[FIRST_TOKEN_INDEX : FIRST_TOKEN_INDEX + len(rows)] = torch.from_numpy(rows)
        for mlp in (user.mlp, item.mlp):
            layer = mlp[0]
            assert isinstance(layer, torch.nn.Linear)
            layer.weight.zero_()
            layer.weight[:, :dim] = torch.eye(dim)
            layer.bias.zero_()
