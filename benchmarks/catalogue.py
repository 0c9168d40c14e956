"""Catalogue-scale benchmark of the item index: build, calibrate, load, search.

    python -m benchmarks.catalogue --items 1000000 --dim 64 [--kind auto|flat|ivf|hnsw|ivfpq]
        [--memory-budget-gib 2]

1. **Build** (this process): a synthetic catalogue of ``--items`` unit vectors drawn from
   a clustered distribution (power-law cluster sizes, per-cluster spreads: not uniform on
   the sphere, which no index can exploit), an item table (id, category, brand, price,
   popularity), ``--users`` users with histories, and a *randomly initialised* two-tower
   model of the catalogue's size. The index is built and calibrated
   (:func:`serving.bundle.index_calibration.build_calibrated_index`) on synthetic user vectors
   (mixtures of two cluster centres plus noise, never item vectors), and everything is
   written as a real bundle (:func:`serving.bundle.format.write_bundle`).
2. **Measure** (a fresh ``python -m benchmarks.catalogue --measure`` subprocess, one
   FAISS/torch thread as ``recsys serve`` sets): ``TwoTowerEngine.load`` (exactly what the
   server runs before flipping health to SERVING: manifest, SHA-256 of every file, weights,
   Parquet tables, encoders, feature encoding, index read + search parameters from the
   manifest, item vectors, filter/category tables), its wall time and the RSS after it
   (psutil; plus the peak), then on held-out synthetic user vectors: recall@10 of the
   serving search against exact search, single-query latency p50/p99 of the serving
   search and of exact search, and engine ``recommend`` latency (tower + search + seen
   exclusion + explanations) with and without a selective filter.

The item vectors in the index are the synthetic ones, not the random model's outputs:
the model only has to have the catalogue's size (its item-id table dominates the weights)
for load time and memory to be real. Not included: the gRPC server itself (binding,
interceptors, health service), which does not depend on the catalogue size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.bundle.index_options import IndexKind, IndexOptions

FloatArray = npt.NDArray[np.float32]
USER_QUERIES = "bench_user_vectors.npy"
HELD_OUT = "bench_held_out.json"
_BRANDS = 2000
_CATEGORIES = 200


def clustered_vectors(
    n: int, dim: int, rng: np.random.Generator, clusters: int
) -> tuple[FloatArray, npt.NDArray[np.int64], FloatArray, npt.NDArray[np.float64]]:
    """(unit vectors (n, dim), cluster of each, cluster centres, cluster weights).

    Cluster sizes follow a power law (Zipf exponent 1 over a random order), each cluster
    has its own spread (noise norm between 0.35 and 0.9 of the centre's), so neighbours
    are dense inside big tight clusters and sparse in wide ones.
    """
    centres = _unit(rng.standard_normal((clusters, dim)).astype(np.float32))
    weights = 1.0 / np.arange(1, clusters + 1)
    weights = weights[rng.permutation(clusters)] / weights.sum()
    cluster = rng.choice(clusters, size=n, p=weights).astype(np.int64)
    spread = rng.uniform(0.35, 0.9, size=clusters).astype(np.float32) / np.sqrt(dim)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 200_000):  # chunks: bounded temporary memory
        part = cluster[start : start + 200_000]
        noise = rng.standard_normal((len(part), dim)).astype(np.float32) * spread[part, None]
        out[start : start + len(part)] = _unit(centres[part] + noise)
    return out, cluster, centres, weights


def user_vectors(
    m: int, centres: FloatArray, weights: npt.NDArray[np.float64], rng: np.random.Generator
) -> FloatArray:
    """``m`` query vectors: 0.75 of one popular-weighted cluster centre, 0.25 of another, plus
    noise; unit length. Like user embeddings, they are near items but never items."""
    first = rng.choice(len(centres), size=m, p=weights)
    second = rng.choice(len(centres), size=m, p=weights)
    noise = rng.standard_normal((m, centres.shape[1])).astype(np.float32) * (0.6 / np.sqrt(centres.shape[1]))
    return _unit(0.75 * centres[first] + 0.25 * centres[second] + noise)


def _unit(x: FloatArray) -> FloatArray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


# ------------------------------------------------------------------------ build
def build_synthetic_bundle(
    out: Path,
    *,
    items: int,
    dim: int = 64,
    users: int = 10_000,
    kind: IndexKind = "auto",
    memory_budget_gib: float = IndexOptions.memory_budget_gib,
    index_options: IndexOptions | None = None,
    calibration_queries: int = 1000,
    held_out_queries: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a synthetic bundle to ``out / "bundle"`` (index calibrated on
    ``calibration_queries`` synthetic user vectors) and ``held_out_queries`` other user
    vectors to ``out / USER_QUERIES``; returns the build figures (JSON-serialisable).

    ``index_options``: the ``[index]`` options (default :class:`IndexOptions` with ``kind`` and
    ``memory_budget_gib``); ``sample_queries`` and ``seed`` come from the arguments either way."""
    import polars as pl
    import torch

    from serving.bundle.format import BundleContents, bundle_size_bytes, write_bundle
    from serving.bundle.index_calibration import build_calibrated_index
    from serving.model.features import FIRST_TOKEN_INDEX, EncoderOptions, EntityEncoder
    from serving.model.history import Sequences
    from serving.model.inputs import tower_spec
    from serving.model.towers import TwoTowerModel, TwoTowerSpec

    rng = np.random.default_rng(seed)
    n = items
    figures: dict[str, Any] = {"items": n, "dim": dim, "users": users}

    started = time.perf_counter()
    clusters = max(16, n // 1000)
    vectors, cluster, centres, weights = clustered_vectors(n, dim, rng, clusters)
    queries = user_vectors(calibration_queries + held_out_queries, centres, weights, rng)
    figures["generate_seconds"] = round(time.perf_counter() - started, 2)

    base = index_options or replace(IndexOptions(), kind=kind, memory_budget_gib=memory_budget_gib)
    options = replace(base, sample_queries=calibration_queries, seed=seed)
    built = build_calibrated_index(vectors, options, queries[:calibration_queries])
    np.save(out / USER_QUERIES, queries[calibration_queries:])
    figures["index"] = {
        key: value for key, value in built.manifest().items() if key not in ("ntotal", "curve", "queries")
    }
    figures["curve"] = [point.to_dict() for point in built.curve]

    started = time.perf_counter()
    item_ids = pl.Series("item_id", [f"i{i:07d}" for i in range(n)])
    popularity = np.minimum(rng.zipf(1.6, size=n), 1_000_000).astype(np.int64)
    item_table = pl.DataFrame(
        {
            "item_id": item_ids,
            "category": pl.Series([f"c{c % _CATEGORIES}" for c in cluster.tolist()]),
            "brand": pl.Series([f"b{b}" for b in rng.integers(0, _BRANDS, size=n).tolist()]),
            "price": np.round(rng.lognormal(3.0, 1.0, size=n), 2),
        }
    )
    user_ids = pl.Series("user_id", [f"u{u:06d}" for u in range(users)])
    user_table = pl.DataFrame({"user_id": user_ids, "segment": [f"s{s}" for s in rng.integers(0, 8, users)]})
    lengths = rng.integers(5, 40, size=users)  # varied: equal lengths would be stored as an Array
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    seq_items = rng.integers(0, n, size=int(indptr[-1])).astype(np.int64) + FIRST_TOKEN_INDEX
    sequences = Sequences(indptr, seq_items)
    encoder_options = EncoderOptions()
    item_encoder = EntityEncoder.fit("item_id", item_ids, item_table, encoder_options)
    user_encoder = EntityEncoder.fit("user_id", user_ids, user_table, encoder_options)
    spec = TwoTowerSpec(
        user=tower_spec(user_encoder),
        item=tower_spec(item_encoder),
        embedding_dim=64,
        hidden_dims=(256,),
        output_dim=dim,
        dropout=0.1,
        temperature=0.1,
        history_length=50,
    )
    torch.manual_seed(seed)
    model = TwoTowerModel(spec).eval()
    contents = BundleContents(
        model_version="bench-catalogue",
        config={"bench": {"items": n, "dim": dim, "kind": kind, "memory_budget_gib": memory_budget_gib}},
        spec=spec,
        state_dict=model.state_dict(),
        user_encoder=user_encoder,
        item_encoder=item_encoder,
        user_table=user_table,
        item_table=item_table,
        sequences=sequences,
        popularity=popularity,
        item_embeddings=vectors,
        index=built,
    )
    bundle = write_bundle(out / "bundle", contents, overwrite=True)
    figures["bundle_write_seconds"] = round(time.perf_counter() - started, 2)
    figures["bundle_bytes"] = bundle_size_bytes(bundle)
    figures["build_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    (out / HELD_OUT).write_text(
        json.dumps({"filter_category": _selective_category(cluster, n)}), encoding="utf-8"
    )
    return figures


def _selective_category(cluster: npt.NDArray[np.int64], n: int) -> str:
    """A category holding about 0.1-1 % of the items (a selective filter)."""
    shares = np.bincount(cluster % _CATEGORIES, minlength=_CATEGORIES) / n
    candidates = np.flatnonzero((shares > 0.001) & (shares < 0.01))
    chosen = int(candidates[0]) if len(candidates) else int(np.argmin(np.where(shares > 0, shares, 1.0)))
    return f"c{chosen}"


# ---------------------------------------------------------------------- measure
def measure(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Load the bundle the way ``recsys serve`` does and measure (run in a fresh process)."""
    import psutil  # a dev dependency: the serving image does not need it

    process = psutil.Process()
    startup_seconds = time.time() - process.create_time()
    import faiss
    import torch

    from serving.bundle.index import search
    from serving.bundle.index_calibration import exact_neighbours, recall_at_k
    from serving.recommend.engine import TwoTowerEngine
    from serving.recommend.types import ItemFilter, RecommendQuery

    torch.set_num_threads(1)  # as serving.cli.configure_compute_threads
    faiss.omp_set_num_threads(1)
    figures: dict[str, Any] = {"python_start_and_imports_seconds": round(startup_seconds, 2)}
    rss_before = process.memory_info().rss
    started = time.perf_counter()
    engine = TwoTowerEngine.load(out / "bundle")
    figures["load_seconds"] = round(time.perf_counter() - started, 2)
    figures["rss_after_load_mb"] = round(process.memory_info().rss / 2**20, 1)
    figures["rss_before_load_mb"] = round(rss_before / 2**20, 1)
    index = engine.bundle.index
    figures["index"] = engine.bundle.index_spec.to_dict()

    queries = np.load(out / USER_QUERIES)
    k = 10
    recall_queries = queries[: args.queries]
    _, served = search(index, recall_queries, k)
    truth = exact_neighbours(engine.item_vectors, recall_queries, k)
    figures["recall_at_10"] = round(recall_at_k(served, truth), 4)
    figures["recall_queries"] = len(recall_queries)

    latency = _latencies(lambda q: search(index, q, k), queries, args.latency_queries)
    figures["search_ms"] = latency
    exact = _latencies(lambda q: exact_neighbours(engine.item_vectors, q, k), queries, args.exact_queries)
    figures["exact_ms"] = exact
    figures["exact_over_search_p50"] = round(exact["p50"] / max(latency["p50"], 1e-9), 1)

    rng = np.random.default_rng(1)
    user_ids = engine.bundle.users.get_column("user_id").to_list()
    picks = [user_ids[i] for i in rng.integers(0, len(user_ids), size=args.latency_queries)]
    figures["recommend_ms"] = _timed([lambda u=u: engine.recommend(RecommendQuery(u, k)) for u in picks])

    category = json.loads((out / HELD_OUT).read_text(encoding="utf-8"))["filter_category"]
    item_filter = ItemFilter("category", any_of=(category,))
    allowed = engine.filters.allowed((item_filter,))
    figures["filter"] = {"category": category, "allowed_items": 0 if allowed is None else allowed.count}
    answers: list[Any] = []
    filtered = [
        lambda u=u: answers.append(engine.recommend(RecommendQuery(u, k, filters=(item_filter,))))
        for u in picks[: args.filtered_queries]
    ]
    figures["filtered_recommend_ms"] = _timed(filtered)
    categories = engine.bundle.items.get_column("category").to_list()
    row_of = {item_id: row for row, item_id in enumerate(engine.bundle.item_ids.to_list())}
    violations = sum(categories[row_of[i.item_id]] != category for a in answers for i in a.items)
    figures["filter"]["violations"] = violations
    figures["filter"]["short_answers"] = sum(len(a.items) < k for a in answers)
    figures["rss_after_queries_mb"] = round(process.memory_info().rss / 2**20, 1)
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    return figures


def _latencies(run: Any, queries: FloatArray, count: int) -> dict[str, float]:
    picks = [queries[i % len(queries)][None, :] for i in range(count)]
    return _timed([lambda q=q: run(q) for q in picks])


def _timed(calls: list[Any]) -> dict[str, float]:
    for call in calls[:20]:  # warm-up: first-touch page faults, caches
        call()
    times = []
    for call in calls:
        started = time.perf_counter()
        call()
        times.append(1000.0 * (time.perf_counter() - started))
    values = np.asarray(times)
    return {
        "p50": round(float(np.percentile(values, 50)), 3),
        "p99": round(float(np.percentile(values, 99)), 3),
        "mean": round(float(values.mean()), 3),
        "n": len(values),
    }


# -------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.catalogue", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--kind", choices=("auto", "flat", "ivf", "hnsw", "ivfpq"), default="auto")
    parser.add_argument(
        "--memory-budget-gib",
        type=float,
        default=IndexOptions.memory_budget_gib,
        help="index.memory_budget_gib: above it, auto picks the compressed IVF-PQ index",
    )
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--calibration-queries", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries for recall@10")
    parser.add_argument("--latency-queries", type=int, default=2000)
    parser.add_argument("--exact-queries", type=int, default=300)
    parser.add_argument("--filtered-queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.latency_queries = max(args.latency_queries, args.filtered_queries)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure is not None:
        print(json.dumps(measure(args.measure, args)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="bench-catalogue-") as tmp:
        out = Path(args.out) if args.out is not None else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        built = build_synthetic_bundle(
            out,
            items=args.items,
            dim=args.dim,
            users=args.users,
            kind=args.kind,
            memory_budget_gib=args.memory_budget_gib,
            calibration_queries=args.calibration_queries,
            held_out_queries=max(args.queries, args.latency_queries),
            seed=args.seed,
        )
        built["build_total_seconds"] = round(time.perf_counter() - started, 2)
        print(json.dumps({"build": built}, indent=2), flush=True)
        command = [
            sys.executable,
            "-m",
            "benchmarks.catalogue",
            *(argv or sys.argv[1:]),
            "--measure",
            str(out),
        ]
        child = subprocess.run(command, capture_output=True, text=True, check=False, env=dict(os.environ))
        if child.returncode != 0:
            print(child.stdout, child.stderr, sep="\n", file=sys.stderr)
            return child.returncode
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        print(json.dumps({"measure": measured}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
