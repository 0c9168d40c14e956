"""Build-time choice and calibration of the item index.

:func:`build_calibrated_index` decides the index type from :class:`IndexOptions`
(``auto``: exact below ``exact_threshold`` items of 64 floats, IVF-Flat above it, IVF-PQ re-ranked over
SQ8 when the float32 vectors exceed ``memory_budget_gib``), builds it and, for an
approximate index, measures recall@k against exact search on sample queries for every
setting of the search ladder (IVF ``nprobe``, HNSW ``efSearch``, cheapest first). The
chosen setting is the first (cheapest) one whose recall reaches ``recall_target``; if
none does, the one with the best recall, and the record says so.

Up to ``hnsw_max_items`` items, ``auto`` calibrates HNSW-Flat beside IVF-Flat on the same queries
and keeps the type whose chosen setting searches cheaper (a type that meets the target beats one
that does not); ``chosen_reason`` names the other's figures and ``alternatives`` records them.

IVF-PQ's ladder has two dimensions, ``nprobe`` (the cost that matters: lists scanned) and
the re-ranked shortlist's ``k_factor`` (k * k_factor SQ8 vectors decoded: microseconds).
For each ``nprobe``, cheapest first, the largest ``k_factor`` is tried; once it reaches
``compressed_recall_target`` the smaller ones are tried too and the smallest that reaches
it is chosen; larger ``nprobe`` values are then not measured (they only cost more).
The manifest section then also holds ``factory`` (FAISS index-factory string),
``memory_budget_bytes`` and ``flat_bytes`` (n * d * 4: why the compressed type was chosen).

The result, :class:`BuiltIndex`, carries the index (search parameters applied) and the
record written into the manifest's ``index`` section (here: 1M synthetic items)::

    {"type": "ivf_flat_ip", "ntotal": 1000000,
     "params": {"nlist": 4000}, "search_params": {"nprobe": 128},
     "k": 10, "target": 0.95, "recall_at_k": 0.9753, "met_target": true,
     "chosen_reason": "cheapest setting with recall@10 >= 0.95: nprobe=128 (recall 0.9753)",
     "curve": [{"setting": {"nprobe": 1}, "recall": 0.3494, "ms_per_query": 0.057}, ...],
     "exact_ms_per_query": 82.6,
     "queries": {"source": "user_embeddings", "count": 1000},
     "build_seconds": 90.7, "calibration_seconds": 23.9}

Exact indexes have empty ``params`` / ``search_params`` / ``curve``, ``recall_at_k`` 1.0 and
no queries (``{"source": "", "count": 0}``). ``queries.source`` is ``user_embeddings`` or
``perturbed_item_vectors``.

``ms_per_query`` is the mean wall time of single-query searches (one query per call and
one FAISS thread, as a serving request searches) on up to 200 of the sample queries;
``exact_ms_per_query`` the same for exact search on up to 50; recall uses every query.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from serving.bundle.index import (
    EXACT,
    EXACT_INNER_PRODUCT,
    HNSW_FLAT_INNER_PRODUCT,
    IVF_FLAT_INNER_PRODUCT,
    IVF_PQ_REFINE_INNER_PRODUCT,
    IndexSpec,
    build_index,
    configure,
    default_nlist,
)
from serving.bundle.index_options import EXACT_REFERENCE_DIM, IndexOptions

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

USER_EMBEDDINGS = "user_embeddings"
ITEM_VECTORS = "perturbed_item_vectors"
_QUERY_NOISE = 0.75
"""Fallback queries: item vectors plus Gaussian noise of about this norm, renormalised.
Item vectors themselves are too easy (the index finds the query's own row and, for HNSW,
its graph neighbours): on 3000 random unit vectors HNSW at efSearch 16 reaches recall@10
0.996 on item queries but 0.88 on fresh ones; with this noise 0.94, and on clustered data
the perturbed queries' recall curve is within 0.01-0.03 of fresh queries'."""
_TIMED_QUERIES = 200
_TIMED_EXACT_QUERIES = 50
_IVFPQ_MAX_NLIST = 4096


@dataclass(frozen=True)
class CalibrationPoint:
    """One ladder setting: its search parameters, recall@k and single-query latency."""

    setting: dict[str, int]
    recall: float
    ms_per_query: float

    def to_dict(self) -> dict[str, Any]:
        return {"setting": dict(self.setting), "recall": self.recall, "ms_per_query": self.ms_per_query}


@dataclass
class BuiltIndex:
    """A built index with its search parameters applied, and how they were chosen.

    ``recall_at_k`` is the chosen setting's measured recall (1.0 for exact search, by
    definition). ``curve`` is empty for exact search. :meth:`manifest` is the manifest's
    ``index`` section.
    """

    index: faiss.Index
    spec: IndexSpec
    k: int
    target: float
    recall_at_k: float
    met_target: bool
    chosen_reason: str
    curve: list[CalibrationPoint] = field(default_factory=list)
    exact_ms_per_query: float | None = None
    queries_source: str = ""
    query_count: int = 0
    build_seconds: float = 0.0
    calibration_seconds: float = 0.0
    memory_budget_bytes: int | None = None
    alternatives: list[dict[str, Any]] = field(default_factory=list)

    @property
    def chosen_point(self) -> CalibrationPoint:
        """The curve's point of the applied search setting; raises ValueError for exact search
        (no curve)."""
        for point in self.curve:
            if point.setting == self.spec.search_params:
                return point
        raise ValueError(f"{self.spec.factory}: no calibration point for {dict(self.spec.search_params)}")

    def manifest(self) -> dict[str, Any]:
        """The manifest's ``index`` section (JSON-serialisable)."""
        return {
            **self.spec.to_dict(),
            "ntotal": int(self.index.ntotal),
            "k": self.k,
            "target": self.target,
            "recall_at_k": round(self.recall_at_k, 6),
            "met_target": self.met_target,
            "chosen_reason": self.chosen_reason,
            "curve": [point.to_dict() for point in self.curve],
            "exact_ms_per_query": self.exact_ms_per_query,
            "queries": {"source": self.queries_source, "count": self.query_count},
            "build_seconds": round(self.build_seconds, 3),
            "calibration_seconds": round(self.calibration_seconds, 3),
            "factory": self.spec.factory,
            "flat_bytes": int(self.index.ntotal) * int(self.index.d) * 4,
            **(
                {"memory_budget_bytes": self.memory_budget_bytes}
                if self.memory_budget_bytes is not None
                else {}
            ),
            **({"alternatives": self.alternatives} if self.alternatives else {}),
        }


