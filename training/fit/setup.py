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
        # The tied head serves its state with one augmented coordinate (serving.model.towers).
        output_dim=m.embedding_dim + 1 if m.head == "tied" else m.output_dim,
        dropout=m.dropout,
        temperature=m.temperature,
        history_length=config.data.history_length,
        history_encoder=m.history_encoder,
        user_id_embedding=m.user_id_embedding,
        shared_history_embedding=m.shared_history_embedding,
        history_decay=m.history_decay,
        head=m.head,
        sequence_layers=m.sequence_layers,
        embedding_dropout=m.embedding_dropout,
        item_attributes=m.item_attributes,
    )


def make_optimizer(model: torch.nn.Module, config: Config) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay at the configured learning rate and ``adam_beta2``."""
    cfg = config.train
    return torch.optim.AdamW(
        model.parameters(),
        lr=cfg.learning_rate,
        betas=(0.9, cfg.adam_beta2),
        weight_decay=cfg.weight_decay,
        fused=True,
    )
