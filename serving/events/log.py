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

Faults. A write that fails is never acknowledged, and leaves the log able to go on:

* disk full / quota (ENOSPC, EDQUOT): the segment is cut back to its last complete record and
  kept; the calls get :class:`~serving.errors.StorageFullError` (``RESOURCE_EXHAUSTED``) and the
  next write after space is freed succeeds in the same segment;
* read-only file system, permission denied: the calls get
  :class:`~serving.errors.StorageUnavailableError` (``UNAVAILABLE``) until it is writable again;
* the directory removed under the server: writes to the open (now unlinked) segment would
  succeed and vanish at close, so each write checks that its segment is still linked before it
  acknowledges. When it is not, the records already acknowledged in it are read back through
  the open file and kept in memory, the calls get ``UNAVAILABLE`` while ``DIR`` is missing,
  and once ``DIR`` exists again the writer directory is recreated (locked, as at start-up) and
  the kept records are written ahead of the next call's. ``DIR`` itself is never recreated: it
  may be a mount point;
* a compaction that fails on an OSError (no space for the Parquet file) keeps its segment and
  is retried at every later rotation, flush and close.

Each fault is counted in ``recsys_io_faults_total{component="event_log"|"event_log_compaction"}``
and logged once per episode (:class:`serving.observability.io_faults.FaultEpisodes`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
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
from serving.metrics import ServingMetrics
from serving.observability.io_faults import FaultEpisodes, fault_kind, storage_error
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
    """An open handle holding an exclusive flock on ``path``, or None when another holds it.

    Opened read-only (flock needs no write access): a writer idle between segments holds no
    file open for writing, so its file system can be remounted read-only under it.
    """
    handle = os.fdopen(os.open(path, os.O_RDONLY | os.O_CREAT, 0o644), "rb")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _locked_writer_dir(root: Path, writer_id: str) -> IO[bytes]:
    """Create ``root/_wal/<writer_id>/`` holding its lock; returns the lock's handle.

    Locked before it gets its name: another process recovering orphans must never mistake a
    directory being set up for a dead writer's (names starting with "." are skipped).
    """
    staging = root / WAL_DIRNAME / f".new-{writer_id}"
    staging.mkdir(exist_ok=True)  # exists when an earlier try failed half-way
    lock = _try_lock(staging / _LOCK_NAME)
    if lock is None:  # cannot happen for a fresh unique directory
        raise RuntimeError(f"{staging}: lock held by another process")
    try:
        os.replace(staging, root / WAL_DIRNAME / writer_id)
        fsync_dir(root / WAL_DIRNAME)
    except BaseException:
        lock.close()
        raise
    return lock


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

    def __init__(
        self,
        root: Path,
        options: EventLogOptions,
        writer_id: str,
        lock: IO[bytes],
        metrics: ServingMetrics | None = None,
    ) -> None:
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
        # Acknowledged records of a segment removed under the writer, not yet written again.
        self._carried: list[bytes] = []
        # Segments whose compaction failed (compactor thread only): on an OSError retried at
        # the next rotation (``_retry``); otherwise left for recovery at the next start.
        self._retry: list[tuple[int, Path]] = []
        self._kept: list[tuple[int, Path]] = []
        self._faults = FaultEpisodes("event_log", log, metrics)
        self._compaction_faults = FaultEpisodes("event_log_compaction", log, metrics)
        self._compactor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="recsys-events-compact")
        self._writer = threading.Thread(target=self._run, name="recsys-events-wal", daemon=True)
        self._pseudonymiser: Pseudonymiser | None = None
        self.directory_id = ""
        """:func:`directory_id` of ``root``: the same for every writer of the directory."""

    @classmethod
    def open(
        cls, root: Path, options: EventLogOptions | None = None, metrics: ServingMetrics | None = None
    ) -> EventLog:
        """Recover what stopped writers left behind, then start writing under ``root``.

        Blocking (file I/O): call it off the event loop. ``metrics`` receive its faults.
        """
        root = Path(root)
        options = options or EventLogOptions()
        # Before anything is created: a missing key is a start-up error (PseudonymKeyError).
        key_env = options.user_id_key_env
        pseudonymiser = Pseudonymiser.from_environment(key_env) if key_env else None
        (root / WAL_DIRNAME).mkdir(parents=True, exist_ok=True)
        writer_id = f"{int(time.time()):010d}-{os.getpid()}-{os.urandom(4).hex()}"
        lock = _locked_writer_dir(root, writer_id)
        recover_orphans(root, skip=writer_id)
        event_log = cls(root, options, writer_id, lock, metrics)
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
        if self._carried:
            log.error(
                "event log %s: %d acknowledged records of a removed WAL segment could not be written "
                "again (the directory is still gone or unwritable); they are lost",
                self.root,
                len(self._carried),
            )
        failed = len(self._retry) + len(self._kept)
        if failed:
            # Segments stay on disk; the next EventLog.open on this directory recovers them.
            self._lock.close()
            log.error("event log %s: %d compactions failed; the WAL is kept for recovery", self.root, failed)
        else:
            try:
                _remove_writer_dir(self.root, self._directory, self._lock)
            except OSError as exc:  # the directory is gone or read-only: nothing left to keep
                self._lock.close()
                log.warning("event log %s: could not remove the writer directory: %s", self.root, exc)
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
            if batches or self._carried:
                self._write(batches, listeners)
            if flushes or closing or self._rotation_due(time.monotonic()):
                done = self._rotate()
                for request in flushes:
                    self._chain(done, request, self._segment_number)
            if closing:
                return

    def _write(self, batches: list[_Batch], listeners: Sequence[BatchListener] = ()) -> None:
        segment: SegmentWriter | None = None
        start = 0
        try:
            segment = self._open_segment()
            start = segment.size
            if segment.records == 0:
                self._segment_started = time.monotonic()
            segment.append([*self._carried, *(b.payload for b in batches)])
            segment.sync()
            segment.check_linked()
        except Exception as exc:
            self._write_failed(batches, segment, start, exc)
            return
        if self._carried:
            log.warning(
                "event log %s: %d acknowledged records of the removed segment written again to %s",
                self.root,
                len(self._carried),
                segment.path,
            )
            self._carried = []
        self._faults.succeeded()
        payloads = [b.payload for b in batches]
        for listener in listeners if payloads else ():
            try:
                listener(self.writer_id, self._segment_number, payloads)
            except Exception:
                log.exception("event log %s: a batch listener failed", self.root)
        for batch in batches:
            batch.future.set_result(None)

    def _open_segment(self) -> SegmentWriter:
        """The current segment, a new one when there is none (recreating a removed writer dir)."""
        if self._segment is not None:
            return self._segment
        if not self._directory.is_dir():
            self._recreate_directory()
        number = self._segment_number + 1
        self._segment = SegmentWriter(_segment_path(self._directory, number))
        self._segment_number = number
        return self._segment

    def _recreate_directory(self) -> None:
        """Recreate this writer's WAL directory (removed under it) once ``root`` exists again."""
        if not self.root.is_dir():
            raise FileNotFoundError(errno.ENOENT, "event log directory is gone", str(self.root))
        (self.root / WAL_DIRNAME).mkdir(exist_ok=True)
        lock = _locked_writer_dir(self.root, self.writer_id)
        old, self._lock = self._lock, lock
        old.close()
        log.warning("event log %s: recreated the removed WAL directory %s", self.root, self._directory)

    def _write_failed(
        self, batches: list[_Batch], segment: SegmentWriter | None, start: int, exc: Exception
    ) -> None:
        """Fail the calls of a write with their deliberate error; leave the log able to go on."""
        kind = fault_kind(exc)
        where = segment.path if segment is not None else self._directory
        self._faults.failed(kind, f"appending {len(batches)} calls to {where}", exc)
        error = storage_error("event store", kind)
        if error is not None:
            error.__cause__ = exc
        for batch in batches:
            batch.future.set_exception(error if error is not None else exc)
        if segment is None:
            return  # no segment could be opened: nothing was written
        if not segment.linked():
            # Removed under us: what it acknowledged before this write lives on only through the
            # open file. Keep it to write again (``_carried`` held nothing, or it was part of
            # this failed write, after ``start``).
            self._segment = None
            try:
                self._carried = segment.read_back(start) + self._carried
            except OSError:
                log.exception("event log %s: cannot read back the removed %s", self.root, segment.path)
            segment.discard()
        elif segment.broken:
            # The file may hold more than its complete records: close it, compact what is intact.
            # At-least-once: records of this failed write may reach Parquet, so a client retrying
            # the call may store them twice; events with an event_id are de-duplicated by readers.
            self._rotate()
        # Otherwise the segment was cut back to its last complete record: writing goes on in it.

    def _rotate(self) -> concurrent.futures.Future[int]:
        """Close the current segment and queue its compaction (with the failed ones to retry)."""
        segment, self._segment = self._segment, None
        closed: list[tuple[int, Path]] = []
        if segment is not None:
            if not segment.linked():
                try:
                    self._carried = segment.read_back(segment.size) + self._carried
                except OSError:
                    log.exception("event log %s: cannot read back %s", self.root, segment.path)
                segment.discard()
                if self._carried:
                    log.warning(
                        "event log %s: the open WAL segment was removed; %d acknowledged records kept "
                        "to write again",
                        self.root,
                        len(self._carried),
                    )
            else:
                try:
                    segment.close()
                except OSError:
                    log.exception("event log %s: closing %s failed", self.root, segment.path)
                closed.append((self._segment_number, segment.path))
        return self._compactor.submit(self._compact, closed)

    def _compact(self, closed: list[tuple[int, Path]]) -> int:
        """Compact the segments whose compaction failed before, then ``closed`` (compactor thread).

        Raises the first failure (``flush`` reports it) after trying them all.
        """
        queue, self._retry = [*self._retry, *closed], []
        compacted = 0
        first_error: Exception | None = None
        for number, path in queue:
            try:
                compacted += compact_segment(self.root, path, self.writer_id, number)
            except Exception as exc:
                first_error = first_error or exc
                self._compaction_faults.failed(fault_kind(exc), f"compacting {path}", exc)
                if not isinstance(exc, OSError):
                    self._kept.append((number, path))  # damaged: only recovery may read it
                elif path.exists():
                    self._retry.append((number, path))
                else:
                    log.error(
                        "event log %s: WAL segment %s was removed before it was compacted", self.root, path
                    )
        if first_error is not None:
            raise first_error
        if queue:
            self._compaction_faults.succeeded()
        return compacted

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