def resolve_type(n_items: int, options: IndexOptions, *, dim: int) -> str:
    """The index type for a catalogue of ``n_items`` vectors of ``dim``: ``options.kind``,
    with ``auto`` meaning exact below ``options.exact_threshold`` items of
    :data:`EXACT_REFERENCE_DIM` floats (``n_items * dim`` below ``exact_threshold * 64``),
    IVF-Flat at or above it, and IVF-PQ re-ranked over SQ8 when the float32 vectors (``n_items * dim * 4``
    bytes) exceed ``options.memory_budget_gib`` (whatever the threshold says)."""
    kind = options.kind
    if kind == "auto":
        if n_items * dim * 4 > options.memory_budget_bytes:
            kind = "ivfpq"
        else:
            kind = "flat" if n_items * dim < options.exact_threshold * EXACT_REFERENCE_DIM else "ivf"
    return {
        "flat": EXACT_INNER_PRODUCT,
        "ivf": IVF_FLAT_INNER_PRODUCT,
        "hnsw": HNSW_FLAT_INNER_PRODUCT,
        "ivfpq": IVF_PQ_REFINE_INNER_PRODUCT,
    }[kind]


def _budget_reason(n: int, d: int, options: IndexOptions) -> str:
    flat = n * d * 4
    if options.kind != "auto":
        return f"index.kind = {options.kind}"
    return (
        f"flat vectors {flat / 2**30:.2f} GiB ({n} x {d} x 4 B) exceed index.memory_budget_gib "
        f"{options.memory_budget_gib}"
    )


