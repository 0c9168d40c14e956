"""Server I/O faults made for real, against a real gRPC server on loopback: the event log on a
3 MB tmpfs that fills up, remounted read-only, made unwritable, and removed under the server.

Each fault must get its deliberate status (``RESOURCE_EXHAUSTED`` for a full disk,
``UNAVAILABLE`` while the directory is read-only, unwritable or gone), be counted in
``recsys_io_faults_total``, be logged once per episode, lose nothing acknowledged, and end
without a restart once the condition ends.

Mounting (and ``chattr +i``) needs root (CI runs as root); elsewhere those tests skip with the
reason. ``RECSYS_REQUIRE_MOUNT=1`` (set by ``.ci/run``) turns that skip into a failure.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

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
from serving.lifecycle.engine_holder import EngineHolder
from serving.lifecycle.live_models import LiveModelOptions, LiveModels, ModelLoader, load_bundle_engine
from serving.lifecycle.mlflow_store import ModelRegistry
from serving.metrics import ServingMetrics
from serving.recommend.types import RecommenderEngine

NOW_MS = int(time.time() * 1000)
EVENT_LOG = "serving.events.log"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("RECSYS_REQUIRE_MOUNT") == "1":
        pytest.fail(f"RECSYS_REQUIRE_MOUNT=1 but {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` mounted at ``where`` (skips the test when mounting is not allowed)."""
    if os.geteuid() != 0:
        _unavailable("mounting a tmpfs needs root (CI runs as root)")
    where.mkdir(parents=True, exist_ok=True)
    try:
        command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
        mounted = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        _unavailable("mount is not installed (Debian: mount)")
    if mounted.returncode != 0:
        _unavailable(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
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
        try:
            made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
        except FileNotFoundError:
            _unavailable("chattr is not installed (Debian: e2fsprogs)")
        if made.returncode != 0:
            _unavailable(f"chattr +i not supported here: {made.stderr.strip()}")
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
            return exc.code()
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
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{wanted} not in /metrics")


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


# ----------------------------------------------------------------------- model lifecycle
MODEL = "faults-model"


@dataclass(frozen=True)
class Registry:
    """A real MLflow registry in a temporary folder: the session's bundle registered twice."""

    uri: str
    db: Path
    registry: ModelRegistry
    v1: str
    v2: str


@pytest.fixture(scope="module")
def registry(trained: TrainedBundle, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root = tmp_path_factory.mktemp("fault-registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    store = ModelRegistry(uri)
    artifacts = (root / "artifacts").as_uri()
    v1, v2 = (store.register_bundle(trained.bundle, MODEL, artifact_location=artifacts) for _ in range(2))
    return Registry(uri, root / "mlflow.db", store, v1, v2)


def _swap_lines(caplog: pytest.LogCaptureFixture, component: str) -> tuple[list[str], list[str]]:
    messages = [r.getMessage() for r in caplog.records if r.name == "serving"]
    return (
        [m for m in messages if m.startswith(f"{component} fault")],
        [m for m in messages if m.startswith(f"{component} recovered")],
    )


def _wait(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_bundle_directory_removed_during_a_hot_swap_fails_it_and_the_next_poll_swaps(
    registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The directory of the version being swapped in is removed as it loads (twice: the download
    and the one retry), as a cache clean-up racing the swap would: the old model serves on, the
    swap is ``failed`` (not ``refused``: the next poll tries again) and succeeds once it stays."""
    caplog.set_level(logging.INFO, logger="serving")
    removals = [2]

    def load_racing_a_clean_up(path: Path) -> RecommenderEngine:
        if removals[0]:
            removals[0] -= 1
            shutil.rmtree(path)
        return load_bundle_engine(path)

    registry.registry.set_alias(MODEL, "champion", registry.v1)
    metrics = ServingMetrics()
    options = LiveModelOptions(
        model=f"models:/{MODEL}@champion", cache_dir=tmp_path / "cache", tracking_uri=registry.uri
    )
    loader = ModelLoader(registry.uri, options.cache_dir, load_engine=load_racing_a_clean_up)
    removals[0] = 0  # the initial load is not raced
    holder = EngineHolder()
    models = LiveModels(options, holder, metrics, loader=loader)
    try:
        old = models.load_initial()
        holder.swap(old)
        registry.registry.set_alias(MODEL, "champion", registry.v2)
        removals[0] = 2
        (attempt,) = models.check_aliases()
        assert attempt.outcome == "failed"
        assert "removed while it loaded" in attempt.error
        assert holder.get() is old  # the old model keeps serving
        assert models.check_aliases()[0].outcome == "swapped"
        assert holder.get() is not old
    finally:
        models.close()
    faults = metrics.registry.get_sample_value(
        "recsys_io_faults_total", {"component": "model_swap", "kind": "missing"}
    )
    assert faults == 1
    started, ended = _swap_lines(caplog, "model_swap")
    assert len(started) == 1, started
    assert "(missing)" in started[0]
    assert f"version {registry.v1} keeps serving" in started[0]
    assert len(ended) == 1, ended


def test_a_registry_answering_garbage_and_a_removed_cache_keep_the_model_serving(
    registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real server on ``models:/NAME@ALIAS``: its bundle cache removed under it (the next swap
    downloads again), then the registry's database file overwritten with garbage (every poll
    fails, logged once; Recommend answers throughout), then restored (one recovery line)."""
    caplog.set_level(logging.INFO, logger="serving")
    registry.registry.set_alias(MODEL, "champion", registry.v1)
    cache = tmp_path / "cache"
    source = LiveModelOptions(
        model=f"models:/{MODEL}@champion", poll_seconds=0.1, cache_dir=cache, tracking_uri=registry.uri
    )
    metrics_port = _free_port()
    options = ServerOptions(port=0, grace_seconds=1.0, metrics_port=metrics_port)
    with BackgroundServer(options, source) as server:
        models = server.models
        assert models is not None
        client = Client(server.address)
        try:
            shutil.rmtree(cache)
            registry.registry.set_alias(MODEL, "champion", registry.v2)
            _wait(lambda: any(s.outcome == "swapped" for s in models.swaps))
            assert client.recommend() == 5

            original = registry.db.read_bytes()
            with open(registry.db, "r+b") as db:  # in place: the registry's open handles see it
                db.write(os.urandom(4096))
            try:
                _wait(lambda: models.registry_health.state.consecutive_failures >= 5)
                assert client.recommend() == 5  # the served model is untouched
                assert _metric(metrics_port, "recsys_registry_up") == 0
                assert (
                    _metric(metrics_port, "recsys_io_faults_total", component="registry", kind="garbage") >= 5
                )
            finally:
                with open(registry.db, "r+b") as db:
                    db.write(original)
            _wait(lambda: models.registry_health.state.reachable is True)
            assert client.recommend() == 5
        finally:
            client.close()
    started, ended = _swap_lines(caplog, "registry")
    assert len(started) == 1, started
    assert "(garbage)" in started[0]
    assert len(ended) == 1, ended
    assert [s.outcome for s in models.swaps] == ["swapped"]
