"""Beyond-accuracy metrics of top-K lists: novelty and intra-list diversity.

Same conventions as :mod:`training.evaluation.metrics`: users are rows of a ``topk`` matrix of item indices
``0 .. n_items - 1`` (best first, ``-1`` = empty slot, ignored); per-item value sets are CSR pairs
``(indptr, indices)`` with one row per item.

Definitions (``L_u`` = the non-empty slots among the first ``k`` of user ``u``):

* ``novelty@k``   = mean over users of ``mean_{i in L_u} -log2(pop_i / sum_j pop_j)``, the self-information
  of an item drawn with probability proportional to its training popularity (Zhou et al. 2010; the
  "historical item novelty" of Microsoft Recommenders). Higher = less popular items recommended. Users
  with an empty ``L_u`` are not averaged.
* ``diversity@k`` = mean over users of the mean over pairs ``{i, j}`` of ``L_u`` of the Jaccard distance
  ``1 - |V_i ∩ V_j| / |V_i ∪ V_j|`` of the items' attribute value sets. For a single-valued attribute
  (a category) that is 1 when the values differ and 0 when they are equal; for a list attribute (genres)
  it is the share of the pair's distinct values that only one of them has. Pairs where either item has no
  value are skipped (unknown, not "different"); users without any scored pair are not averaged.

With no user to average, a metric is NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import scipy.sparse as sp

__all__ = ["beyond_accuracy_metrics", "intra_list_diversity", "item_value_csr", "novelty"]

IntArray = npt.NDArray[np.int64]

_USERS_PER_CHUNK = 4096  # bounds the (users x pairs) temporaries of intra_list_diversity


def _top(topk: npt.NDArray[np.integer[Any]], n_items: int, k: int | None) -> IntArray:
    """The first ``k`` columns of ``topk`` as int64, validated against ``n_items``."""
    top = np.asarray(topk)
    if top.ndim != 2 or not np.issubdtype(top.dtype, np.integer):
        raise ValueError(f"topk must be a 2-D integer array, got shape {top.shape} dtype {top.dtype}")
    width = top.shape[1]
    k = width if k is None else k
    if not 1 <= k <= max(width, 1):
        raise ValueError(f"k must be in [1, {width}] (the width of topk), got {k}")
    top = top[:, :k].astype(np.int64, copy=False)
    if top.size and (top.min() < -1 or top.max() >= n_items):
        raise ValueError(f"topk entries must lie in [0, {n_items}) or be -1")
    return top


def novelty(topk: npt.NDArray[np.integer[Any]], popularity: npt.ArrayLike, k: int | None = None) -> float:
    """Mean self-information of the recommended items (definition in the module docstring).

    Args:
        topk: ``(n_users, K)`` item indices, ``-1`` for empty slots.
        popularity: ``(n_items,)`` non-negative interaction counts on the training data.
        k: Cut-off (default: all ``K`` columns).

    Raises:
        ValueError: on bad shapes, negative counts, or a recommended item with zero popularity (its
            self-information is infinite: the caller recommended an item outside the training data).
    """
    pop = np.asarray(popularity, dtype=np.float64)
    if pop.ndim != 1 or pop.size == 0:
        raise ValueError("popularity must be a non-empty 1-D array")
    if np.any(pop < 0):
        raise ValueError("popularity counts must be >= 0")
    top = _top(topk, pop.shape[0], k)
    filled = top >= 0
    if np.any(pop[top[filled]] == 0):
        raise ValueError("a recommended item has zero popularity; its self-information is infinite")
    per_user_slots = filled.sum(axis=1)
    users = per_user_slots > 0
    if not users.any():
        return float("nan")
    info = np.zeros(top.shape, dtype=np.float64)
    # log2(total) - log2(count) rather than -log2(count / total): one division fewer, same value.
    info[filled] = np.log2(pop.sum()) - np.log2(pop[top[filled]])
    return float((info.sum(axis=1)[users] / per_user_slots[users]).mean())


def item_value_csr(values: pl.Series) -> tuple[IntArray, IntArray]:
    """Per-item value sets of one attribute column, as a CSR over arbitrary value codes.

    Row ``r`` belongs to the item at position ``r`` of ``values`` (align the column with the item indices
    first). A scalar column (string, categorical, boolean, integer) gives singleton sets; a list column gives
    the set of its elements. Nulls, null elements and empty lists give empty rows; repeats collapse. Values
    are compared as strings, so ``1`` and ``"1"`` are the same value.
    """
    frame = values.rename("v").to_frame().with_row_index("row")
    if not isinstance(values.dtype, pl.List | pl.Array):
        frame = frame.with_columns(pl.concat_list(pl.col("v")))
    flat = (
        frame.with_columns(pl.col("v").cast(pl.List(pl.Utf8)))
        .explode("v")
        .drop_nulls("v")
        .unique(["row", "v"])
    )
    rows = flat.get_column("row").to_numpy().astype(np.int64)
    # Dense ranks of the strings: small, deterministic codes (categorical physical codes are neither).
    codes = np.zeros(0, dtype=np.int64)
    if flat.height:
        codes = flat.get_column("v").rank("dense").to_numpy().astype(np.int64) - 1
    order = np.lexsort((codes, rows))
    indptr = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(values)), out=indptr[1:])
    return indptr, codes[order]


def intra_list_diversity(
    topk: npt.NDArray[np.integer[Any]],
    value_indptr: npt.NDArray[np.integer[Any]],
    value_indices: npt.NDArray[np.integer[Any]],
    k: int | None = None,
) -> float:
    """Mean pairwise Jaccard distance of attribute value sets within each list (module docstring).

    Args:
        topk: ``(n_users, K)`` item indices, ``-1`` for empty slots.
        value_indptr: CSR ``indptr`` with one row per item (``n_items + 1`` entries).
        value_indices: CSR value codes (non-negative integers; repeats within a row are ignored).
        k: Cut-off (default: all ``K`` columns).

    Raises:
        ValueError: on bad shapes or indices.
    """
    indptr = np.asarray(value_indptr, dtype=np.int64)
    codes = np.asarray(value_indices, dtype=np.int64)
    if indptr.ndim != 1 or indptr.shape[0] < 2 or indptr[0] != 0 or indptr[-1] != codes.shape[0]:
        raise ValueError("value_indptr must be 1-D, start at 0 and end at len(value_indices)")
    if np.any(np.diff(indptr) < 0) or (codes.size and codes.min() < 0):
        raise ValueError("value_indptr must be non-decreasing and value codes >= 0")
    n_items = indptr.shape[0] - 1
    top = _top(topk, n_items, k)
    n_values = int(codes.max()) + 1 if codes.size else 1
    # Binary item x value matrix; summing duplicates then clipping makes repeated values count once.
    matrix = sp.csr_matrix((np.ones(codes.shape[0]), codes, indptr), shape=(n_items, n_values))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    sizes = np.diff(matrix.indptr)
    first, second = np.triu_indices(top.shape[1], 1)

    total, users = 0.0, 0
    for start in range(0, top.shape[0], _USERS_PER_CHUNK):
        chunk = top[start : start + _USERS_PER_CHUNK]
        a, b = chunk[:, first], chunk[:, second]  # (users, pairs)
        # A pair is scored only when both slots hold an item with at least one known value.
        valid = (a >= 0) & (b >= 0)
        valid &= (sizes[np.where(a >= 0, a, 0)] > 0) & (sizes[np.where(b >= 0, b, 0)] > 0)
        if not valid.any():
            continue
        ia, ib = a[valid], b[valid]
        shared = np.asarray(matrix[ia].multiply(matrix[ib]).sum(axis=1)).ravel()
        distance = 1.0 - shared / (sizes[ia] + sizes[ib] - shared)
        per_pair = np.zeros(valid.shape, dtype=np.float64)
        per_pair[valid] = distance
        pairs = valid.sum(axis=1)
        scored = pairs > 0
        total += float((per_pair.sum(axis=1)[scored] / pairs[scored]).sum())
        users += int(scored.sum())
    return total / users if users else float("nan")


def beyond_accuracy_metrics(
    topk: npt.NDArray[np.integer[Any]],
    k: int,
    popularity: npt.ArrayLike,
    item_values: tuple[npt.NDArray[np.integer[Any]], npt.NDArray[np.integer[Any]]] | None = None,
) -> dict[str, float]:
    """``{"novelty@k"}``, plus ``"diversity@k"`` when ``item_values`` (an item value CSR) is given."""
    result = {f"novelty@{k}": novelty(topk, popularity, k)}
    if item_values is not None:
        result[f"diversity@{k}"] = intra_list_diversity(topk, item_values[0], item_values[1], k)
    return result
