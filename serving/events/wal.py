"""Write-ahead log segments: framed, checksummed, append-only files.

A segment is ``MAGIC`` followed by records ``<u32 length><u32 crc32(payload)><payload>``
(little endian). A record is durable once :meth:`SegmentWriter.sync` returned. After a
crash the last record may be torn (short, or with a bad checksum): it was never
acknowledged, so :func:`read_segment` stops there and reports the bytes it dropped.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from serving.storage import fsync_dir

log = logging.getLogger(__name__)

MAGIC: Final = b"RSYSWAL1"
_HEADER = struct.Struct("<II")
# A record larger than this is corruption, not data (a call carries at most 4 MiB).
MAX_RECORD_BYTES: Final = 64 * 1024 * 1024


def frame(payload: bytes) -> bytes:
    """One record as written to a segment."""
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True, slots=True)
class SegmentContents:
    """The intact records of a segment and how many trailing bytes were not (torn tail)."""

    records: list[bytes]
    dropped_bytes: int


def parse_records(data: bytes) -> tuple[list[bytes], int]:
    """The intact records of a segment's bytes (magic included) and the offset after the last one."""
    records: list[bytes] = []
    offset = len(MAGIC)
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        end = start + length
        if length > MAX_RECORD_BYTES or end > len(data):
            break
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            break
        records.append(payload)
        offset = end
    return records, offset


def read_segment(path: Path) -> SegmentContents:
    """Every intact record of ``path``, in order, up to the first damaged one.

    A file shorter than the magic (crash while creating it) holds no records.
    """
    data = Path(path).read_bytes()
    if len(data) < len(MAGIC):
        return SegmentContents([], len(data))
    if data[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{path}: not a write-ahead log segment (bad magic)")
    records, offset = parse_records(data)
    dropped = len(data) - offset
    if dropped:
        log.warning(
            "%s: dropped %d bytes of a torn or damaged last record (never acknowledged)", path, dropped
        )
    return SegmentContents(records, dropped)


class SegmentWriter:
    """Appends records to one new segment file. Not thread-safe: one writer thread owns it.

    Faults (disk full, read-only file system, the directory removed) leave it in a known state:
    :attr:`size` is always the end of the last complete record, and :attr:`broken` says when
    the file may hold more than that (the cut back failed, or fdatasync failed and the page
    cache can no longer be trusted); a broken writer must be closed, not appended to.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # Unbuffered: a batch is one write, so a failure leaves nothing half in a buffer.
        # Readable too: read_back reads a removed segment through this handle.
        self._file = open(self.path, "x+b", buffering=0)  # noqa: SIM115 - closed in close()
        try:
            self._write_all(MAGIC)
            os.fsync(self._file.fileno())
            # The new file's directory entry must survive a crash too.
            fsync_dir(self.path.parent)
        except BaseException:
            # Disk full or read-only at creation: leave no empty segment behind, one per retry.
            self._file.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
            raise
        self._identity = _identity(os.fstat(self._file.fileno()))
        self.size = len(MAGIC)
        self.records = 0
        self.broken = False

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            view = view[written or 0 :]

    def append(self, payloads: Iterable[bytes]) -> None:
        """Write records; durable only after :meth:`sync`.

        On failure (disk full) the segment is cut back to its last complete record, so
        that a partial record never sits in front of later ones and the writer can go on
        once space is back; if even the cut fails, :attr:`broken` is set.
        """
        batch = [frame(payload) for payload in payloads]
        blob = b"".join(batch)
        start = self.size
        try:
            self._write_all(blob)
        except BaseException:
            try:
                os.ftruncate(self._file.fileno(), start)
                self._file.seek(start)
            except OSError:
                self.broken = True
            raise
        self.size = start + len(blob)
        self.records += len(batch)

    def sync(self) -> None:
        """Make every appended record durable (fdatasync).

        A failed fdatasync may have dropped dirty pages silently: the writer is then broken.
        """
        try:
            os.fdatasync(self._file.fileno())
        except BaseException:
            self.broken = True
            raise

    def linked(self) -> bool:
        """True while :attr:`path` names this writer's file (it was not removed or replaced)."""
        try:
            return _identity(os.stat(self.path)) == self._identity
        except OSError:  # gone, or its directory is (ENOENT, ENOTDIR, ESTALE)
            return False

    def check_linked(self) -> None:
        """Raise :class:`FileNotFoundError` unless :attr:`path` is still this writer's file.

        Writes to a file whose directory was removed succeed (the inode lives on while it is
        open) and would vanish at close: a record is acknowledged only after this check.
        """
        if not self.linked():
            raise FileNotFoundError(errno.ENOENT, "WAL segment removed while open", str(self.path))

    def read_back(self, end: int) -> list[bytes]:
        """The complete records in the first ``end`` bytes, read through the open file.

        Works after the file was unlinked: the records acknowledged in a removed segment can
        be written again elsewhere.
        """
        data = os.pread(self._file.fileno(), end, 0)
        records, _ = parse_records(data)
        return records

    def discard(self) -> None:
        """Close without fsync (the file was removed: nothing in it can be made durable)."""
        with contextlib.suppress(OSError):
            self._file.close()

    def close(self) -> None:
        if not self._file.closed:
            try:
                os.fsync(self._file.fileno())
            finally:
                self._file.close()


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino
