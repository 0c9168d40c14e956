""" "Because you viewed X": the history item most similar to each recommended item."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def explain(vectors: FloatArray, recommended: IntArray, history: IntArray) -> IntArray:
    """For each recommended item row, the ``history`` row with the highest cosine similarity.

    ``vectors`` (n_items, d) unit item vectors; ``recommended`` and ``history`` are item
    rows. Returns -1 for every item when ``history`` is empty. Cost: one (k, d) x (d, h)
    product, h <= history length + recent items.
    """
    if len(history) == 0 or len(recommended) == 0:
        return np.full(len(recommended), -1, dtype=np.int64)
    similarity = vectors[recommended] @ vectors[history].T
    best: IntArray = history[np.argmax(similarity, axis=1)].astype(np.int64)
    return best
