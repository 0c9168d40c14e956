"""``recsys prepare``: the feature pass over interactions that do not fit in memory.

Streaming passes of Polars' streaming engine over a file, a directory (hive partitions
welcome) or a glob of CSV/Parquet files, then one bounded pass per shard:

1. **Vocabularies** (``collect(engine="streaming")``): the distinct user and item ids (state grows
   with the number of users and items, never with the number of events) and the row count.
   The entity encoders are fitted on them exactly as :func:`training.features.prepare` fits them
   (same sorted id vocabularies, same attribute fitting: one encoder implementation,
   :mod:`serving.model.features`).
2. **Encoded examples** (a streaming query per slice of :data:`SLICE_ROWS` events): every event
   becomes ``(user_index, item_index, timestamp, ...)`` and lands in shard ``hash(user_index) % shards``,
   so a user's whole sequence is inside one shard.
3. **Per shard**: read (a shard is small enough for memory by construction: ``--shards`` sized from the
   event count), drop exact duplicate events (duplicates share a user, hence a shard), sort by
   ``(user_index, timestamp, input order)`` and write ``shards/part-NNNNN.parquet``; item popularity is
   summed over the de-duplicated shards.

The output directory (read by :mod:`training.data.shards`) is written under a temporary name and
renamed when complete, so a prepared directory is either whole or absent::

    manifest.json                  format, counts, shard row counts, data config used
    users.parquet / items.parquet  id + attribute feature columns in vocabulary order (no personal data)
    user_encoder.json / item_encoder.json, user_vocab.parquet / item_vocab.parquet  fitted encoders
    popularity.npy                 interactions per item row (int64)
    shards/part-00000.parquet ...  user_index, item_index (Int64), timestamp (Int64 unix seconds),
                                   event_type (Utf8), value (Float64, null when not given)
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from serving.model.features import FIRST_TOKEN_INDEX, EntityEncoder
from serving.pseudonym import Pseudonymiser
from training.config import DataConfig, PrivacyConfig
from training.data.io import (
    DEFAULT_EVENT_TYPE,
    InputError,
    data_directory_hint,
    load_entities,
    timestamp_seconds,
)
from training.features import aligned_table, encoder_options

log = logging.getLogger(__name__)

FORMAT = "recsys-prepared-shards"
FORMAT_VERSION = 2
"""2: shards carry ``event_type`` and ``value`` (member profiles), the manifest ``privacy``."""
SHARD_COLUMNS = ("user_index", "item_index", "timestamp", "event_type", "value")
ROWS_PER_SHARD = 1_000_000
"""Default shard size: a shard's sort and a trainer's shard both stay well under 100 MiB."""
MIN_SHARDS = 8
"""Default minimum: enough shards for a few ranks to each read their own."""
SLICE_ROWS = 2_000_000
"""Events encoded at a time in pass 2: its memory is one slice, whatever the input's size."""
_HASH_MULTIPLIER = 2654435761
"""Knuth's multiplicative hash: spreads consecutive user indices evenly over the shards."""


@dataclass(frozen=True)
class PrepareSummary:
    out: Path
    interactions: int
    duplicates_dropped: int
    users: int
    items: int
    shards: int
    seconds: float


def scan_interactions(path: Path | str) -> pl.LazyFrame:
    """A lazy scan of the interactions at ``path``: a .parquet/.csv/.tsv file, a directory of them
    (searched recursively; ``key=value`` folders become columns) or a glob such as ``data/*.parquet``."""
    text = str(path)
    target = Path(text)
    if any(ch in text for ch in "*?["):
        suffix = Path(text).suffix.lower()
        source = text
        if suffix in _SCANNED:
            _check_interaction_files(path, [Path(p) for p in sorted(glob.glob(text, recursive=True))], suffix)
    elif target.is_dir():
        found = [p for p in sorted(target.rglob("*")) if p.is_file() and not p.name.startswith((".", "_"))]
        suffixes = {p.suffix.lower() for p in found} & set(_SCANNED)
        if not suffixes:
            raise InputError(f"{path}: no .parquet or .csv files in the directory")
        if len(suffixes) > 1:
            raise InputError(f"{path}: mixes {', '.join(sorted(suffixes))} files; use one format")
        suffix = suffixes.pop()
        source = str(target / "**" / f"*{suffix}")
        _check_interaction_files(path, [p for p in found if p.suffix.lower() == suffix], suffix)
    elif target.is_file():
        suffix = target.suffix.lower()
        source = text
    else:
        raise InputError(f"{path}: file or directory not found")
    try:
        if suffix == ".parquet":
            return pl.scan_parquet(source, hive_partitioning=True)
        if suffix in (".csv", ".tsv"):
            return pl.scan_csv(
                source,
                separator="\t" if suffix == ".tsv" else ",",
                schema_overrides={"user_id": pl.Utf8, "item_id": pl.Utf8},
                infer_schema_length=10_000,
            )
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{path}: cannot be read: {exc}") from exc
    raise InputError(f"{path}: unsupported file type {suffix!r} (use .csv, .tsv or .parquet)")


