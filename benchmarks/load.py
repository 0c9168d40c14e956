"""Load benchmark of the gRPC server, driven by an independent load generator (h2load).

``python -m benchmarks.load --bundle DIR [--users F] [--concurrency 64] ...``

Both servers are started (one at a time carries load), on loopback (127.0.0.1) only:

1. **echo, closed loop**: a bare ``grpc.aio`` server (no interceptors, no engine) whose
   ``/recsys.v1.Recommender/Recommend`` handler returns the request bytes, at
   ``--concurrency`` streams in flight for ``--duration`` seconds: the floor of what this
   Python gRPC stack can do on this machine.
2. **Recommend, closed loop**: the real server (``python -m serving``, the production
   entry point, with the given serving flags) at the same concurrency. Steps 1 and 2
   alternate for ``--rounds`` rounds; the ratio is the median of the per-round ratios
   (on a shared machine, what else runs changes between runs).
3. **Recommend, open loop**: ``--rate`` requests/s with Poisson arrivals for
   ``--open-duration`` seconds (h2load timing scripts; arrivals do not wait for answers),
   for the latency percentiles.

Each request is a real ``RecommendRequest`` of a random user (``--users``, default: the
bundle's users) in gRPC framing (1 byte compressed flag, 4 bytes big-endian length, the
serialized message). h2load sends one body per process, so each run spreads its load
over ``--loadgens`` (closed loop) / ``--open-loadgens`` (open loop) h2load processes, each
with its own user. Latency percentiles come from h2load's per-request logs (the HTTP/2
stream: send to end of response, warm-up excluded); throughput counts completed streams
per second of the measured window.

h2load only sees HTTP status 200, not the gRPC status in the trailers, so the gRPC
status is verified separately: every body is first sent through a real gRPC client
(must be ``OK`` with k items), and the server's own
``recsys_rpc_duration_seconds_count{method="/recsys.v1.Recommender/Recommend"}`` (its
``/metrics``) is read before and after each run: the table shows the share of calls that
ended ``OK``.

The real server is started once the echo server is up; its start-up time (process
start to health ``SERVING``: the bundle loaded and verified) and its memory (RSS and the
kernel's peak, ``VmHWM``, as ``/usr/bin/time -v`` reports it; children included with
``--workers``) at ``SERVING`` and after the runs are printed under the table.

With ``--secure`` a second real server runs beside the plaintext one, with TLS
(``--tls-cert/--tls-key``: a throwaway CA and certificate made for the run) and bearer tokens
(``--auth-tokens``: one client with a random token made for the run); h2load speaks TLS
(``https://``, ALPN h2) and sends the token in the ``authorization`` header. Every round then
runs echo, Recommend plaintext and Recommend TLS + token, and the table ends with the median
TLS + token / plaintext throughput ratio: the cost of the transport encryption and the token
check, measured in the same run. (h2load cannot present a client certificate, so mutual TLS
is not measured; its extra cost is one signature per handshake, not per call.)

With ``--tracing`` a third real server runs beside the plaintext one with OpenTelemetry tracing
on (:mod:`serving.observability.tracing`, switched on the way an operator does it:
``OTEL_TRACES_EXPORTER=otlp``, ``OTEL_EXPORTER_OTLP_ENDPOINT``), exporting every span over OTLP/gRPC
to a sink on loopback (a process of this script that speaks the collector's trace service and
counts what it receives).
Every round then also runs Recommend traced, and the table ends with the median traced / untraced
throughput ratio; the spans the sink received are printed under it. The untraced servers run with
every ``OTEL_*`` variable removed from their environment, so "off" is off whatever the shell has.
The sink shares the machine's cores with the server (a real collector would not): the figure is an
upper bound of tracing's cost.

Needs ``h2load`` (Debian: ``apt-get install nghttp2-client``). Prints a table; ``--json``
also writes the figures to a file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import grpc

from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api import healthcheck
from serving.client import ClientTLS, open_channel
from serving.security import selfsigned
from serving.security.tokens import hash_token

METHOD = "/recsys.v1.Recommender/Recommend"
HOST = "127.0.0.1"
_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RunResult:
    """One h2load run (all its processes together)."""

    name: str
    concurrency: int | None  # streams in flight (closed loop); None for open loop
    offered_rps: float | None  # open loop: the arrival rate asked for
    seconds: float
    requests: int  # HTTP 200 responses in the measured window
    failed: int  # h2load failed + errored + non-200 (whole run)
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    # Server-side status codes of the method's calls during the run (None: not measured);
    # calls still in flight when h2load stops end CANCELLED.
    grpc_codes: dict[str, int] | None


@dataclass(frozen=True)
class Startup:
    """The real server's start-up and memory (the process and its ``--workers`` children)."""

    seconds_to_serving: float  # process start to health SERVING (bundle loaded and verified)
    rss_at_serving_mib: float
    peak_rss_at_serving_mib: float  # VmHWM: the kernel's high-water mark, as /usr/bin/time -v
    # RssFile: the part of RSS that is file pages mapped into the process (memory-mapped
    # bundle files), which the kernel can drop and re-read; the rest is the process's own.
    file_rss_at_serving_mib: float = math.nan
    rss_after_runs_mib: float = math.nan
    peak_rss_after_runs_mib: float = math.nan
    file_rss_after_runs_mib: float = math.nan

    def describe(self) -> str:
        return (
            f"server start-up to SERVING {self.seconds_to_serving:.2f} s; RSS at SERVING "
            f"{self.rss_at_serving_mib:,.0f} MiB (peak {self.peak_rss_at_serving_mib:,.0f}, file-backed "
            f"{self.file_rss_at_serving_mib:,.0f}), after the runs {self.rss_after_runs_mib:,.0f} MiB "
            f"(peak {self.peak_rss_after_runs_mib:,.0f}, file-backed {self.file_rss_after_runs_mib:,.0f})"
        )


