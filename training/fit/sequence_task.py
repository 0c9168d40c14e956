"""The ``sequence``, ``bag`` and ``mixed`` objectives: one user-tower pass per window of a user's items.

An epoch is one pass over the windows of :func:`training.fit.sequences.sequence_windows` (every item
but each user's first is a target once). A step takes ``window_batch_size`` windows and computes

* the sequence loss: the user vector after each prefix of the window
  (:meth:`~serving.model.towers.TwoTowerModel.user_embedding_every_position`) against the next item;
* the bag loss: the user vector from a random part of each window's user's items against the hidden
  rest (:func:`training.fit.sequences.bag_arrays`);

weighted ``(1 - bag_weight, bag_weight)``. Negatives: the exact softmax over every item when
``uniform_negatives`` reaches the catalogue size, otherwise ``uniform_negatives`` items drawn uniformly
per step and shared by every row (no logQ correction needed: a uniform sample does not over-represent
popular items). The item tower runs once per step on the union of the positives and the negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as F  # noqa: N812

from serving.model.features import FIRST_TOKEN_INDEX, PAD_INDEX
from serving.model.inputs import gather, to_inputs
from serving.model.towers import Inputs, TwoTowerModel
from training.config import Config
from training.features import Prepared
from training.fit.interaction_task import drop_ids
from training.fit.losses import candidate_softmax_loss
from training.fit.sequences import Windows, bag_arrays, sequence_windows, window_arrays
from training.fit.setup import make_optimizer, model_spec, resolve_device, seed_everything

IntArray = npt.NDArray[np.int64]

BUCKET_POOL = 16
"""Steps whose windows are sorted by length together (bucketing); larger pools pad less, mix less."""


def loss_weights(config: Config) -> tuple[float, float]:
    """(sequence weight, bag weight) of ``train.objective``."""
    objective = config.train.objective
    if objective == "sequence":
        return 1.0, 0.0
    if objective == "bag":
        return 0.0, 1.0
    if objective == "mixed":
        return 1.0 - config.train.bag_weight, config.train.bag_weight
    raise ValueError(f"train.objective {objective!r} is not a sequence objective")


@dataclass
class SequenceBatch:
    """One step's tensors. Item references are rows of ``item_rows`` (the item tower's inputs)."""

    user_inputs: Inputs | None
    """Window inputs (B, L) for the sequence loss, or None when its weight is 0."""
    target_slots: torch.Tensor | None
    """(R,) item-row slot of each valid position's next item, flattened in (b, j) order."""
    valid: torch.Tensor | None
    """(B, L) bool: positions with a next item."""
    bag_inputs: Inputs | None
    bag_owner: torch.Tensor | None
    """(P,) batch row of each hidden item."""
    bag_slots: torch.Tensor | None
    """(P,) item-row slot of each hidden item."""
    item_inputs: Inputs
    """Item tower inputs of the step's item rows (every item when exact)."""
    item_ids: torch.Tensor
    """(S,) item index of each item slot."""
    negative_slots: torch.Tensor | None
    """(M,) slots of the uniform negatives; None when exact (every slot is a candidate)."""
    rows: int
    """Loss rows of the step (targets), for throughput."""


