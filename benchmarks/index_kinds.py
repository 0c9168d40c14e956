"""IVF-Flat against HNSW-Flat on the same vectors and queries: what ``index.kind = "auto"`` weighs.

``python -m benchmarks.index_kinds --bundle DIR``
    the bundle's item vectors (its ``index.faiss``, uncompressed) with its stored user vectors
    (``users.faiss``) as the calibration queries;
``python -m benchmarks.index_kinds --items 200000 --dim 128``
    clustered synthetic unit vectors (:func:`benchmarks.catalogue.clustered_vectors`) with
    perturbed item vectors as queries.

Each type is built and calibrated by :func:`serving.bundle.index_calibration.build_calibrated_index`
with the default ``[index]`` options (``recall_target`` 0.95), then ``auto``: one line per type with
its build time, chosen setting, recall@10 against exact search and single-query search time (one
FAISS thread), and the type ``auto`` keeps. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np

from benchmarks.catalogue import clustered_vectors
from serving.bundle.index_calibration import build_calibrated_index
from serving.bundle.index_options import IndexOptions


def _bundle_vectors(bundle: Path) -> tuple[np.ndarray, np.ndarray | None]:
    index = faiss.read_index(str(bundle / "index.faiss"))
    items = index.reconstruct_n(0, index.ntotal)
    users_path = bundle / "users.faiss"
    if not users_path.exists():
        return items, None
    users = faiss.read_index(str(users_path))
    return items, users.reconstruct_n(0, users.ntotal)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", type=Path, help="a bundle with an uncompressed item index")
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.bundle is not None:
        vectors, queries = _bundle_vectors(args.bundle)
        source = f"bundle {args.bundle}"
    else:
        vectors, _, _, _ = clustered_vectors(
            args.items, args.dim, np.random.default_rng(args.seed), args.clusters
        )
        queries = None
        source = f"{args.items:,} clustered synthetic vectors"
    print(
        f"{source}: {len(vectors):,} x {vectors.shape[1]}; queries: "
        f"{'stored user vectors' if queries is not None else 'perturbed item vectors'}"
    )
    for kind in ("ivf", "hnsw", "auto"):
        options = replace(IndexOptions(), kind=kind, exact_threshold=0, hnsw_max_items=max(len(vectors), 1))
        started = time.perf_counter()
        built = build_calibrated_index(vectors, options, queries)
        wall = time.perf_counter() - started
        chosen = built.chosen_point
        setting = ", ".join(f"{k}={v}" for k, v in chosen.setting.items())
        print(
            f"  {kind:5s} {built.spec.factory:14s} build {built.build_seconds:6.1f} s  {setting:12s} "
            f"recall@{built.k} {chosen.recall:.4f}  {chosen.ms_per_query:.4f} ms/query  "
            f"(exact {built.exact_ms_per_query:.4f})  wall {wall:.1f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
