"""The gRPC layer: the server process and everything that speaks ``recsys.v1``.

Owns the server's wiring and shutdown (:mod:`~serving.api.server`), one servicer per service
(:mod:`~serving.api.recommender`, :mod:`~serving.api.audiences`, :mod:`~serving.api.profiles`,
:mod:`~serving.api.events`), the request/response mapping (:mod:`~serving.api.wire`), input bounds
and request parsing (:mod:`~serving.api.bounds`, :mod:`~serving.api.decode`), the one place
domain errors become status codes (:mod:`~serving.api.interceptors`), micro-batching
(:mod:`~serving.api.batcher`), worker processes and the container health probe.

May import every other ``serving`` package; nothing in ``serving`` imports it except the entry
points (:mod:`serving.cli`, ``serving.__main__``).
"""

__all__ = [
    "audiences",
    "background",
    "batcher",
    "bounds",
    "decode",
    "events",
    "healthcheck",
    "interceptors",
    "profiles",
    "recommender",
    "server",
    "wire",
    "workers",
]
