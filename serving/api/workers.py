"""``recsys serve --workers N``: N server processes sharing one port (multi-core machines).

A Python process answers on one core at a time (the GIL); N worker processes, each a
complete :func:`serving.api.server.serve` with its own engine, event loop and executor, use
N cores. :func:`run_workers` is the supervising parent:

1. It checks the port is free by binding it *without* ``SO_REUSEPORT`` (and closing it
   again), so a busy port fails loudly even though the workers bind with
   ``SO_REUSEPORT`` (the kernel then spreads incoming connections over them). The port
   must be given (0 is refused: each worker would pick a different one).
2. With ``metrics_port`` set it creates a prometheus-client multiprocess directory
   (``$PROMETHEUS_MULTIPROC_DIR`` if set, emptied first; else a temporary one, removed at
   exit) and serves ``/metrics`` itself, aggregated over the workers; workers run no
   endpoint of their own.
3. It spawns the workers (``multiprocessing`` *spawn* context: fresh interpreters, no
   forked threads) and waits until every one reports ``SERVING``. A worker that exits
   before that fails the start: the others are stopped and :class:`ServerStartupError`
   is raised (the command exits non-zero).
4. SIGHUP is forwarded to every worker at once (each re-reads its tokens, TLS and
   experiments files). SIGTERM/SIGINT are forwarded to every worker, which drains gracefully (see
   :mod:`serving.api.server`); the parent waits ``grace_seconds`` + 10 s for them, then kills
   what is left. A worker that dies while serving makes the parent stop the others and
   return non-zero, so the orchestrator restarts the whole unit instead of it silently
   serving with fewer cores.

Workers die with the parent (``PR_SET_PDEATHSIG`` on Linux) and log with their index and
pid (in the server's ``log_format``); each traces its own calls when the ``OTEL_*`` environment asks
for it (:mod:`serving.observability.tracing`).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from serving.api.server import ServerOptions, ServerStartupError
from serving.lifecycle.live_models import EngineSource
from serving.metrics import MULTIPROC_ENV, MetricsServer, multiprocess_registry, start_metrics_server
from serving.observability import tracing
from serving.observability.log_format import configure_logging

logger = logging.getLogger("serving")

READY = "ready"
_KILL_MARGIN_S = 10.0
_POLL_S = 0.2


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection
    ready: bool = False


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`ServerStartupError` when ``host:port`` cannot be bound exclusively.

    ``SO_REUSEADDR`` only (as gRPC sets it): connections in TIME_WAIT from a previous run
    do not count as busy, a listening socket does, whether or not it uses SO_REUSEPORT.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            raise ServerStartupError(f"cannot bind gRPC server to {host}:{port}: {exc}") from exc


def run_workers(
    options: ServerOptions,
    workers: int,
    load_engine: EngineSource,
    *,
    prepare: Callable[[], None] | None = None,
) -> int:
    """Serve with ``workers`` processes on ``options.port`` until SIGTERM/SIGINT; see the module docstring.

    Call it from the main thread (it installs the signal handlers it forwards from).
    ``load_engine`` (a callable or :class:`~serving.lifecycle.live_models.LiveModelOptions`) and
    ``prepare`` (run first in each worker, e.g. thread settings) must be picklable
    (module-level functions, :func:`functools.partial` of them, the options dataclass). Returns the
    exit status: 0 after a requested stop with every worker stopping cleanly, 1 otherwise.
    Raises :class:`ServerStartupError` when the port or the metrics port cannot be bound
    or a worker fails to start; :class:`ValueError` for ``workers < 2`` or port 0.
    """
    if workers < 2:
        raise ValueError(f"workers: must be >= 2 here, got {workers}")
    if options.port == 0:
        raise ValueError("port: --workers needs an explicit port (0 would give each worker its own)")
    check_port_free(options.host, options.port)

    metrics_dir, own_dir = _metrics_dir(options)
    metrics_server: MetricsServer | None = None
    stop = _StopRequest()
    group: list[_Worker] = []
    previous = {sig: signal.signal(sig, stop.record) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, _forward_reload(group))
    try:
        if metrics_dir is not None:
            try:
                metrics_server = start_metrics_server(
                    options.metrics_host, options.metrics_port, multiprocess_registry(metrics_dir)
                )
            except OSError as exc:
                where = f"{options.metrics_host}:{options.metrics_port}"
                raise ServerStartupError(f"cannot bind the metrics endpoint to {where}: {exc}") from exc
        worker_options = replace(options, reuse_port=True, metrics_port=0)
        context = multiprocessing.get_context("spawn")
        level = logging.getLogger().getEffectiveLevel()
        for index in range(workers):
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=_worker_main,
                args=(index, worker_options, load_engine, prepare, sender, level, os.getpid()),
                name=f"recsys-worker-{index}",
            )
            process.start()
            sender.close()
            group.append(_Worker(index, process, receiver))
        _wait_started(group, stop)
        if not stop.requested:
            logger.info(
                "%d workers serving on %s (pids %s)",
                workers,
                options.address,
                ", ".join(str(w.process.pid) for w in group),
            )
        return _supervise(group, stop, options.grace_seconds, metrics_dir)
    finally:
        _stop_all(group, options.grace_seconds)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if metrics_server is not None:
            metrics_server.close()
        if own_dir and metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _metrics_dir(options: ServerOptions) -> tuple[str | None, bool]:
    """(multiprocess directory or None when metrics are off, whether we created it).

    Sets ``$PROMETHEUS_MULTIPROC_DIR`` for the workers about to be spawned.
    """
    if not options.metrics_port:
        os.environ.pop(MULTIPROC_ENV, None)  # workers must not write files nobody reads
        return None, False
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # values of a previous run must not be summed in
            stale.unlink()
        return str(path), False
    created = tempfile.mkdtemp(prefix="recsys-metrics-")
    os.environ[MULTIPROC_ENV] = created
    return created, True


def _send(process: BaseProcess, signum: int) -> None:
    if process.pid is not None and process.exitcode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signum)


def _forward_reload(group: list[_Worker]) -> Callable[[int, FrameType | None], None]:
    """A SIGHUP handler sending the signal on to every live worker right away: unlike a stop,
    a reload request reaps and waits for nothing, so there is no loop to hand it to."""

    def forward(signum: int, frame: FrameType | None) -> None:
        for worker in list(group):
            _send(worker.process, signum)

    return forward


class _StopRequest:
    """Signals received by the parent; forwarded to the workers from the supervising loops.

    The handler only records: reaping or signalling children from inside a signal handler
    could race with the loop doing the same.
    """

    def __init__(self) -> None:
        self.signals: list[int] = []
        self._forwarded = 0

    @property
    def requested(self) -> bool:
        return bool(self.signals)

    def record(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)

    def forward(self, group: list[_Worker]) -> None:
        """Send every signal not yet forwarded to every live worker."""
        while self._forwarded < len(self.signals):
            for worker in group:
                _send(worker.process, self.signals[self._forwarded])
            self._forwarded += 1


def _wait_started(group: list[_Worker], stop: _StopRequest) -> None:
    """Return once every worker reported ready (or a stop was requested); raise if one exited."""
    while not stop.requested and not all(w.ready for w in group):
        waiting = [w for w in group if not w.ready]
        handles: list[Connection | int] = [w.conn for w in waiting]
        handles += [w.process.sentinel for w in waiting]
        for handle in multiprocessing.connection.wait(handles, timeout=_POLL_S):
            for worker in waiting:
                if handle is worker.conn:
                    with contextlib.suppress(EOFError, OSError):
                        worker.ready = worker.conn.recv() == READY
        for worker in waiting:
            if not worker.ready and worker.process.exitcode is not None:
                raise ServerStartupError(
                    f"worker {worker.index} (pid {worker.process.pid}) exited with code "
                    f"{worker.process.exitcode} during start-up; see its log above"
                )


def _supervise(
    group: list[_Worker], stop: _StopRequest, grace_seconds: float, metrics_dir: str | None
) -> int:
    """Wait until a stop is requested and every worker exits, or one exits unasked."""
    marked: set[int] = set()
    while True:
        stop.forward(group)
        alive = [w for w in group if w.process.exitcode is None]
        for worker in group:
            pid = worker.process.pid
            if metrics_dir is not None and pid and worker.process.exitcode is not None and pid not in marked:
                _mark_dead(pid, metrics_dir)
                marked.add(pid)
        if not alive:
            break
        if not stop.requested and len(alive) < len(group):
            dead = [w for w in group if w.process.exitcode is not None]
            logger.error(
                "worker %s exited unexpectedly (code %s); stopping the others",
                ", ".join(f"{w.index} (pid {w.process.pid})" for w in dead),
                ", ".join(str(w.process.exitcode) for w in dead),
            )
            _stop_all(group, grace_seconds)
            return 1
        multiprocessing.connection.wait([w.process.sentinel for w in alive], timeout=_POLL_S)
    codes = [w.process.exitcode for w in group]
    if any(code != 0 for code in codes):
        logger.error("workers exited with codes %s", codes)
        return 1
    logger.info("all %d workers stopped", len(group))
    return 0


def _stop_all(group: list[_Worker], grace_seconds: float) -> None:
    """SIGTERM every live worker, wait ``grace_seconds`` + margin, then SIGKILL the rest."""
    for worker in group:
        _send(worker.process, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds + _KILL_MARGIN_S
    for worker in group:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.exitcode is None:
            logger.error(
                "worker %d (pid %s) did not stop in time; killing it", worker.index, worker.process.pid
            )
            worker.process.kill()
            worker.process.join(5)
        worker.conn.close()


def _mark_dead(pid: int, path: str) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


# ------------------------------------------------------------------ worker side
def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM this process when the parent dies (no orphaned workers)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(
    index: int,
    options: ServerOptions,
    load_engine: EngineSource,
    prepare: Callable[[], None] | None,
    ready_conn: Connection,
    log_level: int,
    parent_pid: int,
) -> None:
    """Body of one worker process: serve until SIGTERM/SIGINT; exit 1 if the start fails."""
    import asyncio

    from serving.api.server import serve

    configure_logging(
        options.log_format,
        log_level,
        text_format=f"%(asctime)s %(levelname)s %(name)s [worker {index} pid %(process)d]: %(message)s",
        worker=index,
    )
    _die_with_parent(parent_pid)
    if prepare is not None:
        prepare()

    async def main() -> None:
        ready = asyncio.Event()

        async def report() -> None:
            await ready.wait()
            ready_conn.send(READY)

        reporter = asyncio.create_task(report())
        try:
            await serve(options, load_engine, ready=ready)
        finally:
            reporter.cancel()

    try:
        with tracing.from_environment():
            asyncio.run(main())
    except (ServerStartupError, tracing.TracingConfigError) as exc:
        logging.getLogger("serving").error("worker %d failed to start: %s", index, exc)
        sys.exit(1)
    finally:
        ready_conn.close()
