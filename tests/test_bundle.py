"""serving.bundle.format: what training writes is exactly what serving loads, and bad bundles are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import polars as pl
import pytest
from conftest import TrainedBundle, tiny_config

from serving.bundle.format import (
    INDEX,
    ITEMS,
    MANIFEST,
    PROFILES,
    SCHEMA_VERSION,
    TOWERS,
    USER_INDEX,
    USERS,
    VOCABULARIES,
    Bundle,
    BundleContents,
    load_bundle,
    sha256_file,
    write_bundle,
)
from serving.errors import BundleError
from serving.model.embedding import embed_items, embed_users
from serving.recommend.engine import TwoTowerEngine
from training.data.io import load_dataset
from training.features import Prepared, prepare
from training.fit.setup import model_spec
from training.fit.trainer import TrainResult, train_model
from training.pipeline import model_version_of

ALL_FILES = (TOWERS, USERS, ITEMS, VOCABULARIES, INDEX, USER_INDEX, PROFILES)


@pytest.fixture(scope="module")
def in_memory(trained: TrainedBundle) -> tuple[Prepared, TrainResult]:
    """The pipeline's final model, trained again in this process (deterministic for the seed)."""
    data = load_dataset(trained.data.interactions_path, trained.data.users_path, trained.data.items_path)
    prepared = prepare(data.interactions, data.users, data.items, trained.config.data)
    return prepared, train_model(prepared, trained.config)


@pytest.fixture
def bundle_copy(trained: TrainedBundle, tmp_path: Path) -> Path:
    """A private copy of the shared bundle that a test may damage."""
    target = tmp_path / "bundle"
    shutil.copytree(trained.bundle, target)
    return target


def _manifest(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    return data


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")


def _refresh_checksum(path: Path, name: str) -> None:
    """Make the manifest agree with a changed file, so that a later check is the one that fails."""
    manifest = _manifest(path)
    manifest["files"][name] = sha256_file(path / name)
    _write_manifest(path, manifest)


def _contents(bundle: Bundle, version: str) -> BundleContents:
    """Everything write_bundle needs, taken from a loaded bundle."""
    return BundleContents(
        model_version=version,
        config=bundle.manifest["config"],
        spec=bundle.spec,
        state_dict={k: v.clone() for k, v in bundle.model.state_dict().items()},
        user_encoder=bundle.user_encoder,
        item_encoder=bundle.item_encoder,
        user_table=bundle.users,
        item_table=bundle.items,
        sequences=bundle.sequences,
        popularity=bundle.popularity,
        item_embeddings=bundle.index.reconstruct_n(0, bundle.index.ntotal),
        metrics={"ndcg@10": 0.5},
    )


def _hashes(path: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(path.iterdir())}


# ------------------------------------------------------------------ fidelity


def test_pipeline_bundle_weights_are_the_in_memory_model(
    trained: TrainedBundle, in_memory: tuple[Prepared, TrainResult]
) -> None:
    _, result = in_memory
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    # The model version ends in a digest of the weights: same digest, same weights.
    assert model_version_of(state).split("-")[-1] == trained.model_version.split("-")[-1]
    assert trained.manifest["model_version"] == trained.model_version


def test_reloaded_user_embeddings_equal_the_training_time_model(
    engine: TwoTowerEngine, in_memory: tuple[Prepared, TrainResult]
) -> None:
    prepared, result = in_memory
    bundle = engine.bundle
    assert bundle.users.get_column("user_id").to_list() == prepared.user_table.get_column("user_id").to_list()
    rows = np.arange(prepared.n_users, dtype=np.int64)
    expected = embed_users(result.model, prepared.user_features, prepared.sequences, rows)
    actual = engine.embed_rows(rows)
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-5)
    # Features and histories themselves survive the round trip exactly.
    for name, values in prepared.user_features.items():
        np.testing.assert_array_equal(bundle.user_features[name], values, err_msg=name)
    np.testing.assert_array_equal(bundle.sequences.indptr, prepared.sequences.indptr)
    np.testing.assert_array_equal(bundle.sequences.items, prepared.sequences.items)
    np.testing.assert_array_equal(bundle.popularity, prepared.popularity)


