"""Quality as served: the test split's NDCG@k through the bundle's own index and engine, beside exact.

::

    python -m benchmarks.served_quality split --interactions FILE --out TRAIN.parquet
    recsys train --interactions TRAIN.parquet --out BUNDLE --set eval.protocol=none
    python -m benchmarks.served_quality score --bundle BUNDLE --interactions FILE

``recsys train`` reports its test figure from dense scores over every item; a served Recommend
goes through the bundle's index (HNSW or IVF once the catalogue is large, chosen and tuned by
``index.kind = "auto"`` at a recall target) and the engine's seen-item exclusion. The served bundle
must not know the test part, not even as history (its stored user vectors and seen items would hold
the answer), so ``split`` writes the training part of ``recsys train``'s own split and the bundle is
trained on it with ``eval.protocol = "none"``: the same objective selection (its validation split is
carved from the same part by leave-last-out, the protocol ``none`` validates with) and the same fit as
the model a normal leave-last-out run evaluates. Leave-last-out only, and not for bundles trained
with ``data.exclude_abnormal`` (training splits the filtered events); both are refused.
``score`` then asks the serving engine (:class:`~serving.recommend.engine.TwoTowerEngine`, as the
server loads it) for ``k`` items for every test user, scores the lists, and asks the same
engine again with its index swapped for an exact inner-product index over the same vectors, so the
difference is the index's alone. It prints NDCG@k and recall@k served and exact, their ratio with a
90 % interval of the paired difference, the top-k overlap, and ms per query of each engine (one
thread, batches of ``--batch``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np
import numpy.typing as npt
import polars as pl
from threadpoolctl import threadpool_limits

from serving.bundle.format import load_bundle
from serving.bundle.index import index_type
from serving.model.features import FIRST_TOKEN_INDEX
from serving.recommend.engine import TwoTowerEngine
from serving.recommend.types import RecommendQuery
from training.data.io import load_interactions
from training.evaluation import split_for
from training.evaluation.metrics import paired_lower_bound, per_user_ndcg, ranking_metrics, truth_csr
from training.evaluation.splits import Split

FloatArray = npt.NDArray[np.float64]


def exact_twin(engine: TwoTowerEngine) -> TwoTowerEngine:
    """The same bundle served through an exact inner-product index over the same item vectors."""
    vectors = engine.item_vectors
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return TwoTowerEngine(dataclasses.replace(engine.bundle, index=exact, item_vectors=None))


def answer(engine: TwoTowerEngine, users: Sequence[str], k: int, batch: int) -> tuple[list[list[str]], float]:
    """Each user's served top-``k`` item ids and the ms per query it took."""
    lists: list[list[str]] = []
    started = time.perf_counter()
    for start in range(0, len(users), batch):
        queries = [RecommendQuery(user, k) for user in users[start : start + batch]]
        lists.extend([item.item_id for item in r.items] for r in engine.recommend_many(queries))
    return lists, (time.perf_counter() - started) * 1000.0 / max(len(users), 1)


def ndcg_and_recall(
    lists: Sequence[Sequence[str]],
    truth: Sequence[set[str]],
    index_of: Callable[[str], int | None],
    n_items: int,
    k: int,
) -> tuple[FloatArray, float]:
    """Per-user NDCG@k and mean recall@k of ``lists`` against ``truth`` (item ids the bundle knows,
    ``index_of`` their token indices), computed by :mod:`training.evaluation.metrics` as training does."""

    def rows(ids: Iterable[str]) -> list[int]:
        found = [index_of(i) for i in ids]
        if any(f is None for f in found):
            raise ValueError("an item id the bundle does not know")
        return [int(f) - FIRST_TOKEN_INDEX for f in found if f is not None]

    topk = np.full((len(lists), k), -1, dtype=np.int64)
    for u, items in enumerate(lists):
        found = rows(items[:k])
        topk[u, : len(found)] = found
    owners = np.repeat(np.arange(len(truth)), [len(t) for t in truth])
    relevant = np.array([r for t in truth for r in rows(t)], dtype=np.int64)
    indptr, indices = truth_csr(owners, relevant, len(truth))
    recall = ranking_metrics(topk, indptr, indices, n_items, k)[f"recall@{k}"]
    return per_user_ndcg(topk, indptr, indices, n_items, k), float(recall)


def _interval(difference: FloatArray) -> tuple[float, float]:
    """The paired difference's 90 % interval (two one-sided 95 % bounds); NaN below two users."""
    if len(difference) < 2:
        return float("nan"), float("nan")
    return paired_lower_bound(difference), -paired_lower_bound(-difference)


@dataclasses.dataclass(frozen=True)
class ServedQuality:
    """Per-user figures of one bundle's test users, served and exact (same user order)."""

    k: int
    users: int
    test_users: int
    index: str
    served_ndcg: FloatArray
    exact_ndcg: FloatArray
    served_recall: float
    exact_recall: float
    overlap: float
    served_ms: float
    exact_ms: float


def split_of(interactions: Path, protocol: str, min_interactions: int) -> Split:
    """``recsys train``'s split of ``interactions`` (loaded and de-duplicated as training does)."""
    frame, _ = load_interactions(interactions)
    return split_for(frame, protocol, min_interactions)  # type: ignore[arg-type]


