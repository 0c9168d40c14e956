"""The gRPC server process: wiring, health, reflection, start-up and graceful shutdown.

Lifecycle of :func:`serve`:

1. Load the TLS and tokens files (:mod:`serving.security.access`; a bad file fails the start,
   naming it). Build a ``grpc.aio`` server with
   :class:`~serving.api.interceptors.ErrorMappingInterceptor` (status codes, request ids, access
   log, latency metrics) around :class:`~serving.security.auth.AuthInterceptor` (tokens, scopes,
   per-client rates; with ``--auth-tokens``), message-size limits and
   ``maximum_concurrent_rpcs`` (a hard cap on all calls, health checks included; beyond
   it gRPC answers ``RESOURCE_EXHAUSTED`` itself), the Recommender servicer behind a
   :class:`~serving.api.batcher.MicroBatcher` (micro-batching and admission control of engine
   calls: over ``max_pending`` they get ``RESOURCE_EXHAUSTED`` at once), standard health
   checking and server reflection. With ``events_dir`` the feedback event log is opened
   (recovering what a killed process left in its WAL) for ``EventCollector.LogEvents``;
   it is closed, every event compacted into Parquet, after the graceful shutdown. Member
   profiles then follow the log live (``profile_store``; :mod:`serving.profiles.live`).
2. Bind ``host:port`` (TLS or mutual TLS when configured; port 0 picks a free port, reported
   through ``on_bound``), start the ``/metrics`` endpoint on ``metrics_host`` (loopback by
   default) when ``metrics_port`` is set, and start. Health reports
   ``NOT_SERVING`` for ``""`` and ``recsys.v1.Recommender`` from the first moment, so
   orchestrators can probe while the model loads.
3. Load the models on the engine executor (:meth:`~serving.lifecycle.live_models.LiveModels.load_initial`:
   ``load_engine()``, or the default model and the experiments' models of
   :class:`~serving.lifecycle.live_models.LiveModelOptions`). On success move every object alive then
   (modules, the engine) to the garbage collector's permanent generation (``gc.freeze``),
   so that full collections scan only what requests allocate (with a loaded model a full
   collection otherwise stalls every call for ~50-150 ms), install the engine, report its
   version (``recsys_model_info``), flip health to ``SERVING``, set ``ready`` and start
   watching aliases, the experiments file and the tokens / TLS files (hot swaps and
   reloads; SIGHUP reloads the files at once). On failure log it
   and raise :class:`ServerStartupError`: a process that cannot answer must not look alive.
4. Wait for ``stop`` (or SIGTERM/SIGINT), then shut down gracefully: health goes
   ``NOT_SERVING`` (load balancers drain), ``server.stop(grace)`` lets in-flight calls finish
   for up to ``grace_seconds`` while refusing new ones, and the executor and the metrics
   endpoint are shut down.

The port is bound without ``SO_REUSEPORT`` so that a busy port fails loudly, except for
the workers of ``recsys serve --workers N`` (``reuse_port``; see :mod:`serving.api.workers`),
which share one port on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving._proto.recsys.v1 import (
    audiences_pb2,
    audiences_pb2_grpc,
    events_pb2_grpc,
    profiles_pb2,
    profiles_pb2_grpc,
)
from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api.audiences import AudiencesServicer
from serving.api.batcher import BatchOptions, MicroBatcher
from serving.api.events import EVENT_COLLECTOR_SERVICE, EventCollectorServicer
from serving.api.interceptors import ErrorMappingInterceptor
from serving.api.profiles import MemberProfilesServicer
from serving.api.recommender import RecommenderServicer
from serving.errors import RecsysError
from serving.events.log import EventLog, EventLogOptions
from serving.lifecycle.engine_holder import EngineHolder
from serving.lifecycle.live_models import EngineSource, LiveModels
from serving.lifecycle.registry_health import REGISTRY_HEALTH_SERVICE
from serving.metrics import MetricsServer, ServingMetrics, start_metrics_server
from serving.observability import tracing
from serving.observability.log_format import check_log_format
from serving.profiles.live.feed import LiveFeed
from serving.profiles.live.redis_store import ProfileStoreConfigError, RedisDeltaStore, check_url
from serving.profiles.live.stores import EmbeddedDeltaStore
from serving.pseudonym import Pseudonymiser, PseudonymKeyError
from serving.recommend.types import RecommenderEngine
from serving.security.access import AccessConfigError, AccessOptions, ServerAccess

logger = logging.getLogger("serving")

RECOMMENDER_SERVICE: str = pb2.DESCRIPTOR.services_by_name["Recommender"].full_name
AUDIENCES_SERVICE: str = audiences_pb2.DESCRIPTOR.services_by_name["Audiences"].full_name
PROFILES_SERVICE: str = profiles_pb2.DESCRIPTOR.services_by_name["MemberProfiles"].full_name
# Health entries the server maintains: "" is the whole server, by gRPC convention.
HEALTH_SERVICES: tuple[str, ...] = (
    health.OVERALL_HEALTH,
    RECOMMENDER_SERVICE,
    AUDIENCES_SERVICE,
    PROFILES_SERVICE,
)
_MIB = 1024 * 1024


class ServerStartupError(RecsysError, RuntimeError):
    """The server could not start: an address cannot be bound or the engine failed to load."""


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
    # Hard cap on calls in progress (health checks included); more get RESOURCE_EXHAUSTED
    # from gRPC. Keep it above max_pending so health checks pass while engine calls are shed.
    max_concurrent_rpcs: int = 1024
    # Micro-batching of Recommend calls (see serving.api.batcher).
    max_batch: int = 64
    max_wait_ms: float = 2.0
    # Batches computed at once (each on an engine thread; at most max_workers). One keeps
    # batches large under load: Python work in the engine holds the GIL either way.
    batch_concurrency: int = 1
    # Engine calls admitted at once (queued + running); more get RESOURCE_EXHAUSTED at once.
    max_pending: int = 512
    # Port of the Prometheus /metrics endpoint on ``host``; 0 = no endpoint.
    metrics_port: int = 0
    # Non-zero: a second, plaintext port on ``host`` serving only the health service, for
    # probes that cannot speak TLS (Kubernetes' native grpc probe; deploy/kubernetes/).
    health_port: int = 0
    # Log every call's access line at INFO (default: only calls that did not end OK).
    access_log: bool = False
    # Share the port with other processes (SO_REUSEPORT): only for --workers N.
    reuse_port: bool = False
    # Feedback event log directory for LogEvents (serving.events); None = LogEvents answers
    # FAILED_PRECONDITION. Several processes may share one directory.
    events_dir: Path | None = None
    # Seconds before logged events are compacted from the WAL into readable Parquet.
    events_compact_interval_s: float = 30.0
    # Non-empty: the event log stores pseudonymous user ids, HMAC-keyed by this environment
    # variable (use the bundle's privacy.key_env; serving.pseudonym).
    events_key_env: str = ""
    # TLS, mutual TLS, bearer tokens (serving.security.access). Listening beyond loopback without
    # TLS and tokens is refused unless access.insecure.
    access: AccessOptions = field(default_factory=AccessOptions)
    # Interface of the /metrics endpoint: loopback unless told otherwise (it is not protected).
    metrics_host: str = "127.0.0.1"
    # Where live member profiles keep the events logged after the bundle's snapshot
    # (serving.profiles.live; needs events_dir): "" = in this process when it is the only
    # one (off with --workers N, where each process would see only its own events),
    # "embedded", "off", or a redis:// (loopback) / rediss:// URL shared by every replica.
    profile_store: str = ""
    # How the process logs: "text" or "json" (serving.observability.log_format); set up by the process entry
    # points (recsys serve, each --workers process), not by serve().
    log_format: str = "text"

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host: must not be empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port: must be in 0..65535, got {self.port}")
        for name in (
            "max_workers",
            "batch_concurrency",
            "max_receive_message_bytes",
            "max_send_message_bytes",
            "max_concurrent_rpcs",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.grace_seconds < 0:
            raise ValueError(f"grace_seconds: must be >= 0, got {self.grace_seconds}")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port: must be in 0..65535, got {self.metrics_port}")
        if not 0 <= self.health_port <= 65535:
            raise ValueError(f"health_port: must be in 0..65535, got {self.health_port}")
        check_log_format(self.log_format)
        _ = self.batch_options  # validates the batching options
        _ = self.event_log_options
        if self.profile_store not in _LOCAL_PROFILE_STORES:
            check_url(self.profile_store, insecure=self.access.insecure)
        self.access.check_exposure(self.host)

    @property
    def batch_options(self) -> BatchOptions:
        """The batcher's limits (``batch_concurrency`` capped at ``max_workers``)."""
        return BatchOptions(
            max_batch=self.max_batch,
            max_wait_ms=self.max_wait_ms,
            max_pending=self.max_pending,
            max_concurrent=min(self.batch_concurrency, self.max_workers),
        )

    @property
    def event_log_options(self) -> EventLogOptions:
        return EventLogOptions(
            compact_interval_s=self.events_compact_interval_s, user_id_key_env=self.events_key_env
        )

    @property
    def address(self) -> str:
        """``host:port`` as gRPC expects it (IPv6 literals bracketed)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"{host}:{self.port}"


_LOCAL_PROFILE_STORES = ("", "embedded", "off")


def _open_live_feed(options: ServerOptions, event_log: EventLog | None) -> LiveFeed | None:
    """The live-profile feed over ``event_log`` and the store ``options.profile_store`` names
    (blocking: connects to Redis); None when profiles are served as snapshots."""
    store_name = options.profile_store
    if event_log is None or store_name == "off":
        return None
    if store_name == "" and options.reuse_port:
        logger.warning(
            "live profiles off: with --workers N each process sees only the events it accepted; "
            "profiles are served as of the bundle's snapshot (use --profile-store redis://... to share them)"
        )
        return None
    if store_name in ("", "embedded"):
        return LiveFeed(event_log, EmbeddedDeltaStore())
    try:
        store = RedisDeltaStore.connect(store_name, insecure=options.access.insecure)
    except ProfileStoreConfigError as exc:
        raise ServerStartupError(str(exc)) from None
    return LiveFeed(event_log, store)


def _build_server(options: ServerOptions, metrics: ServingMetrics, access: ServerAccess) -> grpc.aio.Server:
    access_log_level = logging.INFO if options.access_log else logging.DEBUG
    return grpc.aio.server(
        # The error mapping is outermost: it maps the auth interceptor's refusals too.
        interceptors=[
            ErrorMappingInterceptor(access_log_level=access_log_level, metrics=metrics),
            *access.interceptors,
        ],
        options=[
            ("grpc.max_receive_message_length", options.max_receive_message_bytes),
            ("grpc.max_send_message_length", options.max_send_message_bytes),
            # gRPC enables SO_REUSEPORT by default on Linux, so a second server on a busy
            # port would bind "successfully" and silently share traffic. Fail instead,
            # unless this is one of several workers sharing the port on purpose.
            ("grpc.so_reuseport", 1 if options.reuse_port else 0),
        ],
        maximum_concurrent_rpcs=options.max_concurrent_rpcs,
    )


def _bind(server: grpc.aio.Server, options: ServerOptions, access: ServerAccess) -> int:
    """Bind the port (TLS when configured); returns the port actually bound."""
    try:
        port: int = access.add_port(server, options.address)
    except RuntimeError as exc:  # grpc raises a bare RuntimeError ("Failed to bind to address ...")
        raise ServerStartupError(f"cannot bind gRPC server to {options.address}: {exc}") from exc
    if port == 0:  # older grpc versions report failure this way instead of raising
        raise ServerStartupError(f"cannot bind gRPC server to {options.address}")
    return port


def _start_metrics(options: ServerOptions, metrics: ServingMetrics) -> MetricsServer:
    try:
        return start_metrics_server(options.metrics_host, options.metrics_port, metrics.registry)
    except OSError as exc:
        raise ServerStartupError(
            f"cannot bind the metrics endpoint to {options.metrics_host}:{options.metrics_port}: {exc}"
        ) from exc


def _freeze_heap() -> None:
    """Collect garbage once, then exempt every surviving object from future collections."""
    gc.collect()
    gc.freeze()


async def _start_health_port(
    options: ServerOptions, servicer: health.aio.HealthServicer
) -> grpc.aio.Server | None:
    """The plaintext health-only port (``options.health_port``), started; None when off.

    It shares the main server's health servicer, so it reports exactly what the main port
    does (``NOT_SERVING`` while loading and draining) and carries nothing else: no data, no
    credentials. Raises :class:`ServerStartupError` when the port cannot be bound.
    """
    if not options.health_port:
        return None
    probe = grpc.aio.server(maximum_concurrent_rpcs=16)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, probe)
    try:
        probe.add_insecure_port(f"{options.host}:{options.health_port}")
    except RuntimeError as exc:
        raise ServerStartupError(
            f"cannot bind the health port {options.host}:{options.health_port}: {exc}"
        ) from exc
    await probe.start()
    logger.info("health-only port %s:%d (plaintext)", options.host, options.health_port)
    return probe


async def _set_health(
    servicer: health.aio.HealthServicer, status: health_pb2.HealthCheckResponse.ServingStatus
) -> None:
    for service in HEALTH_SERVICES:
        await servicer.set(service, status)


def _install_reload_signal(loop: asyncio.AbstractEventLoop, access: ServerAccess, models: LiveModels) -> bool:
    """SIGHUP: re-read the tokens and TLS files and the experiments file at once.

    One handler for all of them (asyncio keeps one handler per signal), so the models are
    told not to install their own. Returns whether it was installed (main thread only).
    """
    if threading.current_thread() is not threading.main_thread():
        return False

    def reload() -> None:
        access.reloader.wake()
        # Same as the experiments file's own poll: on the model-management thread.
        loop.run_in_executor(models.management, models.reload_experiments)

    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True


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


def _check_event_log_ids(engine: RecommenderEngine, event_log: EventLog | None) -> None:
    """Refuse to log raw (or differently keyed) user ids next to a pseudonymised model.

    The event log feeds retraining: its ids must be the bundle's ids, and raw ids must not be
    stored where the model's owner decided to keep only pseudonyms.
    """
    bundle_ids = getattr(engine, "bundle_user_id", None)
    if event_log is None or not isinstance(bundle_ids, Pseudonymiser):
        return
    logged = event_log.pseudonymiser
    if logged is None:
        raise ServerStartupError(
            "events_key_env: the model's user ids are pseudonymised, so the event log must be too; "
            "pass --events-key-env with the variable holding the model's key"
        )
    if logged.fingerprint() != bundle_ids.fingerprint():
        raise ServerStartupError(
            "events_key_env: its key differs from the one the model's user ids were pseudonymised "
            "with (key fingerprints differ)"
        )


async def _open_event_log(options: ServerOptions, metrics: ServingMetrics) -> EventLog | None:
    """The event log of ``options.events_dir`` (opened off the loop), or None without one."""
    if options.events_dir is None:
        return None
    try:
        return await asyncio.to_thread(EventLog.open, options.events_dir, options.event_log_options, metrics)
    except (OSError, PseudonymKeyError) as exc:
        raise ServerStartupError(f"cannot open the event log at {options.events_dir}: {exc}") from exc


async def serve(
    options: ServerOptions,
    load_engine: EngineSource,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    on_bound: Callable[[int], None] | None = None,
    handle_signals: bool = True,
    on_models: Callable[[LiveModels], None] | None = None,
) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives; see the module docstring.

    ``load_engine``: a callable returning the one engine to serve, or
    :class:`~serving.lifecycle.live_models.LiveModelOptions` (a model reference, watched when it is
    ``models:/NAME@ALIAS``, and an experiments file reloaded while serving; see
    :mod:`serving.lifecycle.live_models`). ``on_models`` receives the server's
    :class:`~serving.lifecycle.live_models.LiveModels` before loading starts (tests, embedding).

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
    metrics = ServingMetrics()
    health_servicer = health.aio.HealthServicer()
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)

    try:
        access = ServerAccess.start(options.access, metrics)
    except AccessConfigError as exc:
        raise ServerStartupError(str(exc)) from None
    server = _build_server(options, metrics, access)
    batcher = MicroBatcher(executor, options.batch_options, metrics)
    models = LiveModels(load_engine, holder, metrics)
    if on_models is not None:
        on_models(models)
    servicer = RecommenderServicer(models.router, executor, batcher=batcher, metrics=metrics)
    pb2_grpc.add_RecommenderServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    audiences_pb2_grpc.add_AudiencesServicer_to_server(  # type: ignore[no-untyped-call]
        AudiencesServicer(holder, batcher), server
    )
    # The event log does not need the model: it opens (recovering a crashed process's WAL)
    # before the port is bound, and its health entry is SERVING as soon as it is open.
    event_log = await _open_event_log(options, metrics)
    try:
        feed = await asyncio.to_thread(_open_live_feed, options, event_log)
    except BaseException:
        if event_log is not None:
            await asyncio.to_thread(event_log.close)
        raise
    profiles_pb2_grpc.add_MemberProfilesServicer_to_server(  # type: ignore[no-untyped-call]
        MemberProfilesServicer(holder, batcher, feed), server
    )
    events_pb2_grpc.add_EventCollectorServicer_to_server(  # type: ignore[no-untyped-call]
        EventCollectorServicer(event_log), server
    )
    events_health = (
        health_pb2.HealthCheckResponse.NOT_SERVING
        if event_log is None
        else health_pb2.HealthCheckResponse.SERVING
    )
    await health_servicer.set(EVENT_COLLECTOR_SERVICE, events_health)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            RECOMMENDER_SERVICE,
            AUDIENCES_SERVICE,
            PROFILES_SERVICE,
            EVENT_COLLECTOR_SERVICE,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ),
        server,
    )

    signals: list[signal.Signals] = []
    started = False
    metrics_server: MetricsServer | None = None
    watching: asyncio.Task[None] | None = None
    health_only: grpc.aio.Server | None = None
    reloading: asyncio.Task[None] | None = None
    hup = False
    try:
        port = _bind(server, options, access)
        if options.metrics_port:
            metrics_server = _start_metrics(options, metrics)
            logger.info("metrics on http://%s:%d/metrics", options.metrics_host, metrics_server.port)
        await server.start()
        started = True
        health_only = await _start_health_port(options, health_servicer)
        logger.info(
            "gRPC server listening on %s:%d, %s (not serving until the model is loaded)",
            options.host,
            port,
            access.describe(),
        )
        if on_bound is not None:
            on_bound(port)
        if handle_signals:
            signals = _install_signal_handlers(loop, stop)

        engine = await _load(executor, models.load_initial, stop)
        if engine is None:
            return
        _check_event_log_ids(engine, event_log)
        await loop.run_in_executor(executor, _freeze_heap)
        holder.swap(engine)
        metrics.set_model_version(engine.model_version)
        await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)
        logger.info("serving model %s on %s:%d", engine.model_version, options.host, port)
        if ready is not None:
            ready.set()
        # Alias watching and experiments reloads (no-op for a fixed engine).
        on_registry = None
        if models.watched():
            # The start-up load just resolved every alias: the registry was reachable.
            await health_servicer.set(REGISTRY_HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)

            async def on_registry(reachable: bool) -> None:
                # Only this entry changes: the replica keeps answering with the model it has.
                status = health_pb2.HealthCheckResponse
                await health_servicer.set(
                    REGISTRY_HEALTH_SERVICE, status.SERVING if reachable else status.NOT_SERVING
                )

        watching = asyncio.create_task(models.run(handle_signals=False, on_registry=on_registry))
        reloading = asyncio.create_task(access.reloader.run(options.access.poll_seconds))
        hup = handle_signals and _install_reload_signal(loop, access, models)
        await stop.wait()
        logger.info("stop requested; draining for up to %.1f s", options.grace_seconds)
    finally:
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)
        for task in (watching, reloading):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        models.close()
        for sig in signals:
            loop.remove_signal_handler(sig)
        # NOT_SERVING first so health-checking load balancers stop routing here while
        # in-flight calls finish.
        await health_servicer.enter_graceful_shutdown()
        if started:
            await server.stop(options.grace_seconds)
        if health_only is not None:
            await health_only.stop(0)
        # Off the loop: waits for engine calls that outlived their deadline to return.
        await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        if metrics_server is not None:
            await asyncio.to_thread(metrics_server.close)
        if feed is not None:
            await asyncio.to_thread(feed.close)
        if event_log is not None:
            # After server.stop: every acknowledged call is in the WAL; compact it all.
            await asyncio.to_thread(event_log.close)
        logger.info("gRPC server stopped")


def run_server(options: ServerOptions, load_engine: EngineSource) -> None:
    """Blocking entry point: serve on a fresh event loop until SIGTERM/SIGINT, traced when the
    ``OTEL_*`` environment says so (:func:`serving.observability.tracing.from_environment`).

    Raises :class:`ServerStartupError` (callers exit non-zero) when the server cannot start and
    :class:`~serving.observability.tracing.TracingConfigError` for a tracing environment it cannot honour.
    """
    with tracing.from_environment():
        asyncio.run(serve(options, load_engine))