# --------------------------------------------------------------------- servers
def _echo_main(port: int) -> None:
    """The bare echo server: one generic unary handler returning the request bytes."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        handler = grpc.method_handlers_generic_handler(
            "recsys.v1.Recommender", {"Recommend": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"{HOST}:{port}")
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print("echo server ready", flush=True)
        await stop.wait()
        await server.stop(1.0)

    asyncio.run(main())


SINK_COUNT = "otlp sink spans received:"


def _otlp_sink_main(port: int) -> None:
    """An OTLP/gRPC trace receiver on loopback that counts the spans it is sent; prints the count
    (``SINK_COUNT N``) when stopped with SIGTERM."""
    from concurrent.futures import ThreadPoolExecutor

    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received = [0]

    class Sink(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(  # noqa: N802  (OTLP's method name)
            self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
        ) -> trace_service_pb2.ExportTraceServiceResponse:
            received[0] += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(max_workers=2), options=[("grpc.so_reuseport", 0)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"{HOST}:{port}")
    server.start()
    stop = [False]

    def on_term(signum: int, frame: object) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print("otlp sink ready", flush=True)
    while not stop[0]:
        time.sleep(0.1)
    server.stop(1.0)
    print(f"{SINK_COUNT} {received[0]}", flush=True)


def _sink_count(log: Path) -> int | None:
    for line in log.read_text().splitlines() if log.exists() else ():
        if line.startswith(SINK_COUNT):
            return int(line.split()[-1])
    return None


def untraced_env() -> dict[str, str]:
    """This process's environment without any ``OTEL_*`` variable: tracing off for sure."""
    return {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}


def _traced_env(sink_port: int, sample: float) -> dict[str, str]:
    """Tracing on, as an operator switches it on: spans over OTLP/gRPC to the sink, ``sample`` of
    the traces kept (the standard ratio sampler; callers' sampling decisions are followed)."""
    return {
        **untraced_env(),
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{sink_port}",
        "OTEL_SERVICE_NAME": "recsys-load-benchmark",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": f"{sample:g}",
    }


