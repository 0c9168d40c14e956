"""Examples over whole user sequences: one tower pass per window, a loss at every position.

Two objectives read the same windows:

* **sequence** (causal, every position; SASRec-style): a window holds up to ``L + 1``
  consecutive items of one user; the user tower reads items ``0..L-1`` once
  (:meth:`~serving.model.towers.TwoTowerModel.user_embedding_every_position`) and position
  ``t`` predicts item ``t + 1``. A user's sequence is cut into windows from its end backwards,
  so every item but the first is a target exactly once per epoch.
* **bag** (set denoising; Mult-DAE-style): the window's user keeps each of their items with
  probability ``1 - bag_dropout`` as the history and must find the dropped ones (every dropped
  item is a target of the user's vector). This teaches the whole taste, which random splits reward.

Both produce (user state, positive item) rows for :func:`training.fit.losses.candidate_softmax_loss`
or the exact softmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from serving.model.features import PAD_INDEX
from serving.model.history import Sequences, windows

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Windows:
    """Window ``w`` covers ``items[starts[w]:ends[w]]`` of user row ``users[w]`` (offsets in the user's
    own sequence); its inputs are all but the last item, its targets all but the first."""

    users: IntArray
    starts: IntArray
    ends: IntArray

    def __len__(self) -> int:
        return len(self.users)


def sequence_windows(sequences: Sequences, length: int) -> Windows:
    """Windows of up to ``length + 1`` items, cut from each sequence's end backwards (vectorised).

    Consecutive windows of a user overlap by one item (the last input of one is the first of the
    next), so each item at offset >= 1 is a target in exactly one window. Users with fewer than two
    items have no window.
    """
    n = sequences.lengths()
    chunks = np.where(n >= 2, -(-(n - 1) // length), 0)
    users = np.repeat(np.arange(sequences.rows, dtype=np.int64), chunks)
    first = np.concatenate([[0], np.cumsum(chunks)[:-1]]).astype(np.int64)
    k = np.arange(len(users), dtype=np.int64) - np.repeat(first, chunks)
    ends = n[users] - k * length
    starts = np.maximum(ends - length - 1, 0)
    return Windows(users, starts.astype(np.int64), ends.astype(np.int64))


def window_arrays(sequences: Sequences, chosen: Windows, length: int) -> tuple[IntArray, IntArray]:
    """(inputs, targets), each (B, length), right-aligned and PAD-filled alike: ``targets[b, j]`` is the
    item after ``inputs[b, j]``."""
    base = sequences.indptr[chosen.users]
    inputs = windows(sequences.items, base + chosen.starts, base + chosen.ends - 1, length)
    targets = windows(sequences.items, base + chosen.starts + 1, base + chosen.ends, length)
    return inputs, targets


def bag_arrays(
    sequences: Sequences, users: IntArray, length: int, dropout: float, rng: np.random.Generator
) -> tuple[IntArray, IntArray, IntArray]:
    """A denoising draw for each of ``users``: (history (B, length), pair_rows (P,), pair_items (P,)).

    Each item of the user is kept with probability ``1 - dropout``; the history holds the most recent
    ``length`` kept items (right-aligned, time order), the pairs ``(b, item)`` are the dropped items.
    A user none of whose items is dropped keeps their last item out as its target instead, so that
    every user in the batch contributes.
    """
    lengths = sequences.lengths()[users]
    starts = sequences.indptr[users]
    total = int(lengths.sum())
    owner = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    items = sequences.items[np.repeat(starts, lengths) + offsets]
    dropped = rng.random(total) < dropout
    none_dropped = np.bincount(owner, weights=dropped, minlength=len(users)) == 0
    last = offsets == np.repeat(lengths - 1, lengths)
    dropped |= none_dropped[owner] & last
    kept_owner, kept_items = owner[~dropped], items[~dropped]
    kept_counts = np.bincount(kept_owner, minlength=len(users)).astype(np.int64)
    kept_indptr = np.concatenate([[0], np.cumsum(kept_counts)]).astype(np.int64)
    history = windows(kept_items, kept_indptr[:-1], kept_indptr[1:], length)
    if len(kept_items) == 0:
        history[:] = PAD_INDEX
    return history, owner[dropped], items[dropped]
