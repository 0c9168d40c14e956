"""Retrieval losses: sampled softmax over in-batch and uniformly sampled negatives.

Kept apart from the towers (as in TorchRec's two-tower example): the model produces
embeddings, the loss decides how they are compared.

Sampled softmax is biased towards whatever the negatives over-represent. In-batch
negatives appear in proportion to popularity, so each candidate's logit is corrected
by the log of its expected number of appearances in the candidate pool (logQ
correction, Yi et al. 2019); with mixed negatives (Yang et al. 2020) that expectation
is ``batch_size * p(item) + n_uniform / n_items``.
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
    item, subtracted from its column's logits.
    """
    return sampled_softmax_loss(users, items, item_ids, temperature, log_q)


def sampled_softmax_loss(
    users: Tensor,
    items: Tensor,
    item_ids: Tensor,
    temperature: float,
    log_q: Tensor | None = None,
    extra_items: Tensor | None = None,
    extra_ids: Tensor | None = None,
    extra_log_q: Tensor | None = None,
    offset: int = 0,
) -> Tensor:
    """Softmax of each row's positive (column ``offset + i``) against the in-batch items and
    ``extra_items``.

    ``extra_items`` (M, D) with ``extra_ids`` (M,) are additional negatives (e.g. sampled
    uniformly); ``extra_log_q`` (M,) their log expected counts. Any candidate whose id
    equals the row's positive id (other than the positive itself) is masked: it is not
    a negative. ``offset``: ``users`` are rows ``offset ..`` of the batch whose items are
    ``items`` (a data-parallel rank's share of the all-gathered global batch); 0 when
    ``users`` and ``items`` are the same rows.
    """
    candidates, ids, corrections = items, item_ids, log_q
    if extra_items is not None and extra_ids is not None:
        candidates = torch.cat([items, extra_items])
        ids = torch.cat([item_ids, extra_ids])
        if log_q is not None and extra_log_q is not None:
            corrections = torch.cat([log_q, extra_log_q])
    logits = users @ candidates.T / temperature
    if corrections is not None:
        logits = logits - corrections.unsqueeze(0)
    rows = torch.arange(users.shape[0], device=users.device)
    own = offset + rows
    false_negative = item_ids[own].unsqueeze(1) == ids.unsqueeze(0)
    false_negative[rows, own] = False
    logits = logits.masked_fill(false_negative, torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits, own)


def full_softmax_loss(users: Tensor, all_items: Tensor, target_rows: Tensor, temperature: float) -> Tensor:
    """Exact softmax over the whole catalogue (small catalogues): no sampling, no correction.

    ``all_items``: (N, D) every item's embedding; ``target_rows``: (B,) row of each
    user's positive in ``all_items``.
    """
    return F.cross_entropy(users @ all_items.T / temperature, target_rows)


def candidate_softmax_loss(
    users: Tensor,
    positives: Tensor,
    positive_ids: Tensor,
    candidates: Tensor,
    candidate_ids: Tensor,
    temperature: float,
) -> Tensor:
    """Mean cross-entropy of each row's positive against shared candidates (sampled softmax).

    ``users``/``positives``: (R, D), row r a (user state, positive item) pair; ``positive_ids``:
    (R,) item indices. ``candidates``: (M, D) negatives shared by every row (uniformly sampled:
    no logQ correction is needed) with ``candidate_ids`` (M,). A candidate equal to a row's
    positive (an accidental hit) is masked for that row: it is not a negative.
    """
    positive = (users * positives).sum(dim=-1, keepdim=True) / temperature
    negative = users @ candidates.T / temperature
    hits = positive_ids.unsqueeze(1) == candidate_ids.unsqueeze(0)
    negative = negative.masked_fill(hits, torch.finfo(negative.dtype).min)
    logits = torch.cat([positive, negative], dim=1)
    return (torch.logsumexp(logits, dim=1) - positive[:, 0]).mean()
