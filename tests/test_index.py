"""serving.bundle.index / serving.bundle.index_calibration: automatic choice, calibration, manifest, serving.

The approximate indexes are exercised on a few thousand vectors: large enough that
approximate search really differs from exact search at small settings, small enough
for the whole module to stay within seconds (one FAISS thread, see conftest).
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from conftest import TrainedBundle, tiny_config

from benchmarks.catalogue import build_synthetic_bundle, clustered_vectors
from serving.bundle.format import INDEX, MANIFEST, load_bundle, sha256_file
from serving.bundle.index import (
    EXACT,
    EXACT_INNER_PRODUCT,
    HNSW_FLAT_INNER_PRODUCT,
    IVF_FLAT_INNER_PRODUCT,
    IndexSpec,
    build_index,
    configure,
    exact_subset_limit,
    item_vectors,
    read_index,
    search,
    search_parameters,
    search_subset,
    write_index,
)
from serving.bundle.index_calibration import (
    BuiltIndex,
    CalibrationPoint,
    build_calibrated_index,
    choose,
    exact_neighbours,
    recall_at_k,
    resolve_type,
)
from serving.bundle.index_options import IndexOptions
from serving.errors import BundleError
from serving.model.embedding import embed_users
from serving.recommend.engine import TwoTowerEngine
from serving.recommend.types import ItemFilter, RecommendQuery, SimilarItemsQuery
from training.config import ConfigError, load_config
from training.pipeline import INDEX_CALIBRATION_ARTIFACT, build_item_index, log_index_calibration
from training.tracking import RunInfo

KINDS = ("ivf", "hnsw")
TYPES = {"ivf": IVF_FLAT_INNER_PRODUCT, "hnsw": HNSW_FLAT_INNER_PRODUCT}
SEARCH_KEY = {"ivf": "nprobe", "hnsw": "efSearch"}


def _unit_vectors(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True))


def _selector(mask: np.ndarray) -> tuple[faiss.SearchParameters, faiss.IDSelector, np.ndarray]:
    """A plain SearchParameters with a bitmap selector, exactly as serving.recommend.filters builds it."""
    bitmap = np.packbits(mask, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
    params = faiss.SearchParameters()
    params.sel = selector
    return params, selector, bitmap


@pytest.fixture(scope="module")
def random_vectors() -> np.ndarray:
    return _unit_vectors(3000, 32, seed=1)


@pytest.fixture(scope="module", params=KINDS)
def forced(request: pytest.FixtureRequest, random_vectors: np.ndarray) -> tuple[str, BuiltIndex]:
    """An IVF / HNSW index forced on 3000 random unit vectors, calibrated on 300 of them."""
    kind = str(request.param)
    options = IndexOptions(kind=kind, sample_queries=300)  # type: ignore[arg-type]
    return kind, build_calibrated_index(random_vectors, options)


# ------------------------------------------------------------------ choice


def test_auto_picks_exact_search_for_small_catalogues() -> None:
    built = build_calibrated_index(_unit_vectors(500, 16, seed=0))
    assert built.spec == EXACT
    assert built.curve == []
    assert built.recall_at_k == 1.0
    assert built.met_target
    assert "500 items x 16 floats < index.exact_threshold 50000 x 64" in built.chosen_reason
    assert type(built.index) is faiss.IndexFlatIP


def test_auto_picks_ivf_at_the_threshold() -> None:
    options = IndexOptions(exact_threshold=1000, sample_queries=100, ivf_nprobe=(1, 4), hnsw_max_items=0)
    built = build_calibrated_index(_unit_vectors(1000, 64, seed=0), options)
    assert built.spec.type == IVF_FLAT_INNER_PRODUCT
    assert built.spec.params == {"nlist": 25}  # 1000 // 39: every list gets enough training vectors
    assert "alternatives" not in built.manifest()


@pytest.mark.parametrize(
    ("ladders", "kept", "other"),
    [
        # IVF probing 1 of 25 lists cannot reach 0.95 on random vectors; HNSW's ladder can.
        ({"ivf_nprobe": (1,)}, HNSW_FLAT_INNER_PRODUCT, "IVF25,Flat"),
        # HNSW with a candidate list of 1 cannot; IVF probing every list is exact.
        ({"hnsw_ef_search": (1,), "ivf_nprobe": (25,)}, IVF_FLAT_INNER_PRODUCT, "HNSW32,Flat"),
    ],
)
def test_auto_keeps_the_type_that_meets_the_target_of_the_two_it_measured(
    ladders: dict[str, tuple[int, ...]], kept: str, other: str
) -> None:
    options = IndexOptions(exact_threshold=1000, sample_queries=100, **ladders)  # type: ignore[arg-type]
    built = build_calibrated_index(_unit_vectors(1000, 64, seed=0), options)
    assert built.spec.type == kept
    assert built.met_target
    (alternative,) = built.manifest()["alternatives"]
    assert alternative["factory"] == other
    assert alternative["met_target"] is False
    assert f"{other} at " in built.chosen_reason
    assert "below the target" in built.chosen_reason


def test_the_exact_threshold_counts_items_at_64_floats() -> None:
    """An exact search scans items x width: a wider index gets exact search in fewer items."""
    options = IndexOptions(exact_threshold=1000)
    assert resolve_type(999, options, dim=64) == EXACT_INNER_PRODUCT
    assert resolve_type(1000, options, dim=64) == IVF_FLAT_INNER_PRODUCT
    assert resolve_type(600, options, dim=128) == IVF_FLAT_INNER_PRODUCT  # 76,800 floats >= 64,000
    assert resolve_type(499, options, dim=128) == EXACT_INNER_PRODUCT
    assert resolve_type(1900, options, dim=32) == EXACT_INNER_PRODUCT
    assert resolve_type(1000, IndexOptions(kind="flat", exact_threshold=1), dim=512) == EXACT_INNER_PRODUCT


def test_forced_index_reaches_the_recall_target(
    forced: tuple[str, BuiltIndex], random_vectors: np.ndarray
) -> None:
    kind, built = forced
    assert built.spec.type == TYPES[kind]
    assert built.met_target
    assert built.recall_at_k >= 0.95
    assert built.queries_source == "perturbed_item_vectors"
    assert built.query_count == 300
    # Independently: fresh queries, the serving search path, the chosen parameters only.
    queries = _unit_vectors(500, 32, seed=99)
    _, found = search(built.index, queries, 10)
    assert recall_at_k(found, exact_neighbours(random_vectors, queries, 10)) >= 0.93
    # The chosen setting is the cheapest one that met the target.
    chosen = built.curve.index(next(p for p in built.curve if p.setting == dict(built.spec.search_params)))
    assert all(p.recall < 0.95 for p in built.curve[:chosen])


def test_calibration_curve_is_monotone_and_ends_exact_for_ivf(forced: tuple[str, BuiltIndex]) -> None:
    kind, built = forced
    values = [p.setting[SEARCH_KEY[kind]] for p in built.curve]
    assert values == sorted(values)
    assert len(values) >= 3
    recalls = [p.recall for p in built.curve]
    assert all(later >= earlier - 0.02 for earlier, later in itertools.pairwise(recalls))
    assert recalls[0] < 0.95  # the cheapest setting is really approximate here
    assert all(p.ms_per_query > 0 for p in built.curve)
    if kind == "ivf":
        assert values[-1] == built.spec.params["nlist"]  # the ladder is capped at nlist: exhaustive
        assert recalls[-1] == pytest.approx(1.0)


def test_unreachable_target_takes_the_best_setting_and_says_so(
    random_vectors: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    options = IndexOptions(kind="ivf", sample_queries=200, ivf_nlist=64, ivf_nprobe=(1, 2))
    built = build_calibrated_index(random_vectors, options)
    assert not built.met_target
    assert built.spec.search_params == {"nprobe": 2}
    assert built.manifest()["met_target"] is False
    assert "no setting reached recall@10 >= 0.95" in built.chosen_reason
    assert "no setting reached" in caplog.text


def test_choose_prefers_the_cheapest_setting_meeting_the_target() -> None:
    curve = [CalibrationPoint({"nprobe": p}, r, 0.1 * p) for p, r in ((1, 0.5), (2, 0.96), (4, 0.99))]
    assert choose(curve, 0.95) == (curve[1], True)
    assert choose(curve, 0.999) == (curve[2], False)


def test_user_embeddings_are_the_calibration_queries_when_given(random_vectors: np.ndarray) -> None:
    users = _unit_vectors(50, 32, seed=5)
    options = IndexOptions(kind="hnsw", sample_queries=1000, hnsw_ef_search=(16, 64))
    built = build_calibrated_index(random_vectors, options, users)
    assert built.queries_source == "user_embeddings"
    assert built.query_count == 50


# ------------------------------------------------------------------ search


@pytest.mark.parametrize("kind", KINDS)
def test_selective_filter_is_complete_and_never_violated(kind: str, random_vectors: np.ndarray) -> None:
    spec = (
        IndexSpec(IVF_FLAT_INNER_PRODUCT, {"nlist": 60}, {"nprobe": 1})
        if kind == "ivf"
        else IndexSpec(HNSW_FLAT_INNER_PRODUCT, {"M": 16, "efConstruction": 40}, {"efSearch": 16})
    )
    index = build_index(random_vectors, spec)
    mask = np.zeros(len(random_vectors), dtype=bool)
    mask[np.random.default_rng(3).choice(len(mask), size=25, replace=False)] = True
    params, _selector_alive, _bitmap_alive = _selector(mask)
    queries = _unit_vectors(40, 32, seed=7)
    _, rows = search(index, queries, 10, params)
    assert (rows >= 0).all()  # 25 selected rows exist: every answer has 10
    assert mask[rows].all()
    _, all_rows = search(index, queries, 25, params)  # every selected row, once each
    assert all(sorted(r) == sorted(np.flatnonzero(mask)) for r in all_rows)


def test_subset_search_equals_exact_search_with_a_selector(random_vectors: np.ndarray) -> None:
    mask = np.zeros(len(random_vectors), dtype=bool)
    mask[np.random.default_rng(4).choice(len(mask), size=200, replace=False)] = True
    params, _selector_alive, _bitmap_alive = _selector(mask)
    queries = _unit_vectors(30, 32, seed=8)
    scores, rows = search(build_index(random_vectors), queries, 10, params)
    subset_scores, subset_rows = search_subset(random_vectors, np.flatnonzero(mask), queries, 10)
    np.testing.assert_array_equal(subset_rows, rows)
    np.testing.assert_allclose(subset_scores, scores, atol=1e-5)
    few_scores, few_rows = search_subset(random_vectors, np.array([5, 3]), queries[:2], 4)
    assert (few_rows[:, 2:] == -1).all()
    assert np.isneginf(few_scores[:, 2:]).all()
    assert sorted(few_rows[0, :2]) == [3, 5]
    assert exact_subset_limit(build_index(random_vectors)) == 0  # exact indexes keep the selector search


def test_search_parameters_carry_the_configured_effort_and_selector(random_vectors: np.ndarray) -> None:
    ivf = build_index(random_vectors, IndexSpec(IVF_FLAT_INNER_PRODUCT, {"nlist": 30}, {"nprobe": 7}))
    hnsw = build_index(
        random_vectors, IndexSpec(HNSW_FLAT_INNER_PRODUCT, {"M": 8, "efConstruction": 20}, {"efSearch": 33})
    )
    _, selector, _bitmap = _selector(np.ones(len(random_vectors), dtype=bool))
    assert search_parameters(ivf) is None  # the index's own defaults are the manifest's
    assert search_parameters(ivf, selector).nprobe == 7  # type: ignore[union-attr]
    assert search_parameters(ivf, None, effort=100).nprobe == 30  # type: ignore[union-attr]  # capped at nlist
    assert search_parameters(hnsw, selector).efSearch == 33  # type: ignore[union-attr]
    assert type(search_parameters(build_index(random_vectors), selector)) is faiss.SearchParameters


@pytest.mark.parametrize("kind", KINDS)
def test_index_file_round_trip_keeps_rows_and_vectors(
    kind: str, random_vectors: np.ndarray, tmp_path: Path
) -> None:
    built = build_calibrated_index(random_vectors, IndexOptions(kind=kind, sample_queries=50))  # type: ignore[arg-type]
    write_index(built.index, tmp_path / "index.faiss")
    again = read_index(tmp_path / "index.faiss")
    configure(again, IndexSpec.from_manifest(json.loads(json.dumps(built.manifest()))))
    np.testing.assert_array_equal(item_vectors(again), random_vectors)  # row r = vector r
    queries = random_vectors[:20]
    np.testing.assert_array_equal(search(again, queries, 10)[1], search(built.index, queries, 10)[1])


# ------------------------------------------------------------------ manifest


def test_manifest_section_round_trips(forced: tuple[str, BuiltIndex]) -> None:
    kind, built = forced
    section = json.loads(json.dumps(built.manifest()))
    assert IndexSpec.from_manifest(section) == built.spec
    assert section["type"] == TYPES[kind]
    assert section["search_params"] == {SEARCH_KEY[kind]: built.spec.search_params[SEARCH_KEY[kind]]}
    assert section["k"] == 10
    assert section["target"] == 0.95
    assert section["ntotal"] == 3000
    assert section["recall_at_k"] >= 0.95
    assert section["chosen_reason"].startswith("cheapest setting")
    assert [set(p) for p in section["curve"]] == [{"setting", "recall", "ms_per_query"}] * len(built.curve)


def test_trained_bundle_describes_its_exact_index(trained: TrainedBundle) -> None:
    section = trained.manifest["index"]
    assert section["type"] == EXACT_INNER_PRODUCT
    assert section["params"] == {}
    assert section["search_params"] == {}
    assert section["ntotal"] == trained.manifest["counts"]["items"]
    assert section["recall_at_k"] == 1.0
    assert section["curve"] == []
    assert "index.exact_threshold" in section["chosen_reason"]


def _rewrite_manifest(path: Path, change: Mapping[str, Any]) -> None:
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    manifest["index"] = dict(change)
    (path / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def test_manifest_without_index_params_loads_as_exact(trained: TrainedBundle, tmp_path: Path) -> None:
    bundle = shutil.copytree(trained.bundle, tmp_path / "old")
    _rewrite_manifest(bundle, {"type": "flat_ip", "ntotal": trained.manifest["counts"]["items"]})
    loaded = load_bundle(bundle)
    assert loaded.index_spec == EXACT


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"type": "ivf_flat_ip", "params": {"nlist": 1}, "search_params": {"nprobe": 1}}, "index is flat_ip"),
        ({"type": "flat_ip", "params": {}, "search_params": {"nprobe": 4}}, "search_params must be exactly"),
        ({"type": "ivf_pq", "params": {}, "search_params": {}}, "not supported"),
        ({"type": "hnsw_flat_ip"}, "without params"),
    ],
)
def test_index_that_disagrees_with_the_manifest_is_refused(
    trained: TrainedBundle, tmp_path: Path, section: dict[str, Any], message: str
) -> None:
    bundle = shutil.copytree(trained.bundle, tmp_path / "bad")
    _rewrite_manifest(bundle, section)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_index_params_that_disagree_with_the_file_are_refused(
    synthetic: dict[str, tuple[Path, TwoTowerEngine]], tmp_path: Path
) -> None:
    path, engine = synthetic["ivf"]
    bundle = shutil.copytree(path / "bundle", tmp_path / "bad")
    section = dict(engine.bundle.manifest["index"])
    section["params"] = {"nlist": section["params"]["nlist"] + 1}
    _rewrite_manifest(bundle, section)
    with pytest.raises(BundleError, match=r"build parameters are \{'nlist'") as info:
        load_bundle(bundle)
    assert INDEX in str(info.value)
    assert sha256_file(bundle / INDEX) == engine.bundle.manifest["files"][INDEX]


# ------------------------------------------------------------------ serving


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, TwoTowerEngine]]:
    """Full bundles (random model) over 3000 clustered items with a forced IVF / HNSW index."""
    out: dict[str, tuple[Path, TwoTowerEngine]] = {}
    for kind in KINDS:
        path = tmp_path_factory.mktemp(f"synthetic-{kind}")
        build_synthetic_bundle(
            path,
            items=3000,
            dim=32,
            users=300,
            kind=kind,
            calibration_queries=300,
            held_out_queries=300,  # type: ignore[arg-type]
        )
        out[kind] = (path, TwoTowerEngine.load(path / "bundle"))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_loaded_bundle_searches_with_the_manifest_parameters(
    kind: str, synthetic: dict[str, tuple[Path, TwoTowerEngine]]
) -> None:
    path, engine = synthetic[kind]
    section = engine.bundle.manifest["index"]
    index = engine.bundle.index
    assert section["type"] == TYPES[kind]
    assert engine.bundle.index_spec.type == TYPES[kind]
    wanted = section["search_params"][SEARCH_KEY[kind]]
    assert (index.nprobe if kind == "ivf" else index.hnsw.efSearch) == wanted
    assert section["queries"] == {"source": "user_embeddings", "count": 300}
    held_out = np.load(path / "bench_user_vectors.npy")
    _, served = search(index, held_out, 10)
    assert recall_at_k(served, exact_neighbours(engine.item_vectors, held_out, 10)) >= 0.93
    # The cheapest ladder setting is measurably worse: the chosen one is what serving runs.
    assert section["curve"][0]["recall"] < section["recall_at_k"]


@pytest.mark.parametrize("subset_limit", [0, None], ids=["index-selector", "exact-subset"])
@pytest.mark.parametrize("kind", KINDS)
def test_engine_answers_match_exact_search_and_respect_filters(
    kind: str,
    subset_limit: int | None,
    synthetic: dict[str, tuple[Path, TwoTowerEngine]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, engine = synthetic[kind]
    if subset_limit is not None:  # 3000 items are below the subset limit: force the index path
        monkeypatch.setattr(engine.retriever, "_subset_limit", subset_limit)
    vectors = engine.item_vectors
    ids = engine.bundle.item_ids.to_list()
    rows = np.random.default_rng(0).choice(len(ids), size=100, replace=False)
    overlap = []
    for row in rows:
        answer = [
            engine.bundle.item_encoder.ids.index_of(s.item_id) - 2
            for s in engine.similar_items(SimilarItemsQuery(ids[row], 10))
        ]
        scores = vectors @ vectors[row]
        scores[row] = -np.inf
        exact = np.argsort(-scores, kind="stable")[:10]
        overlap.append(len(set(answer) & set(exact.tolist())) / 10)
    assert np.mean(overlap) >= 0.9

    categories = engine.bundle.items.get_column("category").to_list()
    counts = {c: categories.count(c) for c in set(categories)}
    rare = min((c for c in counts if counts[c] >= 10), key=lambda c: counts[c])  # a selective filter
    only = (ItemFilter("category", any_of=(rare,)),)
    users = engine.bundle.users.get_column("user_id").to_list()[:50]
    for user in users:
        answer = engine.recommend(RecommendQuery(user, 10, filters=only))
        assert len(answer.items) == 10
        assert all(categories[ids.index(s.item_id)] == rare for s in answer.items)


# ------------------------------------------------------------------ config and tracking


def test_index_config_section_parses_and_validates() -> None:
    config = load_config(None, ["index.kind=hnsw", "index.recall_target=0.9", "index.ivf_nprobe=[1, 3]"])
    assert config.index.kind == "hnsw"
    assert config.index.ivf_nprobe == (1, 3)
    assert config.to_dict()["index"]["hnsw_ef_search"] == list(IndexOptions().hnsw_ef_search)
    for override, message in [
        ("index.kind=annoy", "index.kind: must be one of"),
        ("index.recall_target=0", r"index.recall_target: must be in \(0, 1\]"),
        ("index.ivf_nprobe=[]", "index.ivf_nprobe"),
        ("index.nprobe=3", "index.nprobe: unknown key"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])


class _Recorder:
    """A Tracker that remembers what it was given."""

    info: RunInfo | None = None

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[dict[str, float], int | None]] = []
        self.dicts: dict[str, Mapping[str, Any]] = {}

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.metrics.append((dict(metrics), step))

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        self.dicts[name] = data

    def log_directory(self, path: Path, artifact_path: str) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def register_model(self, name: str, artifact_path: str, tags: Mapping[str, str]) -> str | None:
        return None


def test_calibration_curve_and_choice_are_logged(forced: tuple[str, BuiltIndex]) -> None:
    kind, built = forced
    tracker = _Recorder()
    log_index_calibration(tracker, built)
    assert tracker.params["index.type"] == TYPES[kind]
    assert json.loads(tracker.params["index.search_params"]) == dict(built.spec.search_params)
    steps = [
        (m["index_calibration.recall"], step)
        for m, step in tracker.metrics
        if "index_calibration.recall" in m
    ]
    assert steps == [(p.recall, i) for i, p in enumerate(built.curve)]
    assert tracker.dicts[INDEX_CALIBRATION_ARTIFACT] == built.manifest()


def test_pipeline_calibrates_on_user_embeddings(engine: TwoTowerEngine) -> None:
    bundle = engine.bundle
    rows = np.arange(bundle.sequences.rows, dtype=np.int64)
    users = embed_users(bundle.model, bundle.user_features, bundle.sequences, rows)
    options = IndexOptions(kind="ivf", sample_queries=50, ivf_nprobe=(1,))
    built = build_item_index(engine.item_vectors, users, options)
    assert built.queries_source == "user_embeddings"
    assert built.query_count == 50
    assert built.spec == IndexSpec(IVF_FLAT_INNER_PRODUCT, {"nlist": 1}, {"nprobe": 1})  # 60 items: one list
    assert build_item_index(engine.item_vectors, users, IndexOptions()).spec == EXACT


def test_training_run_logs_the_index_choice(trained: TrainedBundle) -> None:
    from mlflow.tracking import MlflowClient

    assert trained.run_id is not None
    client = MlflowClient(tracking_uri=trained.tracking_uri)
    run = client.get_run(trained.run_id)
    assert run.data.params["index.type"] == EXACT_INNER_PRODUCT
    assert run.data.params["index.search_params"] == "{}"
    assert run.data.metrics["index.recall_at_k"] == 1.0
    assert INDEX_CALIBRATION_ARTIFACT in [a.path for a in client.list_artifacts(trained.run_id)]


def test_clustered_benchmark_vectors_are_unit_and_clustered() -> None:
    vectors, cluster, centres, weights = clustered_vectors(2000, 16, np.random.default_rng(0), 20)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert weights.sum() == pytest.approx(1.0)
    assert len(centres) == 20
    own = np.einsum("ij,ij->i", vectors, centres[cluster])
    assert own.mean() > 0.6  # near their own centre, far from uniform on the sphere


def test_served_lists_score_as_the_training_evaluation_and_a_leaky_bundle_is_refused(
    trained: TrainedBundle, tmp_path: Path
) -> None:
    """benchmarks.served_quality: a bundle trained on the split's training part, asked through the
    serving engine for every test user, scores what training's dense evaluation reported."""
    from benchmarks.served_quality import measure, split_of
    from training.pipeline import train

    data = trained.data
    part = tmp_path / "train.parquet"
    split_of(data.interactions_path, "llo", 3).train.write_parquet(part)
    config = tiny_config("tracking.enabled=false", 'eval.protocol="none"')
    train(config, part, data.users_path, data.items_path, tmp_path / "bundle")

    quality = measure(tmp_path / "bundle", data.interactions_path)
    assert quality.users == quality.test_users > 0
    assert quality.index == "flat_ip"  # a tiny catalogue: served is exact
    assert quality.served_ndcg.tolist() == quality.exact_ndcg.tolist()
    assert quality.overlap == 1.0
    assert quality.exact_ndcg.mean() == pytest.approx(trained.metrics["ndcg@10"], abs=1e-9)
    # The session's bundle was refit on every interaction: its users' histories hold the answers.
    with pytest.raises(ValueError, match="training part"):
        measure(trained.bundle, data.interactions_path)