def free_port() -> int:
    """A port nobody listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


class Process:
    """A server subprocess: started on entry, SIGTERM (then SIGKILL) on exit."""

    def __init__(self, argv: list[str], log: Path, env: Mapping[str, str] | None = None) -> None:
        self.argv = argv
        self.log = log
        self.env = dict(env) if env is not None else None
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Process:
        with self.log.open("ab") as out:
            self.started = time.monotonic()
            self._proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        return self

    def memory_mib(self) -> tuple[float, float, float]:
        """(resident, peak resident, file-backed resident) MiB of the process and its children
        (``--workers``), from psutil and /proc: RSS now, the kernel's high-water mark
        (``VmHWM``, what ``/usr/bin/time -v`` reports as maximum resident set size) and
        ``RssFile`` (mapped file pages, part of RSS)."""
        import psutil  # a dev dependency, like h2load a benchmark-only tool

        assert self._proc is not None
        root = psutil.Process(self._proc.pid)
        rss = peak = file = 0.0
        for process in [root, *root.children(recursive=True)]:
            rss += process.memory_info().rss
            peak += _status_bytes(process.pid, "VmHWM")
            file += _status_bytes(process.pid, "RssFile")
        return rss / 2**20, peak / 2**20, file / 2**20

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def _status_bytes(pid: int, field: str) -> float:
    """``field`` (a kB line such as ``VmHWM``) of ``pid``'s /proc status in bytes (0 where
    /proc does not have it)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 0.0


