"""What every training task starts from: the device, the seeds, the model spec, the optimizer."""

from __future__ import annotations

import random

import numpy as np
import torch

from serving.model.inputs import tower_spec
from serving.model.towers import TwoTowerSpec
from training.config import Config
from training.features import Prepared


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
        user_id_embedding=m.user_id_embedding,
        shared_history_embedding=m.shared_history_embedding,
        history_decay=m.history_decay,
    )


def make_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay at the configured learning rate."""
    return torch.optim.AdamW(
        model.parameters(), lr=config.train.learning_rate, weight_decay=config.train.weight_decay, fused=True
    )