def build_calibrated_index(
    vectors: FloatArray,
    options: IndexOptions | None = None,
    queries: FloatArray | None = None,
) -> BuiltIndex:
    """Build the index ``options`` ask for over ``vectors`` (n, d unit rows) and calibrate it.

    ``queries``: real query vectors (user embeddings), of which a seeded sample of
    ``options.sample_queries`` is used; None or empty: a sample of ``vectors`` perturbed
    by noise of norm ~0.75 (never the item vectors themselves, which overstate recall).
    Raises :class:`ValueError` for an empty catalogue or invalid options.
    """
    options = options or IndexOptions()
    problems = options.problems()
    if problems:
        raise ValueError("; ".join(problems))
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if n == 0:
        raise ValueError("cannot index an empty catalogue")
    kind = resolve_type(n, options, dim=d)
    k = min(options.k, n)
    if kind == EXACT_INNER_PRODUCT:
        started = time.perf_counter()
        index = build_index(vectors, EXACT)
        reason = (
            f"exact search: {n} items x {d} floats < index.exact_threshold {options.exact_threshold}"
            f" x {EXACT_REFERENCE_DIM}"
            if options.kind == "auto"
            else "exact search: index.kind = flat"
        )
        return BuiltIndex(
            index=index,
            spec=EXACT,
            k=k,
            target=options.recall_target,
            recall_at_k=1.0,
            met_target=True,
            chosen_reason=reason,
            build_seconds=time.perf_counter() - started,
        )

    source, sample = _sample_queries(vectors, queries, options)
    if kind == IVF_PQ_REFINE_INNER_PRODUCT:
        return _build_compressed(vectors, options, source, sample, k)
    started = time.perf_counter()
    truth = exact_neighbours(vectors, sample, k)
    exact_ms = _exact_ms_per_query(vectors, sample, k)
    reference_seconds = time.perf_counter() - started
    kinds = [kind]
    if options.kind == "auto" and n <= options.hnsw_max_items:
        kinds.append(HNSW_FLAT_INNER_PRODUCT)
    built = [_build_approximate(vectors, each, options, sample, truth, k) for each in kinds]
    best = min(built, key=_serving_cost)
    best.exact_ms_per_query = exact_ms
    best.queries_source, best.query_count = source, len(sample)
    best.calibration_seconds += reference_seconds
    others = [other for other in built if other is not best]
    if others:
        # Both were measured on the same queries: the record says what the other one would cost.
        best.chosen_reason += "; " + "; ".join(
            f"{_summary(other)} {'dearer' if other.met_target else 'not kept'}" for other in others
        )
        best.alternatives = [_alternative(other) for other in others]
    _log_choice(best, n)
    return best


def _build_approximate(
    vectors: FloatArray, kind: str, options: IndexOptions, sample: FloatArray, truth: IntArray, k: int
) -> BuiltIndex:
    """IVF-Flat or HNSW-Flat over ``vectors``, calibrated against ``truth`` (exact top-k of
    ``sample``) over its search ladder; the chosen setting applied."""
    n = len(vectors)
    started = time.perf_counter()
    if kind == IVF_FLAT_INNER_PRODUCT:
        nlist = options.ivf_nlist or default_nlist(n)
        nlist = min(nlist, n)
        key, ladder = "nprobe", sorted({min(p, nlist) for p in options.ivf_nprobe})
        base = IndexSpec(kind, {"nlist": nlist}, {key: ladder[0]})
    else:
        params = {"M": options.hnsw_m, "efConstruction": options.hnsw_ef_construction}
        key, ladder = "efSearch", sorted(set(options.hnsw_ef_search))
        base = IndexSpec(kind, params, {key: ladder[0]})
    index = build_index(vectors, base, seed=options.seed)
    build_seconds = time.perf_counter() - started

    started = time.perf_counter()
    curve: list[CalibrationPoint] = []
    for value in ladder:
        spec = IndexSpec(kind, base.params, {key: value})
        configure(index, spec)
        _, found = index.search(sample, k)
        latency = _ms_per_query(index, sample, k)
        curve.append(CalibrationPoint({key: value}, round(recall_at_k(found, truth), 6), latency))
    calibration_seconds = time.perf_counter() - started

    chosen, met = choose(curve, options.recall_target)
    spec = IndexSpec(kind, base.params, dict(chosen.setting))
    configure(index, spec)
    return BuiltIndex(
        index=index,
        spec=spec,
        k=k,
        target=options.recall_target,
        recall_at_k=chosen.recall,
        met_target=met,
        chosen_reason=_chosen_reason(chosen, met, k, options.recall_target),
        curve=curve,
        build_seconds=build_seconds,
        calibration_seconds=calibration_seconds,
    )