class SequenceTask:
    """A fresh model trained on user windows: ``build`` is the data path, ``step`` the model path."""

    def __init__(self, prepared: Prepared, config: Config) -> None:
        cfg = config.train
        seed_everything(cfg.seed)
        self.config = config
        self.prepared = prepared
        self.device = resolve_device(cfg.device)
        self.spec = model_spec(prepared, config)
        self.model = TwoTowerModel(self.spec).to(self.device)
        self.optimizer = make_optimizer(self.model, config)
        self.rng = np.random.default_rng(cfg.seed)
        self.sequence_weight, self.bag_weight = loss_weights(config)
        self.windows: Windows = sequence_windows(prepared.sequences, self.spec.history_length)
        self.n_items = prepared.n_items
        self.exact = cfg.uniform_negatives >= self.n_items
        self.uniform = min(cfg.uniform_negatives, self.n_items)
        self.id_dropout = config.model.id_dropout
        self.temperature = self.model.logit_temperature
        self.bf16 = cfg.precision == "bf16"
        # Target rows of an average step: with ``row_weighted_loss`` a step's sequence loss counts
        # in proportion to its rows, so that a position in a short window weighs what one in a long
        # window does (length bucketing makes steps of short windows only).
        targets = int((self.windows.ends - self.windows.starts - 1).clip(min=0).sum())
        steps = max(-(-len(self.windows) // cfg.window_batch_size), 1)
        self.rows_per_step = max(targets / steps, 1.0)
        self.row_weighted = cfg.row_weighted_loss

    def __len__(self) -> int:
        return len(self.windows)

    def batches(self, order: IntArray) -> list[IntArray]:
        """Window positions of each step for one pass over ``order``.

        Windows of similar length share a step (sorted within pools of :data:`BUCKET_POOL` steps, the
        steps then shuffled), so that a step's tensors are as wide as its longest window rather than
        ``history_length``: on short-sequence data most of a full-width window is padding.
        """
        size = self.config.train.window_batch_size
        spans = self.windows.ends - self.windows.starts
        pool = size * BUCKET_POOL
        steps: list[IntArray] = []
        for start in range(0, len(order), pool):
            chunk = order[start : start + pool]
            chunk = chunk[np.argsort(spans[chunk], kind="stable")]
            steps += [chunk[i : i + size] for i in range(0, len(chunk), size)]
        shuffled = self.rng.permutation(len(steps))
        return [steps[i] for i in shuffled]

    def build(self, chosen: IntArray) -> SequenceBatch:
        """Gather the windows' inputs, targets, hidden items and negatives; move them to the device."""
        seq = self.prepared.sequences
        length = self.spec.history_length
        picked = Windows(self.windows.users[chosen], self.windows.starts[chosen], self.windows.ends[chosen])
        user_features = drop_ids(gather(self.prepared.user_features, picked.users), self.id_dropout, self.rng)
        referenced: list[IntArray] = []
        targets: IntArray | None = None
        inputs: IntArray | None = None
        # The step is as wide as its longest window (right-aligned: the trimmed columns are padding).
        width = int(min(length, max(int((picked.ends - picked.starts).max()) - 1, 1)))
        if self.sequence_weight > 0:
            inputs, window_targets = window_arrays(seq, picked, length)
            inputs, window_targets = inputs[:, -width:], window_targets[:, -width:]
            targets = window_targets
            referenced.append(window_targets[window_targets != PAD_INDEX])
        bag_history: IntArray | None = None
        bag_items: IntArray | None = None
        bag_owner: IntArray | None = None
        if self.bag_weight > 0:
            bag_history, bag_owner, bag_items = bag_arrays(
                seq, picked.users, length, self.config.train.bag_dropout, self.rng
            )
            used = np.flatnonzero((bag_history != PAD_INDEX).any(axis=0))
            bag_history = bag_history[:, used[0] if len(used) else length - 1 :]
            referenced.append(bag_items)
        negatives: IntArray | None = None
        if self.exact:
            item_rows = np.arange(self.n_items, dtype=np.int64)
        else:
            negatives = self.rng.choice(self.n_items, size=self.uniform, replace=False).astype(np.int64)
            item_rows = np.unique(np.concatenate([*(r - FIRST_TOKEN_INDEX for r in referenced), negatives]))

        def slots(items: IntArray) -> torch.Tensor:
            rows = items - FIRST_TOKEN_INDEX
            found = rows if self.exact else np.searchsorted(item_rows, rows)
            return torch.from_numpy(found.astype(np.int64)).to(self.device)

        item_features = drop_ids(gather(self.prepared.item_features, item_rows), self.id_dropout, self.rng)
        batch = SequenceBatch(
            user_inputs=None,
            target_slots=None,
            valid=None,
            bag_inputs=None,
            bag_owner=None,
            bag_slots=None,
            item_inputs=to_inputs(item_features, self.device),
            item_ids=torch.from_numpy(item_rows + FIRST_TOKEN_INDEX).to(self.device),
            negative_slots=None if negatives is None else slots(negatives + FIRST_TOKEN_INDEX),
            rows=0,
        )
        if inputs is not None and targets is not None:
            valid = targets != PAD_INDEX
            batch.user_inputs = to_inputs(user_features, self.device, history=inputs)
            batch.valid = torch.from_numpy(valid).to(self.device)
            batch.target_slots = slots(targets[valid])
            batch.rows += int(valid.sum())
        if bag_history is not None and bag_items is not None and bag_owner is not None:
            batch.bag_inputs = to_inputs(user_features, self.device, history=bag_history)
            batch.bag_owner = torch.from_numpy(bag_owner).to(self.device)
            batch.bag_slots = slots(bag_items)
            batch.rows += len(bag_items)
        return batch

    def _loss_of(
        self, users: torch.Tensor, slots: torch.Tensor, items: torch.Tensor, batch: SequenceBatch
    ) -> torch.Tensor:
        if batch.negative_slots is None:
            return F.cross_entropy(users @ items.T / self.temperature, slots)
        return candidate_softmax_loss(
            users,
            items[slots],
            batch.item_ids[slots],
            items[batch.negative_slots],
            batch.item_ids[batch.negative_slots],
            self.temperature,
        )

    def loss(self, batch: SequenceBatch) -> torch.Tensor:
        """The weighted objective of one batch (forward passes only)."""
        items = self.model.item_scoring(batch.item_inputs)
        total = torch.zeros((), device=self.device)
        if batch.user_inputs is not None and batch.valid is not None and batch.target_slots is not None:
            states = self.model.user_scoring_every_position(batch.user_inputs)[batch.valid]
            if len(states):
                sequence = self._loss_of(states, batch.target_slots, items, batch)
                if self.row_weighted:
                    sequence = sequence * (len(states) / self.rows_per_step)
                total = total + self.sequence_weight * sequence
        owner, slots = batch.bag_owner, batch.bag_slots
        if batch.bag_inputs is not None and owner is not None and slots is not None and len(slots):
            users = self.model.user_scoring(batch.bag_inputs)
            if batch.negative_slots is None:
                # Exact: one softmax per user, read at each of its hidden items.
                log_p = F.log_softmax(users @ items.T / self.temperature, dim=1)
                bag = -log_p[owner, slots].mean()
            else:
                bag = self._loss_of(users[owner], slots, items, batch)
            total = total + self.bag_weight * bag
        return total

    def step(self, batch: SequenceBatch) -> torch.Tensor:
        """Forward, loss, backward, optimizer step. Returns the loss."""
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
        return loss.detach()
