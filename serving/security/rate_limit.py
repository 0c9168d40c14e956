"""Per-caller request rates: one token bucket per client of the tokens file.

A bucket holds at most ``burst`` tokens (default: one second's worth, ``rate``), refills
at ``rate`` tokens per second and each call takes one; a call finding it empty is over
its rate (``RESOURCE_EXHAUSTED``: the caller should back off). Buckets start full.

Not thread-safe: the server checks rates on its event loop thread only
(:mod:`serving.security.auth`), where no lock is needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from serving.security.tokens import ClientSpec


class TokenBucket:
    """``rate`` calls per second on average, bursts of up to ``burst`` (default ``rate``)."""

    __slots__ = ("_clock", "_level", "_updated", "burst", "rate")

    def __init__(
        self, rate: float, burst: float | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate: must be > 0, got {rate}")
        self.rate = rate
        # At least one call must fit, or a rate below 1/s would refuse everything.
        self.burst = max(1.0, rate if burst is None else burst)
        self._clock = clock
        self._level = self.burst
        self._updated = clock()

    def try_take(self) -> bool:
        """Take one token if there is one; False when the caller is over its rate."""
        now = self._clock()
        self._level = min(self.burst, self._level + (now - self._updated) * self.rate)
        self._updated = now
        if self._level >= 1.0:
            self._level -= 1.0
            return True
        return False


class ClientRates:
    """The buckets of the clients that have a ``requests_per_s``, by client name.

    :meth:`update` follows a reloaded tokens file: a client whose rate did not change keeps
    its bucket (a reload must not hand every caller a fresh burst), others get new ones.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def update(self, clients: Mapping[str, ClientSpec]) -> None:
        buckets: dict[str, TokenBucket] = {}
        for name, client in clients.items():
            if client.requests_per_s is None:
                continue
            old = self._buckets.get(name)
            keep = old is not None and old.rate == client.requests_per_s
            buckets[name] = (
                old if keep and old is not None else TokenBucket(client.requests_per_s, clock=self._clock)
            )
        self._buckets = buckets

    def allow(self, name: str) -> bool:
        """True when client ``name`` may make one more call now (always, without a rate)."""
        bucket = self._buckets.get(name)
        return bucket is None or bucket.try_take()
