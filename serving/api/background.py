"""Run the gRPC server on a background thread (demo, integration tests, embedding).

Production runs :func:`serving.api.server.run_server` on the main thread instead, where it
also handles SIGTERM.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from serving.api.server import ServerOptions, serve
from serving.lifecycle.live_models import EngineSource, LiveModels

_T = TypeVar("_T")


class BackgroundServer:
    """``with BackgroundServer(options, load) as server: server.port`` — started and SERVING
    on entry (or the startup error re-raised), drained and stopped on exit.

    ``load``: a callable returning the engine, or
    :class:`~serving.lifecycle.live_models.LiveModelOptions` (watched aliases, experiments);
    ``models`` is the server's :class:`~serving.lifecycle.live_models.LiveModels` once started.
    """

    def __init__(
        self,
        options: ServerOptions,
        load_engine: EngineSource,
        start_timeout: float = 60.0,
    ) -> None:
        self.options = options
        self.load_engine = load_engine
        self.models: LiveModels | None = None
        self.start_timeout = start_timeout
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="recsys-grpc-server", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            ready = asyncio.Event()
            waiter = asyncio.ensure_future(ready.wait())
            # Only a real "ready" counts: the waiter is also cancelled when serve() fails,
            # and that must not look like a started server (the error is set afterwards).
            waiter.add_done_callback(lambda f: None if f.cancelled() else self._ready.set())

            def bound(port: int) -> None:
                self.port = port

            def created(models: LiveModels) -> None:
                self.models = models

            try:
                await serve(
                    self.options,
                    self.load_engine,
                    ready=ready,
                    stop=self._stop,
                    on_bound=bound,
                    handle_signals=False,
                    on_models=created,
                )
            finally:
                waiter.cancel()

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the caller by __enter__
            self._error = exc
        finally:
            self._ready.set()

    @property
    def address(self) -> str:
        return f"{self.options.host}:{self.port}"

    def manage(self, work: Callable[[], _T], timeout: float = 60.0) -> _T:
        """Run ``work`` (e.g. ``server.models.check_aliases``) on the server's model
        management thread now, as its background tasks would, and return its result."""
        if self._loop is None or self.models is None:
            raise RuntimeError("server not started")
        models = self.models

        async def call() -> _T:
            return await asyncio.get_running_loop().run_in_executor(models.management, work)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        if not self._ready.wait(self.start_timeout):
            self.stop()
            raise TimeoutError(f"server did not become ready within {self.start_timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=self.options.grace_seconds + 30)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
