"""Retrieval loss: in-batch sampled softmax with logQ correction.

Kept apart from the towers (as in TorchRec's two-tower example): the model produces
embeddings, the loss decides how they are compared.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812


def in_batch_softmax_loss(
    users: Tensor,
    items: Tensor,
    item_ids: Tensor,
    temperature: float,
    log_q: Tensor | None = None,
) -> Tensor:
    """Mean cross-entropy of each user's positive against the batch's other items.

    ``users``/``items``: (B, D) unit vectors, row i a positive pair. ``item_ids``: (B,)
    item indices, used to mask in-batch false negatives (the same item appearing as
    another row's positive). ``log_q``: (B,) log sampling probability of each row's
    item; subtracting it from the logits corrects in-batch sampling's popularity bias
    (Yi et al., 2019).
    """
    logits = users @ items.T / temperature
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    duplicate = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)
    duplicate.fill_diagonal_(False)
    logits = logits.masked_fill(duplicate, torch.finfo(logits.dtype).min)
    labels = torch.arange(users.shape[0], device=users.device)
    return F.cross_entropy(logits, labels)
