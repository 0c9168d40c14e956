"""SLIST: the next-item closed form of ``train.linear_model = "slist"`` (Choi et al., WSDM 2021).

EASE reconstructs a user's items from the same items (bag of items). SLIST (jin530/SLIST) mixes that
with a regression of each *prefix* of a sequence onto the items that *follow* it, both in one ridge
closed form over stacked rows::

    B = (X^T X + l2 I)^-1 X^T Y,   X = [sqrt(a) S ; sqrt(1 - a) Z],   Y = [sqrt(a) S' ; sqrt(1 - a) T]

* SLIS rows (weight ``a`` = ``train.slist_alpha``): one per user, ``S`` the user's items
  (l1-normalised), ``S'`` the same items, binary;
* SLIT rows (weight ``1 - a``): one per position ``t`` of a user's time-ordered sequence but the
  last, ``Z`` the prefix up to ``t`` with item ``t - j`` weighing ``exp(-decay * j)``, l1-normalised,
  ``T`` the items after ``t`` with item ``t + 1 + j`` weighing ``exp(-decay * j)`` (``decay`` =
  ``train.slist_decay``; a user's whole sequence is the "session").

An l1-normalised, recency-weighted prefix is what the user tower computes at serving (the decayed
mean of the history rows), so ``B`` is fitted on the inputs it is served on; the serving decay stays
``model.history_decay``, so one fit serves several decays. ``B`` goes through the same factorisation
and towers as EASE (:mod:`training.fit.linear.linear_task`). Its diagonal is zeroed: a user's own items are
excluded from every list, so it never changes a served ranking, while the near-identity an
unconstrained ridge puts there would take the factorisation's leading components.

Memory is EASE's: one dense ``items x items`` float32 matrix (the Gram matrix, inverted in place, then
turned into ``B`` one block of rows at a time: row ``r`` of ``B`` needs only row ``r`` of the inverse
and the sparse ``X^T Y``), plus sparse rows and blocks of at most ``items x 2048``.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from serving.model.features import FIRST_TOKEN_INDEX
from training.evaluation.baselines import gram_matrix, spd_inverse
from training.features import Prepared

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

SMALLEST_WEIGHT: Final = 1e-3
"""Prefix and target positions whose recency weight falls below this are left out of the rows: they
change ``B`` by little and cost ``window^2`` entries per position."""
_ROW_BLOCK: Final = 2048  # rows of the inverse turned into rows of B at a time


def window(decay: float, longest: int) -> int:
    """Positions a prefix (and a target list) reaches back (ahead): those weighing at least
    :data:`SMALLEST_WEIGHT`, at most ``longest``."""
    if decay <= 0:
        return longest
    return max(1, min(longest, math.floor(math.log(1 / SMALLEST_WEIGHT) / decay) + 1))


def next_item_rows(prepared: Prepared, decay: float, longest: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(``Z``, ``T``) of the module docstring: one row per position of the concatenated sequences (the
    last position of each user empty), prefix inputs l1-normalised, targets recency-weighted."""
    sequences = prepared.sequences
    items = sequences.items - FIRST_TOKEN_INDEX
    n = len(items)
    lengths = sequences.lengths()
    starts = np.repeat(sequences.indptr[:-1], lengths)
    position = np.arange(n, dtype=np.int64) - starts  # t within the user's sequence
    last = np.repeat(lengths, lengths) - 1
    has_next = position < last
    reach = window(decay, longest)
    inputs: list[tuple[IntArray, IntArray, FloatArray]] = []
    targets: list[tuple[IntArray, IntArray, FloatArray]] = []
    for lag in range(reach):
        weight = np.float32(math.exp(-decay * lag))
        rows = np.flatnonzero(has_next & (position >= lag))
        inputs.append((rows, items[rows - lag], np.full(len(rows), weight)))
        rows = np.flatnonzero(position + 1 + lag <= last)
        targets.append((rows, items[rows + 1 + lag], np.full(len(rows), weight)))
    shape = (n, prepared.n_items)
    prefix = _csr(inputs, shape)
    totals = np.asarray(prefix.sum(axis=1)).ravel()
    prefix = sp.diags(np.where(totals > 0, 1 / np.maximum(totals, 1e-30), 0).astype(np.float32)) @ prefix
    return prefix.tocsr(), _csr(targets, shape)


def _csr(parts: list[tuple[IntArray, IntArray, FloatArray]], shape: tuple[int, int]) -> sp.csr_matrix:
    """A CSR matrix from (rows, columns, values) parts; repeated entries (an item twice in a prefix)
    add up."""
    rows, columns, values = (np.concatenate(column) for column in zip(*parts, strict=True))
    matrix = sp.csr_matrix((values.astype(np.float32), (rows, columns)), shape=shape)
    matrix.sum_duplicates()
    return matrix


def user_rows(prepared: Prepared) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(``S``, ``S'``) of the module docstring: each user's distinct items, l1-normalised and binary."""
    sequences = prepared.sequences
    users = np.repeat(np.arange(prepared.n_users, dtype=np.int64), sequences.lengths())
    binary = sp.csr_matrix(
        (np.ones(len(users), dtype=np.float32), (users, sequences.items - FIRST_TOKEN_INDEX)),
        shape=(prepared.n_users, prepared.n_items),
    )
    binary.sum_duplicates()
    binary.data[:] = 1
    counts = np.maximum(np.diff(binary.indptr), 1).astype(np.float32)
    return (sp.diags(1 / counts) @ binary).tocsr(), binary


def slist_weights(
    prepared: Prepared,
    alpha: float,
    decay: float,
    l2: float,
    longest: int,
    max_items: int,
    blas_threads: int | None = None,
) -> FloatArray:
    """``B`` (items x items, zero diagonal, C-contiguous float32) of the module docstring.

    ``longest``: the farthest a prefix reaches back (``data.history_length``, what serving reads).
    Raises ValueError above ``max_items`` items (the dense matrix would not fit) or for ``l2 <= 0``.
    """
    n_items = prepared.n_items
    if n_items > max_items:
        gib = n_items**2 * 4 / 2**30
        raise ValueError(
            f"SLIST: {n_items} items exceed train.linear_max_items={max_items}; the dense item x item "
            f"matrix alone would need {gib:.1f} GiB"
        )
    if l2 <= 0:
        raise ValueError(f"SLIST: train.slist_l2 must be > 0 (it makes X^T X invertible), got {l2}")
    parts_x, parts_y = [], []
    if alpha > 0:
        s, s_binary = user_rows(prepared)
        parts_x.append(math.sqrt(alpha) * s)
        parts_y.append(math.sqrt(alpha) * s_binary)
    if alpha < 1:
        z, t = next_item_rows(prepared, decay, longest)
        parts_x.append(math.sqrt(1 - alpha) * z)
        parts_y.append(math.sqrt(1 - alpha) * t)
    x = sp.vstack(parts_x, format="csr", dtype=np.float32)
    y = sp.vstack(parts_y, format="csr", dtype=np.float32)
    cross = (x.T.tocsr() @ y).tocsr()  # X^T Y: sparse, items x items
    weights = gram_matrix(x, np.float32)
    del x, y
    weights[np.diag_indices(n_items)] += l2
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        weights = spd_inverse(weights)
    # B = P X^T Y in place, a block of rows at a time (row r of B is row r of P times X^T Y).
    cross_t = cross.T.tocsr()
    for start in range(0, n_items, _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, n_items)
        weights[start:stop] = (cross_t @ weights[start:stop].T).T
    weights[np.diag_indices(n_items)] = 0.0
    return weights
