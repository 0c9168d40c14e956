"""Tracing's cost per Recommend call, in process: the call path without the network, off vs on.

``python -m benchmarks.tracing_cost --bundle DIR [--calls 2000] [--repeats 5]``

One "call" is what the server does for an unbatched Recommend, with the tracing hooks where the
server has them: the SERVER span from a ``traceparent``
(:func:`serving.observability.tracing.server_span`), the
routing span, the batch span handed the caller's context, the engine's own spans
(``engine.recommend``: user tower, index search, explanations), and the status recorded at the end.
It runs with tracing

* **off**: the default (no OpenTelemetry object is created; the hooks return a shared no-op),
* **on, not sampled**: the SDK with a ratio sampler at 0 (every span a non-recording one),
* **on**: the SDK, every span recorded, batched (``BatchSpanProcessor``) to an exporter that
  encodes each batch as OTLP protobuf and drops it (what the OTLP exporter does before sending),

interleaved ``--repeats`` times (engine alone, off, unsampled, on, engine alone, ...) so that a
change in what else the machine runs affects all of them alike; the table shows the median CPU
microseconds per call (the process's CPU time, all threads, the span exporter's included: on a
shared machine wall-clock time mostly measures the neighbours) and the difference to off. The same
calls without any hook at all (the engine alone) are the floor: the off row minus it is what the
hooks cost when tracing is off. The load benchmark (``benchmarks.load --tracing``) measures tracing
over gRPC at saturation.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc

from serving.cli import configure_compute_threads
from serving.observability import tracing
from serving.recommend.engine import TwoTowerEngine
from serving.recommend.types import RecommendQuery

METHOD = "/recsys.v1.Recommender/Recommend"


def _call_with_hooks(
    engine: TwoTowerEngine, query: RecommendQuery, metadata: Sequence[tuple[str, str]]
) -> None:
    with tracing.server_span(METHOD, metadata) as server:
        with tracing.span(tracing.ROUTING):
            pass
        parent = tracing.current_context()
        with tracing.batch_span([parent]):
            engine.recommend(query)
        tracing.finish_server_span(server, grpc.StatusCode.OK, "request-id")


def _repeat(work: Callable[[int], None], calls: int) -> None:
    for i in range(calls):
        work(i)


@contextlib.contextmanager
def _tracing(mode: str) -> Iterator[None]:
    """Tracing as ``mode`` says for the block (see the module docstring)."""
    if mode in ("off", "engine alone"):
        yield
        return
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class EncodeAndDrop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            encode_spans(spans).SerializeToString()
            return SpanExportResult.SUCCESS

    ratio = 0.0 if mode == "on, not sampled" else 1.0
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(EncodeAndDrop()))
    tracing.enable(provider)
    try:
        yield
    finally:
        tracing.disable()
        provider.shutdown()  # the export of what is left counts in the figure


MODES = ("engine alone", "off", "on, not sampled", "on")


def run(args: argparse.Namespace) -> dict[str, float]:
    configure_compute_threads(1)  # as the server does
    engine = TwoTowerEngine.load(args.bundle)
    users = engine.bundle.users.get_column("user_id").head(256).cast(str).to_list()
    queries = [RecommendQuery(user, args.k) for user in users]
    # The callers are not sampled themselves (flag 01 = sampled: the ratio sampler follows them).
    metadata = [(("traceparent", f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"),) for _ in users]
    sampled = [(("traceparent", f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"),) for _ in users]

    def engine_alone(i: int) -> None:
        engine.recommend(queries[i % len(queries)])

    def hooked(headers: Sequence[Sequence[tuple[str, str]]]) -> Callable[[int], None]:
        def work(i: int) -> None:
            _call_with_hooks(engine, queries[i % len(queries)], headers[i % len(headers)])

        return work

    work = {
        "engine alone": engine_alone,
        "off": hooked(sampled),
        "on, not sampled": hooked(metadata),
        "on": hooked(sampled),
    }
    for mode in MODES:  # warm-up: caches, lazy imports, the user-vector cache
        with _tracing(mode):
            _repeat(work[mode], min(args.calls, 200))
    figures: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            started = time.process_time()
            with _tracing(mode):  # on: leaving it exports what is still queued, timed too
                _repeat(work[mode], args.calls)
            figures[mode].append((time.process_time() - started) / args.calls * 1e6)
    medians = {mode: statistics.median(values) for mode, values in figures.items()}
    off = medians["off"]
    print(f"{args.calls} calls x {args.repeats} repeats, k={args.k}, bundle {args.bundle}")
    print(f"{'tracing':<18} {'CPU us/call':>11} {'vs off':>9} {'range':>20}")
    for mode in MODES:
        values = figures[mode]
        print(
            f"{mode:<18} {medians[mode]:>11.1f} {medians[mode] - off:>+9.1f} "
            f"{min(values):>9.1f}-{max(values):<9.1f}"
        )
    print(f"hooks with tracing off: {off - medians['engine alone']:+.1f} us/call over the engine alone")
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tracing_cost", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument("--k", type=int, default=10, help="items per call (default 10)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per measurement (default 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default 5)")
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
