"""Embedding segments: k-means over user embeddings, k chosen by silhouette, and a
description of each segment by the attributes that set it apart.

Clustering runs on L2-normalised embeddings (the model scores by cosine), with FAISS
k-means (spherical). ``k`` is fixed by the configuration or chosen as the k in
``k_min..k_max`` with the highest mean silhouette (cosine distance) on a seeded sample.

A segment is described by *lift*: the share of the segment's interactions whose item has
a value (e.g. ``category=beauty``), divided by that share over every interaction; the
same for categorical user attributes over members. Values need a minimum share
(:data:`MIN_SHARE`) so that a rare value seen twice does not top the list.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import polars as pl

from serving.profiles.behaviour import attribute_interactions

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
MIN_SHARE = 0.05
KMEANS_ITERATIONS = 25


@dataclass(frozen=True)
class Clustering:
    """Labels per user row, the chosen k and the silhouette per tried k."""

    labels: IntArray
    k: int
    chosen_by: str
    silhouettes: dict[int, float] = field(default_factory=dict)


def normalised(x: npt.NDArray[Any]) -> FloatArray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    out: FloatArray = x / np.maximum(norms, 1e-12)
    return out


@contextmanager
def _single_thread() -> Iterator[None]:
    """FAISS k-means on one OpenMP thread: on small inputs, idle spinning threads cost
    far more than they compute (measured 1.4 s vs 0.02 s for 2,000 x 64 on 2 cores)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def kmeans(x: FloatArray, k: int, seed: int) -> tuple[IntArray, FloatArray]:
    """Spherical k-means of the unit rows of ``x``: (labels, centroids)."""
    model = faiss.Kmeans(
        x.shape[1],
        k,
        niter=KMEANS_ITERATIONS,
        seed=seed,
        spherical=True,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=100_000,
    )
    with _single_thread():
        model.train(x)
        _, assigned = model.index.search(x, 1)
    return assigned[:, 0].astype(np.int64), np.asarray(model.centroids, dtype=np.float32)


def cosine_distances(x: FloatArray) -> FloatArray:
    """Pairwise ``1 - dot`` of unit rows (n x n: keep n to a sample)."""
    out: FloatArray = 1.0 - x @ x.T
    return out


def silhouette(distance: FloatArray, labels: IntArray) -> float:
    """Mean silhouette of ``labels`` given pairwise distances (0 with fewer than 2 clusters)."""
    clusters = np.unique(labels)
    if len(clusters) < 2:
        return 0.0
    one_hot = (labels[:, None] == clusters[None, :]).astype(np.float32)
    sizes = one_hot.sum(axis=0)
    sums = distance @ one_hot  # (n, k): total distance to each cluster
    own = np.searchsorted(clusters, labels)
    rows = np.arange(len(labels))
    own_size = sizes[own] - 1
    a = np.where(own_size > 0, sums[rows, own] / np.maximum(own_size, 1), 0.0)
    other = sums / np.maximum(sizes, 1)
    other[rows, own] = np.inf
    b = other.min(axis=1)
    s = np.where(own_size > 0, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def cluster(
    embeddings: npt.NDArray[Any], k: int, k_min: int, k_max: int, sample: int, seed: int
) -> Clustering:
    """k-means labels for every row; ``k`` 0 = best silhouette over ``k_min..k_max``.

    The choice runs k-means on a seeded sample of ``sample`` rows (silhouettes are
    quadratic), then the chosen k is fitted on every row. Fewer than 3 users (or fewer
    rows than ``k_min`` + 1) give one segment.
    """
    x = normalised(embeddings)
    n = len(x)
    if n < 3 or (k == 0 and n <= k_min):
        return Clustering(np.zeros(n, dtype=np.int64), 1, "too few users")
    if k > 0:
        k = min(k, n)
        labels, _ = kmeans(x, k, seed)
        return Clustering(labels, k, "configured")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n, sample), replace=False))
    sampled = x[rows]
    distance = cosine_distances(sampled)
    scores: dict[int, float] = {}
    for candidate in range(k_min, min(k_max, len(rows) - 1) + 1):
        labels, _ = kmeans(sampled, candidate, seed)
        scores[candidate] = silhouette(distance, labels)
    if not scores:  # the sample is smaller than k_min + 1: fit k_min on every row
        labels, _ = kmeans(x, min(k_min, n), seed)
        return Clustering(labels, min(k_min, n), "too few users for a silhouette choice")
    best = max(scores, key=lambda c: (scores[c], -c))
    labels, _ = kmeans(x, best, seed)
    return Clustering(labels, best, "silhouette", scores)


COUNT_KEYS: dict[str, tuple[str, ...]] = {
    "n": ("segment", "attribute", "value"),
    "total": ("segment",),
    "n_all": ("attribute", "value"),
    "grand": (),
}
"""The distinct-unit counts behind a lift: per (segment, value), per segment, per value, overall."""


