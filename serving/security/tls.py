"""Server TLS: the ``--tls-cert`` / ``--tls-key`` / ``--tls-client-ca`` files, validated, and
credentials whose certificates can be replaced while the server runs.

:func:`load_tls` reads and checks the files before gRPC sees them, so a bad file is a clear
error naming it (gRPC alone reports "Failed to add port" or fails every handshake):
the certificate chain must parse as PEM X.509 and its first certificate must not have
expired; the key must be an unencrypted PEM private key matching that certificate; the
client CA (mutual TLS) must parse as PEM certificates. Messages name the file, never
its content.

:class:`RotatingServerCredentials` wraps ``grpc.dynamic_ssl_server_credentials``: gRPC asks
it for the current certificate before each new TLS handshake, so :meth:`install` of new
material (re-read on SIGHUP, :mod:`serving.security.reloader`) applies to every connection
made afterwards, without a restart; connections already open keep their session. With a
client CA a client must present a certificate signed by it, or the handshake fails.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from serving.errors import RecsysError


class TlsError(RecsysError):
    """A TLS file is missing, unreadable or invalid; the message names the file and why."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the server's certificate chain, key and (mutual TLS) client CA live."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The validated bytes of :class:`TlsFiles`; ``digest`` changes when any file does."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    digest: str
    not_after: dt.datetime

    def __repr__(self) -> str:  # never print the key
        return f"TlsMaterial(digest={self.digest[:12]}, not_after={self.not_after.isoformat()})"


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{what} {path}: cannot read it: {exc.strerror or exc}") from None


def _certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsError(f"{what} {path}: not a PEM X.509 certificate") from None
    if not certificates:
        raise TlsError(f"{what} {path}: holds no certificate")
    return certificates


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_tls(files: TlsFiles, *, now: dt.datetime | None = None) -> TlsMaterial:
    """Read and validate ``files``; raises :class:`TlsError` naming the bad file."""
    cert_bytes = _read(files.cert, "--tls-cert")
    key_bytes = _read(files.key, "--tls-key")
    leaf = _certificates(cert_bytes, files.cert, "--tls-cert")[0]
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except (ValueError, TypeError):
        # TypeError: the key is encrypted. Never quote the file.
        raise TlsError(f"--tls-key {files.key}: not an unencrypted PEM private key") from None
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise TlsError(f"--tls-key {files.key}: does not match the certificate in {files.cert}")
    moment = now if now is not None else dt.datetime.now(dt.UTC)
    if leaf.not_valid_after_utc <= moment:
        raise TlsError(
            f"--tls-cert {files.cert}: expired on {leaf.not_valid_after_utc.isoformat()} "
            "(every handshake would fail)"
        )
    ca_bytes = None
    if files.client_ca is not None:
        ca_bytes = _read(files.client_ca, "--tls-client-ca")
        _certificates(ca_bytes, files.client_ca, "--tls-client-ca")
    digest = hashlib.sha256()
    for part in (cert_bytes, key_bytes, ca_bytes or b""):
        digest.update(hashlib.sha256(part).digest())
    return TlsMaterial(cert_bytes, key_bytes, ca_bytes, digest.hexdigest(), leaf.not_valid_after_utc)


def _configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(material.private_key, material.cert_chain)], root_certificates=material.client_ca
    )


class RotatingServerCredentials:
    """Server credentials for ``material`` whose certificates :meth:`install` can replace.

    Mutual TLS (a client CA) is decided once, by the initial material: the flags that ask
    for it do not change while the server runs.
    """

    def __init__(self, material: TlsMaterial) -> None:
        self._lock = threading.Lock()
        self._current = material
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.mutual = material.client_ca is not None

    @property
    def current(self) -> TlsMaterial:
        return self._current

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            _configuration(self._current),
            self._fetch,
            require_client_authentication=self.mutual,
        )

    def install(self, material: TlsMaterial) -> None:
        """Use ``material`` for every handshake from now on. Raises :class:`TlsError` when it
        would switch mutual TLS on or off."""
        if (material.client_ca is not None) != self.mutual:
            raise TlsError("mutual TLS cannot be switched on or off while serving; restart instead")
        configuration = _configuration(material)
        with self._lock:
            self._current = material
            self._pending = configuration

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC before each new handshake (on a gRPC thread): None = keep the current one.
        with self._lock:
            pending, self._pending = self._pending, None
        return pending
