""":class:`LiveFeed`: follows the event log and keeps every registered spec's partials current.

Every batch the event log makes durable reaches :meth:`LiveFeed._on_batch` on the log's
writer thread (:meth:`serving.events.log.EventLog.add_listener`), which only queues it; the
feed's own thread decodes it (the log's own row conversion), computes its (user, day)
partials per registered spec and adds them to the store.

A spec is *joined* when this process first needs it (:meth:`LiveFeed.attach`: the first
profile request of a bundle, at start or after a hot swap) or first sees it registered in a
shared store by another replica (checked with every batch and every second). Joining adds the
partials of this process's durable event log, once per log directory and spec (the store
says whether another process of the same directory did), without losing or double-counting
an event of this process:

1. the spec is registered and its new batches are *held*, each with its WAL segment number;
2. :meth:`EventLog.flush` compacts everything durable so far into Parquet and returns the
   last segment ``S`` it compacted; a marker through the feed's queue makes sure every batch
   queued before it is held;
3. the partials of the Parquet log (events after the spec's clock) are added, leaving out
   this writer's files of segments above ``S`` (possibly half-written);
4. held batches of segments above ``S`` are applied (those up to ``S`` were in step 3), and
   the spec is applied directly from then on.

The state therefore never depends on memory alone: it is the durable logs plus the batches
made durable since.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from serving.events.compaction import decode_records, events_frame
from serving.events.log import EventLog
from serving.events.reader import event_files
from serving.profiles.live.spec import LiveSpec, logged_partials, partials
from serving.profiles.live.stores import ProfileDeltaStore

log = logging.getLogger(__name__)

ADD_CHUNK_ROWS = 5_000
"""Partial rows per store call while adding a log (bounds one Redis script call)."""
DISCOVER_S = 1.0
"""Seconds between checks for specs registered by other replicas when no batch arrives."""


@dataclass(frozen=True)
class _Batch:
    segment: int
    payloads: list[bytes]


class LiveFeed:
    """Applies the event log's durable batches to the specs registered in ``store``."""

    def __init__(self, event_log: EventLog, store: ProfileDeltaStore) -> None:
        self.event_log = event_log
        self.store = store
        self._lock = threading.Lock()
        self._joined: dict[LiveSpec, threading.Event] = {}
        self._holding: dict[LiveSpec, list[tuple[int, pl.DataFrame]]] = {}
        self._queue: queue.SimpleQueue[_Batch | Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="recsys-live-profiles", daemon=True)
        self._thread.start()
        event_log.add_listener(self._on_batch)

    # --- following the log ------------------------------------------------------------

    def _on_batch(self, writer_id: str, segment: int, payloads: list[bytes]) -> None:
        self._queue.put(_Batch(segment, payloads))

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=DISCOVER_S)
            except queue.Empty:
                item = self._discover
            if item is None:
                return
            try:
                if callable(item):
                    item()
                else:
                    self._apply_batch(item)
            except Exception:
                # The events are durable: a restart (or another replica's join) recovers them.
                log.exception("live profiles: applying the event log failed")

    def _discover(self) -> None:
        with self._lock:
            for spec in self.store.specs():
                self._join_locked(spec)

    def _apply_batch(self, batch: _Batch) -> None:
        frame = events_frame(decode_records(batch.payloads))
        with self._lock:
            for spec in self.store.specs():
                self._join_locked(spec)
                held = self._holding.get(spec)
                if held is not None:
                    held.append((batch.segment, frame))
                else:
                    self._add(spec, partials(frame.lazy(), spec))

    def _add(self, spec: LiveSpec, parts: pl.DataFrame) -> None:
        for start in range(0, parts.height, ADD_CHUNK_ROWS):
            self.store.add(spec, parts.slice(start, ADD_CHUNK_ROWS))

    def sync(self, timeout: float | None = None) -> None:
        """Wait until every batch queued so far is applied (or held)."""
        done = threading.Event()
        self._queue.put(done.set)
        if not done.wait(timeout):
            raise TimeoutError("live profiles: the feed did not catch up in time")

    # --- joining a spec ---------------------------------------------------------------

    def attach(self, spec: LiveSpec, timeout: float | None = None) -> None:
        """Join ``spec`` (module docstring) and wait until this log's partials are in the store.
        Blocking (file I/O): not on the event loop."""
        with self._lock:
            joined = self._join_locked(spec)
        if not joined.wait(timeout):
            raise TimeoutError(f"live profiles: snapshot {spec.key} not built in time")

    def _join_locked(self, spec: LiveSpec) -> threading.Event:
        """Register ``spec`` once; when this log's partials must be added, hold its batches and
        add them on a helper thread. Returns the event set once they are in."""
        joined = self._joined.get(spec)
        if joined is not None:
            return joined
        joined = threading.Event()
        self._joined[spec] = joined
        if not self.store.register(spec, self.event_log.directory_id):
            joined.set()  # this directory's log is in already (another process of it, or earlier)
            return joined
        self._holding[spec] = []
        worker = threading.Thread(
            target=self._add_log, args=(spec, joined), name="recsys-live-profiles-join", daemon=True
        )
        worker.start()
        return joined

    def _add_log(self, spec: LiveSpec, joined: threading.Event) -> None:
        last: int | None = None
        try:
            last = self.event_log.flush()
            self.sync()
            skip = _later_files(self.event_log.root, self.event_log.writer_id, last)
            self._add(spec, logged_partials(self.event_log.root, spec, skip))
            log.info("live profiles: snapshot %s (clock %d): event log added", spec.key, spec.clock)
        except Exception:
            log.exception("live profiles: snapshot %s: adding the event log failed", spec.key)
        finally:
            with self._lock:
                for segment, frame in self._holding.pop(spec, []):
                    if last is None or segment > last:
                        self._add(spec, partials(frame.lazy(), spec))
            joined.set()

    def detach(self, spec: LiveSpec) -> None:
        """This process no longer serves ``spec`` (an engine was collected)."""
        with self._lock:
            if self.store.release(spec):
                self._joined.pop(spec, None)

    def close(self) -> None:
        """Stop following the log (its batches so far applied) and close the store."""
        self.event_log.remove_listener(self._on_batch)
        self._queue.put(None)
        self._thread.join()
        self.store.close()


def _later_files(root: Path, writer_id: str, last: int) -> list[Path]:
    """This writer's Parquet files of segments after ``last`` (their batches are held)."""
    prefix = f"part-{writer_id}-"
    later = []
    for path in event_files(root):
        name = path.name
        if name.startswith(prefix) and name.endswith(".parquet"):
            number = name[len(prefix) : -len(".parquet")]
            if number.isdigit() and int(number) > last:
                later.append(path)
    return later
