""":class:`ProfileDeltaStore`: where the live (user, day) partials of each snapshot are kept.

A store holds, per registered :class:`~serving.profiles.live.spec.LiveSpec`, each user's
partials as *cells* ``"<day>:<column>" -> number`` combined by the column's rule
(:func:`serving.profiles.behaviour.merge_rule`: sum, min or max), the latest event time
applied (``as_of``) and the number of events applied. Two implementations:

* :class:`EmbeddedDeltaStore` (this module): in this process's memory, the default of a
  single-process server; rebuilt from the durable event log at every start;
* :class:`~serving.profiles.live.redis_store.RedisDeltaStore`: a Redis server shared by every
  replica (``recsys serve --profile-store redis://...``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import polars as pl

from serving.profiles.behaviour import EVENTS_PREFIX, merge_rule
from serving.profiles.live.spec import LiveSpec


@dataclass(frozen=True)
class UserDelta:
    """One user's live partials under a spec (``parts``: one row per day, empty without
    any) and the spec's ``as_of`` (latest event time applied, unix s; None before any)."""

    parts: pl.DataFrame
    as_of: int | None


class ProfileDeltaStore(Protocol):
    """Live partials per snapshot spec; safe to call from any thread."""

    def register(self, spec: LiveSpec, log_id: str) -> bool:
        """Have partials of ``spec`` kept from now on. True: the caller must add the partials of
        its durable event log (``log_id``: the log directory's id) because no process has added
        that log's yet; False: already done (or being done) by another process."""
        ...

    def specs(self) -> list[LiveSpec]:
        """The registered specs: every new batch of events is applied to each."""
        ...

    def add(self, spec: LiveSpec, parts: pl.DataFrame) -> None:
        """Combine ``parts`` ((user, day) partials of events after ``spec.clock``) into the store."""
        ...

    def read(self, spec: LiveSpec, user_id: str) -> UserDelta:
        """``user_id``'s partials under ``spec``."""
        ...

    def release(self, spec: LiveSpec) -> bool:
        """This process no longer serves ``spec``; True when the store dropped it (a store
        shared by replicas keeps it)."""
        ...

    def close(self) -> None: ...


DAY_COLUMNS = ("user_id", "day")


def cells(parts: pl.DataFrame) -> Iterator[tuple[str, str, str, float]]:
    """``(user_id, "<day>:<column>", rule, value)`` of every non-null partial value."""
    columns = [c for c in parts.columns if c not in DAY_COLUMNS]
    for row in parts.iter_rows(named=True):
        for column in columns:
            value = row[column]
            if value is not None:
                yield str(row["user_id"]), f"{row['day']}:{column}", merge_rule(column), float(value)


def combine(old: float | None, rule: str, value: float) -> float:
    """``value`` combined into ``old`` by ``rule`` (the cell semantics of every store)."""
    if old is None:
        return value
    if rule == "min":
        return min(old, value)
    if rule == "max":
        return max(old, value)
    return old + value


def parts_of(user_id: str, values: Mapping[str, float], spec: LiveSpec) -> pl.DataFrame:
    """A user's cells back into (user, day) partial rows (columns as
    :func:`~serving.profiles.behaviour.day_activity` gives for ``spec``)."""
    columns = [
        "first_activity",
        "last_activity",
        "events_total",
        *[f"{EVENTS_PREFIX}{t}" for t in spec.event_types],
        "value_sum",
        "value_count",
        "orders",
        "monetary_value",
    ]
    by_day: dict[int, dict[str, float]] = {}
    for name, value in values.items():
        day, _, column = name.partition(":")
        by_day.setdefault(int(day), {})[column] = value
    floats = {"value_sum", "monetary_value"}
    schema: dict[str, pl.DataType] = {"user_id": pl.Utf8(), "day": pl.Int64()}
    schema.update({c: pl.Float64() if c in floats else pl.Int64() for c in columns})
    rows = [
        {
            "user_id": user_id,
            "day": day,
            **{c: (v if c in floats else int(v)) if (v := got.get(c)) is not None else 0 for c in columns},
        }
        for day, got in sorted(by_day.items())
    ]
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


def latest_event(parts: pl.DataFrame) -> int | None:
    """The latest event time (unix s) behind ``parts``; None for none."""
    if parts.height == 0:
        return None
    latest = parts.get_column("last_activity").max()
    return int(latest) if isinstance(latest, int | float) else None


@dataclass
class _Partials:
    users: dict[str, dict[str, float]] = field(default_factory=dict)
    as_of: int | None = None
    holders: int = 0


class EmbeddedDeltaStore:
    """:class:`ProfileDeltaStore` in this process's memory (one server process, no server to run).

    The first registration of a spec in the process is new (nothing survives the process): the
    caller adds the partials of the durable event log, so a restart loses nothing. Partials of
    a spec no part of the process holds any more are dropped.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._specs: dict[LiveSpec, _Partials] = {}

    def register(self, spec: LiveSpec, log_id: str) -> bool:
        with self._lock:
            held = self._specs.setdefault(spec, _Partials())
            held.holders += 1
            return held.holders == 1

    def specs(self) -> list[LiveSpec]:
        with self._lock:
            return list(self._specs)

    def add(self, spec: LiveSpec, parts: pl.DataFrame) -> None:
        latest = latest_event(parts)
        with self._lock:
            held = self._specs.get(spec)
            if held is None:
                return
            for user_id, name, rule, value in cells(parts):
                user = held.users.setdefault(user_id, {})
                user[name] = combine(user.get(name), rule, value)
            if latest is not None and (held.as_of is None or latest > held.as_of):
                held.as_of = latest

    def read(self, spec: LiveSpec, user_id: str) -> UserDelta:
        with self._lock:
            held = self._specs.get(spec)
            values = dict(held.users.get(user_id, {})) if held is not None else {}
            as_of = held.as_of if held is not None else None
        return UserDelta(parts_of(user_id, values, spec), as_of)

    def release(self, spec: LiveSpec) -> bool:
        with self._lock:
            held = self._specs.get(spec)
            if held is not None:
                held.holders -= 1
                if held.holders <= 0:
                    del self._specs[spec]
            return spec not in self._specs

    def close(self) -> None:
        with self._lock:
            self._specs.clear()
