"""I/O faults of the server's own storage: what kind each one is, and one log line per episode.

:func:`fault_kind` names the kind of an :class:`OSError` (by ``errno``): ``no_space`` (ENOSPC,
EDQUOT), ``read_only`` (EROFS), ``permission_denied`` (EACCES, EPERM), ``missing`` (ENOENT,
ENOTDIR, ESTALE: a directory removed or unmounted under the server) or ``other``; the model
lifecycle adds ``garbage`` (the registry answered something that cannot be right, a bundle that
fails verification) and ``unreachable`` (the registry did not answer).
:func:`storage_error` turns it into the domain error a caller gets
(:class:`~serving.errors.StorageFullError` or :class:`~serving.errors.StorageUnavailableError`;
the status codes themselves are decided in :mod:`serving.api.interceptors` only).

:class:`FaultEpisodes` counts every failure in ``recsys_io_faults_total{component, kind}`` and
logs an *episode* once: the first failure (a warning with the cause), then nothing while the
failures go on, then one line when an operation of the component succeeds again. A full disk
under a stream of calls is two log lines, not one per call.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from typing import Final, Literal

from serving.errors import RecsysError, StorageFullError, StorageUnavailableError
from serving.metrics import ServingMetrics

FaultKind = Literal[
    "no_space", "read_only", "permission_denied", "missing", "garbage", "unreachable", "other"
]

_KINDS: Final[dict[int, FaultKind]] = {
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EROFS: "read_only",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.ENOENT: "missing",
    errno.ENOTDIR: "missing",
    errno.ESTALE: "missing",
}

_MAX_CAUSE_CHARS: Final = 400

_UNAVAILABLE_REASONS: Final[dict[FaultKind, str]] = {
    "read_only": "its file system is read-only",
    "permission_denied": "permission to write it is denied",
    "missing": "its directory is gone",
}


def os_error_in(exc: BaseException) -> OSError | None:
    """The first :class:`OSError` in ``exc``'s chain of causes (``exc`` included), if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def fault_kind(exc: BaseException) -> FaultKind:
    """The kind of I/O fault behind ``exc`` (``other`` when no OSError with a known errno)."""
    found = os_error_in(exc)
    if found is None or found.errno is None:
        return "other"
    return _KINDS.get(found.errno, "other")


def storage_error(store: str, kind: FaultKind) -> RecsysError | None:
    """The caller-facing error for a ``kind`` fault of ``store`` (None: no deliberate status).

    The message names the store and what to do, never a path of the server.
    """
    if kind == "no_space":
        return StorageFullError(
            f"the {store} is out of space (disk full or quota reached); nothing of this call was "
            "stored: retry with backoff"
        )
    reason = _UNAVAILABLE_REASONS.get(kind)
    if reason is None:
        return None
    return StorageUnavailableError(
        f"the {store} cannot be written now ({reason}); nothing of this call was stored: retry later"
    )


class FaultEpisodes:
    """Fault bookkeeping of one component (see the module docstring). Thread-safe."""

    def __init__(self, component: str, logger: logging.Logger, metrics: ServingMetrics | None = None) -> None:
        self.component = component
        self._logger = logger
        self._metrics = metrics
        self._lock = threading.Lock()
        self._failures = 0  # in the current episode; 0: no episode
        self._started = 0.0
        self._kind: FaultKind | None = None
        if metrics is not None:
            metrics.io_fault_active.labels(component).set(0)

    @property
    def active(self) -> bool:
        """True from the first failure to the next success."""
        with self._lock:
            return self._failures > 0

    def failed(self, kind: FaultKind, what: str, exc: BaseException) -> None:
        """Count one failed operation; log it when it starts an episode (or changes its kind).

        ``what``: the operation and where (a path is fine here: logs are the operator's).
        """
        with self._lock:
            first = self._failures == 0
            changed = not first and kind != self._kind
            self._failures += 1
            if first:
                self._started = time.monotonic()
            self._kind = kind
        if self._metrics is not None:
            self._metrics.io_faults.labels(self.component, kind).inc()
            self._metrics.io_fault_active.labels(self.component).set(1)
        if first or changed:
            self._logger.warning(
                "%s fault (%s): %s failed: %s; logged once until it recovers",
                self.component,
                kind,
                what,
                str(exc)[:_MAX_CAUSE_CHARS],  # database errors carry their whole statement
            )

    def succeeded(self) -> None:
        """An operation of the component succeeded: ends an episode (one log line) if one runs."""
        with self._lock:
            failures, self._failures = self._failures, 0
            kind, self._kind = self._kind, None
            started = self._started
        if failures == 0:
            return
        if self._metrics is not None:
            self._metrics.io_fault_active.labels(self.component).set(0)
        self._logger.warning(
            "%s recovered from %s after %d failed operations in %.1f s",
            self.component,
            kind,
            failures,
            time.monotonic() - started,
        )
