""":class:`RedisDeltaStore`: live profile partials in Redis, shared by every replica.

``recsys serve --profile-store redis://127.0.0.1:6379/0``: each replica adds the batches it
accepted; every replica reads every member's partials, so an event sent to one replica shows
in the profile any replica answers. Keys (``P`` = ``recsys:profiles``, ``K`` = the spec key):

* ``P:specs``: set of registered spec keys; ``P:K:spec``: the spec (JSON);
* ``P:K:u:<user id>``: hash of the user's cells ``"<day>:<column>"`` (sum / min / max);
* ``P:K:as_of``: latest event time applied;
* ``P:K:logs``: the ids of the event-log directories whose durable events were added: each
  replica adds its own log once per spec (the first process of that directory to register).

Every cell update of a batch runs in one Lua script (atomic, one round trip). Keys expire
after :data:`KEY_TTL_S` without writes, so the partials of an old snapshot go away by
themselves. If Redis loses a spec (restarted without persistence, evicted), the replicas find
it missing and add their durable event logs again.

Credentials never come from the command line: the URL must not hold any; the password is
read from ``$RECSYS_PROFILE_STORE_PASSWORD`` or the file named by
``$RECSYS_PROFILE_STORE_PASSWORD_FILE`` (user name: ``$RECSYS_PROFILE_STORE_USERNAME``).
Plain ``redis://`` is accepted for loopback hosts only; anything else needs ``rediss://``
(TLS) unless the operator passes ``insecure``.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import polars as pl

from serving.profiles.live.spec import LiveSpec
from serving.profiles.live.stores import UserDelta, cells, latest_event, parts_of

PREFIX = "recsys:profiles"
KEY_TTL_S = 14 * 86_400
"""Seconds a spec's keys live after their last write."""
PASSWORD_ENV = "RECSYS_PROFILE_STORE_PASSWORD"
PASSWORD_FILE_ENV = "RECSYS_PROFILE_STORE_PASSWORD_FILE"
USERNAME_ENV = "RECSYS_PROFILE_STORE_USERNAME"

_REGISTER = """
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
local added = redis.call('SADD', KEYS[3], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return added
"""

# KEYS[1] = as_of, KEYS[2..] = user hashes; ARGV = ttl, latest, then (key index, field, rule, value)*.
_ADD = """
local ttl = ARGV[1]
local latest = tonumber(ARGV[2])
if latest >= 0 then
  local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
  if latest > current then redis.call('SET', KEYS[1], ARGV[2]) end
end
redis.call('EXPIRE', KEYS[1], ttl)
for i = 3, #ARGV, 4 do
  local key = KEYS[tonumber(ARGV[i])]
  local field = ARGV[i + 1]
  local rule = ARGV[i + 2]
  if rule == 'sum' then
    redis.call('HINCRBYFLOAT', key, field, ARGV[i + 3])
  else
    local old = redis.call('HGET', key, field)
    local value = tonumber(ARGV[i + 3])
    local below = old and value < tonumber(old)
    local above = old and value > tonumber(old)
    if (not old) or (rule == 'min' and below) or (rule == 'max' and above) then
      redis.call('HSET', key, field, ARGV[i + 3])
    end
  end
end
for k = 2, #KEYS do redis.call('EXPIRE', KEYS[k], ttl) end
return 0
"""


class ProfileStoreConfigError(ValueError):
    """A ``--profile-store`` URL or its credentials are not acceptable (message names the problem)."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _password() -> str | None:
    given = os.environ.get(PASSWORD_ENV)
    if given:
        return given
    path = os.environ.get(PASSWORD_FILE_ENV)
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ProfileStoreConfigError(
                f"{PASSWORD_FILE_ENV}: cannot read {path}: {exc.strerror}"
            ) from None
    return None


def check_url(url: str, *, insecure: bool = False) -> None:
    """Refuse a URL with credentials, an unknown scheme, or plain text beyond loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ProfileStoreConfigError(f"profile store {parts.scheme}://...: use redis:// or rediss:// (TLS)")
    if parts.username or parts.password:
        raise ProfileStoreConfigError(
            f"profile store URL: credentials in the URL are refused (they would show in the process list); "
            f"set ${PASSWORD_ENV} or ${PASSWORD_FILE_ENV} (and ${USERNAME_ENV})"
        )
    if not parts.hostname:
        raise ProfileStoreConfigError("profile store URL: no host")
    if parts.scheme == "redis" and not _loopback(parts.hostname) and not insecure:
        raise ProfileStoreConfigError(
            f"profile store {parts.hostname}: plain redis:// only on loopback; use rediss:// (TLS) "
            "or --insecure behind a network that is secured otherwise"
        )


