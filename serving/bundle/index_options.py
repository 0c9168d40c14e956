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

IndexKind = Literal["auto", "flat", "ivf", "hnsw", "ivfpq"]

GIB = 1 << 30
EXACT_REFERENCE_DIM = 64
"""The width ``exact_threshold`` counts items at: it was set for 64-float vectors, and an exact
search scans items x width floats per query, so a wider index gets the same scan budget in fewer
items (measured on the Amazon Beauty default, 12,101 x 321: exact 0.55 ms per query in the engine,
IVF 0.25 ms at recall@10 0.97; docs/benchmarks/issue-23-serving-cost.md)."""


@dataclass(frozen=True)
class IndexOptions:
    """The ``[index]`` section: which FAISS index a bundle gets and how it is calibrated.

    ``auto`` is exact search (``flat``) below ``exact_threshold`` items of
    :data:`EXACT_REFERENCE_DIM` floats (an exact search's cost is items x width, so a 321-wide
    index is exact below ~10,000 items), IVF-Flat at or above it, and the compressed IVF-PQ
    re-ranked over SQ8 (``ivfpq``) when the catalogue's float32 vectors (``n_items * dim * 4``
    bytes) exceed ``memory_budget_gib``: at 64 dims
    from 8.4M items with the default 2 GiB. IVF-PQ keeps ``pq_m + dim + 8`` bytes per item
    in memory (104 at 64 dims: 1.04 GB at 10M items) instead of ``4 * dim`` (256).

    Between the two, ``auto`` measures rather than assumes: up to ``hnsw_max_items`` items it
    builds and calibrates both IVF-Flat and HNSW-Flat on the same queries and keeps the one with
    the cheaper search at the recall target (the manifest records the other's figures). Which
    wins depends on the vectors: on the Amazon Beauty default's 12,092 x 321 towers HNSW
    reaches recall@10 0.970 at 0.044 ms per query where IVF needs 0.130 ms for 0.966; on 200,000
    clustered synthetic 128-d vectors IVF reaches 0.966 at 0.25 ms, HNSW needs efSearch 128 and
    0.46 ms for 0.972 (``python -m benchmarks.index_kinds``).
    Above ``hnsw_max_items`` it is IVF alone: HNSW's build grows to minutes (604 s at 1M x 64
    on two cores with ``efConstruction`` 80, where IVF takes 91 s), its graph adds
    ``8 * hnsw_m`` bytes per item, and at
    1M items it did not reach the recall target. Filtered searches stay complete with either (a
    short IVF answer is re-searched with more lists; a short HNSW one exactly). Measurements:
    docs/training.md, the item index.

    Calibration: ``sample_queries`` queries (user embeddings when the builder has them,
    else a sample of item vectors) are searched exactly and with every setting of the
    ladder (``ivf_nprobe`` or ``hnsw_ef_search``, cheapest first; IVF-PQ: ``ivf_nprobe`` times
    ``refine_k_factor``) and the first setting whose recall@``k`` against exact search
    reaches ``recall_target`` (IVF-PQ: ``compressed_recall_target``) is chosen. If none does,
    the best one is chosen and the manifest and the log say so.
    """

    kind: IndexKind = "auto"
    """``auto`` | ``flat`` (exact) | ``ivf`` (IVF-Flat) | ``hnsw`` (HNSW-Flat) | ``ivfpq``
    (IVF-PQ with the shortlist re-ranked over 8-bit scalar-quantised vectors)."""
    exact_threshold: int = 50_000
    """``auto``: catalogues with fewer items (counted at :data:`EXACT_REFERENCE_DIM` floats:
    ``n_items * dim < exact_threshold * 64``) get exact search."""
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
    hnsw_ef_construction: int = 200
    """HNSW candidate-list size while building (quality of the graph). 200 (hnswlib's default), not
    the cheaper 80: on Amazon Beauty's blend towers the 80-graph left some items poorly linked, and
    the served lists missed them at high ranks: the served test NDCG@10 through the index was
    0.968x exact at efSearch 16 (every test user; 0.990x with 200), and on a sample of 8,000 users
    0.983x at 16 and still 0.986x at 128, against 0.996x at 16 with 200
    (``python -m benchmarks.served_quality``), for a build 2.5x longer."""
    hnsw_ef_search: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
    """HNSW calibration ladder (candidate-list size per query), cheapest first."""
    hnsw_max_items: int = 100_000
    """``auto``: catalogues of at most this many items get HNSW-Flat calibrated beside IVF-Flat,
    and the cheaper at the recall target is kept (0: IVF alone). HNSW builds in ~2.4 s at 12,092 x
    321 and ~52 s at 200,000 x 128 on two cores."""
    memory_budget_gib: float = 2.0
    """``auto``: above this many GiB of float32 item vectors, the compressed ``ivfpq`` index."""
    compressed_recall_target: float = 0.9
    """Calibration target of the compressed index (``recall_target`` applies to the others)."""
    ivfpq_nlist: int = 0
    """IVF-PQ lists; 0 = the IVF default (``round(4 * sqrt(n))``) capped at 4096: assigning
    10M vectors to 4096 lists already takes minutes on two cores, and a PQ list scan is cheap."""
    pq_m: int = 0
    """IVF-PQ sub-quantizers (bytes per code at 8 bits); 0 = dim / 2. Must divide the dimension."""
    pq_nbits: int = 8
    """Bits per PQ sub-quantizer code."""
    ivfpq_train_size: int = 262_144
    """IVF-PQ training sample (at least 64 per list and 9,984, at most every item)."""
    refine_k_factor: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    """IVF-PQ calibration: shortlist sizes (k times this) re-ranked over SQ8, cheapest first."""
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
            (self.hnsw_max_items >= 0, "index.hnsw_max_items: must be >= 0 (0 = IVF alone)"),
            (
                len(self.hnsw_ef_search) > 0 and all(e >= 1 for e in self.hnsw_ef_search),
                "index.hnsw_ef_search: must be a non-empty list of integers >= 1",
            ),
            (self.memory_budget_gib > 0, "index.memory_budget_gib: must be > 0"),
            (0 < self.compressed_recall_target <= 1, "index.compressed_recall_target: must be in (0, 1]"),
            (self.ivfpq_nlist >= 0, "index.ivfpq_nlist: must be >= 0 (0 = min(4 * sqrt(n_items), 4096))"),
            (self.pq_m >= 0, "index.pq_m: must be >= 0 (0 = dim / 2)"),
            (1 <= self.pq_nbits <= 16, "index.pq_nbits: must be in [1, 16]"),
            (self.ivfpq_train_size >= 0, "index.ivfpq_train_size: must be >= 0"),
            (
                len(self.refine_k_factor) > 0 and all(f >= 1 for f in self.refine_k_factor),
                "index.refine_k_factor: must be a non-empty list of integers >= 1",
            ),
        ]
        return [message for ok, message in checks if not ok]

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.memory_budget_gib * GIB)
