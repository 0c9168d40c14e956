"""The compressed item index (IVF-PQ re-ranked over SQ8) chosen by the memory budget.

A small clustered catalogue (12,000 x 32) with the budget forced far below its size stands in
for the 10M-item case: the same code path (``auto`` -> ``ivfpq``, calibration over nprobe x
k_factor, bundle with memory-mapped exact vectors), in seconds. Real FAISS indexes, no mocks.
The PQ codes here have 4 bits (16-centroid sub-quantizers): 8-bit training (256 centroids per
sub-quantizer) alone would take most of the module's time budget; the 10M benchmark uses 8.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from benchmarks.catalogue import build_synthetic_bundle, clustered_vectors, user_vectors
from serving.bundle.format import INDEX, ITEM_VECTORS, MANIFEST, load_bundle, sha256_file
from serving.bundle.index import (
    IVF_FLAT_INNER_PRODUCT,
    IVF_PQ_REFINE_INNER_PRODUCT,
    IndexSpec,
    build_index,
    configure,
    default_nlist,
    exact_subset_limit,
    item_vectors,
    read_index,
    search,
    search_parameters,
    write_index,
)
from serving.bundle.index_calibration import (
    BuiltIndex,
    build_calibrated_index,
    exact_neighbours,
    recall_at_k,
    resolve_type,
)
from serving.bundle.index_options import GIB, IndexOptions
from serving.bundle.quantized_vectors import QuantizedVectors
from serving.errors import BundleError
from serving.recommend.engine import TwoTowerEngine
from serving.recommend.types import ItemFilter, RecommendQuery
from training.config import ConfigError, load_config

N, DIM = 12_000, 32
TINY_BUDGET = 1e-4  # GiB: 107 kB, far below 12,000 x 32 x 4 B = 1.5 MB
# Small ladders keep the module fast; the defaults are exercised at 10M by benchmarks.catalogue.
OPTIONS = IndexOptions(
    memory_budget_gib=TINY_BUDGET,
    sample_queries=300,
    ivf_nprobe=(1, 4, 16, 64),
    refine_k_factor=(2, 8, 32),
    pq_nbits=4,
)


@pytest.fixture(scope="module")
def catalogue() -> tuple[np.ndarray, np.ndarray]:
    """(item vectors, 600 user-like query vectors): 300 to calibrate, 300 held out."""
    rng = np.random.default_rng(5)
    vectors, _, centres, weights = clustered_vectors(N, DIM, rng, clusters=40)
    return vectors, user_vectors(600, centres, weights, rng)


@pytest.fixture(scope="module")
def built(catalogue: tuple[np.ndarray, np.ndarray]) -> BuiltIndex:
    vectors, queries = catalogue
    return build_calibrated_index(vectors, OPTIONS, queries[:300])


def test_auto_picks_the_compressed_index_only_above_the_memory_budget() -> None:
    default = IndexOptions()
    assert default.memory_budget_bytes == 2 * GIB
    assert resolve_type(1_000_000, default, dim=64) == IVF_FLAT_INNER_PRODUCT  # 256 MB: today's choice
    assert resolve_type(10_000_000, default, dim=64) == IVF_PQ_REFINE_INNER_PRODUCT  # 2.56 GB > 2 GiB
    # The budget wins over the exact threshold: a small catalogue of huge vectors is compressed too.
    assert resolve_type(1000, IndexOptions(memory_budget_gib=1e-3), dim=512) == IVF_PQ_REFINE_INNER_PRODUCT
    assert resolve_type(10_000_000, IndexOptions(kind="ivf"), dim=64) == IVF_FLAT_INNER_PRODUCT


def test_compressed_index_reaches_its_target_against_exact_search(
    built: BuiltIndex, catalogue: tuple[np.ndarray, np.ndarray]
) -> None:
    vectors, queries = catalogue
    assert built.spec.type == IVF_PQ_REFINE_INNER_PRODUCT
    assert type(built.index) is faiss.IndexRefine
    assert built.spec.params == {"nlist": default_nlist(N), "pq_m": DIM // 2, "pq_nbits": 4}
    assert built.met_target
    assert built.target == 0.9
    assert built.recall_at_k >= 0.9
    assert "exceed index.memory_budget_gib" in built.chosen_reason
    # Independently, through the serving search path: held-out queries, chosen parameters only.
    _, found = search(built.index, queries[300:], 10)
    assert recall_at_k(found, exact_neighbours(vectors, queries[300:], 10)) >= 0.88
    # The ladder stops at the first nprobe that meets the target, and the smallest k_factor wins.
    chosen = dict(built.spec.search_params)
    assert built.curve[-1].setting == chosen or built.curve[-2].setting == chosen
    assert all(p.recall < 0.9 for p in built.curve if p.setting["nprobe"] < chosen["nprobe"])


def test_manifest_records_the_choice_and_round_trips(built: BuiltIndex) -> None:
    section = json.loads(json.dumps(built.manifest()))
    assert IndexSpec.from_manifest(section) == built.spec
    assert section["factory"] == f"IVF{section['params']['nlist']},PQ{DIM // 2}x4,Refine(SQ8)"
    assert section["flat_bytes"] == N * DIM * 4
    assert section["memory_budget_bytes"] == int(TINY_BUDGET * GIB)
    assert set(section["search_params"]) == {"nprobe", "k_factor"}
    with pytest.raises(ValueError, match="search_params must be exactly"):
        IndexSpec.from_manifest({**section, "search_params": {"nprobe": 4}})


def test_filtered_search_is_complete_and_never_violated(
    built: BuiltIndex, catalogue: tuple[np.ndarray, np.ndarray]
) -> None:
    _, queries = catalogue
    mask = np.zeros(N, dtype=bool)
    mask[np.random.default_rng(3).choice(N, size=25, replace=False)] = True
    bitmap = np.packbits(mask, bitorder="little")
    selector = faiss.IDSelectorBitmap(N, faiss.swig_ptr(bitmap))
    params = faiss.SearchParameters()
    params.sel = selector
    _, rows = search(built.index, queries[:40], 10, params)
    assert (rows >= 0).all()  # 25 selected rows exist: the short answers were searched again, wider
    assert mask[rows].all()
    _, every = search(built.index, queries[:40], 25, params)
    assert all(sorted(r) == sorted(np.flatnonzero(mask)) for r in every)
    wider = search_parameters(built.index, selector, effort=1000)
    assert type(wider) is faiss.IndexRefineSearchParameters
    base = wider.referenced_objects[0]  # type: ignore[attr-defined]  # the IVF base's parameters
    assert base.nprobe == built.spec.params["nlist"]  # capped at nlist
    assert exact_subset_limit(built.index) == 4096


def test_index_file_round_trip_and_no_exact_vectors(built: BuiltIndex, tmp_path: Path) -> None:
    write_index(built.index, tmp_path / INDEX)
    again = read_index(tmp_path / INDEX)
    configure(again, IndexSpec.from_manifest(json.loads(json.dumps(built.manifest()))))
    assert again.k_factor == built.spec.search_params["k_factor"]  # type: ignore[attr-defined]
    queries = np.random.default_rng(1).standard_normal((20, DIM)).astype(np.float32)
    np.testing.assert_array_equal(search(again, queries, 10)[1], search(built.index, queries, 10)[1])
    with pytest.raises(ValueError, match="holds no exact vectors"):
        item_vectors(again)
    other = IndexSpec(IVF_PQ_REFINE_INNER_PRODUCT, {**built.spec.params, "pq_m": 8}, built.spec.search_params)
    with pytest.raises(ValueError, match="build parameters are"):
        configure(again, other)
    with pytest.raises(ValueError, match="pq_m 5 does not divide the dimension 32"):
        build_index(
            np.zeros((1000, DIM), np.float32),
            IndexSpec(
                IVF_PQ_REFINE_INNER_PRODUCT,
                {"nlist": 4, "pq_m": 5, "pq_nbits": 8},
                {"nprobe": 1, "k_factor": 2},
            ),
        )


# ------------------------------------------------------------------ bundle and serving


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TwoTowerEngine]:
    path = tmp_path_factory.mktemp("compressed")
    build_synthetic_bundle(
        path,
        items=N,
        dim=DIM,
        users=200,
        index_options=OPTIONS,
        calibration_queries=300,
        held_out_queries=300,
    )
    return path, TwoTowerEngine.load(path / "bundle")


def test_bundle_serves_from_the_manifest_with_mapped_exact_vectors(
    bundle: tuple[Path, TwoTowerEngine],
) -> None:
    path, engine = bundle
    manifest = engine.bundle.manifest
    assert manifest["index"]["type"] == IVF_PQ_REFINE_INNER_PRODUCT
    assert ITEM_VECTORS in manifest["files"]
    assert engine.bundle.index_spec.compressed
    vectors = engine.item_vectors
    assert isinstance(vectors.base, np.memmap)  # mapped, not copied
    assert not vectors.flags.writeable
    assert vectors.shape == (N, DIM)
    held_out = np.load(path / "bench_user_vectors.npy")
    _, served = search(engine.bundle.index, held_out, 10)
    assert recall_at_k(served, exact_neighbours(vectors, held_out, 10)) >= 0.88
    categories = engine.bundle.items.get_column("category").to_list()
    counts = {c: categories.count(c) for c in set(categories)}
    rare = min((c for c in counts if counts[c] >= 10), key=lambda c: counts[c])
    ids = engine.bundle.item_ids.to_list()
    for user in engine.bundle.users.get_column("user_id").to_list()[:20]:
        answer = engine.recommend(RecommendQuery(user, 10, filters=(ItemFilter("category", any_of=(rare,)),)))
        assert len(answer.items) == 10
        assert all(categories[ids.index(s.item_id)] == rare for s in answer.items)


def _rewrite(bundle: Path, name: str, write: object) -> None:
    """Replace file ``name`` (``write(path)``) and record its new checksum in the manifest."""
    assert callable(write)
    write(bundle / name)
    manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    manifest["files"][name] = sha256_file(bundle / name)
    (bundle / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def test_bad_index_or_vectors_file_is_refused(bundle: tuple[Path, TwoTowerEngine], tmp_path: Path) -> None:
    path, engine = bundle
    vectors = np.asarray(engine.item_vectors)
    wrong_type = shutil.copytree(path / "bundle", tmp_path / "wrong-type")
    ivf = build_index(vectors, IndexSpec(IVF_FLAT_INNER_PRODUCT, {"nlist": 10}, {"nprobe": 1}))
    _rewrite(wrong_type, INDEX, lambda p: faiss.write_index(ivf, str(p)))
    with pytest.raises(BundleError, match="index is ivf_flat_ip, manifest says ivf_pq_refine_ip"):
        load_bundle(wrong_type)

    wrong_shape = shutil.copytree(path / "bundle", tmp_path / "wrong-shape")
    _rewrite(wrong_shape, ITEM_VECTORS, lambda p: np.save(p, vectors[:-1]))
    with pytest.raises(BundleError, match=rf"{ITEM_VECTORS}: float32 \({N - 1}, {DIM}\), manifest says"):
        load_bundle(wrong_shape)

    missing = shutil.copytree(path / "bundle", tmp_path / "missing")
    manifest = json.loads((missing / MANIFEST).read_text(encoding="utf-8"))
    del manifest["files"][ITEM_VECTORS]
    (missing / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(BundleError, match=f"compressed index without {ITEM_VECTORS}"):
        load_bundle(missing)


def test_config_section_takes_the_budget_settings() -> None:
    config = load_config(None, ["index.kind=ivfpq", "index.memory_budget_gib=4", "index.refine_k_factor=[4]"])
    assert config.index.kind == "ivfpq"
    assert config.index.memory_budget_bytes == 4 * GIB
    assert config.index.refine_k_factor == (4,)
    for override, message in [
        ("index.memory_budget_gib=0", "index.memory_budget_gib: must be > 0"),
        ("index.compressed_recall_target=1.5", "index.compressed_recall_target"),
        ("index.refine_k_factor=[]", "index.refine_k_factor"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])


def test_request_path_reads_the_index_codes_not_the_mapped_vectors(
    bundle: tuple[Path, TwoTowerEngine],
) -> None:
    # Explanations, re-ranking and subset search read the refine step's SQ8 codes (in memory,
    # the index's own scores), so serving never pages in the exact float32 file.
    _, engine = bundle
    index = engine.bundle.index
    served = engine.retriever.vectors
    assert isinstance(served, QuantizedVectors)
    refine = faiss.downcast_index(index.refine_index)
    rows = np.array([0, 5, N - 1, 5], dtype=np.int64)
    np.testing.assert_allclose(served[rows], refine.reconstruct_batch(rows), atol=1e-6, rtol=0)
    assert served[rows.reshape(2, 2)].shape == (2, 2, DIM)
    assert served[3:5].shape == (2, DIM)
    # The scores served are inner products with those decoded vectors.
    user = engine.bundle.users.get_column("user_id")[0]
    answer = engine.recommend(RecommendQuery(user, 10))
    ids = engine.bundle.item_ids.to_list()
    row = engine.user_row(user)
    assert row is not None
    query = engine.embed_rows(np.array([row], dtype=np.int64))[0]
    for item in answer.items:
        assert item.score == pytest.approx(float(served[ids.index(item.item_id)] @ query), abs=1e-4)
