"""The training loop: read top to bottom.

Examples are every interaction of :class:`Prepared`: the user's features, the history
strictly before that interaction, and the interacted item as the positive. Batches
are gathered with NumPy fancy indexing from pre-encoded arrays, so the data path is a
handful of vectorised copies per step.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from serving.features import FIRST_TOKEN_INDEX, ID_FEATURE, OOV_INDEX, EncodedFeatures
from serving.history import windows
from serving.inputs import gather, to_inputs, tower_spec
from serving.model import Inputs, TwoTowerModel, TwoTowerSpec
from training.config import Config
from training.features import Prepared
from training.loss import full_softmax_loss, sampled_softmax_loss

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: TwoTowerModel
    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    examples: int = 0

    @property
    def samples_per_second(self) -> float:
        return self.examples * len(self.epoch_losses) / self.seconds if self.seconds > 0 else 0.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device = 'cuda' but CUDA is not available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_spec(prepared: Prepared, config: Config) -> TwoTowerSpec:
    m = config.model
    return TwoTowerSpec(
        user=tower_spec(prepared.user_encoder),
        item=tower_spec(prepared.item_encoder),
        embedding_dim=m.embedding_dim,
        hidden_dims=m.hidden_dims,
        output_dim=m.output_dim,
        dropout=m.dropout,
        temperature=m.temperature,
        history_length=config.data.history_length,
        history_encoder=m.history_encoder,
    )


class ExampleBatcher:
    """Builds (user inputs, item inputs, item indices) for a set of example positions."""

    def __init__(self, prepared: Prepared, history_length: int, id_dropout: float, rng: np.random.Generator):
        seq = prepared.sequences
        self.prepared = prepared
        self.history_length = history_length
        self.id_dropout = id_dropout
        self.rng = rng
        self.example_users = np.repeat(np.arange(seq.rows, dtype=np.int64), seq.lengths())
        self.example_items = seq.items

    def __len__(self) -> int:
        return len(self.example_items)

    def _drop_ids(self, features: EncodedFeatures) -> EncodedFeatures:
        if self.id_dropout <= 0:
            return features
        ids = features[ID_FEATURE].copy()
        ids[self.rng.random(len(ids)) < self.id_dropout] = OOV_INDEX
        return {**features, ID_FEATURE: ids}

    def batch(
        self, positions: npt.NDArray[np.int64], device: torch.device
    ) -> tuple[Inputs, Inputs, torch.Tensor]:
        seq = self.prepared.sequences
        users = self.example_users[positions]
        items = self.example_items[positions]
        history = windows(seq.items, seq.indptr[users], positions, self.history_length)
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
        self.temperature = config.model.temperature
        self.n_items = prepared.n_items
        self.uniform = min(cfg.uniform_negatives, self.n_items)
        self.exact = cfg.uniform_negatives >= self.n_items
        self.correct = cfg.logq_correction
        share = prepared.popularity.astype(np.float64) / max(len(batcher), 1)
        expected = cfg.batch_size * share + self.uniform / max(self.n_items, 1)
        self.log_expected = torch.from_numpy(np.log(np.maximum(expected, 1e-12))).float().to(device)

    def _items(self, model: TwoTowerModel, rows: npt.NDArray[np.int64]) -> torch.Tensor:
        features = self.batcher._drop_ids(gather(self.batcher.prepared.item_features, rows))
        return model.item_embedding(to_inputs(features, self.device))

    def loss(
        self, model: TwoTowerModel, user_inputs: Inputs, item_inputs: Inputs, item_ids: torch.Tensor
    ) -> torch.Tensor:
        users = model.user_embedding(user_inputs)
        target_rows = item_ids - FIRST_TOKEN_INDEX
        if self.exact:
            every_item = self._items(model, np.arange(self.n_items, dtype=np.int64))
            return full_softmax_loss(users, every_item, target_rows, self.temperature)
        items = model.item_embedding(item_inputs)
        log_q = self.log_expected[target_rows] if self.correct else None
        if self.uniform == 0:
            return sampled_softmax_loss(users, items, item_ids, self.temperature, log_q)
        rows = self.batcher.rng.choice(self.n_items, size=self.uniform, replace=False).astype(np.int64)
        extra_ids = torch.from_numpy(rows + FIRST_TOKEN_INDEX).to(self.device)
        extra_log_q = self.log_expected[torch.from_numpy(rows).to(self.device)] if self.correct else None
        return sampled_softmax_loss(
            users, items, item_ids, self.temperature, log_q, self._items(model, rows), extra_ids, extra_log_q
        )


def train_model(
    prepared: Prepared,
    config: Config,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train a fresh model on every interaction of ``prepared``; deterministic for a seed on CPU."""
    cfg = config.train
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    spec = model_spec(prepared, config)
    model = TwoTowerModel(spec).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    batcher = ExampleBatcher(prepared, spec.history_length, config.model.id_dropout, rng)
    n = len(batcher)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.learning_rate, total_steps=steps_per_epoch * cfg.epochs, pct_start=0.1
    )
    negatives = NegativeSampler(batcher, config, device)

    result = TrainResult(model=model, examples=n)
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        order = rng.permutation(n).astype(np.int64)
        total, batches = 0.0, 0
        for start in _progress(range(0, n, cfg.batch_size), cfg.progress, f"epoch {epoch + 1}/{cfg.epochs}"):
            positions = order[start : start + cfg.batch_size]
            if len(positions) < 2:
                continue
            user_inputs, item_inputs, item_ids = batcher.batch(positions, device)
            loss = negatives.loss(model, user_inputs, item_inputs, item_ids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
            batches += 1
        epoch_loss = total / max(batches, 1)
        result.epoch_losses.append(epoch_loss)
        log.info("epoch %d/%d loss %.4f", epoch + 1, cfg.epochs, epoch_loss)
        if on_epoch is not None:
            on_epoch(epoch, epoch_loss)
    result.seconds = time.perf_counter() - started
    model.eval()
    return result


def _progress(iterable: range, enabled: bool, description: str) -> range:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a training extra; progress bars are optional
        return iterable
    wrapped: range = tqdm(iterable, desc=description, leave=False, disable=None)
    return wrapped
