"""Whether the model registry answered the last alias poll, for health and metrics.

A replica that serves ``models:/NAME@ALIAS`` asks the registry every poll where the alias
points. When the registry cannot be reached the replica keeps serving the version it has
(:meth:`serving.lifecycle.live_models.LiveModels.check_aliases`); :class:`RegistryHealth`
records that it is out of touch so that operators see it:

* the gRPC health entry :data:`REGISTRY_HEALTH_SERVICE` is ``SERVING`` while the last poll
  reached the registry and ``NOT_SERVING`` while it did not (the server's overall entry
  ``""`` stays ``SERVING``: the replica still answers; Kubernetes probes ask for ``""``);
* ``recsys_registry_up`` (1 / 0), ``recsys_registry_last_success_timestamp_seconds`` and
  ``recsys_registry_poll_failures_total`` in ``/metrics``.

Pure bookkeeping: no I/O, no gRPC. Thread-safe (the management thread writes, the event
loop reads).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from serving.metrics import ServingMetrics

REGISTRY_HEALTH_SERVICE = "recsys.registry"
"""Health entry of the registry connection (only on servers that watch an alias)."""


@dataclass(frozen=True)
class RegistryState:
    """A snapshot: ``reachable`` at the last poll (None before the first one), the wall-clock
    time of the last successful poll, consecutive failed polls and the last error."""

    reachable: bool | None
    last_success: float | None
    consecutive_failures: int
    last_error: str


class RegistryHealth:
    """Outcomes of registry polls (see the module docstring)."""

    def __init__(self, metrics: ServingMetrics | None = None) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._state = RegistryState(None, None, 0, "")

    @property
    def state(self) -> RegistryState:
        with self._lock:
            return self._state

    def succeeded(self) -> None:
        """The registry answered every question of a poll."""
        now = time.time()
        with self._lock:
            self._state = RegistryState(True, now, 0, "")
        if self._metrics is not None:
            self._metrics.registry_up.set(1)
            self._metrics.registry_last_success.set(now)

    def failed(self, error: str) -> None:
        """A poll could not reach the registry (or download from it); ``error`` says why."""
        with self._lock:
            previous = self._state
            self._state = RegistryState(
                False, previous.last_success, previous.consecutive_failures + 1, error
            )
        if self._metrics is not None:
            self._metrics.registry_up.set(0)
            self._metrics.registry_poll_failures.inc()
