""" "Because you viewed X": the history item most similar to each recommended item."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from serving.bundle.quantized_vectors import RowVectors

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

EXPLAINED_HISTORY = 100
"""A recommendation is explained by one of the user's last this-many history items (right-aligned
windows: the most recent last). "Because you viewed X" names something the member remembers."""


def explain(vectors: RowVectors, recommended: Sequence[IntArray], histories: IntArray) -> list[IntArray]:
    """For each query i and each of its ``recommended[i]`` item rows, the row among the last
    :data:`EXPLAINED_HISTORY` of ``histories[i]`` with the highest cosine similarity (the earliest
    position on ties).

    ``vectors`` (n_items, d) unit item vectors; ``histories`` (B, L) item rows, -1 where a
    window has no item. A query without history items gets -1 for every item. Cost: one
    batched (k, d) x (d, L) product for the whole batch, so the number of NumPy calls does
    not grow with the batch.
    """
    if len(recommended) != len(histories):
        raise ValueError(f"{len(recommended)} recommendation lists for {len(histories)} histories")
    # Only the most recent EXPLAINED_HISTORY positions, and none of the leading all-empty columns:
    # the product gathers (B, L, d) history vectors, which at d = 2,049 and L = 1,000 (the linear
    # objective's towers) cost more than the whole rest of a Recommend call.
    histories = histories[:, -EXPLAINED_HISTORY:]
    used = np.flatnonzero((histories >= 0).any(axis=0))
    histories = histories[:, used[0] :] if len(used) else histories[:, :0]
    width = max((len(rows) for rows in recommended), default=0)
    if width == 0 or histories.shape[1] == 0:
        return [np.full(len(rows), -1, dtype=np.int64) for rows in recommended]
    padded = np.zeros((len(recommended), width), dtype=np.int64)
    for i, rows in enumerate(recommended):
        padded[i, : len(rows)] = rows
    present = histories >= 0
    similarity = np.matmul(vectors[padded], vectors[np.where(present, histories, 0)].transpose(0, 2, 1))
    similarity[np.broadcast_to(~present[:, None, :], similarity.shape)] = -np.inf
    best = np.take_along_axis(histories, similarity.argmax(axis=2), axis=1)
    best[~present.any(axis=1)] = -1
    return [best[i, : len(rows)] for i, rows in enumerate(recommended)]
