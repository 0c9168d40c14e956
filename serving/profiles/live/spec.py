"""What a snapshot counts, and the (user, day) partials of logged events after it.

A :class:`LiveSpec` is read from a bundle's ``profiles`` manifest section: its clock (events at
or before it are in the snapshot), its event types and money rules. Two bundles with the same
spec share their live partials (:attr:`LiveSpec.key`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import polars as pl

from serving.events.reader import event_files, scan_events
from serving.profiles.behaviour import day_activity
from serving.profiles.build import row_rules
from serving.profiles.options import ProfileOptions


@dataclass(frozen=True)
class LiveSpec:
    """The snapshot's clock (unix s) and how it counts events."""

    clock: int
    event_types: tuple[str, ...]
    monetary_source: str
    monetary_event_types: tuple[str, ...]

    @classmethod
    def of(cls, section: dict[str, Any]) -> LiveSpec:
        """The spec of a bundle manifest's ``profiles`` section."""
        options = profile_options(section)
        return cls(
            clock=int(section["clock"]),
            event_types=tuple(str(t) for t in section.get("event_types", ())),
            monetary_source=str(section.get("monetary_source", "none")),
            monetary_event_types=options.monetary_event_types,
        )

    @property
    def key(self) -> str:
        """A short stable name of the spec (Redis keys, logs)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> LiveSpec:
        data = json.loads(text)
        return cls(
            clock=int(data["clock"]),
            event_types=tuple(data["event_types"]),
            monetary_source=str(data["monetary_source"]),
            monetary_event_types=tuple(data["monetary_event_types"]),
        )


def profile_options(section: dict[str, Any]) -> ProfileOptions:
    """The :class:`ProfileOptions` a bundle's profiles were built with (its manifest section)."""
    given = section.get("options", {})
    known = {f.name for f in fields(ProfileOptions)}
    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if k in known
    }
    return ProfileOptions(**values)


def partials(events: pl.LazyFrame, spec: LiveSpec) -> pl.DataFrame:
    """The (user, day) partials (:func:`serving.profiles.behaviour.day_activity`) of event-log
    rows (:data:`serving.events.schema.EVENT_SCHEMA`) after the spec's clock."""
    interactions = events.select(
        "user_id",
        "event_type",
        "value",
        pl.col("timestamp").dt.epoch("s").cast(pl.Int64).alias("timestamp"),
    ).filter(pl.col("timestamp") > spec.clock)
    value_rows, monetary_rows = row_rules(spec.monetary_source, spec.monetary_event_types)
    return day_activity(interactions, spec.event_types, value_rows, monetary_rows).collect()


def logged_partials(root: Path, spec: LiveSpec, skip: Sequence[Path] = ()) -> pl.DataFrame:
    """:func:`partials` of the complete Parquet files of the event log at ``root`` (one row per
    ``event_id``, as every reader of the log), leaving out the files in ``skip``."""
    left_out = set(skip)
    files = [f for f in event_files(root) if f not in left_out]
    return partials(scan_events(root, files), spec)
