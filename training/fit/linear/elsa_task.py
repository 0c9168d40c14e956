"""The ``elsa`` objective: a low-rank linear item-item model trained by mini-batches, in linear towers.

ELSA (Vančura et al., RecSys 2022, recombee/ELSA) is EASE's scalable cousin: an item matrix ``A``
(items x rank, rows L2-normalised) and a user's scores ``x_u (A A^T - I)``, fitted by Adam on
mini-batches of user rows ``x_u`` with the normalised-MSE loss ``|p/|p| - x/|x||^2`` of the
prediction ``p = x_u (A A^T - I)``. It holds ``items x rank`` numbers, never ``items x items``, so
it serves catalogues that the closed form (:mod:`training.fit.linear.linear_task`) refuses.

**As two towers.** For an item the user has not seen, ``x_u`` has a zero in its column, so the
``-I`` term vanishes and its score is ``(x_u A) . a_i``; seen items are excluded at serving and
evaluation anyway. So the towers are: item = row ``a_i`` of ``A`` (already a unit vector, as the item
tower's normalisation requires), user = the (mean) pool of the history's rows of ``A`` (the sum up to
a per-user scale, which never changes a ranking). One table serves both sides
(``shared_history_embedding``), the towers are linear (identity on the id / history part, zero on
attributes), written through :func:`~training.fit.linear.closed_form.write_linear` like EASE: serving,
the fold-in of recent items (:mod:`serving.model.fold_in`) and the bundle need nothing new, and
:rpc:`SimilarItems` gets ELSA's own item-item cosine.

**The loss without an items-wide prediction.** With binary ``x`` (``|x|^2 = n``, the history's
length), ``z = x A`` and ``G = A^T A`` (rank x rank):
``p . x = |z|^2 - n`` and ``|p|^2 = z G z^T - 2 |z|^2 + n``, so the loss (``1 - cos(p, x)`` per
user, ELSA's normalised MSE up to the constant ``2 / items``, which Adam does not see) costs
``O(nnz x rank + items x rank^2)`` per step and memory ``O(items x rank)``: no ``batch x items``
prediction is materialised, whatever the catalogue.

**Iterative**, with :class:`~training.fit.trainer.TrainingRun`'s validation, learning-rate cuts and
early stopping like every iterative objective: the task owns the raw parameter ``W`` and its Adam
optimizer, and after each step writes the normalised rows into the towers (a copy of
``items x rank`` numbers, ``1 / rank`` of the step's Gram matrix), so the model the trainer scores
and snapshots is always the current one. Torch, not NumPy: the gradient and Adam come for free and
the same code runs on a GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as F  # noqa: N812

from serving.model.features import FIRST_TOKEN_INDEX
from serving.model.towers import TwoTowerModel
from training.config import Config, TrainConfig
from training.evaluation.baselines import interaction_matrix
from training.features import Prepared
from training.fit.linear.closed_form import linear_tower_spec, write_linear
from training.fit.setup import resolve_device, seed_everything

IntArray = npt.NDArray[np.int64]
log = logging.getLogger(__name__)

ELSA_STEPS_PER_EPOCH = 16
"""With ``train.elsa_batch_size = 0``: a step holds this fraction (1/16) of the users, within
:data:`ELSA_BATCH_USERS`."""
ELSA_BATCH_USERS = (128, 1024)
"""With ``train.elsa_batch_size = 0``: the fewest and the most users of a step."""


def elsa_batch_size(train: TrainConfig, users: int) -> int:
    """Users per ELSA step for ``users`` training users: ``train.elsa_batch_size``, or with 0 a
    :data:`ELSA_STEPS_PER_EPOCH`-th of them within :data:`ELSA_BATCH_USERS`.

    Every step pays ``items x rank^2`` for the Gram matrix and ``items x rank`` for Adam whatever its
    size, so on large data bigger steps are several times cheaper an epoch for the same validation
    figure; data under 2,048 users keeps 128 users a step (ml-100k: 8 steps an epoch, as before)."""
    if train.elsa_batch_size > 0:
        return train.elsa_batch_size
    low, high = ELSA_BATCH_USERS
    return min(high, max(low, users // ELSA_STEPS_PER_EPOCH))


@dataclass(frozen=True)
class ElsaBatch:
    """A step's user rows as a bag of item columns (:func:`torch.nn.functional.embedding_bag`)."""

    items: torch.Tensor
    """(nnz,) item rows (0-based) of every user of the step, user after user."""
    offsets: torch.Tensor
    """(B,) start of each user's items in ``items``."""
    counts: torch.Tensor
    """(B,) float: each user's number of distinct items (``|x_u|^2``)."""
    rows: int
    """Users in the step (the trainer's count of loss rows)."""


