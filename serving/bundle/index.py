"""The FAISS item index: exact, IVF-Flat, HNSW-Flat or IVF-PQ re-ranked over SQ8, all inner
product over unit vectors.

Row ``r`` of the index is the item with bundle index ``r + FIRST_TOKEN_INDEX`` and id
``item_ids[r]``, whatever the index type (vectors are added in row order, so FAISS assigns
sequential ids). Vectors are L2-normalised, so inner product is cosine similarity.

What the index is and how it is searched is described by an :class:`IndexSpec` (the
manifest's ``index`` section): the type, the build parameters (IVF ``nlist``, HNSW ``M``
and ``efConstruction``, PQ ``pq_m`` / ``pq_nbits``) and the search parameters chosen at
build time by calibration (IVF ``nprobe``, HNSW ``efSearch``, the re-ranked shortlist's
``k_factor``). :func:`configure` applies the search parameters to a loaded index;
:func:`search` then uses them for every search, with or without an ID selector (filters),
and never returns a short answer just because the approximate search missed: a row with
fewer than ``k`` results is searched again with more effort, up to an exhaustive search
over the selected rows.

The compressed type (:data:`IVF_PQ_REFINE_INNER_PRODUCT`, FAISS factory
``IVF{nlist},PQ{pq_m}x{pq_nbits},Refine(SQ8)``) is for catalogues whose float32 vectors do not
fit the memory budget: IVF-PQ finds a shortlist of ``k * k_factor`` rows from ``pq_m``-byte
codes, which is re-ranked with 8-bit scalar-quantised vectors (``d`` bytes per item, about 1 %
off the exact inner product). It holds no exact vectors: the bundle stores those separately
(``serving.bundle.format``), for exact subset search and explanations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import torch

from serving.bundle.quantized_vectors import RowVectors
from serving.storage import atomic_write

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

EXACT_INNER_PRODUCT = "flat_ip"
IVF_FLAT_INNER_PRODUCT = "ivf_flat_ip"
HNSW_FLAT_INNER_PRODUCT = "hnsw_flat_ip"
IVF_PQ_REFINE_INNER_PRODUCT = "ivf_pq_refine_ip"
INDEX_TYPES: tuple[str, ...] = (
    EXACT_INNER_PRODUCT,
    IVF_FLAT_INNER_PRODUCT,
    HNSW_FLAT_INNER_PRODUCT,
    IVF_PQ_REFINE_INNER_PRODUCT,
)
COMPRESSED_TYPES: frozenset[str] = frozenset({IVF_PQ_REFINE_INNER_PRODUCT})
"""Types whose file holds no exact vectors (the bundle stores them beside it)."""

_BUILD_KEYS: dict[str, tuple[str, ...]] = {
    EXACT_INNER_PRODUCT: (),
    IVF_FLAT_INNER_PRODUCT: ("nlist",),
    HNSW_FLAT_INNER_PRODUCT: ("M", "efConstruction"),
    IVF_PQ_REFINE_INNER_PRODUCT: ("nlist", "pq_m", "pq_nbits"),
}
_SEARCH_KEYS: dict[str, tuple[str, ...]] = {
    EXACT_INNER_PRODUCT: (),
    IVF_FLAT_INNER_PRODUCT: ("nprobe",),
    HNSW_FLAT_INNER_PRODUCT: ("efSearch",),
    IVF_PQ_REFINE_INNER_PRODUCT: ("nprobe", "k_factor"),
}
_IVF_MIN_POINTS_PER_LIST = 39
"""FAISS k-means wants at least this many training vectors per centroid."""
_IVF_TRAIN_POINTS_PER_LIST = 64
"""IVF training sample: this many vectors per list (at most all of them)."""
_ADD_BATCH = 262_144
"""Compressed indexes take vectors in batches of this many (bounds FAISS's temporary
assignment and encoding buffers, ~100 MB at 64 dims, whatever the catalogue size)."""
_ESCALATION = 4
"""A short approximate answer is searched again with this many times the effort."""
_SUBSET_MIN = 4096
_SUBSET_SHARE = 50
_SUBSET_QUERY_BLOCK = 256


@dataclass(frozen=True)
class IndexSpec:
    """What an index is and how it is searched: the manifest's ``index`` section, minus
    the calibration record.

    ``type``: one of :data:`INDEX_TYPES`. ``params``: build parameters (``nlist`` for IVF;
    ``M``, ``efConstruction`` for HNSW; ``nlist``, ``pq_m``, ``pq_nbits`` for IVF-PQ; none for
    exact). ``search_params``: ``nprobe`` (IVF) or ``efSearch`` (HNSW), plus ``k_factor`` for
    IVF-PQ (shortlist of k * k_factor re-ranked), applied to every search at serving.
    Construction validates the keys and values and raises :class:`ValueError` naming the
    problem.
    """

    type: str = EXACT_INNER_PRODUCT
    params: Mapping[str, int] = field(default_factory=dict)
    search_params: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise ValueError(f"index type {self.type!r} is not supported (known: {', '.join(INDEX_TYPES)})")
        for name, given, wanted in (
            ("params", self.params, _BUILD_KEYS[self.type]),
            ("search_params", self.search_params, _SEARCH_KEYS[self.type]),
        ):
            if set(given) != set(wanted):
                expected = ", ".join(wanted) or "none"
                raise ValueError(f"{self.type} {name} must be exactly {{{expected}}}, got {sorted(given)}")
            for key, value in given.items():
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{self.type} {name}.{key} must be an integer >= 1, got {value!r}")
        nlist, nprobe = self.params.get("nlist"), self.search_params.get("nprobe")
        if nlist is not None and nprobe is not None and nprobe > nlist:
            raise ValueError(f"{self.type} search_params.nprobe {nprobe} exceeds params.nlist {nlist}")

    @property
    def approximate(self) -> bool:
        return self.type != EXACT_INNER_PRODUCT

    @property
    def compressed(self) -> bool:
        """Whether the index file holds no exact vectors (see :data:`COMPRESSED_TYPES`)."""
        return self.type in COMPRESSED_TYPES

    @property
    def factory(self) -> str:
        """The FAISS index-factory string of this spec (for the manifest and the logs)."""
        p = self.params
        return {
            EXACT_INNER_PRODUCT: "Flat",
            IVF_FLAT_INNER_PRODUCT: f"IVF{p.get('nlist')},Flat",
            HNSW_FLAT_INNER_PRODUCT: f"HNSW{p.get('M')},Flat",
            IVF_PQ_REFINE_INNER_PRODUCT: (
                f"IVF{p.get('nlist')},PQ{p.get('pq_m')}x{p.get('pq_nbits')},Refine(SQ8)"
            ),
        }[self.type]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "params": dict(self.params), "search_params": dict(self.search_params)}

    @classmethod
    def from_manifest(cls, section: Mapping[str, Any] | None) -> IndexSpec:
        """The spec a manifest's ``index`` section states.

        Manifests written before index calibration carry ``{"type": "flat_ip", "ntotal": n}``
        (no ``params``): they describe an exact index. A missing section is exact too.
        Raises :class:`ValueError` for anything else that does not describe a valid spec.
        """
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ValueError(f"must be an object, got {type(section).__name__}")
        kind = section.get("type", EXACT_INNER_PRODUCT)
        if "params" not in section and "search_params" not in section:
            if kind != EXACT_INNER_PRODUCT:
                raise ValueError(f"index type {kind!r} without params/search_params")
            return cls()
        params, search_params = section.get("params", {}), section.get("search_params", {})
        if not isinstance(params, Mapping) or not isinstance(search_params, Mapping):
            raise ValueError("params and search_params must be objects")
        return cls(str(kind), dict(params), dict(search_params))


EXACT = IndexSpec()
"""The exact inner-product index (no build or search parameters)."""


def default_nlist(n: int) -> int:
    """IVF lists for ``n`` vectors: ``round(4 * sqrt(n))``, at most ``n // 39`` (so every
    list gets enough k-means training vectors), at least 1."""
    return max(1, min(round(4 * math.sqrt(n)), n // _IVF_MIN_POINTS_PER_LIST))


def build_index(
    embeddings: FloatArray, spec: IndexSpec = EXACT, *, seed: int = 0, train_size: int = 0
) -> faiss.Index:
    """An index of ``spec.type`` over ``embeddings`` (n, d): row r = vector r.

    IVF trains its coarse quantizer (spherical k-means) on a seeded sample of at most
    64 vectors per list. IVF-PQ trains on a seeded sample of ``max(64 * nlist,
    39 * 2**pq_nbits, train_size)`` vectors (at most all) and takes the vectors in batches.
    ``spec.search_params`` are applied (:func:`configure`). Raises :class:`ValueError` when
    ``nlist`` exceeds the number of vectors or ``pq_m`` does not divide the dimension.
    """
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = vectors.shape
    index: faiss.Index
    if spec.type == EXACT_INNER_PRODUCT:
        index = faiss.IndexFlatIP(d)
    elif spec.type == IVF_PQ_REFINE_INNER_PRODUCT:
        index = _build_ivf_pq(vectors, spec, seed=seed, train_size=train_size)
        configure(index, spec)
        return index
    elif spec.type == IVF_FLAT_INNER_PRODUCT:
        nlist = spec.params["nlist"]
        if nlist > n:
            raise ValueError(f"ivf nlist {nlist} exceeds the number of vectors {n}")
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.seed = seed
        size = min(n, max(nlist * _IVF_TRAIN_POINTS_PER_LIST, nlist))
        sample = np.random.default_rng(seed).choice(n, size=size, replace=False) if size < n else None
        ivf.train(vectors if sample is None else vectors[np.sort(sample)])
        index = ivf
    else:
        hnsw = faiss.IndexHNSWFlat(d, spec.params["M"], faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = spec.params["efConstruction"]
        index = hnsw
    index.add(vectors)
    configure(index, spec)
    return index


def _build_ivf_pq(vectors: FloatArray, spec: IndexSpec, *, seed: int, train_size: int) -> faiss.Index:
    n, d = vectors.shape
    nlist, m = spec.params["nlist"], spec.params["pq_m"]
    if nlist > n:
        raise ValueError(f"ivf nlist {nlist} exceeds the number of vectors {n}")
    if d % m:
        raise ValueError(f"pq_m {m} does not divide the dimension {d}")
    index = faiss.index_factory(d, spec.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    assert isinstance(ivf, faiss.IndexIVFPQ)  # what the factory string builds
    ivf.cp.seed = seed
    ivf.pq.cp.seed = seed
    # Each PQ sub-quantizer is a k-means of 2**nbits centroids, which wants 39 vectors each too.
    pq_min = (1 << spec.params["pq_nbits"]) * _IVF_MIN_POINTS_PER_LIST
    size = min(n, max(nlist * _IVF_TRAIN_POINTS_PER_LIST, pq_min, train_size))
    sample = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)) if size < n else None
    # The sample is a copy of at most train_size rows; never the whole catalogue twice.
    index.train(vectors if sample is None else vectors[sample])
    for start in range(0, n, _ADD_BATCH):
        index.add(vectors[start : start + _ADD_BATCH])
    return index


def index_type(index: faiss.Index) -> str:
    """The :data:`INDEX_TYPES` name of a FAISS index, or ``unsupported <Class>/<metric>``."""
    inner = index.metric_type == faiss.METRIC_INNER_PRODUCT
    if inner and type(index) is faiss.IndexFlatIP:
        return EXACT_INNER_PRODUCT
    if inner and type(index) is faiss.IndexIVFFlat:
        return IVF_FLAT_INNER_PRODUCT
    if inner and type(index) is faiss.IndexHNSWFlat:
        return HNSW_FLAT_INNER_PRODUCT
    if inner and type(index) is faiss.IndexRefine and _is_ivf_pq_over_sq8(index):
        return IVF_PQ_REFINE_INNER_PRODUCT
    return f"unsupported {type(index).__name__}/metric {index.metric_type}"


def _is_ivf_pq_over_sq8(index: faiss.IndexRefine) -> bool:
    base, refine = faiss.downcast_index(index.base_index), faiss.downcast_index(index.refine_index)
    return (
        type(base) is faiss.IndexIVFPQ
        and base.metric_type == faiss.METRIC_INNER_PRODUCT
        and type(refine) is faiss.IndexScalarQuantizer
        and refine.metric_type == faiss.METRIC_INNER_PRODUCT
        and refine.sq.qtype == faiss.ScalarQuantizer.QT_8bit
    )


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF index that ``index`` probes: itself, or the base of an IVF-PQ refine; else None."""
    if isinstance(index, faiss.IndexIVF):
        return index
    if isinstance(index, faiss.IndexRefine):
        base = faiss.downcast_index(index.base_index)
        return base if isinstance(base, faiss.IndexIVF) else None
    return None


