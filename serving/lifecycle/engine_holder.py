"""The engine a server (or an experiment variant) currently answers with, swappable from any thread."""

from __future__ import annotations

import threading

from serving.errors import NotReadyError
from serving.recommend.types import RecommenderEngine


class EngineHolder:
    """Holds the engine currently serving; safe to read and swap from any thread.

    Each RPC reads the engine once and uses that object for the whole call, so a swap
    never mixes two models within one response.
    """

    def __init__(self, engine: RecommenderEngine | None = None) -> None:
        self._lock = threading.Lock()
        self._engine = engine

    def get(self) -> RecommenderEngine:
        """The current engine. Raises :class:`NotReadyError` when none is loaded yet."""
        with self._lock:
            engine = self._engine
        if engine is None:
            raise NotReadyError("model not loaded yet; retry later")
        return engine

    def swap(self, engine: RecommenderEngine) -> RecommenderEngine | None:
        """Install ``engine`` for subsequent calls; returns the previous one (None if empty).

        Calls already running keep the engine they started with.
        """
        with self._lock:
            previous, self._engine = self._engine, engine
        return previous