_SCANNED = (".parquet", ".csv", ".tsv")
_REQUIRED = ("user_id", "item_id", "timestamp")


def _file_columns(file: Path, suffix: str) -> list[str]:
    """The column names of one input file (its footer or header only)."""
    try:
        if suffix == ".parquet":
            return list(pl.read_parquet_schema(file))
        return pl.read_csv(file, n_rows=0, separator="\t" if suffix == ".tsv" else ",").columns
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{file}: cannot be read as {suffix[1:]}: {exc}") from exc


def _check_interaction_files(path: Path | str, files: list[Path], suffix: str) -> None:
    """Refuse, naming the file, a directory or glob whose files are not all interactions files with
    the same columns (a scan over them would fail with a bare schema error, or mix tables)."""
    first: tuple[Path, list[str]] | None = None
    for file in files:
        columns = _file_columns(file, suffix)
        missing = [c for c in _REQUIRED if c not in columns]
        if missing:
            hint = data_directory_hint(Path(path)) if Path(path).is_dir() else ""
            hint = hint or "; pass --interactions a file, or a directory or glob of interactions files only"
            raise InputError(
                f"{path}: {file} is not an interactions file (no {', '.join(missing)} column; found: "
                f"{', '.join(columns)}){hint}"
            )
        if first is None:
            first = (file, columns)
        elif set(columns) != set(first[1]):
            raise InputError(
                f"{path}: {file} has columns {', '.join(columns)} but {first[0]} has "
                f"{', '.join(first[1])}; every file of --interactions must have the same columns"
            )


def canonical(scan: pl.LazyFrame, path: Path | str) -> pl.LazyFrame:
    """The canonical columns of :class:`training.data.io.Dataset` (user_id, item_id as stripped strings,
    timestamp as Int64 unix seconds, event_type, value), lazily; invalid rows are counted by
    :func:`_check` rather than shown (showing rows would need a second pass)."""
    try:
        schema = scan.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{path}: cannot be read: {exc}") from exc
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in schema]
    if missing:
        raise InputError(
            f"{path}: missing required column(s) {', '.join(missing)} (found: {', '.join(schema)})"
        )
    for column in ("user_id", "item_id"):
        dtype = schema[column]
        if dtype.is_float() or dtype == pl.Boolean or dtype.is_nested():
            raise InputError(f"{path}: column {column}: ids must be strings (or integers), got {dtype}")
    event_type = (
        pl.col("event_type").cast(pl.Utf8).fill_null(DEFAULT_EVENT_TYPE)
        if "event_type" in schema
        else pl.lit(DEFAULT_EVENT_TYPE)
    )
    value = pl.col("value").cast(pl.Float64, strict=False) if "value" in schema else pl.lit(None, pl.Float64)
    return scan.select(
        pl.col("user_id").cast(pl.Utf8).str.strip_chars(),
        pl.col("item_id").cast(pl.Utf8).str.strip_chars(),
        timestamp_seconds(schema["timestamp"], path).alias("timestamp"),
        event_type.alias("event_type"),
        value.alias("value"),
    )


def _check(counts: pl.DataFrame, path: Path | str) -> None:
    """Refuse inputs with null/empty ids or unparseable timestamps, naming the column."""
    row = counts.row(0, named=True)
    if row["rows"] == 0:
        raise InputError(f"{path}: no interactions")
    for column in ("user_id", "item_id"):
        if row[f"bad_{column}"]:
            raise InputError(f"{path}: column {column}: {row[f'bad_{column}']} row(s) with null or empty ids")
    if row["bad_timestamp"]:
        raise InputError(
            f"{path}: column timestamp: {row['bad_timestamp']} row(s) with missing or unparseable timestamps"
        )


def default_shards(rows: int) -> int:
    """Shards for ``rows`` events: about :data:`ROWS_PER_SHARD` each, at least :data:`MIN_SHARDS`."""
    return max(MIN_SHARDS, math.ceil(rows / ROWS_PER_SHARD))


def shard_of(user_index: pl.Expr, shards: int) -> pl.Expr:
    """The shard of each user index (a multiplicative hash, stable across runs and versions)."""
    return ((user_index.cast(pl.UInt64) * _HASH_MULTIPLIER) % (1 << 32) % shards).cast(pl.Int64)


