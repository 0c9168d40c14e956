""":class:`LiveFeed`: follows the event log and keeps every registered spec's partials current.

Every batch the event log makes durable reaches :meth:`LiveFeed._on_batch` on the log's
writer thread (:meth:`serving.events.log.EventLog.add_listener`), which only queues it; the
feed's own thread decodes it (the log's own row conversion), computes its (user, day)
partials per registered spec and adds them to the store.

Building a spec (:meth:`LiveFeed.attach`: a start, or a hot swap to a new bundle) without
losing or double-counting an event of this process:

1. the spec is registered and its new batches are *held*, each with its WAL segment number;
2. :meth:`EventLog.flush` compacts everything durable so far into Parquet and returns the
   last segment ``S`` it compacted; a marker through the feed's queue makes sure every batch
   queued before it is held;
3. the partials of the Parquet log (events after the spec's clock) are added, leaving out
   this writer's files of segments above ``S`` (possibly half-written);
4. held batches of segments above ``S`` are applied (those up to ``S`` were in step 3), and
   the spec is applied directly from then on.

The state therefore never depends on memory alone: it is the durable log plus the batches
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
"""Partial rows per store call during a build (bounds one Redis script call)."""


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
            item = self._queue.get()
            if item is None:
                return
            if callable(item):
                item()
                continue
            try:
                self._apply_batch(item)
            except Exception:
                # The events are durable: a rebuild (restart, swap) recovers them.
                log.exception("live profiles: a batch of %d requests was not applied", len(item.payloads))

    def _apply_batch(self, batch: _Batch) -> None:
        frame = events_frame(decode_records(batch.payloads))
        with self._lock:
            for spec in self.store.specs():
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

    # --- building a spec --------------------------------------------------------------

    def attach(self, spec: LiveSpec) -> None:
        """Register ``spec`` and, when it is new to the store, build its partials from the
        durable event log (module docstring). Blocking (file I/O): not on the event loop."""
        with self._lock:
            build = self.store.register(spec)
            if build:
                self._holding[spec] = []
        if not build:
            log.info("live profiles: partials of snapshot %s already in the store", spec.key)
            return
        try:
            last = self.event_log.flush()
            self.sync()
            skip = _later_files(self.event_log.root, self.event_log.writer_id, last)
            self._add(spec, logged_partials(self.event_log.root, spec, skip))
        except BaseException:
            with self._lock:
                self._holding.pop(spec, None)
            self.store.release(spec)
            raise
        with self._lock:
            held = self._holding.pop(spec)
            for segment, frame in held:
                if segment > last:
                    self._add(spec, partials(frame.lazy(), spec))
        self.store.mark_built(spec)
        log.info("live profiles: snapshot %s (clock %d) built from the event log", spec.key, spec.clock)

    def detach(self, spec: LiveSpec) -> None:
        self.store.release(spec)

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
