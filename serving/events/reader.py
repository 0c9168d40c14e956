"""Reading the event log: complete Parquet files only.

Readers never see the write-ahead log or a file being written: compaction writes
``.part-*.tmp`` files and renames them into ``date=D/part-*.parquet`` when complete, and
only that name pattern is read. Events still in the WAL of a live server become readable
after its next compaction (``compact_interval_s``, or on shutdown).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from serving.events.schema import EVENT_SCHEMA, PARTITION_KEY

PART_GLOB = f"{PARTITION_KEY}=*/part-*.parquet"


def event_files(root: Path) -> list[Path]:
    """The complete Parquet files of an event-log directory, in date then name order."""
    return sorted(Path(root).glob(PART_GLOB))


def is_event_log(path: Path) -> bool:
    """Whether ``path`` is an event-log directory (has at least one complete Parquet file)."""
    return Path(path).is_dir() and bool(event_files(path))


def scan_events(root: Path, files: Sequence[Path] | None = None) -> pl.LazyFrame:
    """All events (:data:`~serving.events.schema.EVENT_SCHEMA` plus the ``date`` partition
    column), one row per non-empty ``event_id`` (the first one kept), lazily.

    ``files``: only these of the log's files (default: :func:`event_files`). An empty or
    missing log gives an empty frame with the same columns.
    """
    files = event_files(root) if files is None else list(files)
    if not files:
        empty = pl.DataFrame(schema={**EVENT_SCHEMA, PARTITION_KEY: pl.Date()})
        return empty.lazy()
    frame = pl.scan_parquet(
        files,
        hive_partitioning=True,
        hive_schema={PARTITION_KEY: pl.Date()},
        schema=EVENT_SCHEMA,
    )
    # Re-sent batches carry the same event ids; events without an id are all kept.
    with_id = frame.filter(pl.col("event_id").is_not_null()).unique(
        subset="event_id", keep="first", maintain_order=True
    )
    return pl.concat([with_id, frame.filter(pl.col("event_id").is_null())])


def read_events(root: Path) -> pl.DataFrame:
    """:func:`scan_events`, collected."""
    return scan_events(root).collect()
