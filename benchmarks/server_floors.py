"""Where a Recommend call's server time goes: the real serving layers stacked on a bare echo, with no model.

``python -m benchmarks.server_floors [--bundle DIR] [--rounds 3] [--duration 6]``

:mod:`benchmarks.load` compares the real server with a bare ``grpc.aio`` echo. This script puts
servers between the two, each one layer more of the real request path and none with a model, so the
ratio each reaches is the ceiling of every server built that way, whatever its model costs:

1. ``echo``: a bare echo like :mod:`benchmarks.load`'s (request bytes back; the floor).
2. ``batcher``: the echo's bytes, answered only after a round trip through the server's real
   :class:`~serving.api.batcher.MicroBatcher` (admission, micro-batching, the engine executor's
   thread and the hop back to the event loop) over a constant engine.
3. ``servicer``: the real :class:`~serving.api.recommender.RecommenderServicer` (request parsed and
   validated, routed, batched as above, the answer mapped to a ``RecommendResponse``) over a constant
   engine that answers every query with ``k`` fixed items.
4. ``interceptor``: 3 behind the real :class:`~serving.api.interceptors.ErrorMappingInterceptor` with
   metrics (request id, trailing metadata, status mapping, latency histogram, access-log check).
5. ``server`` (with ``--bundle``): the production server (``python -m serving``, defaults) with the
   bundle's model: 4 plus the engine, health, reflection and the server's options.

Each round runs every server once, closed loop at the same concurrency, in the order above; a
server's ratio is the median over rounds of its throughput divided by the same round's echo, and "us
per call over echo" the median of ``1/throughput - 1/echo throughput``: the extra server time a call
costs while the server is bound to one core (its event loop), as these all are at 64 streams. Before
the runs every request body must come back ``OK`` with ``k`` items from each layer that answers
Recommend messages (h2load sees only HTTP statuses); a refusal during a run (overload) is not seen. The
requests are real ``RecommendRequest`` messages (users of the bundle, or made-up ids). Prints a table.
Needs ``h2load`` like :mod:`benchmarks.load`, whose h2load driver this uses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import signal
import statistics
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt

from benchmarks.load import (
    HOST,
    Process,
    closed_loop,
    free_port,
    load_users,
    untraced_env,
    verify_bodies,
    wait_until,
    write_bodies,
)
from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api import healthcheck
from serving.api.batcher import BatchOptions, MicroBatcher
from serving.api.interceptors import ErrorMappingInterceptor
from serving.api.recommender import RecommenderServicer
from serving.lifecycle.engine_holder import EngineHolder
from serving.lifecycle.routing import Router
from serving.metrics import ServingMetrics
from serving.recommend.types import Recommendation, RecommendQuery, ScoredItem, SimilarItemsQuery

LAYERS = ("echo", "batcher", "servicer", "interceptor")


class ConstantEngine:
    """A :class:`~serving.recommend.types.RecommenderEngine` that answers every query with the same
    ``k`` items (ids and explanations as long as a catalogue's): the request path without a model."""

    model_version = "constant"

    def __init__(self, k: int) -> None:
        self._answer = Recommendation(
            [ScoredItem(f"item-{i:06d}", 1.0 - i / 100, f"item-{i + 500:06d}") for i in range(k)],
            self.model_version,
        )

    def recommend(self, query: RecommendQuery) -> Recommendation:
        return self._answer

    def recommend_many(self, queries: Sequence[RecommendQuery]) -> list[Recommendation]:
        return [self._answer] * len(queries)

    def similar_items(self, query: SimilarItemsQuery) -> list[ScoredItem]:
        return list(self._answer.items)

    def user_embedding(self, user_id: str) -> npt.NDArray[np.float32]:
        raise NotImplementedError("the constant engine has no user vectors")


def _serve(port: int, layer: str, k: int) -> None:
    """Run the ``layer`` server on ``port`` until SIGTERM (the module docstring's list)."""

    async def main() -> None:
        engine = ConstantEngine(k)
        metrics = ServingMetrics()
        executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="engine")
        batcher = MicroBatcher(executor, BatchOptions(), metrics)
        query = RecommendQuery("user", k)

        async def batched_echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if layer == "batcher":
                await batcher.recommend(engine, query, context.time_remaining())
            return request

        interceptors = [ErrorMappingInterceptor(metrics=metrics)] if layer == "interceptor" else []
        server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
        if layer in ("echo", "batcher"):
            handler = grpc.unary_unary_rpc_method_handler(batched_echo)
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler("recsys.v1.Recommender", {"Recommend": handler}),)
            )
        else:
            servicer = RecommenderServicer(
                Router(EngineHolder(engine)), executor, batcher=batcher, metrics=metrics
            )
            pb2_grpc.add_RecommenderServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(f"{HOST}:{port}")
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(1.0)
        executor.shutdown(wait=False)

    asyncio.run(main())