def prepare_shards(
    interactions: Path | str,
    users: Path | None,
    items: Path | None,
    out: Path,
    config: DataConfig,
    *,
    shards: int | None = None,
    overwrite: bool = False,
    privacy: PrivacyConfig | None = None,
) -> PrepareSummary:
    """Run the streamed feature pass (module docstring) and write the prepared directory ``out``.

    ``privacy.pseudonymise_user_ids``: every user id is replaced by its pseudonym (the key from
    ``$privacy.key_env``, :mod:`serving.pseudonym`) before anything is written, and the manifest
    records the bundle's ``privacy`` section; nothing written holds a raw user id."""
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (use --overwrite to replace it)")
    if shards is not None and shards < 1:
        raise ValueError(f"--shards must be >= 1, got {shards}")
    events = canonical(scan_interactions(interactions), interactions)

    # Pass 1: vocabularies and validation counts; state is per distinct id, not per event. Three
    # separate streaming queries, not one collect_all: that would cache the shared scan in memory
    # (common-subplan elimination), and the cache grows with the events (measured: BENCHMARKS.md).
    try:  # a file damaged past its footer (or changed meanwhile) fails only when it is read
        user_ids = (
            events.select(pl.col("user_id").unique())
            .filter(pl.col("user_id").is_not_null())
            .collect(engine="streaming")
        )
        item_ids = (
            events.select(pl.col("item_id").unique())
            .filter(pl.col("item_id").is_not_null())
            .collect(engine="streaming")
        )
        counts = events.select(
            pl.len().alias("rows"),
            (pl.col("user_id").is_null() | (pl.col("user_id") == "")).sum().alias("bad_user_id"),
            (pl.col("item_id").is_null() | (pl.col("item_id") == "")).sum().alias("bad_item_id"),
            pl.col("timestamp").is_null().sum().alias("bad_timestamp"),
        ).collect(engine="streaming")
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"{interactions}: cannot be read: {exc}") from exc
    _check(counts, interactions)
    rows = int(counts.item(0, "rows"))
    n_shards = shards if shards is not None else default_shards(rows)
    options = encoder_options(config)
    user_table = load_entities(users, "user_id") if users is not None else None
    user_key, privacy_section = pl.col("user_id"), {}
    if privacy is not None and privacy.pseudonymise_user_ids:
        # Once, on the distinct ids: pass 2 maps each event's raw id through this table.
        pseudonymiser = Pseudonymiser.from_environment(privacy.key_env)
        raw_ids = user_ids.get_column("user_id")
        pseudonyms = pseudonymiser.series(raw_ids)
        user_key = pl.col("user_id").replace_strict(raw_ids, pseudonyms, return_dtype=pl.Utf8)
        user_ids = pl.DataFrame({"user_id": pseudonyms.unique()})
        if user_table is not None:
            user_table = user_table.with_columns(pseudonymiser.series(user_table.get_column("user_id")))
        privacy_section = pseudonymiser.manifest_section(privacy.key_env)
        log.info("user ids pseudonymised (HMAC-SHA256, key from $%s)", privacy.key_env)
    user_vocab_ids = user_ids.get_column("user_id").sort()
    item_vocab_ids = item_ids.get_column("item_id").sort()
    item_table = load_entities(items, "item_id") if items is not None else None
    user_encoder = EntityEncoder.fit("user_id", user_vocab_ids, user_table, options)
    item_encoder = EntityEncoder.fit("item_id", item_vocab_ids, item_table, options)
    log.info(
        "pass 1: %d events, %d users, %d items -> %d shards",
        rows,
        len(user_vocab_ids),
        len(item_vocab_ids),
        n_shards,
    )

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        # Pass 2: encode and partition by user hash, one slice of the input at a time.
        raw = tmp / "raw"
        _encode_in_slices(events, rows, user_key, user_encoder, item_encoder, n_shards, raw)
        # Pass 3: per shard, de-duplicate, sort, write; popularity summed over shards.
        popularity = np.zeros(len(item_vocab_ids), dtype=np.int64)
        shard_rows: list[int] = []
        (tmp / "shards").mkdir()
        for shard in range(n_shards):
            frame = _read_raw_shard(raw, shard)
            frame = (
                frame.sort(["user_index", "timestamp", "order"])
                # The first occurrence of an exact duplicate stays, as the in-memory reader keeps it.
                .unique(["user_index", "item_index", "timestamp", "kind"], keep="first", maintain_order=True)
                .select(*SHARD_COLUMNS)
            )
            items_of = frame.get_column("item_index").to_numpy() - FIRST_TOKEN_INDEX
            popularity += np.bincount(items_of, minlength=len(popularity)).astype(np.int64)
            frame.write_parquet(tmp / "shards" / shard_name(shard))
            shard_rows.append(frame.height)
            del frame
        shutil.rmtree(raw)
        kept = int(sum(shard_rows))
        _write_entities(tmp, "user", user_encoder)
        _write_entities(tmp, "item", item_encoder)
        _aligned_table(user_encoder, user_table).write_parquet(tmp / "users.parquet")
        _aligned_table(item_encoder, item_table).write_parquet(tmp / "items.parquet")
        np.save(tmp / "popularity.npy", popularity)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "interactions": kept,
            "duplicates_dropped": rows - kept,
            "users": len(user_vocab_ids),
            "items": len(item_vocab_ids),
            "shards": n_shards,
            "shard_rows": shard_rows,
            "privacy": privacy_section,
            "data_config": {
                "min_count": config.min_count,
                "max_list_length": config.max_list_length,
                "near_unique_ratio": config.near_unique_ratio,
                "personal_columns": list(config.personal_columns),
            },
            "inputs": {
                "interactions": str(interactions),
                "users": str(users) if users else None,
                "items": str(items) if items else None,
            },
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        _fsync_tree(tmp)
        if out.exists():
            # Replace: the old directory goes aside first so that ``out`` is never half of each.
            aside = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(aside)
            tmp.rename(out)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - started
    log.info("prepared %d events into %d shards at %s in %.1f s", kept, n_shards, out, seconds)
    return PrepareSummary(
        out=out,
        interactions=kept,
        duplicates_dropped=rows - kept,
        users=len(user_vocab_ids),
        items=len(item_vocab_ids),
        shards=n_shards,
        seconds=seconds,
    )