def _unit_counts(member_values: pl.LazyFrame, unit: str) -> dict[str, pl.DataFrame]:
    """:data:`COUNT_KEYS`' counts of distinct ``unit`` in ``member_values`` (``segment, unit,
    attribute, value``); counts of disjoint units (the events of two parts) add up."""
    distinct = pl.col(unit).n_unique().cast(pl.Int64)
    queries = [
        member_values.group_by(*keys).agg(distinct.alias(name))
        if keys
        else member_values.select(distinct.alias(name))
        for name, keys in COUNT_KEYS.items()
    ]
    return dict(zip(COUNT_KEYS, pl.collect_all(queries), strict=True))


def _summed(parts: Sequence[dict[str, pl.DataFrame]]) -> dict[str, pl.DataFrame]:
    if len(parts) == 1:
        return parts[0]
    out = {}
    for name, keys in COUNT_KEYS.items():
        stacked = pl.concat([p[name] for p in parts])
        out[name] = (
            stacked.group_by(*keys).agg(pl.col(name).sum()) if keys else stacked.select(pl.col(name).sum())
        )
    return out


def _lift_table(counts: dict[str, pl.DataFrame], top: int) -> dict[int, list[dict[str, Any]]]:
    """Top values by lift per segment, from :func:`_unit_counts`' counts."""
    table = (
        counts["n"]
        .join(counts["total"], on="segment")
        .join(counts["n_all"], on=["attribute", "value"])
        .join(counts["grand"], how="cross")
        .with_columns(
            (pl.col("n") / pl.col("total")).alias("share"),
            (pl.col("n_all") / pl.col("grand")).alias("overall_share"),
        )
        .with_columns((pl.col("share") / pl.col("overall_share")).alias("lift"))
        .filter(pl.col("share") >= MIN_SHARE)
        .sort(
            ["segment", "lift", "share", "attribute", "value"], descending=[False, True, True, False, False]
        )
        .group_by("segment", maintain_order=True)
        .head(top)
    )
    out: dict[int, list[dict[str, Any]]] = {}
    for row in table.select("segment", "attribute", "value", "share", "overall_share", "lift").iter_rows(
        named=True
    ):
        segment = int(row.pop("segment"))
        out.setdefault(segment, []).append(
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
        )
    return out


def _as_text(column: str, dtype: pl.DataType) -> pl.Expr:
    """Categories as they are; numbers as quartile bands (``"<=24"``, ``"(24, 31]"``,
    ``">45"``), so that e.g. age can describe a segment."""
    value = pl.col(column)
    if not dtype.is_numeric():
        return value.cast(pl.Utf8)
    q1, q2, q3 = (value.quantile(q, "nearest").cast(dtype).cast(pl.Utf8) for q in (0.25, 0.5, 0.75))
    return (
        pl.when(value.is_null())
        .then(pl.lit(None, dtype=pl.Utf8))
        .when(value <= value.quantile(0.25, "nearest"))
        .then(pl.format("<={}", q1))
        .when(value <= value.quantile(0.5, "nearest"))
        .then(pl.format("({}, {}]", q1, q2))
        .when(value <= value.quantile(0.75, "nearest"))
        .then(pl.format("({}, {}]", q2, q3))
        .otherwise(pl.format(">{}", q3))
    )


def describe(
    assignments: pl.DataFrame,
    interactions: pl.LazyFrame | Sequence[pl.LazyFrame],
    items: pl.LazyFrame | None,
    item_attributes: Sequence[str],
    users: pl.LazyFrame | None,
    user_attributes: Sequence[str],
    top: int = 3,
) -> list[dict[str, Any]]:
    """One description per segment, in segment order: ``segment, size, share, label,
    top_item_attributes, top_user_attributes`` (each ``{attribute, value, share,
    overall_share, lift}``). ``assignments``: ``user_id, segment``. ``interactions``: one
    frame, or parts that share no event (counted part by part, so memory holds one part)."""
    members = assignments.lazy()
    item_lifts: dict[int, list[dict[str, Any]]] = {}
    if items is not None and item_attributes:
        parts = [interactions] if isinstance(interactions, pl.LazyFrame) else list(interactions)
        counts = [
            _unit_counts(
                attribute_interactions(p, items, item_attributes).join(members, on="user_id"), "event"
            )
            for p in parts
        ]
        item_lifts = _lift_table(_summed(counts), top)
    user_lifts: dict[int, list[dict[str, Any]]] = {}
    if users is not None and user_attributes:
        schema = users.collect_schema()
        parts = [
            users.select(
                "user_id", pl.lit(a).alias("attribute"), _as_text(a, schema[a]).alias("value")
            ).filter(pl.col("value").is_not_null())
            for a in user_attributes
        ]
        user_values = pl.concat(parts).join(members, on="user_id")
        user_lifts = _lift_table(_unit_counts(user_values, "user_id"), top)
    sizes = assignments.group_by("segment").len().sort("segment")
    total = max(assignments.height, 1)
    out = []
    for segment, size in sizes.iter_rows():
        top_items = item_lifts.get(int(segment), [])
        top_users = user_lifts.get(int(segment), [])
        label_parts = [f"{d['attribute']}={d['value']}" for d in (top_items[:2] + top_users[:1])]
        out.append(
            {
                "segment": int(segment),
                "size": int(size),
                "share": round(size / total, 4),
                "label": ", ".join(label_parts) or f"segment {segment}",
                "top_item_attributes": top_items,
                "top_user_attributes": top_users,
            }
        )
    return out
