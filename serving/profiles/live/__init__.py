"""Live member profiles: the bundle's snapshot plus the events logged after it.

* :mod:`~serving.profiles.live.spec`: what a snapshot counts (its clock, event types, money
  rules) and the (user, day) partials of a batch of logged events after that clock;
* :mod:`~serving.profiles.live.stores`: :class:`ProfileDeltaStore`, where partials are kept,
  with the embedded (in-process) implementation;
* :mod:`~serving.profiles.live.redis_store`: the Redis implementation shared by a fleet;
* :mod:`~serving.profiles.live.feed`: follows the event log, builds a snapshot's partials
  from the durable log and applies every new batch;
* :mod:`~serving.profiles.live.profiles`: one member's profile as it stands (snapshot row
  extended by the partials with the same functions that built the snapshot).

The design and its limits: ``docs/profiles-live.md``.
"""

__all__ = ["feed", "profiles", "redis_store", "spec", "stores"]