def measure(
    bundle_path: Path,
    interactions: Path,
    *,
    protocol: str = "llo",
    min_interactions: int = 3,
    users: int = 0,
    batch: int = 64,
    seed: int = 0,
) -> ServedQuality:
    """Serve every test user of ``interactions``' split (or a sample of ``users``) both ways.

    Raises :class:`ValueError` unless the bundle was trained on exactly the split's training part.
    """
    bundle = load_bundle(bundle_path)
    config = bundle.manifest["config"]
    if protocol != "llo":
        # With eval.protocol = "none", training validates on a leave-last-out split: only then is the
        # bundle's objective selection the one a normal run of this protocol makes.
        raise ValueError(
            f"protocol {protocol!r}: only llo reproduces training's selection (eval.protocol=none)"
        )
    if config["data"].get("exclude_abnormal"):
        raise ValueError("the bundle was trained with data.exclude_abnormal: its split is not this file's")
    parts = split_of(interactions, protocol, min_interactions)
    trained_on = bundle.manifest.get("counts", {}).get("interactions")
    if trained_on != parts.train.height:
        raise ValueError(
            f"the bundle was trained on {trained_on} interactions, the {protocol} split's training part "
            f"has {parts.train.height}: train it on the file `split` writes, with eval.protocol=none"
        )
    test = parts.test
    k = int(config["eval"]["k"])
    # As training's evaluation: test items the bundle does not know cannot be found and are left
    # out, and so are users left without any.
    known = bundle.item_encoder.ids.index_of
    truth_by_user: dict[str, set[str]] = {}
    for user, items in test.group_by("user_id").agg(pl.col("item_id")).iter_rows():
        found = {item for item in items if known(item) is not None}
        if found:
            truth_by_user[user] = found
    with threadpool_limits(1):
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            served_engine = TwoTowerEngine(bundle)
            exact_engine = exact_twin(served_engine)
            chosen = sorted(u for u in truth_by_user if served_engine.user_row(u) is not None)
            if users and users < len(chosen):
                rng = np.random.default_rng(seed)
                chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), users, replace=False))]
            truth = [truth_by_user[u] for u in chosen]
            for engine in (served_engine, exact_engine):  # as the server's warm-up, untimed
                engine.embed_rows(np.arange(len(bundle.users), dtype=np.int64))
                answer(engine, chosen[: 4 * batch], k, batch)
            served, served_ms = answer(served_engine, chosen, k, batch)
            exact, exact_ms = answer(exact_engine, chosen, k, batch)
        finally:
            torch.set_num_threads(threads)
    index_of = bundle.item_encoder.ids.index_of
    served_ndcg, served_recall = ndcg_and_recall(served, truth, index_of, bundle.index.ntotal, k)
    exact_ndcg, exact_recall = ndcg_and_recall(exact, truth, index_of, bundle.index.ntotal, k)
    overlaps = [len(set(a) & set(b)) / max(len(b), 1) for a, b in zip(served, exact, strict=True)]
    return ServedQuality(
        k=k,
        users=len(chosen),
        test_users=len(truth_by_user),
        index=index_type(bundle.index),
        served_ndcg=served_ndcg,
        exact_ndcg=exact_ndcg,
        served_recall=served_recall,
        exact_recall=exact_recall,
        overlap=float(np.mean(overlaps)) if overlaps else float("nan"),
        served_ms=served_ms,
        exact_ms=exact_ms,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    split_parser = commands.add_parser("split", help="write the training part of the split")
    score_parser = commands.add_parser("score", help="score a bundle trained on that part, served and exact")
    for command in (split_parser, score_parser):
        command.add_argument("--interactions", type=Path, required=True, help="the whole interactions file")
        command.add_argument("--protocol", choices=("llo",), default="llo", help="leave-last-out only")
        command.add_argument("--min-interactions", type=int, default=3, help="as eval.min_interactions")
    split_parser.add_argument("--out", type=Path, required=True, help="Parquet file to write")
    score_parser.add_argument("--bundle", type=Path, required=True)
    score_parser.add_argument("--users", type=int, default=0, help="a random sample of test users (0: all)")
    score_parser.add_argument("--batch", type=int, default=64, help="queries per engine call")
    score_parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "split":
        train = split_of(args.interactions, args.protocol, args.min_interactions).train
        train.write_parquet(args.out)
        print(f"{train.height} training interactions written to {args.out}")
        return 0
    try:
        q = measure(
            args.bundle,
            args.interactions,
            protocol=args.protocol,
            min_interactions=args.min_interactions,
            users=args.users,
            batch=args.batch,
            seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    k = q.k
    print(f"bundle {args.bundle}: index {q.index}; test users scored {q.users} of {q.test_users}")
    print(f"{'':<8}{'ndcg@' + str(k):>10}{'recall@' + str(k):>11}{'ms/query':>10}")
    print(f"{'served':<8}{q.served_ndcg.mean():>10.4f}{q.served_recall:>11.4f}{q.served_ms:>10.3f}")
    print(f"{'exact':<8}{q.exact_ndcg.mean():>10.4f}{q.exact_recall:>11.4f}{q.exact_ms:>10.3f}")
    exact_mean = float(q.exact_ndcg.mean())
    ratio = float(q.served_ndcg.mean()) / exact_mean if exact_mean > 0 else float("nan")
    low, high = _interval(q.served_ndcg - q.exact_ndcg)
    print(f"served / exact ndcg: {ratio:.4f} (difference {low:+.4f} .. {high:+.4f} at 90 %, paired)")
    print(f"top-{k} overlap with exact: {q.overlap:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
