"""The ``interaction`` objective: one example per interaction, the history strictly before it.

Examples are every interaction of :class:`Prepared`: the user's features, the history
strictly before that interaction (or, for ``others_history_share`` of them, a random sample
of the user's other items), and the interacted item as the positive. Batches are gathered
with NumPy fancy indexing from pre-encoded arrays, so the data path is a handful of
vectorised copies per step. Negatives: in-batch plus uniformly sampled items with logQ
correction, or the exact softmax over a small catalogue.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from serving.model.features import FIRST_TOKEN_INDEX, ID_FEATURE, OOV_INDEX, PAD_INDEX, EncodedFeatures
from serving.model.history import windows
from serving.model.inputs import gather, to_inputs
from serving.model.towers import Inputs, TwoTowerModel
from training.config import Config
from training.features import Prepared
from training.fit.losses import full_softmax_loss, sampled_softmax_loss
from training.fit.setup import make_optimizer, model_spec, resolve_device, seed_everything


def drop_ids(features: EncodedFeatures, rate: float, rng: np.random.Generator) -> EncodedFeatures:
    """``features`` with each id replaced by the unknown bucket with probability ``rate``."""
    if rate <= 0:
        return features
    ids = features[ID_FEATURE].copy()
    ids[rng.random(len(ids)) < rate] = OOV_INDEX
    return {**features, ID_FEATURE: ids}


class ExampleBatcher:
    """Builds (user inputs, item inputs, item indices) for a set of example positions."""

    def __init__(
        self,
        prepared: Prepared,
        history_length: int,
        id_dropout: float,
        rng: np.random.Generator,
        others_share: float = 0.0,
    ):
        seq = prepared.sequences
        self.prepared = prepared
        self.history_length = history_length
        self.id_dropout = id_dropout
        self.others_share = others_share
        self.rng = rng
        self.example_users = np.repeat(np.arange(seq.rows, dtype=np.int64), seq.lengths())
        self.example_items = seq.items

    def __len__(self) -> int:
        return len(self.example_items)

    def _drop_ids(self, features: EncodedFeatures) -> EncodedFeatures:
        return drop_ids(features, self.id_dropout, self.rng)

    def _other_items(
        self, users: npt.NDArray[np.int64], positions: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        """(B, L) histories drawn uniformly (with replacement) from each user's other items,
        at any time: teaches the tower a user's whole taste, not only what comes next."""
        seq = self.prepared.sequences
        starts = seq.indptr[users]
        others = seq.indptr[users + 1] - starts - 1  # items of the user besides the target
        draws = self.rng.random((len(users), self.history_length))
        offsets = (draws * np.maximum(others, 1)[:, None]).astype(np.int64)
        # Skip over the target's own position so it never appears in its history.
        offsets += offsets >= (positions - starts)[:, None]
        history: npt.NDArray[np.int64] = seq.items[np.minimum(starts[:, None] + offsets, len(seq.items) - 1)]
        history[others == 0] = PAD_INDEX
        return history

    def batch(
        self, positions: npt.NDArray[np.int64], device: torch.device
    ) -> tuple[Inputs, Inputs, torch.Tensor]:
        seq = self.prepared.sequences
        users = self.example_users[positions]
        items = self.example_items[positions]
        history = windows(seq.items, seq.indptr[users], positions, self.history_length)
        if self.others_share > 0:
            others = self.rng.random(len(positions)) < self.others_share
            if others.any():
                history[others] = self._other_items(users[others], positions[others])
        user_features = self._drop_ids(gather(self.prepared.user_features, users))
        item_features = self._drop_ids(gather(self.prepared.item_features, items - FIRST_TOKEN_INDEX))
        user_inputs = to_inputs(user_features, device, history=history)
        item_inputs = to_inputs(item_features, device)
        return user_inputs, item_inputs, torch.from_numpy(items).to(device)


