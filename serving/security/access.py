"""Who can reach the server and how: TLS, mutual TLS, bearer tokens, and secure defaults.

:class:`AccessOptions` (part of :class:`~serving.api.server.ServerOptions`) says which files
to use; :meth:`ServerAccess.start` loads and validates them at start-up (a bad file fails the
start with :class:`~serving.api.server.ServerStartupError`'s parent, naming the file) and
gives the server

* the extra interceptor (:class:`~serving.security.auth.AuthInterceptor`, when tokens are on),
* the port binding (secure with :class:`~serving.security.tls.RotatingServerCredentials`, or
  plaintext),
* a :class:`~serving.security.reloader.SecurityReloader` that re-reads the tokens and TLS files
  every ``poll_seconds`` and on SIGHUP.

Secure by default (:meth:`AccessOptions.check_exposure`): a server listening on anything but
a loopback address must have TLS *and* tokens, unless ``insecure`` says the network is
protected otherwise (a service mesh terminating mutual TLS in front of it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc

from serving.errors import RecsysError
from serving.metrics import ServingMetrics
from serving.security.auth import AuthInterceptor
from serving.security.reloader import SecurityReloader
from serving.security.tls import RotatingServerCredentials, TlsError, TlsFiles, load_tls
from serving.security.tokens import TokenFileError, load_tokens


class AccessConfigError(RecsysError):
    """A TLS or tokens file given at start-up is missing or invalid (the message names it)."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (``127.0.0.0/8``, ``::1``)."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


@dataclass(frozen=True, slots=True)
class AccessOptions:
    """The ``--tls-*``, ``--auth-tokens`` and ``--insecure`` flags. Picklable (``--workers N``)."""

    tls: TlsFiles | None = None
    auth_tokens: Path | None = None
    insecure: bool = False
    # Seconds between checks of the tokens and TLS files for changes (SIGHUP: at once).
    poll_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not self.poll_seconds > 0:
            raise ValueError(f"security_poll_s: must be > 0, got {self.poll_seconds}")

    def check_exposure(self, host: str) -> None:
        """Raise :class:`ValueError` when ``host`` is reachable from other machines without
        TLS and tokens and ``insecure`` was not given; the message names the flags."""
        if self.insecure or is_loopback(host):
            return
        missing = []
        if self.tls is None:
            missing.append("--tls-cert/--tls-key")
        if self.auth_tokens is None:
            missing.append("--auth-tokens")
        if missing:
            raise ValueError(
                f"--host {host}: refusing to listen beyond loopback without {' and '.join(missing)} "
                "(anyone who can reach the port could read profiles and write events); give them, "
                "or --insecure when something else secures the network (e.g. a service mesh with mTLS)"
            )


class ServerAccess:
    """The loaded security of one server (see the module docstring)."""

    def __init__(
        self,
        options: AccessOptions,
        auth: AuthInterceptor | None,
        credentials: RotatingServerCredentials | None,
        metrics: ServingMetrics | None,
    ) -> None:
        self.options = options
        self.auth = auth
        self.credentials = credentials
        self.reloader = SecurityReloader(
            tokens_path=options.auth_tokens if auth is not None else None,
            tokens=auth.tokens if auth is not None else None,
            install_tokens=auth.install if auth is not None else None,
            tls_files=options.tls,
            credentials=credentials,
            metrics=metrics,
        )

    @classmethod
    def start(cls, options: AccessOptions, metrics: ServingMetrics | None = None) -> ServerAccess:
        """Load and validate the files; raises :class:`AccessConfigError` naming a bad one."""
        try:
            tokens = load_tokens(options.auth_tokens) if options.auth_tokens is not None else None
            material = load_tls(options.tls) if options.tls is not None else None
        except (TokenFileError, TlsError) as exc:
            raise AccessConfigError(str(exc)) from None
        auth = AuthInterceptor(tokens, metrics) if tokens is not None else None
        credentials = RotatingServerCredentials(material) if material is not None else None
        return cls(options, auth, credentials, metrics)

    @property
    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Interceptors to install inside the error-mapping one (which maps their errors)."""
        return [self.auth] if self.auth is not None else []

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        """Bind ``address`` with TLS when configured, else plaintext; returns the port bound."""
        if self.credentials is not None:
            return int(server.add_secure_port(address, self.credentials.credentials()))
        return int(server.add_insecure_port(address))

    def describe(self) -> str:
        """For the start-up log line: what protects the port (never a secret)."""
        parts = []
        if self.credentials is not None:
            parts.append("mutual TLS" if self.credentials.mutual else "TLS")
        if self.auth is not None:
            parts.append(f"bearer tokens ({len(self.auth.tokens.clients)} clients)")
        return " + ".join(parts) if parts else "plaintext, no tokens"
