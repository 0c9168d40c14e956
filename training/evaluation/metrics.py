"""Full-ranking top-K metrics with binary relevance, vectorised in NumPy (the top-k selection in torch).

Conventions used throughout:

* Users and items are dense integer indices: user rows ``0 .. n_users - 1`` (the row of a ``topk`` matrix
  or of a CSR), items ``0 .. n_items - 1``.
* Per-user item sets (ground truth, items to exclude) are CSR pairs ``(indptr, indices)``: the items of
  user row ``u`` are ``indices[indptr[u]:indptr[u + 1]]``. ``indptr`` has ``n_users + 1`` entries, starts
  at 0 and is non-decreasing.
* A recommendation list is a row of a ``topk`` matrix of item indices, best first; ``-1`` marks an empty
  slot (fewer eligible items than ``K``) and is never a hit.

Metric definitions (``hits_u`` = number of the first ``k`` slots of user ``u`` holding a relevant item,
``R_u`` = number of relevant items, ``rank`` = 1-based slot position):

* ``recall@k``    = mean over users of ``hits_u / R_u``
* ``precision@k`` = mean over users of ``hits_u / k`` (empty slots count as misses)
* ``hit_rate@k``  = share of users with ``hits_u >= 1``
* ``mrr@k``       = mean over users of ``1 / rank`` of the first hit (0 when there is none)
* ``ndcg@k``      = mean over users of ``DCG_u / IDCG_u`` with ``DCG_u = sum over hit slots 1/log2(rank + 1)``
  and ``IDCG_u = sum_{r=1}^{min(R_u, k)} 1/log2(r + 1)``
* ``coverage@k``  = distinct items in the first ``k`` slots over *all* rows of ``topk`` / ``n_items``
* ``users``       = number of users averaged over

Users with ``R_u == 0`` are excluded from every average (they would contribute an undefined recall and a
free zero elsewhere); they still count towards coverage, which measures what the system recommends rather
than how accurate it is. With no evaluable user the averaged metrics are NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

__all__ = ["ranking_metrics", "top_k_excluding", "truth_csr"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.floating[Any]]
_TORCH_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def _check_csr(
    indptr: npt.NDArray[Any], indices: npt.NDArray[Any], n_rows: int, n_items: int, name: str
) -> None:
    """Validate the structure of a CSR pair with at least ``n_rows`` rows over ``n_items`` items."""
    if indptr.ndim != 1 or indices.ndim != 1:
        raise ValueError(f"{name}: indptr and indices must be 1-D")
    if not (np.issubdtype(indptr.dtype, np.integer) and np.issubdtype(indices.dtype, np.integer)):
        raise ValueError(f"{name}: indptr and indices must be integer arrays")
    if indptr.shape[0] < n_rows + 1:
        raise ValueError(f"{name}: indptr has {indptr.shape[0]} entries, need at least {n_rows + 1}")
    if (
        indptr.shape[0] == 0
        or indptr[0] != 0
        or np.any(np.diff(indptr) < 0)
        or indptr[-1] != indices.shape[0]
    ):
        raise ValueError(f"{name}: indptr must start at 0, be non-decreasing and end at len(indices)")
    if indices.size and (indices.min() < 0 or indices.max() >= n_items):
        raise ValueError(f"{name}: item indices must lie in [0, {n_items})")


def truth_csr(
    user_index: npt.ArrayLike, item_index: npt.ArrayLike, n_users: int
) -> tuple[IntArray, IntArray]:
    """Build a per-user item CSR from parallel ``(user, item)`` index arrays.

    Duplicate pairs are removed; within each row the item indices are sorted ascending. Rows of users
    without any pair are empty.

    Args:
        user_index: User row of each pair, in ``[0, n_users)``.
        item_index: Item index of each pair, ``>= 0``; same length as ``user_index``.
        n_users: Number of CSR rows.

    Returns:
        ``(indptr, indices)`` as int64 arrays of lengths ``n_users + 1`` and number of distinct pairs.

    Raises:
        ValueError: on mismatched lengths or indices out of range.
    """
    users = np.asarray(user_index, dtype=np.int64).ravel()
    items = np.asarray(item_index, dtype=np.int64).ravel()
    if users.shape != items.shape:
        raise ValueError(f"user_index and item_index differ in length: {users.shape[0]} vs {items.shape[0]}")
    if n_users < 0:
        raise ValueError(f"n_users must be >= 0, got {n_users}")
    if users.size and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"user indices must lie in [0, {n_users})")
    if items.size and items.min() < 0:
        raise ValueError("item indices must be >= 0")
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    # After sorting, a pair is a duplicate exactly when it equals its predecessor.
    keep = np.ones(users.shape[0], dtype=bool)
    keep[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
    users, items = users[keep], items[keep]
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr, items


def ranking_metrics(
    topk: npt.NDArray[np.integer[Any]],
    truth_indptr: npt.NDArray[np.integer[Any]],
    truth_indices: npt.NDArray[np.integer[Any]],
    n_items: int,
    k: int,
) -> dict[str, float]:
    """Compute top-``k`` ranking metrics for a full-catalogue ranking (definitions in the module docstring).

    Args:
        topk: ``(n_users, K)`` item indices per user row, best first, ``K >= k``; only the first ``k``
            columns are used. Entries are in ``[0, n_items)`` or ``-1`` (empty slot); a row must not repeat
            an item (that would double-count hits).
        truth_indptr: CSR ``indptr`` of the relevant items, ``n_users + 1`` entries.
        truth_indices: CSR ``indices`` of the relevant items; no duplicates within a row (as produced by
            :func:`truth_csr`).
        n_items: Catalogue size (denominator of coverage).
        k: Cut-off, ``1 <= k <= K``.

    Returns:
        ``{"recall@k", "ndcg@k", "hit_rate@k", "mrr@k", "precision@k", "coverage@k", "users"}`` with the
        number ``k`` substituted (e.g. ``"ndcg@10"``); ``users`` is an integral float.

    Raises:
        ValueError: on shape/range violations, repeated items in a row, or duplicate truth entries.
    """
    topk = np.asarray(topk)
    indptr = np.asarray(truth_indptr, dtype=np.int64)
    indices = np.asarray(truth_indices, dtype=np.int64)
    if topk.ndim != 2 or not np.issubdtype(topk.dtype, np.integer):
        raise ValueError(f"topk must be a 2-D integer array, got shape {topk.shape} dtype {topk.dtype}")
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    n_users, width = topk.shape
    if not 1 <= k <= width:
        raise ValueError(f"k must be in [1, {width}] (the width of topk), got {k}")
    if indptr.shape[0] != n_users + 1:
        raise ValueError(f"truth_indptr has {indptr.shape[0]} entries, expected n_users + 1 = {n_users + 1}")
    _check_csr(indptr, indices, n_users, n_items, "truth")
    top = topk[:, :k].astype(np.int64, copy=False)
    if top.size and (top.min() < -1 or top.max() >= n_items):
        raise ValueError(f"topk entries must lie in [0, {n_items}) or be -1")
    # Repeated items per row: sort each row; equal neighbours (other than -1 padding) are repeats.
    sorted_rows = np.sort(top, axis=1)
    if np.any((sorted_rows[:, 1:] == sorted_rows[:, :-1]) & (sorted_rows[:, 1:] >= 0)):
        raise ValueError("a topk row recommends the same item more than once")

    hits = _hits(top, indptr, indices, n_items)
    n_relevant = np.diff(indptr)
    evaluated = n_relevant > 0
    n_eval = int(evaluated.sum())
    recommended = top[top >= 0]
    coverage = float(np.unique(recommended).shape[0]) / n_items

    names = (f"recall@{k}", f"ndcg@{k}", f"hit_rate@{k}", f"mrr@{k}", f"precision@{k}")
    if n_eval == 0:
        result = dict.fromkeys(names, float("nan"))
    else:
        hits_e = hits[evaluated]
        rel_e = n_relevant[evaluated]
        n_hits = hits_e.sum(axis=1)
        any_hit = n_hits > 0
        first_rank = np.argmax(hits_e, axis=1) + 1  # argmax finds the first True; only used where any_hit
        rr = np.where(any_hit, 1.0 / first_rank, 0.0)
        values = (
            (n_hits / rel_e).mean(),
            _ndcg_rows(hits_e, rel_e, k).mean(),
            any_hit.mean(),
            rr.mean(),
            (n_hits / k).mean(),
        )
        result = {name: float(v) for name, v in zip(names, values, strict=True)}
    result[f"coverage@{k}"] = coverage
    result["users"] = float(n_eval)
    return result


def per_user_ndcg(
    topk: npt.NDArray[np.integer[Any]],
    truth_indptr: npt.NDArray[np.integer[Any]],
    truth_indices: npt.NDArray[np.integer[Any]],
    n_items: int,
    k: int,
) -> npt.NDArray[np.float64]:
    """NDCG@``k`` of each user with at least one relevant item (in row order): the values whose mean is
    :func:`ranking_metrics`' ``ndcg@k``, for paired comparisons of two rankings of the same users.
    Arguments as in :func:`ranking_metrics` (validated there; call it first on untrusted input)."""
    indptr = np.asarray(truth_indptr, dtype=np.int64)
    top = np.asarray(topk)[:, :k].astype(np.int64, copy=False)
    hits = _hits(top, indptr, np.asarray(truth_indices, dtype=np.int64), n_items)
    n_relevant = np.diff(indptr)
    evaluated = n_relevant > 0
    return _ndcg_rows(hits[evaluated], n_relevant[evaluated], k)


def _hits(
    top: npt.NDArray[np.int64], indptr: npt.NDArray[np.int64], indices: npt.NDArray[np.int64], n_items: int
) -> npt.NDArray[np.bool_]:
    """``(n_users, k)``: whether each recommended slot is one of its user's relevant items."""
    n_users = top.shape[0]
    # Encode (row, item) pairs as one int64 key so membership is a single np.isin over the whole batch.
    # -1 slots map to keys no truth pair can have (items are >= 0), so they never hit.
    if n_users * n_items >= 2**62:
        raise ValueError(f"n_users * n_items = {n_users * n_items} is too large for int64 pair keys")
    rows = np.arange(n_users, dtype=np.int64)
    truth_rows = np.repeat(rows, np.diff(indptr))
    truth_keys = truth_rows * n_items + indices
    if np.unique(truth_keys).shape[0] != truth_keys.shape[0]:
        raise ValueError("truth CSR contains a duplicate item within a row; build it with truth_csr()")
    top_keys = np.where(top >= 0, rows[:, None] * n_items + top, -1)
    hits: npt.NDArray[np.bool_] = np.isin(top_keys, truth_keys) & (top >= 0)
    return hits