def wait_until(ready: Callable[[], bool], proc: Process, what: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not ready():
        if not proc.alive():
            raise RuntimeError(f"{what} exited during start-up; see {proc.log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {_START_TIMEOUT_S:.0f} s; see {proc.log}")
        time.sleep(0.2)


def _echo_answers(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(METHOD)
        try:
            return bool(call(b"\x08\x01", timeout=1.0) == b"\x08\x01")
        except grpc.RpcError:
            return False


# ----------------------------------------------------------------------- bodies
def frame(message: bytes) -> bytes:
    """gRPC length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length, bytes."""
    return struct.pack(">BI", 0, len(message)) + message


def write_bodies(users: Sequence[str], k: int, directory: Path) -> list[Path]:
    """One framed ``RecommendRequest`` file per user."""
    paths = []
    for i, user in enumerate(users):
        path = directory / f"body-{i}.bin"
        path.write_bytes(frame(pb2.RecommendRequest(user_id=user, k=k).SerializeToString()))
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Security:
    """The throwaway TLS files and token of a ``--secure`` run (h2load does not verify the
    certificate; the Python checks do, against ``ca``)."""

    ca: Path
    cert: Path
    key: Path
    tokens_file: Path
    token: str

    @classmethod
    def create(cls, directory: Path, scopes: Sequence[str] = ("recommender",)) -> Security:
        directory.mkdir(parents=True, exist_ok=True)
        ca = selfsigned.make_ca("recsys benchmark CA")
        selfsigned.write_pair(
            selfsigned.issue(ca, HOST, server=True, hosts=(HOST, "localhost")),
            directory / "server.pem",
            directory / "server.key",
        )
        (directory / "ca.pem").write_bytes(ca.cert_pem)
        # A per-run token: it exists only for this benchmark's lifetime (h2load needs it as an
        # argument, so it shows in `ps`; production tokens never go on a command line).
        token = secrets.token_hex(32)
        tokens_file = directory / "tokens.toml"
        digest = hash_token(token)
        granted = json.dumps(list(scopes))
        tokens_file.write_text(
            f'[[client]]\nname = "benchmark"\ntoken_sha256 = "{digest}"\nscopes = {granted}\n'
        )
        return cls(
            directory / "ca.pem", directory / "server.pem", directory / "server.key", tokens_file, token
        )

    def server_args(self) -> list[str]:
        return [
            "--tls-cert",
            str(self.cert),
            "--tls-key",
            str(self.key),
            "--auth-tokens",
            str(self.tokens_file),
        ]

    def h2load_headers(self) -> list[str]:
        return ["-H", f"authorization: Bearer {self.token}"]

    def client_tls(self) -> ClientTLS:
        return ClientTLS(self.ca, server_name=HOST)


def verify_bodies(address: str, bodies: Sequence[Path], k: int, security: Security | None = None) -> None:
    """Send every body through a real gRPC client; raise unless each answer is OK with k items."""
    tls = security.client_tls() if security is not None else None
    token = security.token if security is not None else None
    with open_channel(address, tls=tls, token=token) as channel:
        stub = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
        for body in bodies:
            request = pb2.RecommendRequest.FromString(body.read_bytes()[5:])
            response = stub.Recommend(request, timeout=10)
            if len(response.items) != k:
                raise RuntimeError(f"{body.name}: {len(response.items)} items, expected {k}")


def load_users(users_file: Path | None, bundle: Path) -> list[str]:
    from serving.recommend.batch import read_user_ids

    return list(read_user_ids(users_file if users_file is not None else bundle / "users.parquet"))


# ------------------------------------------------------------------- metrics
_COUNT = re.compile(r"^recsys_rpc_duration_seconds_count\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$", re.M)


def server_counts(metrics_port: int) -> dict[str, float]:
    """Status code -> calls of :data:`METHOD` so far, from the server's ``/metrics``."""
    with urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    counts: dict[str, float] = {}
    for match in _COUNT.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("method") == METHOD:
            counts[labels["code"]] = counts.get(labels["code"], 0.0) + float(match["value"])
    return counts


# -------------------------------------------------------------------- h2load
_H2_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def _ms(seconds: float) -> str:
    """A duration as h2load reads it."""
    return f"{round(seconds * 1000)}ms"


def _h2load(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _collect(procs: list[subprocess.Popen[str]], timeout: float) -> tuple[int, list[str]]:
    """(failed requests, outputs); raises when an h2load process fails or overruns."""
    failed = 0
    outputs = []
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise RuntimeError("h2load overran its time limit") from None
        if proc.returncode != 0:
            raise RuntimeError(f"h2load failed ({proc.returncode}):\n{out}")
        outputs.append(out)
        requests = _REQUESTS.search(out)
        status = _STATUS.search(out)
        if requests is None or status is None:
            raise RuntimeError(f"unexpected h2load output:\n{out}")
        failed += int(requests[5]) + int(requests[6]) + sum(int(status[i]) for i in (2, 3, 4))
    return failed, outputs


def _latencies(logs: Sequence[Path], start_us: float, end_us: float) -> list[float]:
    """Milliseconds of the 200 responses that started in [start_us, end_us)."""
    values = []
    for log in logs:
        for line in log.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] == "200" and start_us <= float(parts[0]) < end_us:
                values.append(float(parts[2]) / 1000.0)
    return values


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def _result(
    name: str,
    latencies: list[float],
    seconds: float,
    failed: int,
    concurrency: int | None,
    offered: float | None,
    grpc_codes: dict[str, int] | None,
) -> RunResult:
    values = sorted(latencies)
    return RunResult(
        name=name,
        concurrency=concurrency,
        offered_rps=offered,
        seconds=seconds,
        requests=len(values),
        failed=failed,
        rps=len(values) / seconds,
        p50_ms=_percentile(values, 0.50),
        p90_ms=_percentile(values, 0.90),
        p99_ms=_percentile(values, 0.99),
        max_ms=values[-1] if values else math.nan,
        grpc_codes=grpc_codes,
    )


def closed_loop(
    name: str,
    port: int,
    bodies: Sequence[Path],
    concurrency: int,
    duration: float,
    warmup: float,
    workdir: Path,
    metrics_port: int | None,
    security: Security | None = None,
) -> RunResult:
    """``len(bodies)`` h2load processes, one connection each, ``concurrency`` streams in all
    (TLS and the token header with ``security``)."""
    streams = [
        concurrency // len(bodies) + (1 if i < concurrency % len(bodies) else 0) for i in range(len(bodies))
    ]
    uri = f"{'https' if security else 'http'}://{HOST}:{port}{METHOD}"
    headers = [*_H2_HEADERS, *(security.h2load_headers() if security else [])]
    logs = [workdir / f"{_slug(name)}-{i}.log" for i in range(len(bodies))]
    before = server_counts(metrics_port) if metrics_port else None
    start_us = (time.time() + warmup) * 1e6
    procs = [
        _h2load(
            [
                *("h2load", "-c", "1", "-m", str(m), "-D", _ms(duration), "--warm-up-time", _ms(warmup)),
                *headers,
                *("-d", str(body), "--log-file", str(log), uri),
            ]
        )
        for body, m, log in zip(bodies, streams, logs, strict=True)
        if m > 0
    ]
    failed, _ = _collect(procs, timeout=duration + warmup + 60)
    end_us = start_us + duration * 1e6
    counts = _grpc_delta(before, metrics_port)
    return _result(name, _latencies(logs, start_us, end_us), duration, failed, concurrency, None, counts)


def open_loop(
    name: str,
    port: int,
    bodies: Sequence[Path],
    rate: float,
    duration: float,
    workdir: Path,
    metrics_port: int | None,
    seed: int,
    skip: float = 1.0,
    security: Security | None = None,
) -> RunResult:
    """Poisson arrivals at ``rate``/s over ``len(bodies)`` h2load processes (timing scripts).

    The first ``skip`` seconds (connection set-up) are left out of the figures.
    """
    rng = random.Random(seed)
    uri = f"{'https' if security else 'http'}://{HOST}:{port}{METHOD}"
    headers = [*_H2_HEADERS, *(security.h2load_headers() if security else [])]
    per_process = rate / len(bodies)
    logs, scripts = [], []
    for i in range(len(bodies)):
        offsets, t = [], rng.expovariate(per_process)
        while t < duration:
            offsets.append(t)
            t += rng.expovariate(per_process)
        script = workdir / f"{_slug(name)}-{i}.script"
        script.write_text("".join(f"{o * 1000.0:.3f}\t{uri}\n" for o in offsets))
        scripts.append(script)
        logs.append(workdir / f"{_slug(name)}-{i}.log")
    before = server_counts(metrics_port) if metrics_port else None
    start_us = (time.time() + skip) * 1e6
    procs = [
        _h2load(
            [
                *("h2load", "-c", "1", "-m", "256", "--timing-script-file", str(script)),
                *headers,
                *("-d", str(body), "--log-file", str(log)),
            ]
        )
        for body, script, log in zip(bodies, scripts, logs, strict=True)
    ]
    failed, _ = _collect(procs, timeout=duration + 60)
    end_us = start_us + (duration - skip) * 1e6
    counts = _grpc_delta(before, metrics_port)
    latencies = _latencies(logs, start_us, end_us)
    return _result(name, latencies, duration - skip, failed, None, rate, counts)


def _grpc_delta(before: dict[str, float] | None, metrics_port: int | None) -> dict[str, int] | None:
    if before is None or not metrics_port:
        return None
    after = server_counts(metrics_port)
    delta = {code: int(after.get(code, 0.0) - before.get(code, 0.0)) for code in after}
    return {code: n for code, n in delta.items() if n}


# ------------------------------------------------------------------------ main
def format_table(
    results: Sequence[RunResult],
    ratio: float,
    header: str,
    secure_ratio: float | None = None,
    traced_ratio: float | None = None,
) -> str:
    """The results as a plain-text table, with the Recommend/echo throughput ratio."""
    lines = [
        header,
        f"{'run':<34} {'conc':>5} {'req/s':>9} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'requests':>9} {'failed':>6}  server gRPC OK/all",
    ]
    for r in results:
        conc = "-" if r.concurrency is None else str(r.concurrency)
        ok = "-"
        if r.grpc_codes is not None:
            others = ", ".join(f"{n} {code}" for code, n in sorted(r.grpc_codes.items()) if code != "OK")
            ok = f"{r.grpc_codes.get('OK', 0)}/{sum(r.grpc_codes.values())}" + (
                f" ({others})" if others else ""
            )
        lines.append(
            f"{r.name:<34} {conc:>5} {r.rps:>9.1f} {r.p50_ms:>7.2f} {r.p90_ms:>7.2f} {r.p99_ms:>7.2f} "
            f"{r.max_ms:>7.2f} {r.requests:>9d} {r.failed:>6d}  {ok}"
        )
    lines.append(f"Recommend / echo closed-loop throughput (median over rounds): {ratio:.3f}")
    if secure_ratio is not None:
        lines.append(
            "Recommend TLS + token / plaintext closed-loop throughput (median over rounds): "
            f"{secure_ratio:.3f}"
        )
    if traced_ratio is not None:
        lines.append(
            f"Recommend traced / untraced closed-loop throughput (median over rounds): {traced_ratio:.3f}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--bundle", type=Path, help="model bundle directory")
    parser.add_argument(
        "--users", type=Path, help="user ids (CSV/Parquet user_id column or text); default: bundle"
    )
    parser.add_argument("--k", type=int, default=10, help="items per request (default 10)")
    parser.add_argument(
        "--concurrency", type=int, default=64, help="closed loop: streams in flight (default 64)"
    )
    parser.add_argument(
        "--loadgens", type=int, default=4, help="closed loop: h2load processes/users (default 4)"
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="closed loop: measured seconds (default 10)"
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="closed loop: warm-up seconds (default 2)")
    parser.add_argument("--rate", type=float, default=300.0, help="open loop: requests/s (default 300)")
    parser.add_argument("--open-duration", type=float, default=20.0, help="open loop: seconds (default 20)")
    parser.add_argument(
        "--open-loadgens", type=int, default=16, help="open loop: h2load processes/users (default 16)"
    )
    parser.add_argument("--seed", type=int, default=0, help="user sampling and arrival times (default 0)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="closed loop: alternating echo/Recommend rounds (default 2)"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra flag for the real server, e.g. --server-arg=--workers=2 (repeatable)",
    )
    parser.add_argument(
        "--secure",
        action="store_true",
        help="also run a TLS + bearer-token server and measure it against plaintext in the same rounds",
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="also run a server with OpenTelemetry tracing on (OTLP to a sink on loopback) and measure it "
        "against the untraced one in the same rounds",
    )
    parser.add_argument(
        "--tracing-sample",
        type=float,
        default=1.0,
        metavar="RATIO",
        help="with --tracing: share of traces sampled (OTEL_TRACES_SAMPLER=parentbased_traceidratio; "
        "default 1.0: every call traced)",
    )
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)  # internal: run the echo server
    parser.add_argument("--otlp-sink", type=int, help=argparse.SUPPRESS)  # internal: run the OTLP sink
    return parser


def _server_argv(
    args: argparse.Namespace, port: int, metrics_port: int, security: Security | None = None
) -> list[str]:
    return [
        *(sys.executable, "-m", "serving", "--bundle", str(args.bundle), "--host", HOST),
        *("--port", str(port), "--metrics-port", str(metrics_port), *args.server_arg),
        *(security.server_args() if security is not None else []),
    ]


def _start_traced(
    stack: contextlib.ExitStack,
    args: argparse.Namespace,
    port: int,
    metrics_port: int,
    workdir: Path,
    sink_log: Path,
) -> None:
    """Start the OTLP sink and the traced server (tracing on through its environment) and wait
    until it serves. The sink is entered first, so that it stops after the server has flushed."""
    sink_port = free_port()
    sink_argv = [sys.executable, "-m", "benchmarks.load", "--otlp-sink", str(sink_port)]
    sink = stack.enter_context(Process(sink_argv, sink_log))
    wait_until(lambda: "otlp sink ready" in sink_log.read_text(), sink, "OTLP sink")
    argv = _server_argv(args, port, metrics_port)
    env = _traced_env(sink_port, args.tracing_sample)
    traced = stack.enter_context(Process(argv, workdir / "traced-server.log", env))
    address = f"{HOST}:{port}"
    wait_until(lambda: healthcheck.check(address, timeout=1.0)[0], traced, "recsys traced server")


def run(args: argparse.Namespace) -> list[RunResult]:
    """The runs of the module docstring; prints the table (and writes ``--json``).

    Both servers stay up for the whole benchmark (an idle one costs nothing) and the
    closed-loop runs alternate echo, Recommend, echo, Recommend, ... for ``--rounds``
    rounds, so a change in what else the machine runs affects both alike; the ratio is
    the median of the per-round ratios.
    """
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    if args.bundle is None:
        raise SystemExit("--bundle is required")
    if not 0.0 <= args.tracing_sample <= 1.0:
        raise SystemExit(f"--tracing-sample: must be in 0..1, got {args.tracing_sample}")
    users = load_users(args.users, args.bundle)
    rng = random.Random(args.seed)
    closed_users = rng.sample(users, min(args.loadgens, len(users)))
    open_users = rng.sample(users, min(args.open_loadgens, len(users)))
    results: list[RunResult] = []
    ratios: list[float] = []
    secure_ratios: list[float] = []
    traced_ratios: list[float] = []
    spans_received: int | None = None
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="recsys-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "closed").mkdir()
        (workdir / "open").mkdir()
        closed_bodies = write_bodies(closed_users, args.k, workdir / "closed")
        open_bodies = write_bodies(open_users, args.k, workdir / "open")
        echo_port, port, metrics_port = free_port(), free_port(), free_port()
        echo_argv = [sys.executable, "-m", "benchmarks.load", "--echo-server", str(echo_port)]
        log = workdir / "server.log"
        try:
            with contextlib.ExitStack() as stack:
                echo = stack.enter_context(Process(echo_argv, workdir / "echo.log"))
                wait_until(lambda: _echo_answers(f"{HOST}:{echo_port}"), echo, "echo server")
                # Started once the echo server is up, so that its start-up runs alone.
                server_argv = _server_argv(args, port, metrics_port)
                server = stack.enter_context(Process(server_argv, log, untraced_env()))
                address = f"{HOST}:{port}"
                # Start-up: process start to health SERVING (the bundle loaded and verified).
                wait_until(lambda: healthcheck.check(address, timeout=1.0)[0], server, "recsys server")
                startup = Startup(time.monotonic() - server.started, *server.memory_mib())
                verify_bodies(address, closed_bodies + open_bodies, args.k)
                security: Security | None = None
                secure_port = secure_metrics = 0
                if args.secure:
                    security = Security.create(workdir / "security")
                    secure_port, secure_metrics = free_port(), free_port()
                    secure_argv = _server_argv(args, secure_port, secure_metrics, security)
                    secure = stack.enter_context(
                        Process(secure_argv, workdir / "secure-server.log", untraced_env())
                    )
                    secure_address = f"{HOST}:{secure_port}"
                    wait_until(
                        lambda: healthcheck.check(secure_address, timeout=1.0, tls=security.client_tls())[0],
                        secure,
                        "recsys TLS + token server",
                    )
                    verify_bodies(secure_address, closed_bodies + open_bodies, args.k, security)
                traced_port = traced_metrics = 0
                sink_log = workdir / "otlp-sink.log"
                if args.tracing:
                    traced_port, traced_metrics = free_port(), free_port()
                    _start_traced(stack, args, traced_port, traced_metrics, workdir, sink_log)
                    verify_bodies(f"{HOST}:{traced_port}", closed_bodies + open_bodies, args.k)
                for round_ in range(1, args.rounds + 1):
                    suffix = f" #{round_}" if args.rounds > 1 else ""
                    echo_result = closed_loop(
                        f"echo (closed loop){suffix}",
                        echo_port,
                        closed_bodies,
                        args.concurrency,
                        args.duration,
                        args.warmup,
                        workdir,
                        None,
                    )
                    recommend = closed_loop(
                        f"Recommend (closed loop){suffix}",
                        port,
                        closed_bodies,
                        args.concurrency,
                        args.duration,
                        args.warmup,
                        workdir,
                        metrics_port,
                    )
                    results += [echo_result, recommend]
                    ratios.append(recommend.rps / echo_result.rps if echo_result.rps > 0 else math.nan)
                    if security is not None:
                        protected = closed_loop(
                            f"Recommend TLS+token (closed){suffix}",
                            secure_port,
                            closed_bodies,
                            args.concurrency,
                            args.duration,
                            args.warmup,
                            workdir,
                            secure_metrics,
                            security,
                        )
                        results.append(protected)
                        secure_ratios.append(protected.rps / recommend.rps if recommend.rps > 0 else math.nan)
                    if args.tracing:
                        traced = closed_loop(
                            f"Recommend traced (closed){suffix}",
                            traced_port,
                            closed_bodies,
                            args.concurrency,
                            args.duration,
                            args.warmup,
                            workdir,
                            traced_metrics,
                        )
                        results.append(traced)
                        traced_ratios.append(traced.rps / recommend.rps if recommend.rps > 0 else math.nan)
                verify_bodies(address, closed_bodies, args.k)
                results.append(
                    open_loop(
                        f"Recommend (open loop {args.rate:g}/s)",
                        port,
                        open_bodies,
                        args.rate,
                        args.open_duration,
                        workdir,
                        metrics_port,
                        args.seed,
                    )
                )
                if security is not None:
                    results.append(
                        open_loop(
                            f"Recommend TLS+token (open {args.rate:g}/s)",
                            secure_port,
                            open_bodies,
                            args.rate,
                            args.open_duration,
                            workdir,
                            secure_metrics,
                            args.seed,
                            security=security,
                        )
                    )
                if args.tracing:
                    results.append(
                        open_loop(
                            f"Recommend traced (open {args.rate:g}/s)",
                            traced_port,
                            open_bodies,
                            args.rate,
                            args.open_duration,
                            workdir,
                            traced_metrics,
                            args.seed,
                        )
                    )
                rss, peak, file = server.memory_mib()
                startup = replace(startup, rss_after_runs_mib=rss, peak_rss_after_runs_mib=peak)
                startup = replace(startup, file_rss_after_runs_mib=file)
        except Exception:
            sys.stderr.write(log.read_text() if log.exists() else "")
            raise
        # The servers stopped first (flushing their spans), then the sink, which printed its count.
        spans_received = _sink_count(sink_log) if args.tracing else None
    ratio = statistics.median(ratios)
    server_flags = " ".join(args.server_arg) or "(defaults)"
    header = (
        f"h2load on {HOST}, {os.cpu_count()} CPUs; closed loop {args.concurrency} streams over "
        f"{args.loadgens} connections, {args.duration:g} s after {args.warmup:g} s warm-up, "
        f"{args.rounds} round(s); k={args.k}; server flags: {server_flags}; "
        + (f"tracing sampled {args.tracing_sample:g}; " if args.tracing else "")
        + "1-min load average "
        f"before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f}"
    )
    secure_ratio = statistics.median(secure_ratios) if secure_ratios else None
    traced_ratio = statistics.median(traced_ratios) if traced_ratios else None
    print(format_table(results, ratio, header, secure_ratio, traced_ratio))
    print(startup.describe())
    if args.tracing:
        traced_calls = sum(sum((r.grpc_codes or {}).values()) for r in results if "traced" in r.name)
        print(
            f"spans received by the OTLP sink: {spans_received} for {traced_calls} traced Recommend calls "
            "(plus the verification calls)"
        )
    if args.json is not None:
        payload = {
            "results": [asdict(r) for r in results],
            "ratios": ratios,
            "ratio": ratio,
            "secure_ratios": secure_ratios,
            "secure_ratio": secure_ratio,
            "traced_ratios": traced_ratios,
            "traced_ratio": traced_ratio,
            "spans_received": spans_received,
            "startup": asdict(startup),
            "header": header,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.echo_server is not None:
        _echo_main(args.echo_server)
        return 0
    if args.otlp_sink is not None:
        _otlp_sink_main(args.otlp_sink)
        return 0
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the servers are stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