def _serving_cost(built: BuiltIndex) -> tuple[bool, float]:
    """Sort key: a type that meets the recall target before one that does not; then the
    cheaper single-query search at its chosen setting (the better recall when neither meets it)."""
    point = built.chosen_point
    return (not built.met_target, point.ms_per_query if built.met_target else -point.recall)


def _summary(built: BuiltIndex) -> str:
    point = built.chosen_point
    setting = ", ".join(f"{key}={value}" for key, value in point.setting.items())
    met = "" if built.met_target else ", below the target"
    cost = f"{point.ms_per_query:.4f} ms per query (recall {point.recall:.4f}{met})"
    return f"{built.spec.factory} at {setting}: {cost}"


def _alternative(built: BuiltIndex) -> dict[str, Any]:
    """The manifest's record of a type calibrated beside the chosen one and not kept."""
    point = built.chosen_point
    return {
        "factory": built.spec.factory,
        "search_params": dict(point.setting),
        "recall_at_k": point.recall,
        "met_target": built.met_target,
        "ms_per_query": point.ms_per_query,
        "build_seconds": round(built.build_seconds, 3),
    }


def _build_compressed(
    vectors: FloatArray, options: IndexOptions, source: str, sample: FloatArray, k: int
) -> BuiltIndex:
    """IVF-PQ + SQ8 re-ranking, calibrated over (nprobe, k_factor) as the module says."""
    n, d = vectors.shape
    nlist = min(options.ivfpq_nlist or min(default_nlist(n), _IVFPQ_MAX_NLIST), n)
    pq_m = options.pq_m or max(1, d // 2)
    if d % pq_m:
        raise ValueError(f"index.pq_m: {pq_m} does not divide the embedding dimension {d}")
    params = {"nlist": nlist, "pq_m": pq_m, "pq_nbits": options.pq_nbits}
    probes = sorted({min(p, nlist) for p in options.ivf_nprobe})
    factors = sorted(set(options.refine_k_factor))
    target = options.compressed_recall_target
    started = time.perf_counter()
    base = IndexSpec(IVF_PQ_REFINE_INNER_PRODUCT, params, {"nprobe": probes[0], "k_factor": factors[-1]})
    index = build_index(vectors, base, seed=options.seed, train_size=options.ivfpq_train_size)
    build_seconds = time.perf_counter() - started

    started = time.perf_counter()
    truth = exact_neighbours(vectors, sample, k)
    exact_ms = _exact_ms_per_query(vectors, sample, k)
    curve: list[CalibrationPoint] = []

    def measure(nprobe: int, factor: int) -> CalibrationPoint:
        configure(
            index, IndexSpec(IVF_PQ_REFINE_INNER_PRODUCT, params, {"nprobe": nprobe, "k_factor": factor})
        )
        _, found = index.search(sample, k)
        point = CalibrationPoint(
            {"nprobe": nprobe, "k_factor": factor},
            round(recall_at_k(found, truth), 6),
            _ms_per_query(index, sample, k),
        )
        curve.append(point)
        return point

    chosen: CalibrationPoint | None = None
    for nprobe in probes:
        widest = measure(nprobe, factors[-1])
        if widest.recall < target:
            continue
        chosen = widest
        for factor in factors[:-1]:  # cheapest first: the first that reaches the target wins
            point = measure(nprobe, factor)
            if point.recall >= target:
                chosen = point
                break
        break
    met = chosen is not None
    if chosen is None:
        chosen, _ = choose(curve, target)
    calibration_seconds = time.perf_counter() - started
    spec = IndexSpec(IVF_PQ_REFINE_INNER_PRODUCT, params, dict(chosen.setting))
    configure(index, spec)
    reason = _chosen_reason(chosen, met, k, target, why=_budget_reason(n, d, options))
    built = BuiltIndex(
        index=index,
        spec=spec,
        k=k,
        target=target,
        recall_at_k=chosen.recall,
        met_target=met,
        chosen_reason=reason,
        curve=curve,
        exact_ms_per_query=exact_ms,
        queries_source=source,
        query_count=len(sample),
        build_seconds=build_seconds,
        calibration_seconds=calibration_seconds,
        memory_budget_bytes=options.memory_budget_bytes,
    )
    _log_choice(built, n)
    return built


def _log_choice(built: BuiltIndex, n: int) -> None:
    """The kept index's record, as a warning when it misses its recall target."""
    if built.met_target:
        log.info("index %s over %d items: %s", built.spec.factory, n, built.chosen_reason)
    else:
        log.warning("index calibration: %s over %d items: %s", built.spec.factory, n, built.chosen_reason)


def _chosen_reason(chosen: CalibrationPoint, met: bool, k: int, target: float, why: str = "") -> str:
    """The manifest's ``chosen_reason`` (prefixed by ``why`` and "; " when given)."""
    setting = ", ".join(f"{name}={value}" for name, value in chosen.setting.items())
    recall = f"(recall {chosen.recall:.4f})"
    if met:
        reason = f"cheapest setting with recall@{k} >= {target}: {setting} {recall}"
    else:
        reason = f"no setting reached recall@{k} >= {target}; best is {setting} {recall}"
    return f"{why}; {reason}" if why else reason


def choose(curve: list[CalibrationPoint], target: float) -> tuple[CalibrationPoint, bool]:
    """(chosen point, whether it meets ``target``): the first point of the ladder (the
    cheapest) with ``recall >= target``, else the best recall (the cheaper one on ties)."""
    for point in curve:
        if point.recall >= target:
            return point, True
    best = max(curve, key=lambda p: p.recall)  # max keeps the first of equal recalls
    return best, False


def recall_at_k(found: IntArray, truth: IntArray) -> float:
    """Mean over queries of |found_i ∩ truth_i| / |truth_i| (both (B, k); -1 never counts)."""
    hits = (found[:, :, None] == truth[:, None, :]) & (truth[:, None, :] >= 0)
    per_query = hits.any(axis=1).sum(axis=1) / np.maximum((truth >= 0).sum(axis=1), 1)
    return float(per_query.mean())


def exact_neighbours(vectors: FloatArray, queries: FloatArray, k: int) -> IntArray:
    """The exact top-k rows (inner product) of every query: (B, k); no copy of ``vectors``."""
    xq = np.ascontiguousarray(queries, dtype=np.float32)
    _, rows = faiss.knn(xq, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    return rows.astype(np.int64)


def _sample_queries(
    vectors: FloatArray, queries: FloatArray | None, options: IndexOptions
) -> tuple[str, FloatArray]:
    rng = np.random.default_rng(options.seed)
    if queries is not None and len(queries):
        source, pool = USER_EMBEDDINGS, np.ascontiguousarray(queries, dtype=np.float32)
    else:
        source, pool = ITEM_VECTORS, vectors
    if len(pool) > options.sample_queries:
        pool = pool[np.sort(rng.choice(len(pool), size=options.sample_queries, replace=False))]
    if source == ITEM_VECTORS:
        noise = rng.standard_normal(pool.shape).astype(np.float32) * (_QUERY_NOISE / np.sqrt(pool.shape[1]))
        pool = pool + noise
        pool = pool / np.maximum(np.linalg.norm(pool, axis=1, keepdims=True), 1e-12)
    return source, np.ascontiguousarray(pool, dtype=np.float32)


def _ms_per_query(index: faiss.Index, queries: FloatArray, k: int) -> float:
    return _single_thread_ms(lambda q: index.search(q, k), queries[:_TIMED_QUERIES])


def _exact_ms_per_query(vectors: FloatArray, queries: FloatArray, k: int) -> float:
    return _single_thread_ms(lambda q: exact_neighbours(vectors, q, k), queries[:_TIMED_EXACT_QUERIES])


def _single_thread_ms(run: Callable[[FloatArray], object], queries: FloatArray) -> float:
    """Mean ms of ``run`` on one query at a time with one FAISS thread, as serving runs
    (``recsys serve`` sets one thread per engine thread)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        started = time.perf_counter()
        for i in range(len(queries)):
            run(queries[i : i + 1])
        elapsed = time.perf_counter() - started
    finally:
        faiss.omp_set_num_threads(threads)
    return round(1000.0 * elapsed / max(len(queries), 1), 4)
