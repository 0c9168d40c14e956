"""Closed WAL segment -> date-partitioned Parquet files.

A segment of writer ``W`` numbered ``N`` becomes ``DIR/date=D/part-W-N.parquet`` for
each UTC date ``D`` of its events. The names depend only on the segment, so compacting
the same segment twice (a crash after the Parquet files were renamed into place but
before the segment was deleted) replaces the files with identical ones: no event is
ever counted twice. Each file is written atomically (tmp, fsync, rename, fsync dir);
only then is the segment deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from serving._proto.recsys.v1 import events_pb2
from serving.events.schema import EVENT_SCHEMA, EVENT_TYPE_NAMES, OPTIONAL_TEXT, PARTITION_KEY
from serving.events.wal import read_segment
from serving.storage import atomic_write_parquet, fsync_dir

log = logging.getLogger(__name__)


def events_frame(events: Iterable[events_pb2.Event]) -> pl.DataFrame:
    """The log's rows (:data:`~serving.events.schema.EVENT_SCHEMA`) for validated events."""
    columns: dict[str, list[object]] = {name: [] for name in EVENT_SCHEMA}
    for event in events:
        for name in OPTIONAL_TEXT:
            columns[name].append(getattr(event, name) or None)
        columns["user_id"].append(event.user_id)
        columns["item_id"].append(event.item_id)
        columns["event_type"].append(EVENT_TYPE_NAMES[event.event_type])
        columns["position"].append(event.position)
        columns["timestamp"].append(event.timestamp_ms)
        # proto3 doubles have no "unset": 0 means no value unless it is a purchase.
        has_value = event.value != 0.0 or event.event_type == events_pb2.EVENT_TYPE_PURCHASE
        columns["value"].append(event.value if has_value else None)
    frame = pl.DataFrame(
        {name: values for name, values in columns.items() if name != "timestamp"},
        schema={name: dtype for name, dtype in EVENT_SCHEMA.items() if name != "timestamp"},
    )
    stamps = pl.Series("timestamp", columns["timestamp"], dtype=pl.Int64)
    return frame.with_columns(
        stamps.cast(pl.Datetime("ms")).dt.replace_time_zone("UTC").alias("timestamp")
    ).select(list(EVENT_SCHEMA))


def decode_records(records: Iterable[bytes]) -> list[events_pb2.Event]:
    """The events of WAL records (each record is one serialized ``LogEventsRequest``)."""
    events: list[events_pb2.Event] = []
    for payload in records:
        batch = events_pb2.LogEventsRequest()
        batch.ParseFromString(payload)
        events.extend(batch.events)
    return events


def part_name(writer_id: str, segment: int) -> str:
    return f"part-{writer_id}-{segment:08d}.parquet"


def write_partitions(root: Path, frame: pl.DataFrame, name: str) -> list[Path]:
    """Write ``frame`` as ``root/date=D/name`` per UTC date ``D``; returns the files written."""
    if frame.height == 0:
        return []
    dated = frame.with_columns(pl.col("timestamp").dt.date().cast(pl.Utf8).alias(PARTITION_KEY))
    written: list[Path] = []
    for (day,), part in dated.sort("timestamp").partition_by(PARTITION_KEY, as_dict=True).items():
        directory = root / f"{PARTITION_KEY}={day}"
        directory.mkdir(parents=True, exist_ok=True)
        # Always, not only when this process created it: another worker may have created the
        # directory and not yet made its entry durable when this one deletes its WAL segment.
        fsync_dir(root)
        path = directory / name
        atomic_write_parquet(path, part.drop(PARTITION_KEY))
        written.append(path)
    return written


def compact_segment(root: Path, segment_path: Path, writer_id: str, segment: int) -> int:
    """Turn one closed segment into Parquet files, then delete it; returns the events written."""
    contents = read_segment(segment_path)
    frame = events_frame(decode_records(contents.records))
    write_partitions(root, frame, part_name(writer_id, segment))
    segment_path.unlink()
    fsync_dir(segment_path.parent)
    log.debug("compacted %s: %d events", segment_path, frame.height)
    return frame.height
