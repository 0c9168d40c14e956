"""Item vectors of a compressed index, decoded from the codes its re-ranking step keeps.

An IVF-PQ index with ``Refine(SQ8)`` (:data:`serving.bundle.index.IVF_PQ_REFINE_INNER_PRODUCT`)
holds every item as 8-bit scalar-quantised codes (``d`` bytes per item, in memory). Those
codes are what its final scores come from, so the request path's other readers of item
vectors (explanations, diversity re-ranking, exact search over a filter's few rows, the
query of ``SimilarItems``) read them too: the same scores as the index search, and no page
of the bundle's exact float32 vectors (``d * 4`` bytes per item, 2.56 GB at 10M x 64) is
touched while serving. The exact vectors stay in the bundle, memory-mapped, for whoever
needs ground truth (benchmarks, re-calibration).
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

__all__ = ["QuantizedVectors", "RowVectors"]

FloatArray = npt.NDArray[np.float32]
_CHECKED_ROWS = 64


class QuantizedVectors:
    """Read-only ``(ntotal, d)`` float32 rows decoded on indexing from a refine index's SQ8
    codes (a view of the index's own memory: the index must outlive this object, which
    holds a reference to it).

    ``vectors[key]`` takes what a NumPy array takes on its first axis (an int, a slice, an
    integer array of any shape) and returns float32 of shape ``codes[key].shape + (d,)``
    minus the code axis, equal to FAISS's own ``reconstruct`` (checked on construction).
    """

    def __init__(self, index: faiss.Index) -> None:
        if not isinstance(index, faiss.IndexRefine):
            raise ValueError(f"{type(index).__name__} is not a refine index")
        refine = faiss.downcast_index(index.refine_index)
        if type(refine) is not faiss.IndexScalarQuantizer or refine.sq.qtype != faiss.ScalarQuantizer.QT_8bit:
            raise ValueError(f"refine index {type(refine).__name__} is not an 8-bit scalar quantizer")
        d, n = int(refine.d), int(refine.ntotal)
        if int(refine.code_size) != d:
            raise ValueError(f"SQ8 codes of {refine.code_size} bytes for dimension {d}")
        self._index = index  # keeps the codes' memory alive
        self._codes: npt.NDArray[np.uint8] = (
            faiss.rev_swig_ptr(refine.codes.data(), n * d).reshape(n, d)
            if n
            else np.zeros((0, d), dtype=np.uint8)
        )
        trained = faiss.vector_to_array(refine.sq.trained).astype(np.float32)
        if trained.shape != (2 * d,):
            raise ValueError(f"SQ8 training holds {trained.shape[0]} values, expected {2 * d}")
        vmin, vdiff = trained[:d], trained[d:]
        # FAISS decodes x = vmin + (code + 0.5) / 255 * vdiff; as one multiply-add.
        self._scale = (vdiff / np.float32(255.0)).astype(np.float32)
        self._offset = (vmin + np.float32(0.5) * self._scale).astype(np.float32)
        self.shape = (n, d)
        self.dtype = np.dtype(np.float32)
        self._check(refine)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> FloatArray:
        decoded: FloatArray = self._codes[key].astype(np.float32)
        decoded *= self._scale
        decoded += self._offset
        return decoded

    def _check(self, refine: faiss.IndexScalarQuantizer) -> None:
        """Decoding must equal FAISS's on a spread of rows: the code layout is FAISS's."""
        if not len(self):
            return
        rows = np.unique(np.linspace(0, len(self) - 1, _CHECKED_ROWS).astype(np.int64))
        expected = refine.reconstruct_batch(rows)
        if not np.allclose(self[rows], expected, rtol=0, atol=1e-5):
            raise ValueError("decoded SQ8 rows differ from FAISS's reconstruction")


RowVectors = FloatArray | QuantizedVectors
"""Item vectors as the request path reads them (row r = index row r): exact or decoded."""
