"""A shared model registry on this machine: PostgreSQL plus an ``mlflow server`` in front of it.

What a fleet's replicas and training point at in production (an MLflow tracking server whose
backend store is PostgreSQL and which proxies artifacts), started from nothing on loopback for
the integration tests and benchmarks:

* :class:`PostgresCluster`: Debian's ``postgresql`` binaries (``initdb`` + ``pg_ctl``), a
  throw-away cluster in a temporary directory on a free port, listening on 127.0.0.1 only
  (no Unix socket), ``trust`` authentication, durability off (a test cluster lives for
  minutes). PostgreSQL refuses to run as root, so under root it runs as ``nobody``.
* :class:`MlflowServer`: ``mlflow server --backend-store-uri postgresql://...
  --artifacts-destination DIR`` on a free loopback port; :meth:`MlflowServer.stop` and
  :meth:`MlflowServer.start` restart it on the same port (registry outages in the tests).

Nothing here is part of the service: the service only sees the tracking URI. Both classes
raise :class:`StackUnavailableError` when a binary is missing (callers skip or fail on it) and
:class:`RuntimeError` when a process does not come up (its log is named).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
_UNPRIVILEGED_USER = "nobody"
_START_TIMEOUT_S = 120.0


class StackUnavailableError(RuntimeError):
    """A binary the registry stack needs is not installed (the message says which and how)."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def postgres_bindir() -> Path:
    """The directory of ``initdb`` / ``pg_ctl``: ``$RECSYS_PG_BINDIR``, then ``PATH``, then
    Debian's ``/usr/lib/postgresql/<newest>/bin``. Raises :class:`StackUnavailableError`."""
    explicit = os.environ.get("RECSYS_PG_BINDIR", "")
    candidates = [Path(explicit)] if explicit else []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    candidates.extend(Path(p) for p in reversed(versions))
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    raise StackUnavailableError("PostgreSQL's initdb/pg_ctl not found (Debian: apt-get install postgresql)")


def _wait_port(port: int, alive: object, what: str, log: Path, timeout: float = _START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((HOST, port)) == 0:
                return
        if callable(alive) and not alive():
            raise RuntimeError(f"{what} exited during start-up; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on {HOST}:{port} within {timeout:.0f} s; see {log}")
        time.sleep(0.1)


class PostgresCluster:
    """A temporary PostgreSQL cluster on ``127.0.0.1:port`` with one database (see module doc).

    Use as a context manager; :attr:`uri` is the SQLAlchemy URL MLflow takes. The cluster's
    files are removed on exit.
    """

    def __init__(self, database: str = "mlflow", user: str = "recsys") -> None:
        self.bindir = postgres_bindir()
        self.database = database
        self.user = user
        self.port = 0
        self.root = Path(tempfile.mkdtemp(prefix="recsys-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        # initdb refuses root; everything the server touches then belongs to an unprivileged user.
        self._run_as = _UNPRIVILEGED_USER if os.geteuid() == 0 else None
        if self._run_as is not None:
            shutil.chown(self.root, user=self._run_as)

    @property
    def uri(self) -> str:
        return f"postgresql://{self.user}@{HOST}:{self.port}/{self.database}"

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            [str(self.bindir / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            user=self._run_as,
            cwd=self.root,
            check=False,
            timeout=_START_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip() or done.stdout}")

    def __enter__(self) -> PostgresCluster:
        try:
            self._run(
                "initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync"
            )
            self.port = free_port()
            server_options = (
                f"-p {self.port} -c listen_addresses={HOST} -c unix_socket_directories='' "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            self._run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", server_options, "-w", "start"
            )
            self._run("createdb", "-h", HOST, "-p", str(self.port), "-U", self.user, self.database)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` over ``backend_uri`` with proxied artifacts in ``artifacts``.

    The tracking URI (:attr:`uri`) is ``http://127.0.0.1:PORT``; the port is chosen once, so
    :meth:`stop` + :meth:`start` bring the same registry back at the same address.
    """

    def __init__(self, backend_uri: str, artifacts: Path, log: Path) -> None:
        self.backend_uri = backend_uri
        self.artifacts = artifacts
        self.log = log
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        mlflow = Path(sys.executable).with_name("mlflow")
        self._mlflow = str(mlflow) if mlflow.is_file() else shutil.which("mlflow")
        if self._mlflow is None:
            raise StackUnavailableError(
                "the mlflow command is not installed (pip install the project's dev extra)"
            )

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers (the first start creates the schema)."""
        assert self._mlflow is not None
        argv = [
            *(self._mlflow, "server", "--backend-store-uri", self.backend_uri),
            *("--artifacts-destination", str(self.artifacts), "--host", HOST, "--port", str(self.port)),
            *("--workers", "1"),
        ]
        with self.log.open("ab") as out:
            # Its own process group: the server's worker processes stop with it.
            self._proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(self.port, self.alive, "mlflow server", self.log)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._healthy():
            if not self.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not become healthy; see {self.log}")
            time.sleep(0.2)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """Stop the server (its whole process group) and wait until the port is closed."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
