"""A throw-away Redis server on loopback: the live-profile store of the tests and benchmarks.

:class:`RedisServer` runs Debian's ``redis-server`` in a temporary directory on a free
127.0.0.1 port (no persistence, protected mode on) and stops it on exit. Raises
:class:`~benchmarks.registry_stack.StackUnavailableError` when the binary is missing (callers
skip or fail on it) and :class:`RuntimeError` when it does not come up (its log is named).
Nothing here is part of the service: the service only sees ``redis://127.0.0.1:PORT/0``.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from benchmarks.registry_stack import HOST, StackUnavailableError, free_port

_START_TIMEOUT_S = 20.0


class RedisServer:
    """``with RedisServer() as redis: redis.url``."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackUnavailableError(
                "redis-server is not installed (Debian: apt-get install redis-server)"
            )
        self._binary = binary
        self._dir = Path(tempfile.mkdtemp(prefix="recsys-redis-"))
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        log = self._dir / "redis.log"
        command = [
            self._binary,
            "--bind", HOST,
            "--port", str(self.port),
            "--dir", str(self._dir),
            "--save", "",
            "--appendonly", "no",
            "--protected-mode", "yes",
            "--logfile", str(log),
        ]  # fmt: skip
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + _START_TIMEOUT_S
        client = redis.Redis(host=HOST, port=self.port, socket_connect_timeout=1)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self._process.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"redis-server did not start; see {log}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