def _encode_in_slices(
    events: pl.LazyFrame,
    rows: int,
    user_key: pl.Expr,
    user_encoder: EntityEncoder,
    item_encoder: EntityEncoder,
    n_shards: int,
    raw: Path,
) -> None:
    """Pass 2: each slice of :data:`SLICE_ROWS` events is encoded and split into one file per shard
    (``raw/shard=S/slice-K.parquet``).

    Slices, not one partitioned ``sink_parquet``: Polars' partitioned sink held its partitions in
    memory until the end (measured: 3.4 GiB for 30M events, growing with the events), while a slice
    of a Parquet scan reads only the row groups it covers, so memory is one slice. ``order`` is the
    event's position in the whole input (pass 3 breaks timestamp ties with it). ``user_key``: the
    user id to encode (the raw id, or its pseudonym).
    """
    for number, offset in enumerate(range(0, rows, SLICE_ROWS)):
        part = (
            events.slice(offset, SLICE_ROWS)
            .with_row_index("order", offset=offset)
            .select(
                user_encoder.ids.expr(user_key).alias("user_index"),
                item_encoder.ids.expr(pl.col("item_id")).alias("item_index"),
                "timestamp",
                # The hash tells exact duplicates apart; the columns are kept for member profiles.
                pl.struct("event_type", "value").hash(seed=0).alias("kind"),
                pl.col("event_type").cast(pl.Utf8),
                "value",
                pl.col("order").cast(pl.Int64),
            )
            .with_columns(shard_of(pl.col("user_index"), n_shards).alias("shard"))
            .collect(engine="streaming")
        )
        for (shard,), frame in part.group_by("shard"):
            folder = raw / f"shard={shard}"
            folder.mkdir(parents=True, exist_ok=True)
            frame.drop("shard").write_parquet(folder / f"slice-{number:06d}.parquet")
        del part


def shard_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def _read_raw_shard(raw: Path, shard: int) -> pl.DataFrame:
    """One partition of pass 2 (empty when no user hashed to it)."""
    folder = raw / f"shard={shard}"
    schema = {
        "user_index": pl.Int64,
        "item_index": pl.Int64,
        "timestamp": pl.Int64,
        "kind": pl.UInt64,
        "order": pl.Int64,
        "event_type": pl.Utf8,
        "value": pl.Float64,
    }
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return pl.DataFrame(schema=schema)
    return pl.read_parquet(files).cast(schema)  # type: ignore[arg-type]


def _aligned_table(encoder: EntityEncoder, table: pl.DataFrame | None) -> pl.DataFrame:
    """Id + attribute feature columns in vocabulary order; columns that are not features (personal
    data, free text) are not copied."""
    kept = None if table is None else table.select(encoder.id_column, *encoder.attribute_columns)
    return aligned_table(encoder.ids.tokens, encoder.id_column, kept)


def _write_entities(folder: Path, name: str, encoder: EntityEncoder) -> None:
    description, vocabularies = encoder.to_data()
    (folder / f"{name}_encoder.json").write_text(json.dumps(description, indent=2))
    vocabularies.write_parquet(folder / f"{name}_vocab.parquet")


def _fsync_tree(folder: Path) -> None:
    """Flush every file and directory under ``folder`` before the rename publishes it."""
    for path in sorted(folder.rglob("*"), reverse=True):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
