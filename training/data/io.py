"""Reading and validating the canonical input files.

Inputs are CSV or Parquet (by file suffix):
- interactions: ``user_id``, ``item_id``, ``timestamp`` (unix seconds, or a date/datetime,
  or text of either), optional ``event_type`` and ``value``; or a feedback event-log
  directory (:mod:`training.data.event_log`: clicks, add-to-carts and purchases);
- users: ``user_id`` plus attribute columns; items: ``item_id`` plus attribute columns.

Every problem raises :class:`InputError` naming the file, the column and the first
offending rows (row numbers are 1-based data rows; the values shown are only those of
the offending column, never whole rows, which may hold personal data).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

log = logging.getLogger(__name__)

_MAX_ROWS_SHOWN = 5
DEFAULT_EVENT_TYPE = "interaction"


class InputError(ValueError):
    """An input file is missing, unreadable or invalid."""


@dataclass(frozen=True)
class Dataset:
    """Validated inputs. ``interactions`` has exactly the canonical columns and dtypes:
    user_id Utf8, item_id Utf8, timestamp Int64 (unix seconds), event_type Utf8, value Float64."""

    interactions: pl.DataFrame
    users: pl.DataFrame | None
    items: pl.DataFrame | None
    duplicates_dropped: int


def read_table(path: Path, *, id_columns: tuple[str, ...] = ()) -> pl.DataFrame:
    """Read a CSV or Parquet file. In CSV, ``id_columns`` are read as strings (never ints)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix in (".csv", ".tsv"):
            return pl.read_csv(
                path,
                separator="\t" if suffix == ".tsv" else ",",
                schema_overrides={c: pl.Utf8 for c in id_columns},
                infer_schema_length=10_000,
            )
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{path}: cannot be read: {exc}") from exc
    raise InputError(f"{path}: unsupported file type {suffix!r} (use .csv, .tsv or .parquet)")


def _offending(frame: pl.DataFrame, mask: pl.Expr, column: str) -> str:
    rows = frame.with_row_index("_row", offset=1).filter(mask).select("_row", column).head(_MAX_ROWS_SHOWN)
    shown = ", ".join(f"row {r}: {v!r}" for r, v in rows.iter_rows())
    total = frame.select(mask.sum()).item()
    return f"{total} row(s), first: {shown}"


def _require_columns(frame: pl.DataFrame, path: Path, required: tuple[str, ...]) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(
            f"{path}: missing required column(s) {', '.join(missing)} (found: {', '.join(frame.columns)})"
        )


def _ids_as_strings(frame: pl.DataFrame, path: Path, column: str) -> pl.DataFrame:
    dtype = frame.schema[column]
    if dtype.is_float() or dtype == pl.Boolean or dtype.is_nested():
        raise InputError(f"{path}: column {column}: ids must be strings (or integers), got {dtype}")
    frame = frame.with_columns(pl.col(column).cast(pl.Utf8).str.strip_chars())
    bad = pl.col(column).is_null() | (pl.col(column) == "")
    if frame.select(bad.any()).item():
        raise InputError(f"{path}: column {column}: null or empty ids in {_offending(frame, bad, column)}")
    return frame


def timestamp_seconds(dtype: pl.DataType, path: Path | str) -> pl.Expr:
    """Expression turning column ``timestamp`` of ``dtype`` into unix seconds (Int64; null where
    unparseable). Shared by the eager reader below and the streaming feature pass
    (:mod:`training.data.stream_prepare`), so both accept the same inputs."""
    original = pl.col("timestamp")
    if dtype.is_integer():
        return original.cast(pl.Int64)
    if dtype.is_float():
        return original.floor().cast(pl.Int64)
    if dtype in (pl.Date,) or isinstance(dtype, pl.Datetime):
        return original.cast(pl.Datetime("us")).dt.epoch("s")
    if dtype == pl.Utf8:
        text = original.str.strip_chars()
        return pl.coalesce(
            text.cast(pl.Int64, strict=False),
            # time_zone="UTC": naive strings are taken as UTC and offsets ("Z", "+02:00") are honoured.
            text.str.to_datetime(strict=False, time_unit="us", time_zone="UTC").dt.epoch("s"),
        )
    raise InputError(f"{path}: column timestamp: unsupported type {dtype}")


def _timestamps_as_seconds(frame: pl.DataFrame, path: Path) -> pl.DataFrame:
    column = "timestamp"
    parsed = timestamp_seconds(frame.schema[column], path)
    frame = frame.with_columns(parsed.alias("_ts"))
    bad = pl.col("_ts").is_null()
    if frame.select(bad.any()).item():
        raise InputError(
            f"{path}: column timestamp: missing or unparseable timestamps in {_offending(frame, bad, column)}"
        )
    return frame.with_columns(pl.col("_ts").alias(column)).drop("_ts")