class RedisDeltaStore:
    """:class:`~serving.profiles.live.stores.ProfileDeltaStore` on a Redis server."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._register = client.register_script(_REGISTER)
        self._add = client.register_script(_ADD)
        self._known: dict[str, LiveSpec] = {}
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, url: str, *, insecure: bool = False, timeout_s: float = 2.0) -> RedisDeltaStore:
        """A store on the server at ``url`` (checked with :func:`check_url`); pings it once."""
        check_url(url, insecure=insecure)
        import redis

        client = redis.Redis.from_url(
            url,
            password=_password(),
            username=os.environ.get(USERNAME_ENV) or None,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        try:
            client.ping()
        except redis.RedisError as exc:
            client.close()
            host = urlsplit(url).hostname
            raise ProfileStoreConfigError(f"profile store at {host}: {type(exc).__name__}: {exc}") from None
        return cls(client)

    def _key(self, spec: LiveSpec, name: str) -> str:
        return f"{PREFIX}:{spec.key}:{name}"

    def register(self, spec: LiveSpec, log_id: str) -> bool:
        keys = [f"{PREFIX}:specs", self._key(spec, "spec"), self._key(spec, "logs")]
        with self._lock:
            self._known[spec.key] = spec
        return bool(self._register(keys=keys, args=[spec.key, spec.to_json(), KEY_TTL_S, log_id]))

    def specs(self) -> list[LiveSpec]:
        keys = sorted(k.decode() for k in self._client.smembers(f"{PREFIX}:specs"))
        with self._lock:
            unknown = [k for k in keys if k not in self._known]
        if unknown:
            texts = self._client.mget([f"{PREFIX}:{k}:spec" for k in unknown])
            gone = []
            with self._lock:
                for key, text in zip(unknown, texts, strict=True):
                    if text is None:
                        gone.append(key)
                    else:
                        self._known[key] = LiveSpec.from_json(text)
            if gone:  # expired: no replica wrote for KEY_TTL_S
                self._client.srem(f"{PREFIX}:specs", *gone)
        with self._lock:
            return [self._known[k] for k in keys if k in self._known]

    def add(self, spec: LiveSpec, parts: pl.DataFrame) -> None:
        if parts.height == 0:
            return
        users: dict[str, int] = {}
        args: list[str | int | float] = [KEY_TTL_S, latest_event(parts) or -1]
        for user_id, name, rule, value in cells(parts):
            index = users.setdefault(user_id, len(users) + 2)  # KEYS[1] is as_of (Lua is 1-based)
            args.extend((index, name, rule, repr(value)))
        keys = [self._key(spec, "as_of"), *[self._key(spec, f"u:{u}") for u in users]]
        self._add(keys=keys, args=args)

    def read(self, spec: LiveSpec, user_id: str) -> UserDelta:
        pipe = self._client.pipeline(transaction=False)
        pipe.hgetall(self._key(spec, f"u:{user_id}"))
        pipe.get(self._key(spec, "as_of"))
        values, as_of = pipe.execute()
        cells_of = {k.decode(): float(v) for k, v in values.items()}
        return UserDelta(parts_of(user_id, cells_of, spec), int(as_of) if as_of is not None else None)

    def release(self, spec: LiveSpec) -> bool:
        """Kept: other replicas may serve it; its keys expire after :data:`KEY_TTL_S` unused."""
        return False

    def close(self) -> None:
        self._client.close()