def elsa_loss(weights: torch.Tensor, batch: ElsaBatch) -> torch.Tensor:
    """Mean over the batch's users of ``1 - cos(x (A A^T - I), x)`` with ``A`` the row-normalised
    ``weights``, computed through ``G = A^T A`` (module docstring); differentiable in ``weights``."""
    a = F.normalize(weights, dim=-1)
    z = F.embedding_bag(batch.items, a, batch.offsets, mode="sum")  # (B, rank): x A
    gram = a.T @ a
    n = batch.counts
    zz = (z * z).sum(dim=1)
    dot = zz - n  # p . x
    norm2 = ((z @ gram) * z).sum(dim=1) - 2.0 * zz + n  # |p|^2
    cosine = dot / torch.sqrt(norm2.clamp(min=1e-12) * n.clamp(min=1.0))
    return (1.0 - cosine).mean()


class ElsaTask:
    """ELSA trained by mini-batches of users, written into linear towers after every step (module
    docstring). The task protocol of :mod:`training.fit.trainer`."""

    def __init__(self, prepared: Prepared, config: Config) -> None:
        cfg = config.train
        seed_everything(cfg.seed)
        self.config = config
        self.device = resolve_device(cfg.device)
        self.rank = min(cfg.elsa_rank, prepared.n_items)
        self.bind(prepared)
        if len(self.users):  # the sharded path builds the task on no shard, then binds each
            log.info("elsa: %d users per step (%d users)", self.batch_size, len(self.users))
        self.spec = linear_tower_spec(
            prepared, config, self.rank, user_id_embedding=False, shared_history_embedding=True
        )
        # The towers only copy A's normalised rows after each step: no gradient of their own (DDP
        # would otherwise keep buffers for them, another items x rank per rank).
        self.model = TwoTowerModel(self.spec).to(self.device).requires_grad_(False)
        self.weights = torch.nn.Parameter(
            torch.nn.init.xavier_uniform_(torch.empty(prepared.n_items, self.rank)).to(self.device)
        )
        self.optimizer: torch.optim.Optimizer = torch.optim.Adam([self.weights], lr=cfg.learning_rate)
        self.rng = np.random.default_rng(cfg.seed)
        with torch.no_grad():
            rows = F.normalize(self.weights, dim=-1).cpu().numpy()
        write_linear(self.model, [(self.model.item_tower.item_ids, rows)], self.rank)

    def bind(self, prepared: Prepared) -> None:
        """Train on ``prepared``'s users from now on (the sharded path binds one shard at a time; the
        item vocabulary, hence ``A``, is the same in every shard)."""
        self.prepared = prepared
        matrix = interaction_matrix(prepared)
        self.indptr: IntArray = matrix.indptr.astype(np.int64)
        self.indices: IntArray = matrix.indices.astype(np.int64)
        # Users without an interaction add nothing to the loss (cosine with a zero row).
        self.users: IntArray = np.flatnonzero(np.diff(self.indptr)).astype(np.int64)
        self.batch_size = elsa_batch_size(self.config.train, len(self.users))

    def __len__(self) -> int:
        return len(self.users)

    def batches(self, order: IntArray) -> list[IntArray]:
        size = self.batch_size
        return [order[start : start + size] for start in range(0, len(order), size)]

    def build(self, positions: IntArray) -> ElsaBatch:
        """The CSR rows of the step's users, as item columns and offsets on the device."""
        users = self.users[positions]
        starts, ends = self.indptr[users], self.indptr[users + 1]
        counts = ends - starts
        items = np.concatenate([self.indices[s:e] for s, e in zip(starts, ends, strict=True)])
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return ElsaBatch(
            items=torch.from_numpy(items).to(self.device),
            offsets=torch.from_numpy(offsets).to(self.device),
            counts=torch.from_numpy(counts.astype(np.float32)).to(self.device),
            rows=len(users),
        )

    def step(self, batch: ElsaBatch) -> torch.Tensor:
        """One Adam step on the batch's loss, then the new rows into the towers."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = elsa_loss(self.weights, batch)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        self.write_towers()
        return loss.detach()

    @torch.no_grad()
    def write_towers(self) -> None:
        """The normalised rows of ``A`` into the one table both towers read (the identity layers
        were set once by :func:`write_linear`)."""
        rows = F.normalize(self.weights, dim=-1)
        self.model.item_tower.item_ids.weight[FIRST_TOKEN_INDEX : FIRST_TOKEN_INDEX + len(rows)] = rows
