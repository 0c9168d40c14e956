"""The feedback event log: validation, WAL framing and recovery, the LogEvents RPC, and
durability of acknowledged events when the real server process is killed (SIGKILL) or
stopped (SIGTERM) right after the acknowledgements.
"""

from __future__ import annotations

import functools
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import polars as pl
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serving._proto.recsys.v1 import events_pb2, events_pb2_grpc
from serving.api.background import BackgroundServer
from serving.api.events import EVENT_COLLECTOR_SERVICE
from serving.api.server import ServerOptions
from serving.events.compaction import compact_segment
from serving.events.log import WAL_DIRNAME, EventLog, EventLogOptions, recover_orphans
from serving.events.reader import event_files, read_events
from serving.events.validation import MAX_EVENTS_PER_CALL, validate_events
from serving.events.wal import MAGIC, SegmentWriter, frame, read_segment
from serving.lifecycle.live_models import load_bundle_engine

REPO_ROOT = Path(__file__).resolve().parent.parent
NOW_MS = int(time.time() * 1000)


def _event(i: int, **fields: object) -> events_pb2.Event:
    base: dict[str, object] = {
        "user_id": f"u{i % 17}",
        "item_id": f"i{i % 29}",
        "event_type": events_pb2.EVENT_TYPE_IMPRESSION,
        "experiment": "exp",
        "variant": "a" if i % 2 else "b",
        "timestamp_ms": NOW_MS - i * 1000,
        "event_id": f"e{i}",
        "position": 1 + i % 10,
    }
    base.update(fields)
    return events_pb2.Event(**base)  # type: ignore[arg-type]


def _raw_rows(root: Path) -> pl.DataFrame:
    """Every row of every complete Parquet file, without the reader's de-duplication."""
    files = event_files(root)
    return pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame({"event_id": []})


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"user_id": "  "}, "user_id", "must not be empty"),
        ({"item_id": ""}, "item_id", "must not be empty"),
        ({"user_id": "x" * 300}, "user_id", "longer than 256"),
        ({"event_type": events_pb2.EVENT_TYPE_UNSPECIFIED}, "event_type", "must be one of impression"),
        ({"event_type": 42}, "event_type", "(got 42)"),
        ({"timestamp_ms": 0}, "timestamp_ms", "missing"),
        ({"timestamp_ms": NOW_MS // 1000}, "timestamp_ms", "seconds instead of milliseconds"),
        ({"timestamp_ms": NOW_MS * 1000}, "timestamp_ms", "in the future"),
        ({"value": -1.0}, "value", "must not be negative"),
        ({"value": float("nan")}, "value", "finite"),
        ({"position": -3}, "position", "must not be negative"),
    ],
)
def test_a_malformed_event_is_rejected_with_its_field_and_reason(
    fields: dict[str, object], field: str, reason: str
) -> None:
    accepted, rejections = validate_events([_event(0), _event(1, **fields), _event(2)], now_ms=NOW_MS)
    assert [e.event_id for e in accepted] == ["e0", "e2"]
    assert len(rejections) == 1
    assert (rejections[0].index, rejections[0].field) == (1, field)
    assert reason in rejections[0].reason


def test_ids_are_stripped_and_historical_timestamps_are_kept() -> None:
    ml100k_era = 880_000_000_000  # 1997: replays of historical data sets are valid
    accepted, rejections = validate_events([_event(0, user_id=" u1 ", timestamp_ms=ml100k_era)])
    assert not rejections
    assert accepted[0].user_id == "u1"


# --- write-ahead log -----------------------------------------------------------------------


def test_a_torn_last_record_is_dropped_and_the_intact_ones_kept(tmp_path: Path) -> None:
    path = tmp_path / "segment-00000001.wal"
    writer = SegmentWriter(path)
    writer.append([b"one", b"two"])
    writer.sync()
    writer.close()
    intact = path.read_bytes()
    assert intact.startswith(MAGIC)

    path.write_bytes(intact + frame(b"three")[:-2])  # crash in the middle of a write
    contents = read_segment(path)
    assert contents.records == [b"one", b"two"]
    assert contents.dropped_bytes == len(frame(b"three")) - 2

    damaged = bytearray(intact + frame(b"three"))
    damaged[-1] ^= 0xFF  # complete length, wrong checksum
    path.write_bytes(bytes(damaged))
    assert read_segment(path).records == [b"one", b"two"]

    path.write_bytes(MAGIC[:3])  # crash while the segment was being created
    assert read_segment(path).records == []


def test_compacting_a_segment_twice_never_duplicates_events(tmp_path: Path) -> None:
    """A crash after the Parquet files were renamed but before the segment was deleted."""
    wal = tmp_path / "seg.wal"
    writer = SegmentWriter(wal)
    writer.append([events_pb2.LogEventsRequest(events=[_event(i) for i in range(50)]).SerializeToString()])
    writer.close()
    copy = tmp_path / "copy.wal"
    shutil.copy(wal, copy)
    assert compact_segment(tmp_path / "log", wal, "w1", 1) == 50
    assert not wal.exists()
    assert compact_segment(tmp_path / "log", copy, "w1", 1) == 50  # recovery replays it
    rows = _raw_rows(tmp_path / "log")
    assert rows.height == 50
    assert rows["event_id"].n_unique() == 50