def _ndcg_rows(
    hits: npt.NDArray[np.bool_], relevant: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.float64]:
    """Per row: DCG of ``hits`` (slot r, 1-based, weighs 1/log2(r+1)) over the ideal DCG of
    ``min(relevant, k)`` hits; rows need ``relevant >= 1``."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    dcg = hits.astype(np.float64) @ discounts
    idcg = np.cumsum(discounts)[np.minimum(relevant, k) - 1]
    result: npt.NDArray[np.float64] = dcg / idcg
    return result


def top_k_excluding(
    scores: FloatArray,
    k: int,
    exclude_indptr: npt.NDArray[np.integer[Any]],
    exclude_indices: npt.NDArray[np.integer[Any]],
    row_offset: int = 0,
) -> IntArray:
    """Top-``k`` item indices per row of a score batch, skipping each user's excluded items.

    Row ``i`` of ``scores`` belongs to user row ``row_offset + i`` of the exclusion CSR, so the function can
    be applied batch by batch over all users with one global CSR (typically the train interactions).

    Excluded items are masked with ``-inf`` on a copy (``scores`` is not modified); any item whose score is
    ``-inf`` is treated as ineligible. Each output row lists eligible items by descending score; ties
    inside the returned list are ordered by ascending item index, while which of several items tied at the
    ``k``-th score make the cut is unspecified. If a row has fewer than ``k`` eligible items (including
    ``k > n_items``) the remaining slots are ``-1``.

    Args:
        scores: ``(batch, n_items)`` floating-point scores (typically float32); must not contain NaN.
        k: Number of items to return per row, ``>= 1``.
        exclude_indptr: CSR ``indptr`` of items to exclude, covering at least rows
            ``row_offset .. row_offset + batch - 1``; duplicates in a row are harmless.
        exclude_indices: CSR ``indices`` of items to exclude, in ``[0, n_items)``.
        row_offset: User row of ``scores[0]`` in the exclusion CSR.

    Returns:
        ``(batch, k)`` int64 item indices, ``-1`` for empty slots.

    Raises:
        ValueError: on bad shapes, NaN scores, or CSR rows/indices out of range.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or not np.issubdtype(scores.dtype, np.floating):
        raise ValueError(f"scores must be a 2-D float array, got shape {scores.shape} dtype {scores.dtype}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if row_offset < 0:
        raise ValueError(f"row_offset must be >= 0, got {row_offset}")
    batch, n_items = scores.shape
    indptr = np.asarray(exclude_indptr, dtype=np.int64)
    indices = np.asarray(exclude_indices, dtype=np.int64)
    if indptr.ndim != 1 or indptr.shape[0] < row_offset + batch + 1:
        raise ValueError(
            f"exclude_indptr covers {max(indptr.shape[0] - 1, 0)} rows, need rows up to {row_offset + batch}"
        )
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    out = np.full((batch, k), -1, dtype=np.int64)
    if batch == 0 or n_items == 0:
        return out

    # Work on negated scores so an ascending partition/sort yields descending scores; negation also gives
    # us the private copy we mask in place. Excluded/ineligible items become +inf here.
    neg = -scores
    start, stop = int(indptr[row_offset]), int(indptr[row_offset + batch])
    cols = indices[start:stop]
    if cols.size and (cols.min() < 0 or cols.max() >= n_items):
        raise ValueError(f"exclude indices must lie in [0, {n_items})")
    row_lengths = np.diff(indptr[row_offset : row_offset + batch + 1])
    if np.any(row_lengths < 0):
        raise ValueError("exclude_indptr must be non-decreasing")
    neg[np.repeat(np.arange(batch), row_lengths), cols] = np.inf

    kk = min(k, n_items)
    if kk < n_items:
        # torch's top-k selects in parallel and ~10x faster than np.argpartition over a wide catalogue
        # (1,024 x 12,101: 11 vs 129 ms); ranking is most of every validation epoch's cost there.
        if neg.dtype not in _TORCH_FLOATS:  # e.g. long double, which torch cannot wrap
            neg = neg.astype(np.float64)
        cand = torch.topk(torch.from_numpy(neg), kk, dim=1, largest=False, sorted=False).indices.numpy()
    else:
        cand = np.broadcast_to(np.arange(n_items), (batch, n_items))
    cand_scores = np.take_along_axis(neg, cand, axis=1)
    # lexsort's last key is primary: ascending negated score, then ascending item index for ties.
    order = np.lexsort((cand, cand_scores), axis=1)
    best = np.take_along_axis(cand, order, axis=1)
    best_scores = np.take_along_axis(cand_scores, order, axis=1)
    out[:, :kk] = np.where(np.isposinf(best_scores), -1, best)
    return out


CONFIDENCE_Z = 1.645
"""One-sided 95 % normal quantile."""


def paired_lower_bound(difference: npt.NDArray[np.float64]) -> float:
    """One-sided 95 % lower bound of the mean of paired per-user differences (the same users scored
    two ways): the mean minus :data:`CONFIDENCE_Z` standard errors. Its negation on ``-difference`` is
    the upper bound."""
    spread = float(difference.std(ddof=1)) / float(np.sqrt(max(len(difference), 1)))
    return float(difference.mean()) - CONFIDENCE_Z * spread
