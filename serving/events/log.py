""":class:`EventLog`: the one place where events are written (group commit, rotation,
compaction, crash recovery).

Write path. :meth:`EventLog.submit` queues a batch of validated events and returns a
future; a dedicated writer thread takes everything queued, appends it to the current WAL
segment as one write, fsyncs once, and only then resolves the futures of all the batches
it took (group commit: while one fsync runs, new calls queue up and share the next). A
resolved future means the events survive a crash. No file I/O happens on the caller's
thread or on the asyncio event loop (:meth:`EventLog.append` awaits the future).

Compaction. A segment is closed ("rotated") when it reaches ``segment_max_bytes``, when
its oldest record is ``compact_interval_s`` old, on :meth:`EventLog.flush` and on
:meth:`EventLog.close`; a compactor thread then turns it into Parquet files
(:mod:`serving.events.compaction`) and deletes it. Readers see events only once they are
in Parquet.

Listeners. :meth:`EventLog.add_listener` registers a callable that the writer thread calls
with every batch it made durable (writer id, segment number, the serialized requests), before
the callers' futures resolve; live member profiles (:mod:`serving.profiles.live`) follow the
log this way. A batch in segment ``N`` of this writer is in Parquet once :meth:`EventLog.flush`
returned ``N`` or more.

Recovery. Each process writes under its own ``_wal/<writer>/`` directory and holds an
exclusive ``flock`` on its ``LOCK`` file for its lifetime (the kernel releases it when
the process dies, SIGKILL included). :meth:`EventLog.open` compacts the WAL of every
writer whose lock is free (a crashed or killed process), dropping a torn last record
(never acknowledged), so every acknowledged event reaches Parquet exactly once. Several
processes may share one event-log directory (``recsys serve --workers N``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from serving._proto.recsys.v1 import events_pb2
from serving.errors import NotReadyError
from serving.events.compaction import compact_segment
from serving.events.schema import PARTITION_KEY
from serving.events.wal import SegmentWriter
from serving.pseudonym import Pseudonymiser
from serving.storage import fsync_dir

log = logging.getLogger(__name__)

WAL_DIRNAME: Final = "_wal"
LOG_ID_NAME: Final = "_log_id"
_LOCK_NAME: Final = "LOCK"
_SEGMENT = re.compile(r"segment-(\d{8})\.wal")

BatchListener = Callable[[str, int, list[bytes]], None]
"""Called with (writer id, segment number, serialized ``LogEventsRequest`` payloads) of a durable batch."""


@dataclass(frozen=True, slots=True)
class EventLogOptions:
    """When WAL segments are closed and compacted into Parquet."""

    # A segment is closed once it holds this many bytes.
    segment_max_bytes: int = 16 * 1024 * 1024
    # ... or once its oldest event waited this long: the delay before events are readable.
    compact_interval_s: float = 30.0
    # Non-empty: user ids are stored as pseudonyms, HMAC-keyed by this environment variable
    # (serving.pseudonym; the bundle's privacy.key_env). Empty: stored as given.
    user_id_key_env: str = ""

    def __post_init__(self) -> None:
        if self.segment_max_bytes < 1:
            raise ValueError(f"segment_max_bytes: must be >= 1, got {self.segment_max_bytes}")
        if self.compact_interval_s <= 0:
            raise ValueError(f"compact_interval_s: must be > 0, got {self.compact_interval_s}")


def _segment_path(directory: Path, number: int) -> Path:
    return directory / f"segment-{number:08d}.wal"


def _try_lock(path: Path) -> IO[bytes] | None:
    """An open handle holding an exclusive flock on ``path``, or None when another holds it."""
    handle = open(path, "ab")  # noqa: SIM115 - kept open while the lock is held
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _remove_writer_dir(root: Path, directory: Path, lock: IO[bytes]) -> None:
    """Delete an empty (fully compacted) writer directory and its stale temporary files."""
    writer_id = directory.name
    left = sorted(directory.glob("segment-*.wal"))
    if left:
        # Never delete a segment that was not compacted: it may hold acknowledged events.
        lock.close()
        log.error("event log %s: %d WAL segments of %s remain; kept for recovery", root, len(left), writer_id)
        return
    for stale in root.glob(f"{PARTITION_KEY}=*/.part-{writer_id}-*.tmp"):
        stale.unlink(missing_ok=True)
    (directory / _LOCK_NAME).unlink(missing_ok=True)
    lock.close()
    shutil.rmtree(directory, ignore_errors=True)
    fsync_dir(directory.parent)


def directory_id(root: Path) -> str:
    """A random id of the event-log directory ``root``, made by the first process that asks and
    the same for every writer of the directory afterwards (created with ``link``: exclusive)."""
    path = root / LOG_ID_NAME
    if not path.exists():
        fd, tmp = tempfile.mkstemp(prefix=".log_id.", suffix=".tmp", dir=root)
        try:
            os.write(fd, os.urandom(8).hex().encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
            fsync_dir(root)
        except FileExistsError:
            pass  # another process made it first: theirs is the id
        finally:
            os.unlink(tmp)
    return path.read_text(encoding="utf-8").strip()


def recover_orphans(root: Path, *, skip: str = "") -> int:
    """Compact the WAL of every writer of ``root`` that is not alive; returns the events recovered."""
    wal_root = root / WAL_DIRNAME
    if not wal_root.is_dir():
        return 0
    recovered = 0
    writers = (p for p in wal_root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != skip)
    for directory in sorted(writers):
        try:
            lock = _try_lock(directory / _LOCK_NAME)
        except FileNotFoundError:  # removed meanwhile by another recovering process
            continue
        if lock is None:
            continue  # a live writer
        try:
            segments = sorted(
                (int(m.group(1)), p) for p in directory.iterdir() if (m := _SEGMENT.fullmatch(p.name))
            )
            for number, path in segments:
                recovered += compact_segment(root, path, directory.name, number)
            _remove_writer_dir(root, directory, lock)
        finally:
            lock.close()
    if recovered:
        log.info("recovered %d events from the write-ahead log of stopped writers in %s", recovered, root)
    return recovered


class _Batch:
    __slots__ = ("future", "payload")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.future: concurrent.futures.Future[None] = concurrent.futures.Future()


class EventLog:
    """The writer of one event-log directory for this process. Create with :meth:`open`."""

    def __init__(self, root: Path, options: EventLogOptions, writer_id: str, lock: IO[bytes]) -> None:
        self.root = root
        self.options = options
        self.writer_id = writer_id
        self._directory = root / WAL_DIRNAME / writer_id
        self._lock = lock
        self._cond = threading.Condition()
        self._pending: list[_Batch] = []
        self._flush_requests: list[concurrent.futures.Future[int]] = []
        self._listeners: tuple[BatchListener, ...] = ()
        self._closing = False
        self._closed = False
        self._segment: SegmentWriter | None = None
        self._segment_number = 0
        self._segment_started = 0.0
        self._compactions: list[concurrent.futures.Future[int]] = []
        self._compactor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="recsys-events-compact")
        self._writer = threading.Thread(target=self._run, name="recsys-events-wal", daemon=True)
        self._pseudonymiser: Pseudonymiser | None = None
        self.directory_id = ""
        """:func:`directory_id` of ``root``: the same for every writer of the directory."""

    @classmethod
    def open(cls, root: Path, options: EventLogOptions | None = None) -> EventLog:
        """Recover what stopped writers left behind, then start writing under ``root``.

        Blocking (file I/O): call it off the event loop.
        """
        root = Path(root)
        options = options or EventLogOptions()
        # Before anything is created: a missing key is a start-up error (PseudonymKeyError).
        key_env = options.user_id_key_env
        pseudonymiser = Pseudonymiser.from_environment(key_env) if key_env else None
        (root / WAL_DIRNAME).mkdir(parents=True, exist_ok=True)
        writer_id = f"{int(time.time()):010d}-{os.getpid()}-{os.urandom(4).hex()}"
        # Locked before it gets its name: another process recovering orphans must never
        # mistake a directory being set up for a dead writer's.
        staging = root / WAL_DIRNAME / f".new-{writer_id}"
        staging.mkdir()
        lock = _try_lock(staging / _LOCK_NAME)
        if lock is None:  # cannot happen for a fresh unique directory
            raise RuntimeError(f"{staging}: lock held by another process")
        os.replace(staging, root / WAL_DIRNAME / writer_id)
        fsync_dir(root / WAL_DIRNAME)
        recover_orphans(root, skip=writer_id)
        event_log = cls(root, options, writer_id, lock)
        event_log._pseudonymiser = pseudonymiser
        event_log.directory_id = directory_id(root)
        event_log._writer.start()
        log.info("event log at %s (writer %s)", root, writer_id)
        return event_log

    # --- the write path ------------------------------------------------------------------

    @property
    def pseudonymiser(self) -> Pseudonymiser | None:
        """What user ids are hashed with before they are stored (None: stored as sent)."""
        return self._pseudonymiser

    def submit(self, events: Sequence[events_pb2.Event]) -> concurrent.futures.Future[None]:
        """Queue validated events; the future resolves once they are durable.

        This is the one place where events enter the log: a transformation of what is
        stored (e.g. pseudonymising ``user_id``) belongs here.
        """
        # The request holds copies of the caller's messages: ids are replaced there, in place.
        request = events_pb2.LogEventsRequest(events=events)
        if self._pseudonymiser is not None:
            pseudonymise = self._pseudonymiser
            for event in request.events:
                event.user_id = pseudonymise(event.user_id)
        payload = request.SerializeToString()
        batch = _Batch(payload)
        with self._cond:
            if self._closing:
                raise NotReadyError("event log is shutting down; retry on another server")
            self._pending.append(batch)
            self._cond.notify()
        return batch.future

    async def append(self, events: Sequence[events_pb2.Event]) -> None:
        """:meth:`submit` and wait (without blocking the event loop) until the events are durable."""
        if not events:
            return
        # Pseudonymising and serialising up to 10,000 events is CPU work: not on the event loop.
        future = await asyncio.to_thread(self.submit, events)
        await asyncio.wrap_future(future)

    def add_listener(self, listener: BatchListener) -> None:
        """Call ``listener`` on the writer thread with every batch made durable from now on.

        It must be quick and must not raise (hand the work to another thread); an exception
        is logged and the write goes on.
        """
        with self._cond:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: BatchListener) -> None:
        with self._cond:
            self._listeners = tuple(x for x in self._listeners if x is not listener)

    def flush(self, timeout: float | None = None) -> int:
        """Close the current segment and wait until everything appended so far is in Parquet.

        Returns the number of the last segment of this writer that is now in Parquet (every
        batch a listener saw with a number up to it is readable).
        """
        request: concurrent.futures.Future[int] = concurrent.futures.Future()
        with self._cond:
            if self._closing:
                raise NotReadyError("event log is shutting down")
            self._flush_requests.append(request)
            self._cond.notify()
        return request.result(timeout)

    def close(self) -> None:
        """Write what is queued, compact every segment into Parquet and release the directory.

        Blocking; idempotent. Appends after (or during) close raise :class:`NotReadyError`.
        """
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._cond.notify()
        self._writer.join()
        self._compactor.shutdown(wait=True)
        failed = [f for f in self._compactions if f.exception() is not None]
        if failed:
            # Segments stay on disk; the next EventLog.open on this directory recovers them.
            self._lock.close()
            log.error(
                "event log %s: %d compactions failed; the WAL is kept for recovery", self.root, len(failed)
            )
        else:
            _remove_writer_dir(self.root, self._directory, self._lock)
        self._closed = True
        log.info("event log %s closed", self.root)

    # --- the writer thread ----------------------------------------------------------------

    def _rotation_due(self, now: float) -> bool:
        segment = self._segment
        if segment is None or segment.records == 0:
            return False
        return (
            segment.size >= self.options.segment_max_bytes
            or now - self._segment_started >= self.options.compact_interval_s
        )

    def _wait_timeout(self, now: float) -> float | None:
        if self._segment is None or self._segment.records == 0:
            return None
        return max(0.0, self._segment_started + self.options.compact_interval_s - now)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (
                    self._pending
                    or self._flush_requests
                    or self._closing
                    or self._rotation_due(time.monotonic())
                ):
                    self._cond.wait(self._wait_timeout(time.monotonic()))
                taken, self._pending = self._pending, []
                flushes, self._flush_requests = self._flush_requests, []
                closing = self._closing
                listeners = self._listeners
            # A caller that gave up before its batch was taken gets nothing written.
            batches = [b for b in taken if b.future.set_running_or_notify_cancel()]
            if batches:
                self._write(batches, listeners)
            if flushes or closing or self._rotation_due(time.monotonic()):
                done = self._rotate()
                for request in flushes:
                    self._chain(done, request, self._segment_number)
            if closing:
                return

    def _write(self, batches: list[_Batch], listeners: Sequence[BatchListener] = ()) -> None:
        try:
            if self._segment is None:
                self._segment_number += 1
                self._segment = SegmentWriter(_segment_path(self._directory, self._segment_number))
            if self._segment.records == 0:
                self._segment_started = time.monotonic()
            self._segment.append(b.payload for b in batches)
            self._segment.sync()
        except Exception as exc:
            # At-least-once: records that reached the file before the failure are still compacted
            # below, so a client retrying a failed call may store them twice; events that carry an
            # event_id are de-duplicated by the readers.
            log.exception("event log %s: write failed; %d calls get an error", self.root, len(batches))
            for batch in batches:
                batch.future.set_exception(exc)
            # Start afresh: whatever state the file is in, its intact records get compacted.
            self._rotate()
            return
        payloads = [b.payload for b in batches]
        for listener in listeners:
            try:
                listener(self.writer_id, self._segment_number, payloads)
            except Exception:
                log.exception("event log %s: a batch listener failed", self.root)
        for batch in batches:
            batch.future.set_result(None)

    def _rotate(self) -> concurrent.futures.Future[int]:
        """Close the current segment and queue its compaction (a done future when none)."""
        segment, self._segment = self._segment, None
        if segment is None:
            return self._after_compactions()
        try:
            segment.close()
        except OSError:
            log.exception("event log %s: closing %s failed", self.root, segment.path)
        done = self._compactor.submit(
            compact_segment, self.root, segment.path, self.writer_id, self._segment_number
        )
        done.add_done_callback(self._log_failure)
        # Keep failed compactions: close() must see them and leave their segments for recovery.
        self._compactions = [f for f in self._compactions if not f.done() or f.exception() is not None]
        self._compactions.append(done)
        return done

    def _after_compactions(self) -> concurrent.futures.Future[int]:
        # Compactions run in order on one thread: a no-op queued now finishes after them all.
        return self._compactor.submit(int)

    def _log_failure(self, future: concurrent.futures.Future[int]) -> None:
        exc = future.exception()
        if exc is not None:
            log.error(
                "event log %s: compaction failed; the segment stays in the WAL", self.root, exc_info=exc
            )

    @staticmethod
    def _chain(
        source: concurrent.futures.Future[int], target: concurrent.futures.Future[int], segment: int
    ) -> None:
        def done(finished: concurrent.futures.Future[int]) -> None:
            exc = finished.exception()
            if exc is not None:
                target.set_exception(exc)
            else:
                target.set_result(segment)

        source.add_done_callback(done)


@contextlib.contextmanager
def opened_event_log(root: Path, options: EventLogOptions | None = None) -> Iterator[EventLog]:
    """``with opened_event_log(DIR) as event_log:``; closed (everything compacted) on exit."""
    event_log = EventLog.open(root, options)
    try:
        yield event_log
    finally:
        event_log.close()
