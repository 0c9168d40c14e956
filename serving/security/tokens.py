"""The callers a server knows: the ``--auth-tokens`` TOML file and constant-time token look-up.

.. code-block:: toml

    [[client]]
    name = "web-frontend"        # in access logs and metrics; [A-Za-z0-9._-], 1..64 characters
    token_sha256 = "9f86d0..."   # SHA-256 of the token, 64 hex digits: the token itself is never stored
    scopes = ["recommender"]     # any of: recommender, profiles, audiences, events
    requests_per_s = 500         # optional: per-client token bucket (burst = 1 s worth)

Contract of :func:`parse_tokens`: unknown keys, a bad name or hash, an unknown or missing
scope, a non-positive rate, duplicate names or hashes, and a file without any client are
refused with :class:`TokenFileError` naming the file, the client and the problem. Error
messages never quote a hash (it is not the token, but there is no need to spread it).

:meth:`TokenTable.authenticate` hashes the presented token and compares the digest with
every stored hash using :func:`hmac.compare_digest`, without stopping at a match, so the
time taken does not depend on which (or whether a) client matched.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from serving.errors import RecsysError

_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEX_SHA256: Final = re.compile(r"[0-9a-fA-F]{64}")
_CLIENT_KEYS: Final = frozenset({"name", "token_sha256", "scopes", "requests_per_s"})


class Scope(StrEnum):
    """A right to call one ``recsys.v1`` service (mapped in :mod:`serving.security.auth`)."""

    RECOMMENDER = "recommender"
    PROFILES = "profiles"
    AUDIENCES = "audiences"
    EVENTS = "events"


_SCOPE_NAMES: Final = ", ".join(s.value for s in Scope)


class TokenFileError(RecsysError):
    """The tokens file is unreadable or invalid; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One caller: its name, the SHA-256 digest of its token, its scopes and optional rate."""

    name: str
    token_sha256: bytes
    scopes: frozenset[Scope]
    requests_per_s: float | None = None

    def __repr__(self) -> str:  # never print the digest (e.g. in a traceback's locals)
        return f"ClientSpec(name={self.name!r}, scopes={sorted(self.scopes)}, rate={self.requests_per_s})"


@dataclass(frozen=True, slots=True)
class TokenTable:
    """The clients of one tokens file; ``digest`` is the SHA-256 of the file's bytes."""

    clients: tuple[ClientSpec, ...]
    digest: str = ""

    def authenticate(self, token: str) -> ClientSpec | None:
        """The client whose token this is, or None. Constant-time over the table."""
        presented = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: ClientSpec | None = None
        for client in self.clients:
            # No early exit: every stored digest is compared whatever the outcome.
            if hmac.compare_digest(presented, client.token_sha256):
                found = client
        return found

    def by_name(self) -> Mapping[str, ClientSpec]:
        return {c.name: c for c in self.clients}


def hash_token(token: str) -> str:
    """The ``token_sha256`` value for ``token`` (what ``printf %s TOKEN | sha256sum`` prints)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_tokens(path: Path) -> TokenTable:
    """Read and parse the tokens file at ``path``; raises :class:`TokenFileError`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot read the tokens file: {exc.strerror or exc}") from exc
    return parse_tokens(data, path)


def parse_tokens(data: bytes, source: Path) -> TokenTable:
    """The :class:`TokenTable` of a tokens file's bytes; raises :class:`TokenFileError`."""
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TokenFileError(f"{source}: not a valid TOML file: {exc}") from None
    unknown = sorted(set(document) - {"client"})
    if unknown:
        raise TokenFileError(f"{source}: unknown top-level key(s) {unknown}; expected [[client]] tables")
    entries = document.get("client", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise TokenFileError(f"{source}: 'client' must be an array of tables ([[client]])")
    if not entries:
        raise TokenFileError(f"{source}: no [[client]] entries: every call would be refused")
    clients = tuple(_client(entry, i, source) for i, entry in enumerate(entries))
    _no_duplicates(clients, source)
    return TokenTable(clients, file_digest(data))


def _client(entry: dict[str, Any], index: int, source: Path) -> ClientSpec:
    name = entry.get("name")
    where = f"{source}: client {name!r}" if isinstance(name, str) else f"{source}: client #{index + 1}"
    unknown = sorted(set(entry) - _CLIENT_KEYS)
    if unknown:
        raise TokenFileError(f"{where}: unknown key(s) {unknown}; known: {sorted(_CLIENT_KEYS)}")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TokenFileError(f"{where}: name must be 1..64 characters of [A-Za-z0-9._-]")
    digest = entry.get("token_sha256")
    if not isinstance(digest, str) or not _HEX_SHA256.fullmatch(digest):
        raise TokenFileError(
            f"{where}: token_sha256 must be the SHA-256 of the token as 64 hex digits "
            '(printf %s "$TOKEN" | sha256sum)'
        )
    return ClientSpec(
        name=name,
        token_sha256=bytes.fromhex(digest),
        scopes=_scopes(entry.get("scopes"), where),
        requests_per_s=_rate(entry.get("requests_per_s"), where),
    )


def _scopes(value: Any, where: str) -> frozenset[Scope]:
    if not isinstance(value, list) or not value:
        raise TokenFileError(f"{where}: scopes must be a non-empty list of: {_SCOPE_NAMES}")
    scopes = set()
    for scope in value:
        try:
            scopes.add(Scope(scope))
        except ValueError:
            raise TokenFileError(f"{where}: unknown scope {scope!r}; known: {_SCOPE_NAMES}") from None
    return frozenset(scopes)


def _rate(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise TokenFileError(f"{where}: requests_per_s must be a positive number, got {value!r}")
    return float(value)


def _no_duplicates(clients: Sequence[ClientSpec], source: Path) -> None:
    names: set[str] = set()
    digests: dict[bytes, str] = {}
    for client in clients:
        if client.name in names:
            raise TokenFileError(f"{source}: client {client.name!r} is listed twice")
        names.add(client.name)
        other = digests.get(client.token_sha256)
        if other is not None:
            raise TokenFileError(
                f"{source}: clients {other!r} and {client.name!r} share one token (each needs its own)"
            )
        digests[client.token_sha256] = client.name
