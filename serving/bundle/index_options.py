"""How the item index is chosen and calibrated at build time (the ``[index]`` config section).

Kept free of heavy imports (no FAISS, no NumPy): ``training.config`` uses this class as
its ``[index]`` section, and serving-side builders (:mod:`serving.bundle.index_calibration`,
:mod:`benchmarks.catalogue`) read the same defaults, so they are declared once, here.
Serving never reads these values at request time: what the build chose is written into
the bundle's manifest, and serving applies the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IndexKind = Literal["auto", "flat", "ivf", "hnsw"]


@dataclass(frozen=True)
class IndexOptions:
    """The ``[index]`` section: which FAISS index a bundle gets and how it is calibrated.

    ``auto`` is exact search (``flat``) below ``exact_threshold`` items and IVF-Flat at or
    above it. IVF is the default approximate index because on a small CPU box it builds
    several times faster than HNSW, needs a fraction of its memory (no graph) and keeps
    filtered searches complete (a short filtered answer is re-searched with more lists,
    up to an exhaustive scan). See the README's bundle section for the measurements.

    Calibration: ``sample_queries`` queries (user embeddings when the builder has them,
    else a sample of item vectors) are searched exactly and with every setting of the
    ladder (``ivf_nprobe`` or ``hnsw_ef_search``, cheapest first); the first setting whose
    recall@``k`` against exact search reaches ``recall_target`` is chosen. If none does,
    the best one is chosen and the manifest and the log say so.
    """

    kind: IndexKind = "auto"
    """``auto`` | ``flat`` (exact) | ``ivf`` (IVF-Flat) | ``hnsw`` (HNSW-Flat)."""
    exact_threshold: int = 50_000
    """``auto``: catalogues with fewer items get exact search."""
    recall_target: float = 0.95
    """Calibration: the recall@k (against exact search) the chosen setting must reach."""
    k: int = 10
    """Calibration: the k of recall@k."""
    sample_queries: int = 1000
    """Calibration: number of queries (fewer when fewer users/items exist)."""
    ivf_nlist: int = 0
    """IVF lists; 0 = ``round(4 * sqrt(n_items))``, capped so that every list gets at least
    39 training vectors."""
    ivf_nprobe: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    """IVF calibration ladder (lists probed per query), cheapest first; values above nlist
    are dropped."""
    hnsw_m: int = 32
    """HNSW graph degree (neighbours per node on the upper layers; twice that on layer 0)."""
    hnsw_ef_construction: int = 80
    """HNSW candidate-list size while building (quality of the graph)."""
    hnsw_ef_search: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    """HNSW calibration ladder (candidate-list size per query), cheapest first."""
    seed: int = 42
    """Seed of the calibration sample and of the IVF training sample."""

    def problems(self) -> list[str]:
        """Range problems, each naming the key (``index.<key>: ...``); empty when valid."""
        checks: list[tuple[bool, str]] = [
            (self.exact_threshold >= 0, "index.exact_threshold: must be >= 0"),
            (0 < self.recall_target <= 1, "index.recall_target: must be in (0, 1]"),
            (self.k >= 1, "index.k: must be >= 1"),
            (self.sample_queries >= 1, "index.sample_queries: must be >= 1"),
            (self.ivf_nlist >= 0, "index.ivf_nlist: must be >= 0 (0 = 4 * sqrt(n_items))"),
            (
                len(self.ivf_nprobe) > 0 and all(p >= 1 for p in self.ivf_nprobe),
                "index.ivf_nprobe: must be a non-empty list of integers >= 1",
            ),
            (self.hnsw_m >= 2, "index.hnsw_m: must be >= 2"),
            (self.hnsw_ef_construction >= 1, "index.hnsw_ef_construction: must be >= 1"),
            (
                len(self.hnsw_ef_search) > 0 and all(e >= 1 for e in self.hnsw_ef_search),
                "index.hnsw_ef_search: must be a non-empty list of integers >= 1",
            ),
        ]
        return [message for ok, message in checks if not ok]