def test_index_vectors_equal_the_reloaded_item_tower(
    engine: TwoTowerEngine, in_memory: tuple[Prepared, TrainResult]
) -> None:
    prepared, result = in_memory
    bundle = engine.bundle
    assert bundle.index.ntotal == prepared.n_items
    assert bundle.index.d == bundle.spec.output_dim
    assert bundle.index.metric_type == faiss.METRIC_INNER_PRODUCT
    stored = bundle.index.reconstruct_n(0, bundle.index.ntotal)
    reloaded = embed_items(bundle.model, bundle.item_features())
    np.testing.assert_allclose(stored, reloaded, atol=1e-5, rtol=0)
    np.testing.assert_allclose(stored, embed_items(result.model, prepared.item_features), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)
    assert bundle.item_ids.to_list() == prepared.item_table.get_column("item_id").to_list()


def test_manifest_describes_the_bundle(trained: TrainedBundle) -> None:
    manifest = trained.manifest
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["embedding_dim"] == manifest["model"]["output_dim"] == 16
    assert manifest["metric"] == "inner_product"
    assert manifest["config"] == trained.config.to_dict()
    assert manifest["metrics"] == pytest.approx(trained.metrics)
    assert "ndcg@10" in manifest["metrics"]
    assert set(manifest["files"]) == set(ALL_FILES)
    for name, digest in manifest["files"].items():
        assert sha256_file(trained.bundle / name) == digest
    interactions = trained.interactions
    assert manifest["counts"]["users"] == interactions.get_column("user_id").n_unique()
    assert manifest["counts"]["items"] == interactions.get_column("item_id").n_unique()
    assert manifest["counts"]["interactions"] == interactions.unique().height
    # Tiny catalogue: exact search (the calibration record is tested in test_index.py).
    assert manifest["index"]["type"] == "flat_ip"
    assert manifest["index"]["ntotal"] == manifest["counts"]["items"]
    assert sorted(p.name for p in trained.bundle.iterdir()) == sorted([MANIFEST, *ALL_FILES])


def test_rewriting_a_loaded_bundle_round_trips(engine: TwoTowerEngine, tmp_path: Path) -> None:
    out = write_bundle(tmp_path / "again", _contents(engine.bundle, "v-again"))
    again = load_bundle(out)
    assert again.model_version == "v-again"
    assert again.users.equals(engine.bundle.users)
    assert again.items.equals(engine.bundle.items)
    encoded_again = again.item_features()
    for name, values in engine.bundle.item_features().items():
        np.testing.assert_array_equal(encoded_again[name], values, err_msg=name)
    rows = np.arange(5, dtype=np.int64)
    np.testing.assert_allclose(TwoTowerEngine(again).embed_rows(rows), engine.embed_rows(rows), atol=1e-6)


# ------------------------------------------------------------------ refusals


def test_flipped_byte_in_weights_fails_the_checksum(bundle_copy: Path) -> None:
    path = bundle_copy / TOWERS
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch") as info:
        load_bundle(bundle_copy)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ALL_FILES)
def test_missing_file_is_refused(bundle_copy: Path, name: str) -> None:
    (bundle_copy / name).unlink()
    with pytest.raises(BundleError, match="missing") as info:
        load_bundle(bundle_copy)
    assert name in str(info.value)


