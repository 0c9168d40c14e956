"""The gRPC server process: wiring, health, reflection, start-up and graceful shutdown.

Lifecycle of :func:`serve`:

1. Build a ``grpc.aio`` server with :class:`~serving.interceptors.ErrorMappingInterceptor`,
   message-size limits and ``maximum_concurrent_rpcs`` (beyond it gRPC answers
   ``RESOURCE_EXHAUSTED`` itself), the Recommender servicer, standard health checking and
   server reflection.
2. Bind ``host:port`` (port 0 picks a free port, reported through ``on_bound``) and start.
   Health reports ``NOT_SERVING`` for ``""`` and ``recsys.v1.Recommender`` from the first
   moment, so orchestrators can probe while the model loads.
3. Run ``load_engine()`` on the engine executor. On success install the engine, flip
   health to ``SERVING`` and set ``ready``. On failure log it and raise
   :class:`ServerStartupError`: a process that cannot answer must not look alive.
4. Wait for ``stop`` (or SIGTERM/SIGINT), then shut down gracefully: health goes
   ``NOT_SERVING`` (load balancers drain), ``server.stop(grace)`` lets in-flight calls finish
   for up to ``grace_seconds`` while refusing new ones, and the executor is shut down.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.interceptors import ErrorMappingInterceptor
from serving.service import EngineHolder, RecommenderServicer
from serving.types import RecommenderEngine

logger = logging.getLogger("serving")

RECOMMENDER_SERVICE: str = pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
# Health entries the server maintains: "" is the whole server, by gRPC convention.
HEALTH_SERVICES: tuple[str, ...] = (health.OVERALL_HEALTH, RECOMMENDER_SERVICE)
_MIB = 1024 * 1024


class ServerStartupError(RuntimeError):
    """The server could not start: the address cannot be bound or the engine failed to load."""


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """How the server listens and how much it takes on. Validated on construction."""

    host: str = "127.0.0.1"
    # 0 = let the OS pick a free port (see ``on_bound``).
    port: int = 50051
    # Threads running engine calls (and the initial load); bounds CPU-bound concurrency.
    max_workers: int = 4
    # How long in-flight calls may run on after a stop request before they are cancelled.
    grace_seconds: float = 10.0
    max_receive_message_bytes: int = 4 * _MIB
    max_send_message_bytes: int = 16 * _MIB
    # Calls admitted at once (running + queued for the executor); more get RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = 256

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host: must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: must be in 0..65535, got {self.port}")
        for name in (
            "max_workers",
            "max_receive_message_bytes",
            "max_send_message_bytes",
            "max_concurrent_rpcs",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.grace_seconds < 0:
            raise ValueError(f"grace_seconds: must be >= 0, got {self.grace_seconds}")

    @property
    def address(self) -> str:
        """``host:port`` as gRPC expects it (IPv6 literals bracketed)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"


def _build_server(options: ServerOptions) -> grpc.aio.Server:
    return grpc.aio.server(
        interceptors=[ErrorMappingInterceptor()],
        options=[
            ("grpc.max_receive_message_length", options.max_receive_message_bytes),
            ("grpc.max_send_message_length", options.max_send_message_bytes),
            # gRPC enables SO_REUSEPORT by default on Linux, so a second server on a busy
            # port would bind "successfully" and silently share traffic. Fail instead.
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=options.max_concurrent_rpcs,
    )


def _bind(server: grpc.aio.Server, options: ServerOptions) -> int:
    """Bind the insecure port; returns the port actually bound."""
    try:
        port: int = server.add_insecure_port(options.address)
    except RuntimeError as exc:  # grpc raises a bare RuntimeError ("Failed to bind to address ...")
        raise ServerStartupError(f"cannot bind gRPC server to {options.address}: {exc}") from exc
    if port == 0:  # older grpc versions report failure this way instead of raising
        raise ServerStartupError(f"cannot bind gRPC server to {options.address}")
    return port


async def _set_health(
    servicer: health.aio.HealthServicer, status: health_pb2.HealthCheckResponse.ServingStatus
) -> None:
    for service in HEALTH_SERVICES:
        await servicer.set(service, status)


def _install_signal_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> list[signal.Signals]:
    """Make SIGTERM/SIGINT set ``stop``; returns the signals handled (none off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return []
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # platform without loop signal support
            continue
        installed.append(sig)
    return installed


async def _load(
    executor: ThreadPoolExecutor, load_engine: Callable[[], RecommenderEngine], stop: asyncio.Event
) -> RecommenderEngine | None:
    """Run ``load_engine`` off the loop; None if ``stop`` was set first. Raises ServerStartupError."""
    loading = asyncio.get_running_loop().run_in_executor(executor, load_engine)
    stopping = asyncio.ensure_future(stop.wait())
    either: set[asyncio.Future[Any]] = {loading, stopping}
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not loading.done():
        logger.info("stop requested while the model was loading; not serving")
        return None
    exc = loading.exception()
    if exc is not None:
        logger.error("failed to load the model engine; not serving", exc_info=exc)
        raise ServerStartupError(f"failed to load the model engine: {exc}") from exc
    return loading.result()


async def serve(
    options: ServerOptions,
    load_engine: Callable[[], RecommenderEngine],
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    on_bound: Callable[[int], None] | None = None,
    handle_signals: bool = True,
) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives; see the module docstring.

    ``ready`` is set once the engine is loaded and health reports ``SERVING``.
    ``on_bound(port)`` is called right after the server started listening (before the
    engine is loaded). ``handle_signals=False`` leaves process signal handling alone
    (embedding, tests); signals are never handled off the main thread.

    Raises :class:`ServerStartupError` when binding or loading fails. Returns after a
    graceful shutdown. A stop during loading waits for ``load_engine`` to return before
    this coroutine does (a running thread cannot be interrupted).
    """
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=options.max_workers, thread_name_prefix="recsys-engine")
    holder = EngineHolder()
    health_servicer = health.aio.HealthServicer()
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)

    server = _build_server(options)
    servicer = RecommenderServicer(holder, executor)
    pb2_grpc.add_RecommenderServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (RECOMMENDER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )

    signals: list[signal.Signals] = []
    started = False
    try:
        port = _bind(server, options)
        await server.start()
        started = True
        logger.info(
            "gRPC server listening on %s:%d (not serving until the model is loaded)", options.host, port
        )
        if on_bound is not None:
            on_bound(port)
        if handle_signals:
            signals = _install_signal_handlers(loop, stop)

        engine = await _load(executor, load_engine, stop)
        if engine is None:
            return
        holder.swap(engine)
        await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
        logger.info("serving model %s on %s:%d", engine.model_version, options.host, port)
        if ready is not None:
            ready.set()
        await stop.wait()
        logger.info("stop requested; draining for up to %.1f s", options.grace_seconds)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        # NOT_SERVING first so health-checking load balancers stop routing here while
        # in-flight calls finish.
        await health_servicer.enter_graceful_shutdown()
        if started:
            await server.stop(options.grace_seconds)
        # Off the loop: waits for engine calls that outlived their deadline to return.
        await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        logger.info("gRPC server stopped")


def run_server(options: ServerOptions, load_engine: Callable[[], RecommenderEngine]) -> None:
    """Blocking entry point: serve on a fresh event loop until SIGTERM/SIGINT.

    Raises :class:`ServerStartupError` (callers exit non-zero) when the server cannot start.
    """
    asyncio.run(serve(options, load_engine))
