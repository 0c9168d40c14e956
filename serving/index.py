"""The FAISS item index with its id map.

Row ``r`` of the index is the item with bundle index ``r + FIRST_TOKEN_INDEX`` and id
``item_ids[r]``. Vectors are L2-normalised, so inner product is cosine similarity.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt

from serving.storage import atomic_write

EXACT_INNER_PRODUCT = "flat_ip"


def build_index(embeddings: npt.NDArray[np.float32]) -> faiss.Index:
    """Exact inner-product index over ``embeddings`` (n, d)."""
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def write_index(index: faiss.Index, path: Path) -> None:
    atomic_write(path, lambda tmp: faiss.write_index(index, str(tmp)))


def read_index(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))


def search(
    index: faiss.Index,
    queries: npt.NDArray[np.float32],
    k: int,
    params: faiss.SearchParameters | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """(scores, rows) of shape (B, k); rows are -1 where fewer than k items exist.

    ``params`` may carry an ID selector (``faiss.SearchParameters(sel=...)``): then only
    selected rows are searched, and the top k are the top k selected rows.
    """
    k = max(1, min(k, index.ntotal))
    vectors = np.ascontiguousarray(queries, dtype=np.float32)
    scores, rows = index.search(vectors, k) if params is None else index.search(vectors, k, params=params)
    return scores, rows.astype(np.int64)


def item_vectors(index: faiss.Index) -> npt.NDArray[np.float32]:
    """Every indexed vector, (ntotal, d) float32, row r = index row r (a copy)."""
    vectors: npt.NDArray[np.float32] = index.reconstruct_n(0, index.ntotal)
    return np.ascontiguousarray(vectors, dtype=np.float32)
