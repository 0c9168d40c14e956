"""What every closed-form objective shares: the trainer's task protocol around one fit, and writing
fitted rows into linear towers.

A closed-form task (:mod:`training.fit.linear.linear_task`, :mod:`training.fit.linear.factor_task`)
is one epoch of one step (``closed_form = True`` tells :class:`~training.fit.trainer.TrainingRun`):
the step fits on every interaction of its data and writes the result into the towers, which are
linear (no hidden layer) so that the identity on the id part and zero on the rest pass the fitted
rows through.
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
from serving.model.towers import TwoTowerModel, TwoTowerSpec
from training.config import Config
from training.features import Prepared
from training.fit.setup import model_spec, resolve_device, seed_everything

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]


def linear_tower_spec(prepared: Prepared, config: Config, dim: int, **flags: Any) -> TwoTowerSpec:
    """The spec of linear towers ``dim`` wide over ``prepared`` (no hidden layer, mean history): the
    shape follows from the fit, whatever the ``[model]`` section says; the bundle stores this spec, so
    serving builds the same. ``flags``: the other spec fields the fit decides (which tables it fills)."""
    return dataclasses.replace(
        model_spec(prepared, config),
        embedding_dim=dim,
        output_dim=dim,
        hidden_dims=(),
        history_encoder="mean",
        **flags,
    )


class ClosedFormTask:
    """The task protocol of :mod:`training.fit.trainer` around :meth:`fit` (subclasses)."""

    closed_form = True

    def __init__(self, prepared: Prepared, config: Config, spec: TwoTowerSpec) -> None:
        seed_everything(config.train.seed)
        self.config = config
        self.prepared = prepared
        self.device = resolve_device(config.train.device)
        self.spec = spec
        self.model = TwoTowerModel(spec).to(self.device)
        # The trainer sets learning rates on an optimizer each step; nothing is learned by gradient.
        self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
            self.model.parameters(), lr=config.train.learning_rate
        )
        self.rng = np.random.default_rng(config.train.seed)

    def __len__(self) -> int:
        return 1

    def batches(self, order: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int64]]:
        return [order]

    def build(self, positions: npt.NDArray[np.int64]) -> None:
        return None

    def step(self, batch: Any) -> torch.Tensor:
        """Fit on every interaction of the prepared data and write the result into the towers."""
        started = time.perf_counter()
        description = self.fit()
        log.info("%s, fitted in %.1f s", description, time.perf_counter() - started)
        return torch.zeros(())

    def fit(self) -> str:
        """Fit and write the towers (:func:`write_linear`); return a line for the log."""
        raise NotImplementedError


@torch.no_grad()
def write_linear(model: TwoTowerModel, rows: list[tuple[torch.nn.Embedding, FloatArray]], dim: int) -> None:
    """Each table's rows (row ``r`` at vocabulary index ``r + FIRST_TOKEN_INDEX``, zero elsewhere) and
    both towers' single linear layers as the identity on their first ``dim`` inputs (the id or history
    part), zero on the rest, no bias."""
    for table, values in rows:
        table.weight.zero_()
        table.weight[FIRST_TOKEN_INDEX : FIRST_TOKEN_INDEX + len(values), : values.shape[1]] = (
            torch.from_numpy(values)
        )
    for mlp in (model.user_tower.mlp, model.item_tower.mlp):
        layer = mlp[0]
        assert isinstance(layer, torch.nn.Linear)
        layer.weight.zero_()
        layer.weight[:, :dim] = torch.eye(dim)
        layer.bias.zero_()
