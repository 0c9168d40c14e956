"""Pseudonymous user ids: a keyed hash (HMAC-SHA256) of the raw id, key from the environment.

When ``[privacy] pseudonymise_user_ids`` is on, training replaces every user id by its
pseudonym once, right after the inputs are read, so everything downstream (the bundle's
``users.parquet`` and sequences, the user index, member profiles, the event log) holds
only pseudonyms. The manifest's ``privacy`` section records the scheme, the name of the
environment variable holding the key and a key fingerprint (never the key). Serving
builds the same :class:`Pseudonymiser` from that section (:func:`user_id_mapper`) and
hashes the raw ids of requests before any look-up; it refuses to load a pseudonymised
bundle without the key, or with a different key (the fingerprint disagrees).

Why HMAC and not a plain hash: user ids are low-entropy (sequential numbers, e-mail
addresses), so an unkeyed SHA-256 is reversed by hashing every candidate id. Without the
key, the pseudonyms cannot be linked back to the raw ids.

A pseudonym is ``p_`` and the first 32 hex digits (128 bits) of the HMAC: collisions are
negligible (about 1e-20 for 1e9 ids) and the id stays half the size. The prefix makes
pseudonymisation idempotent: an id that already is a pseudonym passes through unchanged,
so ids that come back from the service (a lookalike audience sent on to
``BatchRecommend``, events logged with pseudonyms, an event log used as training input)
are never hashed twice. A raw id of exactly that form would be taken as a pseudonym.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import polars as pl

from serving.errors import BundleError

SCHEME = "hmac-sha256-128"
"""Manifest value of ``privacy.user_ids`` for pseudonymised bundles."""
PREFIX = "p_"
_PSEUDONYM = re.compile(r"p_[0-9a-f]{32}")
DEFAULT_KEY_ENV = "RECSYS_ID_KEY"
MIN_KEY_LENGTH = 16
_HEX_DIGITS = 32
_FINGERPRINT_MESSAGE = b"recsys key fingerprint v1"


class PseudonymKeyError(BundleError):
    """The pseudonymisation key is missing, too short or not the one the bundle was built with."""


class Pseudonymiser:
    """Maps raw ids to pseudonyms with one secret key (thread-safe, stateless per call)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_LENGTH:
            raise PseudonymKeyError(f"pseudonymisation key: must be at least {MIN_KEY_LENGTH} bytes")
        self._key = key

    @classmethod
    def from_environment(cls, variable: str, environ: Mapping[str, str] | None = None) -> Pseudonymiser:
        """The pseudonymiser keyed by ``$variable``; raises :class:`PseudonymKeyError` naming
        the variable (never its value) when it is unset, empty or too short."""
        env = os.environ if environ is None else environ
        value = env.get(variable, "")
        if not value:
            raise PseudonymKeyError(
                f"user ids are pseudonymised but the key variable ${variable} is not set "
                "(set it to the key the data was pseudonymised with)"
            )
        if len(value.encode("utf-8")) < MIN_KEY_LENGTH:
            raise PseudonymKeyError(f"${variable}: the key must be at least {MIN_KEY_LENGTH} bytes")
        return cls(value.encode("utf-8"))

    def __call__(self, raw_id: str) -> str:
        """The pseudonym of one id (``p_`` + 32 lowercase hex digits); a pseudonym unchanged."""
        if is_pseudonym(raw_id):
            return raw_id
        digest = hmac.new(self._key, raw_id.encode("utf-8"), hashlib.sha256).hexdigest()
        return PREFIX + digest[:_HEX_DIGITS]

    def series(self, ids: pl.Series) -> pl.Series:
        """Pseudonyms of a string column (nulls stay null); each distinct id is hashed once."""
        distinct = ids.drop_nulls().unique()
        mapping = dict(zip(distinct.to_list(), (self(v) for v in distinct.to_list()), strict=True))
        return ids.replace_strict(mapping, default=None, return_dtype=pl.Utf8).alias(ids.name)

    def fingerprint(self) -> str:
        """Identifies the key without revealing it: lets serving reject a wrong key."""
        return hmac.new(self._key, _FINGERPRINT_MESSAGE, hashlib.sha256).hexdigest()[:16]

    def manifest_section(self, key_env: str) -> dict[str, Any]:
        """The bundle manifest's ``privacy`` section for data pseudonymised with this key."""
        return {"user_ids": SCHEME, "key_env": key_env, "key_fingerprint": self.fingerprint()}


def is_pseudonym(user_id: str) -> bool:
    """Whether ``user_id`` has the form of a pseudonym (``p_`` + 32 lowercase hex digits)."""
    return _PSEUDONYM.fullmatch(user_id) is not None


def identity(user_id: str) -> str:
    return user_id


def user_id_mapper(
    manifest: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Callable[[str], str]:
    """How serving turns a raw request user id into the bundle's id.

    Identity for bundles with raw ids (no ``privacy`` section, or ``user_ids`` = ``raw``);
    a :class:`Pseudonymiser` keyed from the environment variable the manifest names for
    pseudonymised ones. Raises :class:`PseudonymKeyError` (a :class:`BundleError`: the
    server refuses to start) when the key is missing, too short or has a different
    fingerprint, and :class:`BundleError` for an unknown scheme.
    """
    section = manifest.get("privacy") or {}
    scheme = section.get("user_ids", "raw")
    if scheme == "raw":
        return identity
    if scheme != SCHEME:
        raise BundleError(
            f"manifest privacy.user_ids {scheme!r} is not supported (this build reads {SCHEME})"
        )
    variable = str(section.get("key_env") or DEFAULT_KEY_ENV)
    pseudonymiser = Pseudonymiser.from_environment(variable, environ)
    if pseudonymiser.fingerprint() != section.get("key_fingerprint"):
        raise PseudonymKeyError(
            f"${variable} holds a different key from the one this bundle's user ids were "
            "pseudonymised with (key fingerprints differ)"
        )
    return pseudonymiser
