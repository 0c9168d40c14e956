"""The model bundle: a self-describing, versioned, checksummed directory.

Layout (schema version 1)::

    manifest.json         schema/model version, resolved config, model spec, feature
                          specs, metric, counts, metrics, sha256 of every other file
    towers.pt             state_dict of serving.model.towers.TwoTowerModel (loaded weights_only)
    users.parquet         row r = user index r + 2: user_id, kept attributes, sequence
                          (item indices in time order: the history and the seen items)
    items.parquet         row r = item index r + 2 = FAISS row r: item_id, kept
                          attributes, popularity (interaction count)
    vocabularies.parquet  entity, feature, token: fitted attribute vocabularies in order
    index.faiss           item embeddings (inner product over unit vectors): exact, IVF-Flat,
                          HNSW-Flat or IVF-PQ re-ranked over SQ8 as the manifest's ``index``
                          section says, with the search parameters chosen by build-time
                          calibration
    item_vectors.npy      only with a compressed index (IVF-PQ), which holds no exact vectors:
                          the float32 item embeddings (row r = FAISS row r), memory-mapped at
                          load so only the rows serving reads (filtered subsets, explanations,
                          similar items) become resident
    users.faiss           optional: user embeddings (row r = users.parquet row r), built
                          like index.faiss; the manifest's ``user_index`` section describes
                          it. Lookalike audiences need it (serving.audiences.search)
    profiles.parquet      optional: one member profile per user (serving.profiles); the
                          manifest's ``profiles`` section holds clock, thresholds, segment
                          descriptions and the churn model

:func:`write_bundle` publishes the directory atomically (manifest last, then one rename);
:func:`load_bundle` verifies everything and raises :class:`BundleError` naming the file
and the problem, so a bad bundle never replaces a good one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import torch

from serving.audiences.search import UserIndex
from serving.bundle.index import IndexSpec, configure, read_index
from serving.bundle.index_calibration import BuiltIndex, build_calibrated_index
from serving.bundle.paged_tables import page_big_tables
from serving.errors import BundleError
from serving.model.features import FIRST_TOKEN_INDEX, EncodedFeatures, EntityEncoder
from serving.model.history import Sequences
from serving.model.towers import TwoTowerModel, TwoTowerSpec
from serving.profiles.store import PROFILES_FILE
from serving.storage import atomic_directory

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TOWERS = "towers.pt"
USERS = "users.parquet"
ITEMS = "items.parquet"
VOCABULARIES = "vocabularies.parquet"
INDEX = "index.faiss"
ITEM_VECTORS = "item_vectors.npy"
USER_INDEX = "users.faiss"
PROFILES = PROFILES_FILE  # named beside its reader, serving.profiles.store (no torch/FAISS there)
# Reserved column names (the encoders never take "__" columns as attributes).
SEQUENCE = "__sequence"
POPULARITY = "__popularity"


@dataclass
class BundleContents:
    """Everything training hands to :func:`write_bundle`.

    ``user_table`` / ``item_table`` rows are in index order (row r = index r + 2) and
    hold the id column plus the raw attribute columns (only those the encoders kept
    are written). ``sequences`` rows align with users; ``item_embeddings`` and
    ``popularity`` with items. ``index``: the calibrated index over ``item_embeddings``
    (:func:`serving.bundle.index_calibration.build_calibrated_index`, ideally with user
    embeddings as calibration queries); None: :func:`write_bundle` builds one with the
    default :class:`~serving.bundle.index_options.IndexOptions` and item vectors as queries.
    """

    model_version: str
    config: dict[str, Any]
    spec: TwoTowerSpec
    state_dict: dict[str, torch.Tensor]
    user_encoder: EntityEncoder
    item_encoder: EntityEncoder
    user_table: pl.DataFrame
    item_table: pl.DataFrame
    sequences: Sequences
    popularity: npt.NDArray[np.int64]
    item_embeddings: npt.NDArray[np.float32]
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    index: BuiltIndex | None = None
    # Calibrated index over every user's embedding (row r = user row r); None: not written.
    user_index: UserIndex | None = None
    # The manifest's ``privacy`` section (serving.pseudonym); empty: raw user ids.
    privacy: dict[str, Any] = field(default_factory=dict)
    # Member profiles (serving.profiles) and the manifest's ``profiles`` section; None: not written.
    profiles: pl.DataFrame | None = None
    profiles_manifest: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bundle:
    """A verified, loaded bundle, ready to serve (model in eval mode)."""

    path: Path
    manifest: dict[str, Any]
    spec: TwoTowerSpec
    model: TwoTowerModel
    user_encoder: EntityEncoder
    item_encoder: EntityEncoder
    users: pl.DataFrame
    items: pl.DataFrame
    user_features: EncodedFeatures
    sequences: Sequences
    popularity: npt.NDArray[np.int64]
    index: faiss.Index
    # None for bundles written without users.faiss (lookalikes unavailable).
    user_index: faiss.Index | None = None
    # Exact item vectors (read-only memory map) when the index is compressed; None: the
    # index holds them (serving.bundle.index.item_vectors reads them from it).
    item_vectors: npt.NDArray[np.float32] | None = None

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    def item_features(self) -> EncodedFeatures:
        """The item tower's encoded inputs, row r = item row r, encoded on each call: serving
        never needs them (item vectors are in the index), and at 10M items they are ~10 int64
        arrays of 10M rows."""
        return self.item_encoder.transform(self.items)

    @property
    def item_ids(self) -> pl.Series:
        return self.items.get_column("item_id")

    @property
    def index_spec(self) -> IndexSpec:
        """Type, build and search parameters of :attr:`index` (already applied to it)."""
        return IndexSpec.from_manifest(self.manifest.get("index"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _entity_frame(table: pl.DataFrame, encoder: EntityEncoder) -> pl.DataFrame:
    kept = [c for c in encoder.attribute_columns if c in table.columns]
    return table.select(encoder.id_column, *kept)


def write_bundle(out: Path, contents: BundleContents, *, overwrite: bool = False) -> Path:
    """Write and atomically publish a bundle at ``out``; returns ``out``."""
    spec = contents.spec
    n_users = spec.user.id_cardinality - FIRST_TOKEN_INDEX
    n_items = spec.item.id_cardinality - FIRST_TOKEN_INDEX
    if contents.user_table.height != n_users or contents.sequences.rows != n_users:
        raise ValueError("user table / sequences do not match the user vocabulary")
    if contents.item_table.height != n_items or contents.item_embeddings.shape != (n_items, spec.output_dim):
        raise ValueError("item table / embeddings do not match the item vocabulary")
    built = contents.index
    if built is not None and (built.index.ntotal != n_items or built.index.d != spec.output_dim):
        raise ValueError(
            f"index holds {built.index.ntotal} vectors of dimension {built.index.d}; the bundle has "
            f"{n_items} items of dimension {spec.output_dim}"
        )

    users_built = contents.user_index.built.index if contents.user_index is not None else None
    if users_built is not None and (users_built.ntotal != n_users or users_built.d != spec.output_dim):
        raise ValueError(
            f"user index holds {users_built.ntotal} vectors of dimension {users_built.d}; the bundle has "
            f"{n_users} users of dimension {spec.output_dim}"
        )

    users = _entity_frame(contents.user_table, contents.user_encoder).with_columns(
        _sequence_column(contents.sequences)
    )
    items = _entity_frame(contents.item_table, contents.item_encoder).with_columns(
        pl.Series(POPULARITY, contents.popularity, dtype=pl.Int64)
    )
    user_description, user_vocab = contents.user_encoder.to_data()
    item_description, item_vocab = contents.item_encoder.to_data()
    vocabularies = pl.concat(
        [
            user_vocab.with_columns(pl.lit("user").alias("entity")),
            item_vocab.with_columns(pl.lit("item").alias("entity")),
        ]
    ).select("entity", "feature", "token")

    with atomic_directory(Path(out), replace=overwrite) as tmp:
        torch.save(contents.state_dict, tmp / TOWERS)
        users.write_parquet(tmp / USERS)
        items.write_parquet(tmp / ITEMS)
        vocabularies.write_parquet(tmp / VOCABULARIES)
        if built is None:
            built = build_calibrated_index(contents.item_embeddings)
        faiss.write_index(built.index, str(tmp / INDEX))
        files = [TOWERS, USERS, ITEMS, VOCABULARIES, INDEX]
        if built.spec.compressed:  # the index only approximates them: keep the exact vectors
            np.save(tmp / ITEM_VECTORS, np.ascontiguousarray(contents.item_embeddings, dtype=np.float32))
            files.append(ITEM_VECTORS)
        if contents.user_index is not None:
            faiss.write_index(contents.user_index.built.index, str(tmp / USER_INDEX))
            files.append(USER_INDEX)
        if contents.profiles is not None:
            contents.profiles.write_parquet(tmp / PROFILES)
            files.append(PROFILES)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "model_version": contents.model_version,
            "config": contents.config,
            "model": spec.to_dict(),
            "embedding_dim": spec.output_dim,
            "metric": "inner_product",
            "index": built.manifest(),
            **({"user_index": contents.user_index.manifest()} if contents.user_index is not None else {}),
            **({"privacy": contents.privacy} if contents.privacy else {}),
            **({"profiles": contents.profiles_manifest} if contents.profiles is not None else {}),
            "features": {"user": user_description, "item": item_description},
            "counts": {
                "users": n_users,
                "items": n_items,
                "interactions": int(contents.sequences.indptr[-1]),
            },
            "metrics": contents.metrics,
            "info": contents.info,
            "files": {name: sha256_file(tmp / name) for name in files},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return Path(out)


def _sequence_column(sequences: Sequences) -> pl.Series:
    """Per-user item sequences as a List(Int32) column (empty lists for users without items).

    Built as an Arrow list array straight from the offsets and the flat items: one int32 copy
    of the items, where grouping a (row, item) frame cost several (~4 GB at 100M events).
    (Per-row arrays would not do either: Polars turns equal-length rows into a fixed-size
    Array column, which the loader rejects.)
    """
    offsets = pa.array(sequences.indptr.astype(np.int64), type=pa.int64())  # no 2**31-item limit
    values = pa.array(sequences.items.astype(np.int32), type=pa.int32())
    return pl.Series(SEQUENCE, pa.LargeListArray.from_arrays(offsets, values)).cast(pl.List(pl.Int32))


def read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path}: not a bundle ({MANIFEST} missing)")
    try:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path}: invalid JSON: {exc}") from exc
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{manifest_path}: bundle schema version {version!r} is not supported (this build reads "
            f"{SCHEMA_VERSION})"
        )
    for key in ("model_version", "model", "features", "files"):
        if key not in manifest:
            raise BundleError(f"{manifest_path}: missing key {key!r}")
    return manifest


def verify_checksums(path: Path, manifest: dict[str, Any], names: Collection[str] | None = None) -> None:
    """Check the SHA-256 of every file the manifest lists, or of ``names`` among them only
    (a reader of one file need not hash the index and weights). Raises :class:`BundleError`."""
    files: dict[str, str] = manifest["files"]
    for name in files if names is None else names:
        expected = files.get(name)
        if expected is None:
            raise BundleError(f"{Path(path) / MANIFEST}: lists no checksum for {name}")
        file = Path(path) / name
        if not file.is_file():
            raise BundleError(f"{file}: missing")
        actual = sha256_file(file)
        if actual != expected:
            raise BundleError(f"{file}: checksum mismatch (manifest {expected[:12]}…, file {actual[:12]}…)")


def load_bundle(path: Path) -> Bundle:
    """Load and fully verify a bundle. Raises :class:`BundleError` on any problem."""
    path = Path(path)
    manifest = read_manifest(path)
    verify_checksums(path, manifest)
    try:
        spec = TwoTowerSpec.from_dict(manifest["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path / MANIFEST}: invalid model spec: {exc}") from exc
    if manifest.get("embedding_dim") != spec.output_dim:
        raise BundleError(
            f"{path / MANIFEST}: embedding_dim {manifest.get('embedding_dim')!r} does not match the model "
            f"spec's output_dim {spec.output_dim}"
        )

    try:
        # Memory-mapped (copy-on-write) and assigned into a model built without storage, not
        # copied into a randomly initialised one: at 10M items the item-id table alone is
        # 2.56 GB, which then costs neither an initialisation nor a second copy (and, read by
        # row below, never becomes resident).
        state = torch.load(path / TOWERS, map_location="cpu", weights_only=True, mmap=True)
        with torch.device("meta"):
            model = TwoTowerModel(spec)
        model.load_state_dict(state, strict=True, assign=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise BundleError(f"{path / TOWERS}: weights do not match the manifest's model spec: {exc}") from exc
    try:
        # Mapped rows stay resident (64 KB per row read): above 256 MiB a table is read per row.
        page_big_tables(model, path / TOWERS)
    except (OSError, ValueError, TypeError) as exc:
        raise BundleError(f"{path / TOWERS}: cannot read its big tables by row: {exc}") from exc
    model.eval()

    users = _read_parquet(path / USERS)
    items = _read_parquet(path / ITEMS)
    vocabularies = _read_parquet(path / VOCABULARIES)
    n_users = spec.user.id_cardinality - FIRST_TOKEN_INDEX
    n_items = spec.item.id_cardinality - FIRST_TOKEN_INDEX
    if users.height != n_users:
        raise BundleError(f"{path / USERS}: {users.height} rows, model expects {n_users}")
    if items.height != n_items:
        raise BundleError(f"{path / ITEMS}: {items.height} rows, model expects {n_items}")

    try:
        user_encoder = EntityEncoder.from_data(
            manifest["features"]["user"],
            vocabularies.filter(pl.col("entity") == "user"),
            users.get_column("user_id"),
        )
        item_encoder = EntityEncoder.from_data(
            manifest["features"]["item"],
            vocabularies.filter(pl.col("entity") == "item"),
            items.get_column("item_id"),
        )
    except (KeyError, ValueError) as exc:
        raise BundleError(f"{path / VOCABULARIES}: does not match the manifest: {exc}") from exc
    _check_fields(spec, user_encoder, item_encoder, path)

    index = _read_index(path, INDEX, manifest, "index", n_items, spec.output_dim)
    item_vectors = _read_item_vectors(path, manifest, n_items, spec.output_dim)
    user_index = (
        _read_index(path, USER_INDEX, manifest, "user_index", n_users, spec.output_dim)
        if USER_INDEX in manifest["files"]
        else None
    )
    sequence_column = users.get_column(SEQUENCE)
    lengths = sequence_column.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = sequence_column.explode().drop_nulls().to_numpy().astype(np.int64)
    sequences = Sequences(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), flat)
    if len(flat) and (flat.min() < FIRST_TOKEN_INDEX or flat.max() >= spec.item.id_cardinality):
        raise BundleError(f"{path / USERS}: sequence holds item indices outside the item vocabulary")

    return Bundle(
        path=path,
        manifest=manifest,
        spec=spec,
        model=model,
        user_encoder=user_encoder,
        item_encoder=item_encoder,
        users=users,
        items=items,
        user_features=user_encoder.transform(users),
        sequences=sequences,
        popularity=items.get_column(POPULARITY).to_numpy().astype(np.int64),
        index=index,
        user_index=user_index,
        item_vectors=item_vectors,
    )


def _read_item_vectors(
    path: Path, manifest: dict[str, Any], n: int, dim: int
) -> npt.NDArray[np.float32] | None:
    """The exact item vectors of a compressed index (a read-only memory map of ``n`` x ``dim``
    float32), None for an index that holds them. A compressed index without the file, or a
    file of the wrong shape or type, raises :class:`BundleError`."""
    compressed = IndexSpec.from_manifest(manifest.get("index")).compressed  # validated by _read_index
    if not compressed:
        return None
    file = path / ITEM_VECTORS
    if ITEM_VECTORS not in manifest["files"]:
        raise BundleError(f"{path / MANIFEST}: compressed index without {ITEM_VECTORS} in files")
    try:
        vectors = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{file}: unreadable: {exc}") from exc
    if vectors.dtype != np.float32 or vectors.shape != (n, dim) or not vectors.flags.c_contiguous:
        raise BundleError(f"{file}: {vectors.dtype} {vectors.shape}, manifest says float32 ({n}, {dim})")
    return np.asarray(vectors)


def _read_index(
    path: Path, name: str, manifest: dict[str, Any], section: str, n: int, dim: int
) -> faiss.Index:
    """The FAISS index file ``name`` checked against the manifest (``n`` vectors of ``dim``),
    with the search parameters of its manifest ``section`` applied."""
    file = path / name
    try:
        spec = IndexSpec.from_manifest(manifest.get(section))
    except ValueError as exc:
        raise BundleError(f"{path / MANIFEST}: invalid {section} section: {exc}") from exc
    try:
        index = read_index(file)
    except RuntimeError as exc:  # faiss reports unreadable files as RuntimeError
        raise BundleError(f"{file}: unreadable: {exc}") from exc
    if index.d != dim or index.ntotal != n:
        raise BundleError(
            f"{file}: {index.ntotal} vectors of dimension {index.d}, manifest says {n} of {dim}"
        )
    try:
        configure(index, spec)  # the search parameters chosen at build time
    except ValueError as exc:
        raise BundleError(f"{file}: does not match the manifest: {exc}") from exc
    return index


def _read_parquet(file: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(file)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise BundleError(f"{file}: unreadable: {exc}") from exc


def _check_fields(spec: TwoTowerSpec, users: EntityEncoder, items: EntityEncoder, path: Path) -> None:
    for side, tower, encoder in (("user", spec.user, users), ("item", spec.item, items)):
        expected = [(f.name, f.kind, f.cardinality) for f in tower.fields]
        actual = [(s.name, s.kind, s.cardinality) for s in encoder.specs]
        if expected != actual:
            raise BundleError(f"{path / MANIFEST}: {side} feature specs do not match the model spec")


def bundle_size_bytes(path: Path) -> int:
    return sum(os.path.getsize(p) for p in Path(path).iterdir() if p.is_file())