class NegativeSampler:
    """Computes a step's loss with the configured negatives.

    - ``uniform_negatives >= n_items``: exact softmax over every item (small catalogues);
    - ``uniform_negatives > 0``: in-batch plus that many uniformly sampled items, each
      candidate's logit corrected by its log expected count in the pool;
    - ``0``: in-batch negatives only, logQ-corrected by popularity.
    """

    def __init__(self, batcher: ExampleBatcher, config: Config, device: torch.device) -> None:
        cfg = config.train
        prepared = batcher.prepared
        self.batcher = batcher
        self.device = device
        # The tied head scores by raw inner products (TwoTowerModel.logit_temperature).
        self.temperature = 1.0 if config.model.head == "tied" else config.model.temperature
        self.n_items = prepared.n_items
        self.uniform = min(cfg.uniform_negatives, self.n_items)
        self.exact = cfg.uniform_negatives >= self.n_items
        self.correct = cfg.logq_correction
        self.batch_size = cfg.batch_size
        self.expect_draws(prepared.popularity, len(batcher))

    def expect_draws(self, popularity: npt.NDArray[np.int64], total: int, ranks: int = 1) -> None:
        """Set ``log_expected``, each item's log expected count among one step's candidates:
        ``ranks`` x (``batch_size`` positives drawn by popularity, ``popularity / total``, plus
        the uniform draws). A data-parallel rank passes the global popularity, event count and
        world size: its softmax sees every rank's candidates (a shard alone would misjudge the
        share)."""
        share = popularity.astype(np.float64) / max(total, 1)
        expected = ranks * (self.batch_size * share + self.uniform / max(self.n_items, 1))
        self.log_expected = torch.from_numpy(np.log(np.maximum(expected, 1e-12))).float().to(self.device)

    def _items(self, model: TwoTowerModel, rows: npt.NDArray[np.int64]) -> torch.Tensor:
        features = self.batcher._drop_ids(gather(self.batcher.prepared.item_features, rows))
        return model.item_scoring(to_inputs(features, self.device))

    def loss(
        self, model: TwoTowerModel, user_inputs: Inputs, item_inputs: Inputs, item_ids: torch.Tensor
    ) -> torch.Tensor:
        users = model.user_scoring(user_inputs)
        target_rows = item_ids - FIRST_TOKEN_INDEX
        if self.exact:
            every_item = self._items(model, np.arange(self.n_items, dtype=np.int64))
            return full_softmax_loss(users, every_item, target_rows, self.temperature)
        items = model.item_scoring(item_inputs)
        log_q = self.log_expected[target_rows] if self.correct else None
        if self.uniform == 0:
            return sampled_softmax_loss(users, items, item_ids, self.temperature, log_q)
        rows = self.batcher.rng.choice(self.n_items, size=self.uniform, replace=False).astype(np.int64)
        extra_ids = torch.from_numpy(rows + FIRST_TOKEN_INDEX).to(self.device)
        extra_log_q = self.log_expected[torch.from_numpy(rows).to(self.device)] if self.correct else None
        return sampled_softmax_loss(
            users, items, item_ids, self.temperature, log_q, self._items(model, rows), extra_ids, extra_log_q
        )


class InteractionTask:
    """A fresh model with its optimizer, batcher and negatives: one ``step`` per batch of interactions."""

    def __init__(self, prepared: Prepared, config: Config) -> None:
        cfg = config.train
        seed_everything(cfg.seed)
        self.config = config
        self.device = resolve_device(cfg.device)
        self.spec = model_spec(prepared, config)
        self.model = TwoTowerModel(self.spec).to(self.device)
        self.optimizer = make_optimizer(self.model, config)
        self.rng = np.random.default_rng(cfg.seed)
        self.batcher = ExampleBatcher(
            prepared, self.spec.history_length, config.model.id_dropout, self.rng, cfg.others_history_share
        )
        self.negatives = NegativeSampler(self.batcher, config, self.device)
        self.bf16 = cfg.precision == "bf16"

    def batches(self, order: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int64]]:
        """Example positions of each step for one pass over ``order`` (a last batch of 1 is dropped:
        a softmax needs at least one negative)."""
        size = self.config.train.batch_size
        chunks = [order[start : start + size] for start in range(0, len(order), size)]
        return [chunk for chunk in chunks if len(chunk) >= 2]

    def __len__(self) -> int:
        return len(self.batcher)

    def build(self, positions: npt.NDArray[np.int64]) -> tuple[Inputs, Inputs, torch.Tensor]:
        """The data path: gather features and histories, move them to the device."""
        return self.batcher.batch(positions, self.device)

    def step(self, batch: tuple[Inputs, Inputs, torch.Tensor]) -> torch.Tensor:
        """The model path: forward both towers, loss, backward, optimizer step. Returns the loss."""
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.negatives.loss(self.model, *batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        return loss.detach()
