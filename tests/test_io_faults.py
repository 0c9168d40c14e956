"""Server I/O faults made for real, against a real gRPC server on loopback: the event log on a
3 MB tmpfs that fills up, remounted read-only, made unwritable, and removed under the server.

Each fault must get its deliberate status (``RESOURCE_EXHAUSTED`` for a full disk,
``UNAVAILABLE`` while the directory is read-only, unwritable or gone), be counted in
``recsys_io_faults_total``, be logged once per episode, lose nothing acknowledged, and end
without a restart once the condition ends.

Mounting needs root (CI runs as root); elsewhere those tests skip with the reason.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from conftest import TrainedBundle

from serving._proto.recsys.v1 import events_pb2, events_pb2_grpc
from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api.background import BackgroundServer
from serving.api.server import ServerOptions
from serving.events.log import WAL_DIRNAME
from serving.events.reader import read_events
from serving.lifecycle.live_models import load_bundle_engine

NOW_MS = int(time.time() * 1000)
EVENT_LOG = "serving.events.log"


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` mounted at ``where`` (skips the test when mounting is not allowed)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _remount(where: Path, mode: str) -> None:
    """``mount -o remount,MODE``; retried while busy (a segment closing on the writer thread)."""
    for _ in range(100):
        done = subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], capture_output=True, text=True)
        if done.returncode == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"remount {mode} failed: {done.stderr}")


@contextlib.contextmanager
def unwritable(directory: Path) -> Iterator[None]:
    """No new file can be created in ``directory`` while inside: ``chattr +i`` as root (root
    ignores modes), ``chmod 0555`` otherwise."""
    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"chattr +i not supported here: {made.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        mode = directory.stat().st_mode
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(mode)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _events(start: int, count: int) -> list[events_pb2.Event]:
    return [
        events_pb2.Event(
            user_id=f"u{i % 17}",
            item_id=f"i{i % 29}",
            event_type=events_pb2.EVENT_TYPE_CLICK,
            timestamp_ms=NOW_MS - i,
            event_id=f"e{i:08d}",
            position=1,
        )
        for i in range(start, start + count)
    ]


class Client:
    """LogEvents and Recommend through one channel; remembers which event ids were acknowledged."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.events = events_pb2_grpc.EventCollectorStub(self.channel)  # type: ignore[no-untyped-call]
        self.recommender = pb2_grpc.RecommenderStub(self.channel)  # type: ignore[no-untyped-call]
        self.acked: set[str] = set()
        self.sent = 0

    def log(self, count: int = 200) -> grpc.StatusCode:
        """One LogEvents call of ``count`` new events: its status (OK means acknowledged)."""
        events = _events(self.sent, count)
        self.sent += count
        try:
            response = self.events.LogEvents(events_pb2.LogEventsRequest(events=events), timeout=10)
        except grpc.RpcError as exc:
            self.last_error = exc
            return exc.code()  # type: ignore[no-any-return]
        assert response.accepted == count
        self.acked.update(e.event_id for e in events)
        return grpc.StatusCode.OK

    def recommend(self) -> int:
        return len(self.recommender.Recommend(pb2.RecommendRequest(user_id="u1", k=5), timeout=10).items)

    def close(self) -> None:
        self.channel.close()


@contextlib.contextmanager
def events_server(
    trained: TrainedBundle, events_dir: Path, compact_interval_s: float = 3600.0
) -> Iterator[tuple[Client, int]]:
    """A real server logging to ``events_dir``, a client, and the port of its /metrics."""
    metrics_port = _free_port()
    options = ServerOptions(
        port=0,
        grace_seconds=1.0,
        events_dir=events_dir,
        events_compact_interval_s=compact_interval_s,
        metrics_port=metrics_port,
    )
    with BackgroundServer(options, functools.partial(load_bundle_engine, trained.bundle)) as server:
        client = Client(server.address)
        try:
            yield client, metrics_port
        finally:
            client.close()