def test_the_log_groups_commits_and_compacts_into_date_partitions(tmp_path: Path) -> None:
    day_ms = 24 * 3600 * 1000
    events = [_event(i, timestamp_ms=NOW_MS - (i % 3) * day_ms) for i in range(300)]
    event_log = EventLog.open(tmp_path, EventLogOptions(compact_interval_s=3600))
    results: list[BaseException | None] = []

    def send(start: int) -> None:
        futures = [event_log.submit(events[i : i + 5]) for i in range(start, start + 50, 5)]
        results.extend(f.exception(timeout=10) for f in futures)

    threads = [threading.Thread(target=send, args=(s,)) for s in range(0, 300, 50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [None] * 60
    assert read_events(tmp_path).height == 0  # durable in the WAL, not yet readable
    event_log.flush()
    assert read_events(tmp_path).height == 300
    event_log.close()
    dates = {p.parent.name for p in event_files(tmp_path)}
    assert len(dates) == 3
    assert all(d.startswith("date=") for d in dates)
    assert not list((tmp_path / WAL_DIRNAME).iterdir())  # nothing left behind
    frame = read_events(tmp_path)
    assert frame["event_id"].n_unique() == 300
    assert set(frame["event_type"]) == {"impression"}
    assert frame.schema["timestamp"] == pl.Datetime("ms", "UTC")


def test_reader_keeps_one_event_per_event_id(tmp_path: Path) -> None:
    with_ids = [_event(1), _event(1), _event(2)]
    without = [_event(3, event_id=""), _event(3, event_id="")]
    event_log = EventLog.open(tmp_path)
    event_log.submit(with_ids + without).result(10)
    event_log.close()
    assert _raw_rows(tmp_path).height == 5
    frame = read_events(tmp_path)
    assert frame.height == 4
    assert sorted(frame["event_id"].drop_nulls()) == ["e1", "e2"]


def test_a_live_writer_is_never_recovered_by_another_process(tmp_path: Path) -> None:
    live = EventLog.open(tmp_path, EventLogOptions(compact_interval_s=3600))
    live.submit([_event(1)]).result(10)
    assert recover_orphans(tmp_path) == 0  # its lock is held
    assert read_events(tmp_path).height == 0
    live.close()
    assert read_events(tmp_path).height == 1


def test_a_failed_compaction_is_retried_and_kept_through_a_clean_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import serving.events.log as event_log_module

    failing = [True]

    def fail_while_told(*args: object) -> int:
        if failing[0]:
            raise OSError("disk full (simulated)")
        return compact_segment(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(event_log_module, "compact_segment", fail_while_told)
    event_log = EventLog.open(tmp_path, EventLogOptions(compact_interval_s=3600))
    event_log.submit([_event(1)]).result(10)  # acknowledged
    with pytest.raises(OSError, match="simulated"):
        event_log.flush()
    failing[0] = False
    event_log.submit([_event(2)]).result(10)
    event_log.flush()  # retries the first segment's compaction, then compacts the second
    assert set(read_events(tmp_path)["event_id"]) == {"e1", "e2"}

    failing[0] = True
    event_log.submit([_event(3)]).result(10)
    event_log.close()  # its compaction fails again: the segment stays for recovery
    assert set(read_events(tmp_path)["event_id"]) == {"e1", "e2"}
    monkeypatch.undo()
    recover_orphans(tmp_path)
    assert set(read_events(tmp_path)["event_id"]) == {"e1", "e2", "e3"}


# --- the RPC in process --------------------------------------------------------------------


@pytest.fixture(scope="module")
def events_server(trained: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("events")
    options = ServerOptions(port=0, grace_seconds=1.0, events_dir=root, events_compact_interval_s=3600)
    load = functools.partial(load_bundle_engine, trained.bundle)  # type: ignore[attr-defined]
    with BackgroundServer(options, load) as server:
        yield server.address, root


def test_log_events_keeps_the_good_events_and_names_the_bad_ones(events_server: tuple[str, Path]) -> None:
    address, _ = events_server
    request = events_pb2.LogEventsRequest(
        events=[_event(0), _event(1, user_id=""), _event(2), _event(3, value=-5.0)]
    )
    with grpc.insecure_channel(address) as channel:
        response = events_pb2_grpc.EventCollectorStub(channel).LogEvents(request, timeout=10)
        assert response.accepted == 2
        assert [(r.index, r.field) for r in response.rejections] == [(1, "user_id"), (3, "value")]
        too_many = events_pb2.LogEventsRequest(events=[_event(0)] * (MAX_EVENTS_PER_CALL + 1))
        with pytest.raises(grpc.RpcError) as info:
            events_pb2_grpc.EventCollectorStub(channel).LogEvents(too_many, timeout=10)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert f"events: at most {MAX_EVENTS_PER_CALL}" in (info.value.details() or "")
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=EVENT_COLLECTOR_SERVICE), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        (listing,) = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        assert EVENT_COLLECTOR_SERVICE in {s.name for s in listing.list_services_response.service}


def test_log_events_without_an_event_log_is_a_failed_precondition(trained: object) -> None:
    load = functools.partial(load_bundle_engine, trained.bundle)  # type: ignore[attr-defined]
    with (
        BackgroundServer(ServerOptions(port=0, grace_seconds=1.0), load) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        with pytest.raises(grpc.RpcError) as info:
            events_pb2_grpc.EventCollectorStub(channel).LogEvents(
                events_pb2.LogEventsRequest(events=[_event(0)]), timeout=10
            )
        assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "--events-dir" in (info.value.details() or "")
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=EVENT_COLLECTOR_SERVICE), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING


# --- durability of the real server process ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _start_server(
    bundle: Path, events_dir: Path, log: Path, compact_s: float
) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    argv = [
        *(sys.executable, "-m", "serving", "--bundle", str(bundle), "--port", str(port), "--threads", "1"),
        *("--events-dir", str(events_dir), "--events-compact-s", str(compact_s), "--grace", "2"),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    request = health_pb2.HealthCheckRequest(service=EVENT_COLLECTOR_SERVICE)
    while True:
        assert process.poll() is None, f"server exited early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"event collector never became ready:\n{log.read_text()}"
        try:
            with grpc.insecure_channel(address) as channel:
                if health_pb2_grpc.HealthStub(channel).Check(request, timeout=1).status == 1:
                    return process, address
        except grpc.RpcError:
            pass
        time.sleep(0.1)


class _Sender:
    """Threads sending batches of unique events until told to stop; records what was acked."""

    def __init__(self, address: str, threads: int = 4, batch: int = 25) -> None:
        self.address = address
        self.batch = batch
        self.acked: set[str] = set()
        self.sent: set[str] = set()
        self.partial: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(t,)) for t in range(threads)]

    def _run(self, thread: int) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = events_pb2_grpc.EventCollectorStub(channel)
            for call in range(10**9):
                if self._stop.is_set():
                    return
                ids = [f"t{thread}-c{call}-{n}" for n in range(self.batch)]
                events = [_event(n, event_id=event_id) for n, event_id in enumerate(ids)]
                with self._lock:
                    self.sent.update(ids)
                try:
                    response = stub.LogEvents(events_pb2.LogEventsRequest(events=events), timeout=10)
                except grpc.RpcError:
                    return  # the server is gone: this batch was never acknowledged
                with self._lock:
                    if response.accepted != self.batch:  # asserted by stop(), in the test's thread
                        self.partial.append(response.accepted)
                    self.acked.update(ids)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wait_for_acks(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert time.monotonic() < deadline, f"only {len(self.acked)} events acknowledged"
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        assert self.partial == [], f"calls accepted only part of their events: {self.partial}"


@pytest.mark.slow
def test_every_acknowledged_event_survives_sigkill(trained: object, tmp_path: Path) -> None:
    events_dir = tmp_path / "events"
    # Compaction every 0.2 s: at the kill some events are in Parquet, some only in the WAL.
    process, address = _start_server(trained.bundle, events_dir, tmp_path / "serve.log", 0.2)  # type: ignore[attr-defined]
    sender = _Sender(address)
    try:
        sender.start()
        sender.wait_for_acks(3000)
        process.kill()  # SIGKILL while calls are in flight: no chance to flush anything
        process.wait(timeout=10)
    finally:
        sender.stop()
        if process.poll() is None:
            process.kill()
    acked = set(sender.acked)
    assert len(acked) >= 3000
    assert any((events_dir / WAL_DIRNAME).rglob("segment-*.wal")), "nothing was left in the WAL to recover"

    recovered = recover_orphans(events_dir)  # what the next server start does
    assert recovered > 0
    rows = _raw_rows(events_dir)
    ids = rows["event_id"]
    assert ids.n_unique() == rows.height, "an event was written twice"
    present = set(ids)
    assert acked <= present, f"{len(acked - present)} acknowledged events lost"
    assert present <= sender.sent
    assert not list((events_dir / WAL_DIRNAME).iterdir())


@pytest.mark.slow
def test_sigterm_compacts_every_acknowledged_event(trained: object, tmp_path: Path) -> None:
    events_dir = tmp_path / "events"
    # Never compacted while running: everything reaches Parquet through the graceful shutdown.
    process, address = _start_server(trained.bundle, events_dir, tmp_path / "serve.log", 3600)  # type: ignore[attr-defined]
    sender = _Sender(address, threads=2)
    try:
        sender.start()
        sender.wait_for_acks(1000)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, (tmp_path / "serve.log").read_text()
    finally:
        sender.stop()
        if process.poll() is None:
            process.kill()
    assert not list((events_dir / WAL_DIRNAME).iterdir()), "the WAL was not compacted on SIGTERM"
    rows = _raw_rows(events_dir)
    assert rows["event_id"].n_unique() == rows.height
    assert set(sender.acked) <= set(rows["event_id"])
