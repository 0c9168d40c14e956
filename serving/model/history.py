"""Per-user item sequences and the fixed-length history windows the user tower reads.

Sequences are stored CSR-style: ``indptr`` (n_users + 1) and ``items`` (item indices in
time order). The same window function builds training examples (history strictly
before each interaction) and serving inputs (the last items of the whole sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from serving.model.features import PAD_INDEX

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Sequences:
    """Row ``r`` holds ``items[indptr[r]:indptr[r + 1]]``."""

    indptr: IntArray
    items: IntArray

    @property
    def rows(self) -> int:
        return len(self.indptr) - 1

    def row(self, r: int) -> IntArray:
        return self.items[self.indptr[r] : self.indptr[r + 1]]

    def lengths(self) -> IntArray:
        return np.diff(self.indptr)

    def take(self, rows: IntArray) -> Sequences:
        """The sub-CSR of ``rows``, in the given order (vectorised)."""
        lengths = self.lengths()[rows]
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        positions = np.repeat(self.indptr[rows] - indptr[:-1], lengths) + np.arange(
            indptr[-1], dtype=np.int64
        )
        return Sequences(indptr, self.items[positions])

    @classmethod
    def from_lists(cls, lists: list[list[int]] | list[IntArray]) -> Sequences:
        lengths = np.array([len(x) for x in lists], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        items = (
            np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]) if lists else np.zeros(0, np.int64)
        )
        return cls(indptr, items.astype(np.int64))


def windows(items: IntArray, starts: IntArray, ends: IntArray, length: int) -> IntArray:
    """(B, length) windows ``items[max(start, end - length):end]``, right-aligned.

    The most recent item is in the last column; missing positions are PAD_INDEX.
    """
    offsets = ends[:, None] - length + np.arange(length, dtype=np.int64)[None, :]
    valid = offsets >= starts[:, None]
    if len(items) == 0:
        return np.full(offsets.shape, PAD_INDEX, dtype=np.int64)
    gathered = items[np.clip(offsets, 0, len(items) - 1)]
    return np.where(valid, gathered, PAD_INDEX).astype(np.int64)


def last_items(sequences: Sequences, rows: IntArray, length: int) -> IntArray:
    """(B, length) most recent items of each row (serving and evaluation)."""
    return windows(sequences.items, sequences.indptr[rows], sequences.indptr[rows + 1], length)


def append_recent(history: IntArray, recent: IntArray) -> IntArray:
    """A right-aligned history row with ``recent`` item indices appended (oldest dropped)."""
    recent = recent[recent != PAD_INDEX]
    if len(recent) == 0:
        return history
    length = history.shape[-1]
    merged = np.concatenate([history[history != PAD_INDEX], recent])[-length:]
    out = np.full(length, PAD_INDEX, dtype=np.int64)
    out[length - len(merged) :] = merged
    return out