def _answers(port: int, k: int) -> bool:
    """Whether the server on ``port`` answers a Recommend (echo layers: any bytes back)."""
    with grpc.insecure_channel(f"{HOST}:{port}") as channel:
        call = channel.unary_unary("/recsys.v1.Recommender/Recommend")
        try:
            call(pb2.RecommendRequest(user_id="probe", k=k).SerializeToString(), timeout=1.0)
        except grpc.RpcError:
            return False
    return True


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.server_floors", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--bundle", type=Path, help="also run the production server with this bundle")
    parser.add_argument("--rounds", type=_positive, default=3, help="rounds over every server (default 3)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per closed-loop run (default 6)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per run (default 2)")
    parser.add_argument("--concurrency", type=int, default=64, help="streams in flight (default 64)")
    parser.add_argument("--loadgens", type=int, default=4, help="h2load processes, one user each (default 4)")
    parser.add_argument("--k", type=int, default=10, help="items per answer (default 10)")
    parser.add_argument("--serve", choices=LAYERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser


def run(args: argparse.Namespace) -> dict[str, list[float]]:
    """req/s per server per round (the module docstring); prints the table."""
    names = [*LAYERS, *(["server"] if args.bundle is not None else [])]
    users = load_users(None, args.bundle)[: args.loadgens] if args.bundle is not None else []
    users += [f"user-{i}" for i in range(args.loadgens - len(users))]
    rates: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="recsys-floors-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        bodies = write_bodies(users, args.k, workdir)
        ports = {name: free_port() for name in names}
        for name in LAYERS:
            argv = [sys.executable, "-m", "benchmarks.server_floors", "--serve", name]
            argv += ["--port", str(ports[name]), "--k", str(args.k)]
            proc = stack.enter_context(Process(argv, workdir / f"{name}.log"))
            wait_until(functools.partial(_answers, ports[name], args.k), proc, f"{name} server")
        if args.bundle is not None:
            argv = [sys.executable, "-m", "serving", "--bundle", str(args.bundle), "--host", HOST]
            argv += ["--port", str(ports["server"])]
            # Tracing off whatever the shell says, as benchmarks.load runs it.
            proc = stack.enter_context(Process(argv, workdir / "server.log", untraced_env()))
            address = f"{HOST}:{ports['server']}"
            wait_until(lambda: healthcheck.check(address, timeout=1.0)[0], proc, "recsys server")
        # h2load sees HTTP statuses only: every body must first come back OK with k items over gRPC.
        for name in names:
            if name not in ("echo", "batcher"):
                verify_bodies(f"{HOST}:{ports[name]}", bodies, args.k)
        for _ in range(args.rounds):
            for name in names:
                result = closed_loop(
                    name, ports[name], bodies, args.concurrency, args.duration, args.warmup, workdir, None
                )
                if result.failed:
                    raise RuntimeError(f"{name}: {result.failed} failed requests")
                rates[name].append(result.rps)
    print(format_table(rates, args))
    return rates


def format_table(rates: dict[str, list[float]], args: argparse.Namespace) -> str:
    echo = rates["echo"]
    lines = [
        f"closed loop, {args.concurrency} streams, {args.duration:g} s per run, "
        f"{args.rounds} round(s), k={args.k}",
        f"{'server':<12} {'req/s per round':<32} {'/ echo (median)':>15} {'us per call over echo':>22}",
    ]
    for name, values in rates.items():
        ratio = statistics.median(v / e for v, e in zip(values, echo, strict=True))
        extra = statistics.median(1e6 / v - 1e6 / e for v, e in zip(values, echo, strict=True))
        per_round = ", ".join(f"{v:,.0f}" for v in values)
        lines.append(f"{name:<12} {per_round:<32} {ratio:>15.3f} {extra:>22.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.serve is not None:
        _serve(args.port, args.serve, args.k)
        return 0
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
