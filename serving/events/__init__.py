"""The feedback event log: ``LogEvents`` -> write-ahead log -> date-partitioned Parquet.

Layout of an event-log directory ``DIR``::

    DIR/date=YYYY-MM-DD/part-<writer>-<segment>.parquet   complete files, what readers see
    DIR/_wal/<writer>/segment-<n>.wal                      write-ahead log of one live process
    DIR/_wal/<writer>/LOCK                                 held (flock) while the writer lives
    DIR/_log_id                                            random id of the directory, made once

* :mod:`serving.events.validation` checks events one by one;
* :mod:`serving.events.wal` frames records (length + CRC32) and finds a torn tail;
* :mod:`serving.events.compaction` turns a closed WAL segment into Parquet files;
* :mod:`serving.events.log` is :class:`~serving.events.log.EventLog`, the one writer
  (group commit, rotation, crash recovery);
* :mod:`serving.events.reader` reads the complete Parquet files;
* :mod:`serving.api.events` is the gRPC servicer.
"""

__all__ = ["compaction", "log", "reader", "schema", "validation", "wal"]