def test_missing_manifest_or_directory_is_not_a_bundle(bundle_copy: Path, tmp_path: Path) -> None:
    (bundle_copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match=r"not a bundle \(manifest.json missing\)"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(tmp_path / "nowhere")


def test_unsupported_schema_version_is_refused(bundle_copy: Path) -> None:
    manifest = _manifest(bundle_copy)
    manifest["schema_version"] = 99
    _write_manifest(bundle_copy, manifest)
    with pytest.raises(BundleError, match="schema version 99 is not supported") as info:
        load_bundle(bundle_copy)
    assert MANIFEST in str(info.value)


def test_invalid_or_incomplete_manifest_is_refused(bundle_copy: Path) -> None:
    manifest = _manifest(bundle_copy)
    del manifest["files"]
    _write_manifest(bundle_copy, manifest)
    with pytest.raises(BundleError, match="missing key 'files'"):
        load_bundle(bundle_copy)
    (bundle_copy / MANIFEST).write_text("{not json", encoding="utf-8")
    with pytest.raises(BundleError, match="invalid JSON"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize(
    ("key", "value"),
    [("output_dim", 8), ("embedding_dim", 32), ("hidden_dims", [64])],
)
def test_model_spec_that_disagrees_with_the_weights_is_refused(
    bundle_copy: Path, key: str, value: Any
) -> None:
    # The manifest is not among the checksummed files, so only the spec check can catch this.
    manifest = _manifest(bundle_copy)
    manifest["model"][key] = value
    if key == "output_dim":
        manifest["embedding_dim"] = value  # keep the top-level copy consistent: the weights must catch it
    _write_manifest(bundle_copy, manifest)
    with pytest.raises(BundleError, match="weights do not match the manifest's model spec") as info:
        load_bundle(bundle_copy)
    assert TOWERS in str(info.value)


def test_manifest_embedding_dim_that_disagrees_with_the_spec_is_refused(bundle_copy: Path) -> None:
    manifest = _manifest(bundle_copy)
    manifest["embedding_dim"] = manifest["embedding_dim"] + 1
    _write_manifest(bundle_copy, manifest)
    with pytest.raises(BundleError, match=r"embedding_dim .* does not match the model spec"):
        load_bundle(bundle_copy)


def test_feature_spec_that_disagrees_with_the_model_is_refused(bundle_copy: Path) -> None:
    manifest = _manifest(bundle_copy)
    # The encoder's description (features.item) and the model spec (model.item) must agree.
    features = manifest["features"]["item"]["features"]
    assert len(features) > 1
    manifest["features"]["item"]["features"] = features[::-1]
    _write_manifest(bundle_copy, manifest)
    with pytest.raises(BundleError, match="item feature specs do not match the model spec"):
        load_bundle(bundle_copy)


def test_vocabulary_that_disagrees_with_the_manifest_is_refused(bundle_copy: Path) -> None:
    vocabularies = pl.read_parquet(bundle_copy / VOCABULARIES)
    vocabularies.filter(pl.int_range(pl.len()) != 0).write_parquet(bundle_copy / VOCABULARIES)
    _refresh_checksum(bundle_copy, VOCABULARIES)
    with pytest.raises(BundleError, match="does not match the manifest") as info:
        load_bundle(bundle_copy)
    assert VOCABULARIES in str(info.value)


def test_truncated_index_fails_the_checksum(bundle_copy: Path) -> None:
    path = bundle_copy / INDEX
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BundleError, match="checksum mismatch") as info:
        load_bundle(bundle_copy)
    assert INDEX in str(info.value)


@pytest.mark.parametrize("name", [INDEX, ITEMS])
def test_unreadable_file_with_a_matching_checksum_is_a_bundle_error(bundle_copy: Path, name: str) -> None:
    path = bundle_copy / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _refresh_checksum(bundle_copy, name)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_copy)
    assert name in str(info.value)


def test_index_of_the_wrong_size_is_refused(bundle_copy: Path) -> None:
    index = faiss.read_index(str(bundle_copy / INDEX))
    smaller = faiss.IndexFlatIP(index.d)
    smaller.add(index.reconstruct_n(0, index.ntotal - 1))
    faiss.write_index(smaller, str(bundle_copy / INDEX))
    _refresh_checksum(bundle_copy, INDEX)
    with pytest.raises(BundleError, match="vectors of dimension") as info:
        load_bundle(bundle_copy)
    assert INDEX in str(info.value)


# ------------------------------------------------------------------ publishing


def test_existing_bundle_is_not_replaced_without_overwrite(engine: TwoTowerEngine, bundle_copy: Path) -> None:
    before = _hashes(bundle_copy)
    with pytest.raises(FileExistsError):
        write_bundle(bundle_copy, _contents(engine.bundle, "v-new"))
    assert _hashes(bundle_copy) == before
    assert load_bundle(bundle_copy).model_version == engine.model_version
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]


def test_overwrite_replaces_atomically_without_leftovers(engine: TwoTowerEngine, bundle_copy: Path) -> None:
    (bundle_copy / "stale.txt").write_text("from the old bundle", encoding="utf-8")
    write_bundle(bundle_copy, _contents(engine.bundle, "v-new"), overwrite=True)
    assert load_bundle(bundle_copy).model_version == "v-new"
    assert not (bundle_copy / "stale.txt").exists()  # replaced as a whole, not merged
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]


def test_failed_write_leaves_the_old_bundle_and_no_temp_dirs(
    engine: TwoTowerEngine, bundle_copy: Path
) -> None:
    before = _hashes(bundle_copy)
    contents = _contents(engine.bundle, "v-broken")
    contents.state_dict = {"weights": lambda: None}  # type: ignore[dict-item]  # cannot be pickled
    with pytest.raises(Exception, match=r"(?i)pickle|lambda"):
        write_bundle(bundle_copy, contents, overwrite=True)
    assert _hashes(bundle_copy) == before
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]
    assert load_bundle(bundle_copy).model_version == engine.model_version


def test_inconsistent_contents_are_rejected_before_writing(engine: TwoTowerEngine, tmp_path: Path) -> None:
    contents = _contents(engine.bundle, "v")
    contents.item_embeddings = contents.item_embeddings[:-1]
    with pytest.raises(ValueError, match="item table / embeddings"):
        write_bundle(tmp_path / "b", contents)
    assert not (tmp_path / "b").exists()
    assert list(tmp_path.iterdir()) == []


def test_attribute_named_like_a_bundle_column_survives(tmp_path: Path) -> None:
    interactions = pl.DataFrame(
        {
            "user_id": [f"u{i % 8}" for i in range(60)],
            "item_id": [f"i{(i * 7) % 10}" for i in range(60)],
            "timestamp": list(range(60)),
            "event_type": ["view"] * 60,
            "value": [None] * 60,
        },
        schema_overrides={"value": pl.Float64},
    )
    items = pl.DataFrame(
        {"item_id": [f"i{i}" for i in range(10)], "popularity": [float(i) for i in range(10)]}
    )
    config = tiny_config("train.epochs=1", "model.id_dropout=0")
    prepared = prepare(interactions, None, items, config.data)
    assert "popularity" in prepared.item_encoder.attribute_columns
    model = train_model(prepared, config).model
    out = write_bundle(
        tmp_path / "b",
        BundleContents(
            model_version="v",
            config=config.to_dict(),
            spec=model_spec(prepared, config),
            state_dict=model.state_dict(),
            user_encoder=prepared.user_encoder,
            item_encoder=prepared.item_encoder,
            user_table=prepared.user_table,
            item_table=prepared.item_table,
            sequences=prepared.sequences,
            popularity=prepared.popularity,
            item_embeddings=embed_items(model, prepared.item_features),
        ),
    )
    bundle = load_bundle(out)
    np.testing.assert_array_equal(bundle.item_features()["popularity"], prepared.item_features["popularity"])
    stored = bundle.index.reconstruct_n(0, bundle.index.ntotal)
    np.testing.assert_allclose(embed_items(bundle.model, bundle.item_features()), stored, atol=1e-5)
