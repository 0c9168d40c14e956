"""Re-reads the tokens file and the TLS files while the server runs (rotation without a restart).

Same pattern as the experiments file (:mod:`serving.lifecycle.live_models`): every
``poll_seconds`` and at once on :meth:`SecurityReloader.wake` (the server calls it on
SIGHUP) the files are read off the event loop; a file whose bytes changed is parsed and
validated, and only a valid one is installed. A bad or unreadable file is logged (its path
and the problem, never its content) and refused, ``recsys_security_reloads_total
{what, outcome="refused"}``; the running tokens or certificates stay. A refused version is
not retried until the file changes again.

Installing happens on the event loop (``install_tokens`` is called there), because the
authorisation interceptor reads the token table from that thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from serving.metrics import ServingMetrics
from serving.security.tls import RotatingServerCredentials, TlsError, TlsFiles, TlsMaterial, load_tls
from serving.security.tokens import TokenFileError, TokenTable, file_digest, parse_tokens

logger = logging.getLogger("serving")


@dataclass
class _Changes:
    tokens: TokenTable | None = None
    tls: TlsMaterial | None = None


class SecurityReloader:
    """Watches ``tokens_path`` (installed with ``install_tokens``) and ``tls_files`` (installed
    into ``credentials``); either may be None. The initial versions are loaded by the caller
    (a bad file at start-up fails the start) and passed in as ``tokens`` / ``credentials``."""

    def __init__(
        self,
        *,
        tokens_path: Path | None = None,
        tokens: TokenTable | None = None,
        install_tokens: Callable[[TokenTable], None] | None = None,
        tls_files: TlsFiles | None = None,
        credentials: RotatingServerCredentials | None = None,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self._tokens_path = tokens_path
        self._tokens_digest = tokens.digest if tokens is not None else ""
        self._install_tokens = install_tokens
        self._tls_files = tls_files
        self._credentials = credentials
        self._metrics = metrics
        self._refused: dict[str, str] = {}  # what -> digest (or error text) last refused
        self._wake = asyncio.Event()

    @property
    def watching(self) -> bool:
        return self._tokens_path is not None or self._tls_files is not None

    def wake(self) -> None:
        """Check the files now (SIGHUP). Call on the event loop thread."""
        self._wake.set()

    async def reload(self) -> _Changes:
        """Read the files off the loop, then install what changed and is valid."""
        changes = await asyncio.to_thread(self._read)
        if changes.tokens is not None and self._install_tokens is not None:
            self._install_tokens(changes.tokens)
            self._tokens_digest = changes.tokens.digest
            logger.info(
                "auth tokens reloaded from %s: %d clients", self._tokens_path, len(changes.tokens.clients)
            )
            self._count("tokens", "applied")
        if changes.tls is not None and self._credentials is not None:
            self._credentials.install(changes.tls)
            logger.info(
                "TLS certificates reloaded from %s (valid until %s); new connections use them",
                self._tls_files.cert if self._tls_files else "?",
                changes.tls.not_after.isoformat(),
            )
            self._count("tls", "applied")
        return changes

    async def run(self, poll_seconds: float) -> None:
        """Reload every ``poll_seconds`` and on :meth:`wake`, until cancelled."""
        if not self.watching:
            return
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll_seconds)
            self._wake.clear()
            try:
                await self.reload()
            except Exception:  # never let a reload bug stop the watching
                logger.exception("security reload failed; retrying in %.1f s", poll_seconds)

    # ------------------------------------------------------------- blocking part
    def _read(self) -> _Changes:
        return _Changes(tokens=self._read_tokens(), tls=self._read_tls())

    def _read_tokens(self) -> TokenTable | None:
        path = self._tokens_path
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except OSError as exc:
            self._refuse("tokens", f"{path}: cannot read the tokens file: {exc.strerror or exc}")
            return None
        digest = file_digest(data)
        if digest in (self._tokens_digest, self._refused.get("tokens")):
            return None
        try:
            table = parse_tokens(data, path)
        except TokenFileError as exc:
            self._refuse("tokens", str(exc), digest)
            return None
        self._refused.pop("tokens", None)
        return table

    def _read_tls(self) -> TlsMaterial | None:
        if self._tls_files is None or self._credentials is None:
            return None
        try:
            material = load_tls(self._tls_files)
        except TlsError as exc:
            self._refuse("tls", str(exc))
            return None
        if material.digest == self._credentials.current.digest:
            return None
        if (material.client_ca is not None) != self._credentials.mutual:
            self._refuse("tls", "mutual TLS cannot be switched on or off while serving", material.digest)
            return None
        self._refused.pop("tls", None)
        return material

    def _refuse(self, what: str, problem: str, key: str = "") -> None:
        # Log a refusal once per distinct bad version, not at every poll.
        mark = key or problem
        if self._refused.get(what) == mark:
            return
        self._refused[what] = mark
        logger.error("%s reload refused, the running %s stay: %s", what, what, problem)
        self._count(what, "refused")

    def _count(self, what: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.security_reloads.labels(what, outcome).inc()