def _metric(port: int, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def _event_log_faults(port: int, kind: str) -> float:
    return _metric(port, "recsys_io_faults_total", component="event_log", kind=kind)


def _one_episode(caplog: pytest.LogCaptureFixture, kind: str) -> str:
    """Assert the event log logged exactly one fault line (of ``kind``) and one recovery line;
    returns the recovery line."""
    messages = [r.getMessage() for r in caplog.records if r.name == EVENT_LOG]
    started = [m for m in messages if m.startswith("event_log fault")]
    ended = [m for m in messages if m.startswith("event_log recovered")]
    assert len(started) == 1, started
    assert f"({kind})" in started[0]
    assert len(ended) == 1, ended
    return ended[0]


def _writer_dir(events_dir: Path) -> Path:
    (writer,) = [p for p in (events_dir / WAL_DIRNAME).iterdir() if not p.name.startswith(".")]
    return writer


# ------------------------------------------------------------------------------ full disk
def test_a_full_disk_is_resource_exhausted_and_the_log_accepts_again_once_space_is_freed(
    trained: TrainedBundle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=EVENT_LOG)
    with tmpfs(tmp_path / "disk", "3m") as disk:
        ballast = disk / "ballast"
        ballast.write_bytes(os.urandom(1024 * 1024))  # what an operator frees to end the fault
        events_dir = disk / "events"
        with events_server(trained, events_dir) as (client, metrics_port):
            failed = 0
            for _ in range(1000):  # ~40 KB a call: the 2 MB left fill up long before
                code = client.log()
                if code is not grpc.StatusCode.OK:
                    failed += 1
                    break
            assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, code
            assert "event store is out of space" in client.last_error.details()
            for _ in range(5):  # every call while the disk stays full: the same status
                assert client.log() is grpc.StatusCode.RESOURCE_EXHAUSTED
                failed += 1
            assert client.recommend() == 5  # recommendations are not touched by the fault
            assert _event_log_faults(metrics_port, "no_space") == failed
            assert _metric(metrics_port, "recsys_io_fault_active", component="event_log") == 1

            ballast.unlink()  # space comes back: no restart
            for _ in range(3):
                assert client.log() is grpc.StatusCode.OK
            assert _metric(metrics_port, "recsys_io_fault_active", component="event_log") == 0
        assert f"after {failed} failed operations" in _one_episode(caplog, "no_space")
        stored = set(read_events(events_dir)["event_id"])
    # Nothing acknowledged was lost; a failed call was cut back, so nothing else was stored.
    assert len(client.acked) > 1000
    assert stored == client.acked


# --------------------------------------------------------- read-only, unwritable, removed
def _idle_writer(client: Client) -> None:
    """One acknowledged call, then wait until its segment was compacted (no file open for writing)."""
    assert client.log() is grpc.StatusCode.OK
    time.sleep(0.6)  # compact_interval_s=0.2: the segment is closed and compacted meanwhile


def test_a_read_only_file_system_is_unavailable_while_it_lasts(
    trained: TrainedBundle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=EVENT_LOG)
    with tmpfs(tmp_path / "disk", "8m") as disk:
        events_dir = disk / "events"
        with events_server(trained, events_dir, compact_interval_s=0.2) as (client, metrics_port):
            _idle_writer(client)
            _remount(disk, "ro")
            try:
                for _ in range(3):
                    assert client.log() is grpc.StatusCode.UNAVAILABLE
                assert "read-only" in client.last_error.details()
                assert client.recommend() == 5
            finally:
                _remount(disk, "rw")
            assert client.log() is grpc.StatusCode.OK
            assert _event_log_faults(metrics_port, "read_only") == 3
        _one_episode(caplog, "read_only")
        assert set(read_events(events_dir)["event_id"]) == client.acked


def test_an_unwritable_directory_is_unavailable_while_it_lasts(
    trained: TrainedBundle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=EVENT_LOG)
    events_dir = tmp_path / "events"
    with events_server(trained, events_dir, compact_interval_s=0.2) as (client, metrics_port):
        _idle_writer(client)
        with unwritable(_writer_dir(events_dir)):
            for _ in range(3):
                assert client.log() is grpc.StatusCode.UNAVAILABLE
            assert "permission to write it is denied" in client.last_error.details()
        assert client.log() is grpc.StatusCode.OK
        assert _event_log_faults(metrics_port, "permission_denied") == 3
    _one_episode(caplog, "permission_denied")
    assert set(read_events(events_dir)["event_id"]) == client.acked


def test_a_directory_removed_under_the_server_loses_nothing_acknowledged(
    trained: TrainedBundle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=EVENT_LOG)
    events_dir = tmp_path / "events"
    with events_server(trained, events_dir) as (client, metrics_port):
        for _ in range(5):  # acknowledged, in the open WAL segment (no compaction for an hour)
            assert client.log() is grpc.StatusCode.OK
        acked_before = set(client.acked)
        shutil.rmtree(events_dir)
        for _ in range(3):
            assert client.log() is grpc.StatusCode.UNAVAILABLE
        assert "directory is gone" in client.last_error.details()
        assert client.recommend() == 5
        events_dir.mkdir()  # the directory is back: no restart
        assert client.log() is grpc.StatusCode.OK
        assert _event_log_faults(metrics_port, "missing") == 3
    _one_episode(caplog, "missing")
    stored = set(read_events(events_dir)["event_id"])
    assert acked_before <= stored, "events acknowledged before the directory was removed were lost"
    assert stored == client.acked