def load_interactions(path: Path) -> tuple[pl.DataFrame, int]:
    """Read and validate interactions; return (canonical frame, exact duplicates dropped)."""
    path = Path(path)
    if path.is_dir():
        # A feedback event log (``recsys serve --events-dir``): the serve -> log -> retrain loop.
        from training.data.event_log import event_log_interactions

        try:
            frame = event_log_interactions(path)
        except ValueError as exc:
            raise InputError(f"{exc}{data_directory_hint(path)}") from exc
    else:
        frame = read_table(path, id_columns=("user_id", "item_id"))
    _require_columns(frame, path, ("user_id", "item_id", "timestamp"))
    for column in ("user_id", "item_id"):
        frame = _ids_as_strings(frame, path, column)
    frame = _timestamps_as_seconds(frame, path)
    if "event_type" in frame.columns:
        frame = frame.with_columns(pl.col("event_type").cast(pl.Utf8).fill_null(DEFAULT_EVENT_TYPE))
    else:
        frame = frame.with_columns(pl.lit(DEFAULT_EVENT_TYPE).alias("event_type"))
    if "value" in frame.columns:
        if not (frame.schema["value"].is_numeric() or frame.schema["value"] == pl.Null):
            cast = pl.col("value").cast(pl.Float64, strict=False)
            bad = cast.is_null() & pl.col("value").is_not_null()
            if frame.select(bad.any()).item():
                raise InputError(f"{path}: column value: not a number in {_offending(frame, bad, 'value')}")
        frame = frame.with_columns(pl.col("value").cast(pl.Float64))
    else:
        frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias("value"))
    frame = frame.select("user_id", "item_id", "timestamp", "event_type", "value")
    if frame.height == 0:
        raise InputError(f"{path}: no interactions")
    before = frame.height
    frame = frame.unique(maintain_order=True)
    dropped = before - frame.height
    if dropped:
        log.info("%s: dropped %d exact duplicate interaction rows", path, dropped)
    return frame, dropped


def load_entities(path: Path, id_column: str) -> pl.DataFrame:
    """Read users or items: ``id_column`` (unique, non-empty strings) plus attribute columns."""
    path = Path(path)
    frame = read_table(path, id_columns=(id_column,))
    _require_columns(frame, path, (id_column,))
    frame = _ids_as_strings(frame, path, id_column)
    unique = frame.unique(maintain_order=True)  # exact duplicate rows are harmless
    conflicting = unique.filter(pl.col(id_column).is_duplicated()).get_column(id_column).unique()
    if len(conflicting):
        # Row numbers refer to the file as given, so they are taken before de-duplication.
        mask = pl.col(id_column).is_in(conflicting.implode())
        raise InputError(
            f"{path}: column {id_column}: the same id with different attributes in "
            f"{_offending(frame, mask, id_column)}"
        )
    return unique


def load_dataset(interactions: Path, users: Path | None = None, items: Path | None = None) -> Dataset:
    """Load and validate all inputs. Users/items files are optional."""
    frame, dropped = load_interactions(interactions)
    return Dataset(
        interactions=frame,
        users=load_entities(users, "user_id") if users is not None else None,
        items=load_entities(items, "item_id") if items is not None else None,
        duplicates_dropped=dropped,
    )


def data_directory_hint(directory: Path) -> str:
    """What to pass instead when ``directory`` is a data directory (``recsys synth`` /
    ``recsys import`` output) given where one file was expected; "" when it is not one."""
    try:
        interactions, users, items = find_canonical_files(directory)
    except InputError:
        return ""
    flags = [f"--interactions {interactions}"]
    flags += [f"--users {users}"] if users is not None else []
    flags += [f"--items {items}"] if items is not None else []
    return f"; it is a data directory: pass its files, {' '.join(flags)}"


def find_canonical_files(directory: Path) -> tuple[Path, Path | None, Path | None]:
    """Locate ``interactions``, ``users`` and ``items`` (.parquet or .csv) in a directory."""
    directory = Path(directory)

    def find(stem: str) -> Path | None:
        for suffix in (".parquet", ".csv", ".tsv"):
            candidate = directory / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
        return None

    interactions = find("interactions")
    if interactions is None:
        raise InputError(f"{directory}: no interactions.parquet or interactions.csv")
    return interactions, find("users"), find("items")