def build_params(index: faiss.Index) -> dict[str, int]:
    """The build parameters an index file actually holds (compare with a spec's ``params``)."""
    if isinstance(index, faiss.IndexRefine):
        base = faiss.downcast_index(index.base_index)
        if isinstance(base, faiss.IndexIVFPQ):
            return {"nlist": int(base.nlist), "pq_m": int(base.pq.M), "pq_nbits": int(base.pq.nbits)}
        return {}
    if isinstance(index, faiss.IndexIVF):
        return {"nlist": int(index.nlist)}
    if isinstance(index, faiss.IndexHNSW):
        return {"M": _hnsw_m(index), "efConstruction": int(index.hnsw.efConstruction)}
    return {}


def _hnsw_m(index: faiss.IndexHNSW) -> int:
    # Level 0 holds 2*M neighbours, every upper level M: cum_nneighbor_per_level = [0, 2M, 3M, ...].
    cumulative = faiss.vector_to_array(index.hnsw.cum_nneighbor_per_level)
    return int(cumulative[1] // 2)


def configure(index: faiss.Index, spec: IndexSpec) -> None:
    """Check that ``index`` is what ``spec`` says and make its search parameters the
    index's defaults (IVF ``nprobe``, HNSW ``efSearch``, refine ``k_factor``).

    Raises :class:`ValueError` naming the disagreement (type, build parameters). Call
    once, before the index is shared: searches read these defaults concurrently.
    """
    actual = index_type(index)
    if actual != spec.type:
        raise ValueError(f"index is {actual}, manifest says {spec.type}")
    held = build_params(index)
    if held != dict(spec.params):
        raise ValueError(f"index build parameters are {held}, manifest says {dict(spec.params)}")
    ivf = _ivf(index)
    if ivf is not None:
        ivf.nprobe = spec.search_params["nprobe"]
    if isinstance(index, faiss.IndexRefine):
        index.k_factor = float(spec.search_params["k_factor"])
    elif isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = spec.search_params["efSearch"]


def write_index(index: faiss.Index, path: Path) -> None:
    atomic_write(path, lambda tmp: faiss.write_index(index, str(tmp)))


def read_index(path: Path) -> faiss.Index:
    return faiss.read_index(str(path))


def search_parameters(
    index: faiss.Index, selector: faiss.IDSelector | None = None, effort: int = 1
) -> faiss.SearchParameters | None:
    """Per-call parameters of the right FAISS class for ``index``: its configured
    ``nprobe`` / ``efSearch`` times ``effort`` (IVF: at most ``nlist``) plus ``selector``.

    IVF-PQ refine: ``IndexRefineSearchParameters`` with the index's ``k_factor`` whose
    ``base_index_params`` (kept alive by the returned object) carry nprobe and the selector
    (FAISS refuses plain parameters there; the re-ranking only sees selected rows).

    None when nothing differs from the index's defaults (no selector, effort 1). The
    result references ``selector`` without owning it: keep the selector alive while
    searching.
    """
    if selector is None and effort == 1:
        return None
    params: faiss.SearchParameters
    if isinstance(index, faiss.IndexRefine):
        base_ivf = _ivf(index)
        if base_ivf is None:
            raise ValueError(f"unsupported refine index over {type(index.base_index).__name__}")
        base = faiss.SearchParametersIVF()
        base.nprobe = min(int(base_ivf.nlist), int(base_ivf.nprobe) * effort)
        if selector is not None:
            base.sel = selector
        refine = faiss.IndexRefineSearchParameters()
        refine.k_factor = float(index.k_factor)
        refine.base_index_params = base
        # SWIG keeps no reference to the base parameters: the proxy's own attribute does.
        refine.referenced_objects = [base]  # type: ignore[attr-defined]
        return refine
    if isinstance(index, faiss.IndexIVF):
        ivf = faiss.SearchParametersIVF()
        ivf.nprobe = min(int(index.nlist), int(index.nprobe) * effort)
        params = ivf
    elif isinstance(index, faiss.IndexHNSW):
        hnsw = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from the stubs
        hnsw.efSearch = int(index.hnsw.efSearch) * effort
        params = hnsw
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    return params


def search(
    index: faiss.Index,
    queries: FloatArray,
    k: int,
    params: faiss.SearchParameters | None = None,
) -> tuple[FloatArray, IntArray]:
    """(scores, rows) of shape (B, k), best first; rows are -1 only where fewer than k
    items (selected items, with a selector) exist.

    ``params`` may carry an ID selector (``faiss.SearchParameters(sel=...)``, any
    SearchParameters class): then only selected rows are searched, and the answer is the
    top k selected rows. Only the selector is taken from ``params``: the search
    parameters are the index's own (set by :func:`configure` from the manifest).

    Approximate indexes: a row that comes back with fewer than k results (a selective
    filter, or k larger than the probed lists hold) is searched again, IVF with 4x the
    lists until every list is probed (IVF-PQ: its IVF base, the shortlist re-ranked as
    usual), HNSW exactly over its stored vectors, so the answer is complete whenever k
    selected rows exist. Thread-safe: the index is only read.
    """
    k = max(1, min(k, index.ntotal))
    vectors = np.ascontiguousarray(queries, dtype=np.float32)
    selector = None if params is None else params.sel
    scores, rows = _run(index, vectors, k, search_parameters(index, selector))
    rows = rows.astype(np.int64, copy=False)
    short = np.flatnonzero(rows[:, -1] < 0)
    ivf = _ivf(index)
    if len(short) and ivf is not None:
        effort = 1
        while len(short) and int(ivf.nprobe) * effort < int(ivf.nlist):
            effort *= _ESCALATION
            wider = search_parameters(index, selector, effort)
            more_scores, more_rows = _run(index, vectors[short], k, wider)
            scores[short], rows[short] = more_scores, more_rows
            short = short[more_rows[:, -1] < 0]
    elif len(short) and isinstance(index, faiss.IndexHNSW):
        storage = faiss.downcast_index(index.storage)
        exact = None if selector is None else search_parameters(storage, selector)
        scores[short], rows[short] = _run(storage, vectors[short], k, exact)
    return scores, rows


def exact_subset_limit(index: faiss.Index) -> int:
    """Largest selection that :func:`search_subset` should answer instead of ``index``.

    Approximate indexes: ``max(4096, ntotal / 50)`` rows (20,000 of 1,000,000). Below
    that, exact search over just the selected rows reads fewer vectors than IVF probing
    reads, and it never comes back short, where a selective filter makes IVF re-probe up to
    an exhaustive scan (measured at 1M items, 0.3 % selected: ~15 ms per query through the
    index, well under 1 ms over the subset). Exact indexes: 0 (their selector search is
    already exact).
    """
    if index_type(index) == EXACT_INNER_PRODUCT:
        return 0
    return max(_SUBSET_MIN, int(index.ntotal) // _SUBSET_SHARE)


def search_subset(
    vectors: RowVectors, rows: IntArray, queries: FloatArray, k: int
) -> tuple[FloatArray, IntArray]:
    """Top-k among ``rows`` of ``vectors`` by exact inner product with those vectors: (scores,
    rows), (B, k), best first, ties in row order; -1 (score -inf) pads when fewer than k rows
    exist. For a compressed index the request path passes the SQ8-decoded vectors
    (:class:`serving.bundle.quantized_vectors.QuantizedVectors`), the ones its refine step
    scores with, so the ranking is exact over those, not over the float32 embeddings.

    The result has the shape and meaning of :func:`search` with a selector over ``rows``.
    Memory: the selected vectors plus one (256, len(rows)) score block at a time.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = max(1, k)
    out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_rows = np.full((len(queries), k), -1, dtype=np.int64)
    if len(rows) == 0:
        return out_scores, out_rows
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    selected = vectors[rows]
    take = min(k, len(rows))
    for start in range(0, len(queries), _SUBSET_QUERY_BLOCK):
        block = queries[start : start + _SUBSET_QUERY_BLOCK] @ selected.T
        top = top_positions(block, take)
        out_scores[start : start + len(block), :take] = np.take_along_axis(block, top, axis=1)
        out_rows[start : start + len(block), :take] = rows[top]
    return out_scores, out_rows


def top_positions(scores: FloatArray, take: int) -> IntArray:
    """Column positions of the ``take`` highest scores of each row of ``scores`` (B, n),
    (B, min(take, n)): best first, equal scores in column order."""
    take = min(take, scores.shape[1])
    if take < scores.shape[1]:
        # torch's top-k selection: ~6x NumPy's argpartition on a (16, 1,682) batch, one thread.
        # Which of several scores tied at the k-th place is kept is arbitrary in both.
        block = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
        top = torch.topk(block, take, dim=1, sorted=False).indices.numpy()
    else:
        top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    top_scores = np.take_along_axis(scores, top, axis=1)
    # top is a permutation of positions, so the secondary key orders equal scores by column.
    order = np.lexsort((top, -top_scores), axis=1)
    ordered: IntArray = np.take_along_axis(top, order, axis=1)
    return ordered


def _run(
    index: faiss.Index, vectors: FloatArray, k: int, params: faiss.SearchParameters | None
) -> tuple[FloatArray, IntArray]:
    if params is None:
        return index.search(vectors, k)
    return index.search(vectors, k, params=params)


def item_vectors(index: faiss.Index) -> FloatArray:
    """Every indexed vector, (ntotal, d) float32, row r = index row r (a copy).

    Works for every uncompressed type without changing the index: exact and HNSW-Flat
    reconstruct from their flat storage; IVF-Flat (which keeps vectors grouped by list
    and has no direct map after loading) is read list by list and scattered by id.
    Raises :class:`ValueError` for a compressed index (:data:`COMPRESSED_TYPES`): it only
    holds approximations, and the bundle keeps the exact vectors in their own file.
    """
    if index_type(index) in COMPRESSED_TYPES:
        raise ValueError(f"{index_type(index)} holds no exact vectors; read the bundle's item vectors")
    if not isinstance(index, faiss.IndexIVF):
        vectors: FloatArray = index.reconstruct_n(0, index.ntotal)
        return np.ascontiguousarray(vectors, dtype=np.float32)
    out = np.zeros((index.ntotal, index.d), dtype=np.float32)
    invlists = index.invlists
    if invlists is None:
        raise ValueError("IVF index without inverted lists")
    code_size = int(invlists.code_size)
    if code_size != 4 * index.d:
        raise ValueError(f"IVF lists hold {code_size}-byte codes, expected raw float32 vectors")
    seen = 0
    for list_no in range(int(index.nlist)):
        size = int(invlists.list_size(list_no))
        if size == 0:
            continue
        ids_ptr, codes_ptr = invlists.get_ids(list_no), invlists.get_codes(list_no)
        try:
            ids = faiss.rev_swig_ptr(ids_ptr, size).astype(np.int64, copy=True)
            codes = faiss.rev_swig_ptr(codes_ptr, size * code_size).copy()
        finally:
            invlists.release_ids(list_no, ids_ptr)  # type: ignore[attr-defined]  # missing from the stubs
            invlists.release_codes(list_no, codes_ptr)  # type: ignore[attr-defined]
        out[ids] = codes.view(np.float32).reshape(size, index.d)
        seen += size
    if seen != index.ntotal:
        raise ValueError(f"IVF lists hold {seen} vectors, index says {index.ntotal}")
    return out
