"""The ``recsys.v1.MemberProfiles`` servicer.

Same rules as :mod:`serving.api.recommender`: the request is validated here, the work (reading
the bundle's profiles once per engine, the optional tower pass for the embedding) runs
on the server's executor through the :class:`~serving.api.batcher.MicroBatcher`'s admission
control, domain errors are raised and mapped by :mod:`serving.api.interceptors` only, and
``DEADLINE_EXCEEDED`` is the one code set here.

Profiles follow the engine: they are read from the bundle of the engine currently in the
:class:`~serving.lifecycle.engine_holder.EngineHolder` (on first use, then cached for as long as that
engine lives), so a hot swap to a new bundle serves that bundle's profiles.

With a :class:`~serving.profiles.live.feed.LiveFeed` (a server with an event log), each
bundle's profiles are live: its snapshot plus the events logged after it, built from the
durable event log when the bundle is first asked for a profile (:mod:`serving.profiles.live`).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import grpc
import numpy as np
import numpy.typing as npt

from serving._proto.recsys.v1 import profiles_pb2 as pb2
from serving._proto.recsys.v1 import profiles_pb2_grpc as pb2_grpc
from serving.api.batcher import MicroBatcher
from serving.api.wire import validate_user_id
from serving.errors import FeatureUnavailableError
from serving.lifecycle.engine_holder import EngineHolder
from serving.profiles.live.feed import LiveFeed
from serving.profiles.live.profiles import LiveProfiles
from serving.profiles.live.spec import LiveSpec
from serving.profiles.store import ProfileRecord, ProfileStore
from serving.profiles.wire import to_profile


class _BundleLike(Protocol):
    path: Path
    manifest: dict[str, Any]


@runtime_checkable
class ProfileEngine(Protocol):
    """An engine backed by a bundle directory (:class:`serving.recommend.engine.TwoTowerEngine`)."""

    bundle: _BundleLike

    @property
    def model_version(self) -> str: ...

    def user_embedding(self, user_id: str) -> npt.NDArray[np.float32]: ...


class ProfileSource(Protocol):
    """Profiles by bundle user id: a :class:`ProfileStore` or :class:`LiveProfiles`."""

    def get(self, user_id: str, shown_id: str | None = None) -> ProfileRecord: ...


class ProfileStores:
    """One profile source per engine, opened on first use (thread-safe); live ones when a
    ``feed`` follows the event log (the spec is released when the engine is collected)."""

    def __init__(self, feed: LiveFeed | None = None) -> None:
        self._lock = threading.Lock()
        self._feed = feed
        self._stores: weakref.WeakKeyDictionary[Any, ProfileSource] = weakref.WeakKeyDictionary()

    def of(self, engine: ProfileEngine) -> ProfileSource:
        with self._lock:
            store = self._stores.get(engine)
            if store is None:
                store = self._open(engine)
                self._stores[engine] = store
            return store

    def _open(self, engine: ProfileEngine) -> ProfileSource:
        snapshot = ProfileStore.open(engine.bundle.path, engine.bundle.manifest)
        if self._feed is None:
            return snapshot
        spec = LiveSpec.of(snapshot.section)
        self._feed.attach(spec)
        weakref.finalize(engine, self._feed.detach, spec)
        return LiveProfiles(snapshot, self._feed.store, spec)


def bundle_id_of(engine: object) -> Callable[[str], str]:
    """Raw request id -> the bundle's id (pseudonym) when the engine maps ids, else as is."""
    mapper = getattr(engine, "bundle_user_id", None)
    return mapper if callable(mapper) else (lambda user_id: user_id)


class MemberProfilesServicer(pb2_grpc.MemberProfilesServicer):
    """Implements ``recsys.v1.MemberProfiles`` on the engine in ``holder``."""

    def __init__(self, holder: EngineHolder, batcher: MicroBatcher, feed: LiveFeed | None = None) -> None:
        self._holder = holder
        self._batcher = batcher
        self._stores = ProfileStores(feed)

    async def GetUserProfile(  # noqa: N802  (name fixed by the generated servicer)
        self, request: pb2.GetUserProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb2.UserProfile:
        user_id = validate_user_id(request.user_id)
        engine = self._holder.get()
        if not isinstance(engine, ProfileEngine):
            raise FeatureUnavailableError("the loaded engine has no bundle to read member profiles from")
        include_embedding = request.include_embedding

        def answer() -> pb2.UserProfile:
            record = self._stores.of(engine).get(bundle_id_of(engine)(user_id), shown_id=user_id)
            embedding = engine.user_embedding(user_id) if include_embedding else None
            return to_profile(user_id, record, engine.model_version, embedding)

        return await self._batcher.run(answer, context.time_remaining())
