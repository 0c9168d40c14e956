"""Prometheus metrics of the serving process and the ``/metrics`` HTTP endpoint.

One :class:`ServingMetrics` per server, registered in its own registry (several servers
in one process, as in tests, never collide):

* ``recsys_rpc_duration_seconds{method, code}``: histogram of every unary call, observed by
  the interceptor (``code`` is the gRPC status name, ``OK`` included);
* ``recsys_batch_size``: histogram of Recommend requests answered by one engine call (one
  user-tower pass), observed by :mod:`serving.api.batcher`;
* ``recsys_batch_queue_wait_seconds``: how long the oldest request of a batch waited;
* ``recsys_fallback_total{reason}``: answers given by the popularity fallback;
* ``recsys_rejected_total``: calls refused by admission control (``RESOURCE_EXHAUSTED``);
* ``recsys_expired_in_queue_total``: calls whose deadline passed while queued (no work done);
* ``recsys_pending_requests``: admitted engine calls, queued or running;
* ``recsys_model_info{model_version}``: 1 for the model version being served.
* ``recsys_variant_answers_total{experiment, variant}``: Recommend answers per experiment
  variant (names from the experiments file, never request data);
* ``recsys_model_swaps_total{outcome}``: hot swaps of a watched ``models:/NAME@ALIAS``
  (``swapped`` or ``refused``: the new bundle failed to download, verify or warm up);
* ``recsys_experiments_reloads_total{outcome}``: experiments file reloads (``applied`` /
  ``refused``);
* ``recsys_registry_up``: 1 when the last alias poll reached the model registry, 0 when it
  did not (the replica serves on with what it has); ``recsys_registry_last_success_timestamp_seconds``
  and ``recsys_registry_poll_failures_total`` (:mod:`serving.lifecycle.registry_health`).
* ``recsys_io_faults_total{component, kind}``: failed I/O operations of the server's own
  storage (``component``: ``event_log``, ``event_log_compaction``, ``model_swap``, ``registry``;
  ``kind``: ``no_space``, ``read_only``, ``permission_denied``, ``missing``, ``garbage``,
  ``other``) and ``recsys_io_fault_active{component}``: 1 from a component's first failure to
  its next success (:mod:`serving.observability.io_faults`).

Several worker processes (``recsys serve --workers N``) use prometheus-client's
*multiprocess mode*: the supervising parent sets ``PROMETHEUS_MULTIPROC_DIR`` before the
workers start, each worker writes its values to memory-mapped files there, and the
parent alone serves ``/metrics`` (:func:`multiprocess_registry`), summing histograms
and counters over the workers. One scrape target per server, whatever ``N``.

Labels never carry request data or credentials: method names, status codes, reasons, caller
names from the tokens file and the model version only.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds: sub-millisecond to a 10 s deadline; the p99 target (10 ms) falls on a bucket edge.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def multiprocess_mode() -> bool:
    """True when values go to ``$PROMETHEUS_MULTIPROC_DIR`` (a worker of ``--workers N``)."""
    return bool(os.environ.get(MULTIPROC_ENV))


class ServingMetrics:
    """The metrics of one server (see the module docstring). Thread-safe.

    ``registry`` defaults to a fresh one; in single-process mode it also carries the
    standard ``process_*`` / ``python_info`` collectors.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        if registry is None and not multiprocess_mode():
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
        self.rpc_duration = Histogram(
            "recsys_rpc_duration_seconds",
            "Duration of unary gRPC calls, by full method name and status code.",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            "recsys_batch_size",
            "Recommend requests answered by one engine call (one user-tower pass).",
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.queue_wait = Histogram(
            "recsys_batch_queue_wait_seconds",
            "Time the oldest request of a batch waited before the batch was dispatched.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.fallbacks = Counter(
            "recsys_fallback",
            "Recommendations answered by the popularity fallback, by reason.",
            ["reason"],
            registry=reg,
        )
        self.rejected = Counter(
            "recsys_rejected",
            "Calls refused by admission control (RESOURCE_EXHAUSTED).",
            registry=reg,
        )
        self.expired = Counter(
            "recsys_expired_in_queue",
            "Calls whose deadline passed while they were queued (answered without work).",
            registry=reg,
        )
        self.pending = Gauge(
            "recsys_pending_requests",
            "Admitted engine calls, queued or running.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.model_info = Gauge(
            "recsys_model_info",
            "1 for the model version being served.",
            ["model_version"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self.variant_answers = Counter(
            "recsys_variant_answers",
            "Recommend answers per experiment variant.",
            ["experiment", "variant"],
            registry=reg,
        )
        self.model_swaps = Counter(
            "recsys_model_swaps",
            "Hot swaps of a watched models:/NAME@ALIAS reference, by outcome (swapped, refused).",
            ["outcome"],
            registry=reg,
        )
        self.experiments_reloads = Counter(
            "recsys_experiments_reloads",
            "Reloads of the experiments file, by outcome (applied, refused).",
            ["outcome"],
            registry=reg,
        )
        self.registry_up = Gauge(
            "recsys_registry_up",
            "1 when the last poll of a watched models:/NAME@ALIAS reached the registry, 0 when not.",
            registry=reg,
            multiprocess_mode="livemin",
        )
        self.registry_last_success = Gauge(
            "recsys_registry_last_success_timestamp_seconds",
            "Unix time of the last alias poll that reached the model registry.",
            registry=reg,
            multiprocess_mode="livemin",
        )
        self.registry_poll_failures = Counter(
            "recsys_registry_poll_failures",
            "Alias polls that could not reach the model registry (the served model stays).",
            registry=reg,
        )
        self.client_calls = Counter(
            "recsys_client_calls",
            "Calls per caller (name in the tokens file, '-' without tokens) and status code.",
            ["client", "code"],
            registry=reg,
        )
        self.auth_refused = Counter(
            "recsys_auth_refused",
            "Calls refused by authorisation, by reason (unauthenticated, permission_denied, rate_limited).",
            ["reason"],
            registry=reg,
        )
        self.security_reloads = Counter(
            "recsys_security_reloads",
            "Reloads of the tokens file (tokens) and TLS files (tls), by outcome (applied, refused).",
            ["what", "outcome"],
            registry=reg,
        )
        self.io_faults = Counter(
            "recsys_io_faults",
            "Failed I/O operations of the server's own storage, by component and kind of fault.",
            ["component", "kind"],
            registry=reg,
        )
        self.io_fault_active = Gauge(
            "recsys_io_fault_active",
            "1 from a component's first I/O failure to its next success, 0 otherwise.",
            ["component"],
            registry=reg,
            multiprocess_mode="livemax",
        )
        self._model_version: str | None = None
        self._lock = threading.Lock()

    def set_model_version(self, version: str) -> None:
        """Report ``version`` as the one served (the previous version's series is removed)."""
        with self._lock:
            if self._model_version is not None and self._model_version != version:
                self.model_info.remove(self._model_version)
            self._model_version = version
            self.model_info.labels(version).set(1)


def multiprocess_registry(path: str) -> CollectorRegistry:
    """A registry that reads every worker's values from ``path`` (the parent's ``/metrics``)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
    return registry


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint (a daemon thread of prometheus-client's WSGI server)."""

    httpd: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.httpd.server_port)

    def close(self) -> None:
        """Stop serving and release the port. Blocks up to ~0.5 s: call it off the event loop."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(host: str, port: int, registry: CollectorRegistry) -> MetricsServer:
    """Serve ``registry`` as Prometheus text on ``http://host:port/metrics`` (any path works).

    ``port`` 0 picks a free one (see :attr:`MetricsServer.port`). Raises :class:`OSError`
    when the address cannot be bound.
    """
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(httpd, thread)
