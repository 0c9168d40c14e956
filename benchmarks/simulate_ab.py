"""A/B simulation on real interactions: the closed loop serve -> LogEvents -> ab-report.

``python -m benchmarks.simulate_ab --data ../shared/data/ml-100k --out runs/ab-sim``

1. Import MovieLens (``recsys import movielens``) and split it globally by time: the
   interactions before the ``cut_quantile`` timestamp quantile train the model, the rest
   are the held-out "future" that the simulated users act out.
2. Train a two-tower bundle on the training part (``eval.protocol = none``; tracking off
   for this training so the simulation does not register model versions).
3. Serve it (``python -m serving``, a real server process) with an experiments file of
   two variants on the same bundle, 50/50 by user hash: ``two_tower`` (the model) and
   ``popularity`` (``strategy = "popularity"``, the control), and an event log.
4. Every held-out user's interactions, in time order, are cut into sessions of
   ``session_size``. For each session the user asks for ``k`` items (``Recommend`` with
   the experiment, the held-out items of earlier sessions as ``recent_item_ids`` and the
   items already clicked excluded); every shown item is an impression; a shown item the
   user really rated in this or a later session is a click, and a purchase with
   ``value = rating`` when the rating is >= 4. All of it goes through ``LogEvents``,
   timestamped with the session's real time.
5. SIGTERM (the server compacts its WAL), then :func:`training.reports.ab_report.run_ab_report`
   (tables, the charts page, MLflow). The check: the two-tower variant is ranked first and its
   CTR beats the control's with p < 0.05.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
import polars as pl
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.load import free_port
from serving._proto.recsys.v1 import events_pb2, events_pb2_grpc
from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api.interceptors import REQUEST_ID_KEY
from serving.storage import atomic_write_parquet, atomic_write_text
from training.config import Config
from training.reports.ab_report import format_table, run_ab_report
from training.reports.ab_results import AbReport

EXPERIMENT: Final = "ab-sim"
TREATMENT: Final = "two_tower"
CONTROL: Final = "popularity"
_REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class SimulationOptions:
    k: int = 10
    session_size: int = 10
    cut_quantile: float = 0.8
    # Held-out items a request passes as the session so far (most recent last).
    max_recent: int = 50
    # Ratings at or above this make a click a purchase (value = the rating).
    purchase_rating: float = 4.0
    client_threads: int = 8


@dataclass(frozen=True, slots=True)
class Session:
    user_id: str
    index: int
    timestamp_ms: int
    recent: tuple[str, ...]  # held-out items of the user's earlier sessions
    future: dict[str, float]  # item -> rating, this session and later ones


def time_split(frame: pl.DataFrame, quantile: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(interactions before the ``quantile`` timestamp, the rest)."""
    cut = frame.get_column("timestamp").quantile(quantile, interpolation="lower")
    return frame.filter(pl.col("timestamp") < cut), frame.filter(pl.col("timestamp") >= cut)


def sessions_of(heldout: pl.DataFrame, size: int, max_recent: int) -> list[list[Session]]:
    """Per held-out user (sorted by id), their sessions in time order."""
    out: list[list[Session]] = []
    ordered = heldout.sort("user_id", "timestamp", "item_id")
    for (user,), rows in ordered.partition_by("user_id", as_dict=True, maintain_order=True).items():
        items = rows.get_column("item_id").to_list()
        ratings = rows.get_column("value").fill_null(0.0).to_list()
        stamps = rows.get_column("timestamp").to_list()
        sessions = []
        for index, start in enumerate(range(0, len(items), size)):
            future = {item: float(r) for item, r in zip(items[start:], ratings[start:], strict=True)}
            recent = tuple(items[max(0, start - max_recent) : start])
            sessions.append(Session(str(user), index, int(stamps[start]) * 1000, recent, future))
        out.append(sessions)
    return out


def session_events(
    session: Session,
    response: pb2.RecommendResponse,
    request_id: str,
    clicked: set[str],
    purchase_rating: float,
) -> list[events_pb2.Event]:
    """Impressions for the shown items; a click (and a purchase for a high rating) for each
    shown item the user really rated from this session on and has not clicked yet."""
    events: list[events_pb2.Event] = []
    common = {
        "user_id": session.user_id,
        "experiment": EXPERIMENT,
        "variant": response.variant,
        "model_version": response.model_version,
        "request_id": request_id,
    }
    for position, item in enumerate(response.items, start=1):
        base = {**common, "item_id": item.item_id, "position": position}
        stamp = session.timestamp_ms + position * 1000
        events.append(
            events_pb2.Event(
                **base,
                event_type=events_pb2.EVENT_TYPE_IMPRESSION,
                timestamp_ms=session.timestamp_ms,
                event_id=f"{request_id}/{item.item_id}/i",
            )
        )
        rating = session.future.get(item.item_id)
        if rating is None or item.item_id in clicked:
            continue
        clicked.add(item.item_id)
        events.append(
            events_pb2.Event(
                **base,
                event_type=events_pb2.EVENT_TYPE_CLICK,
                timestamp_ms=stamp,
                event_id=f"{request_id}/{item.item_id}/c",
            )
        )
        if rating >= purchase_rating:
            events.append(
                events_pb2.Event(
                    **base,
                    event_type=events_pb2.EVENT_TYPE_PURCHASE,
                    timestamp_ms=stamp + 500,
                    value=rating,
                    event_id=f"{request_id}/{item.item_id}/p",
                )
            )
    return events


@dataclass
class PlayStats:
    sessions: int = 0
    events: int = 0
    rejected: int = 0
    by_variant: Counter[str] = dataclasses.field(default_factory=Counter)


def _play_user(address: str, sessions: Sequence[Session], options: SimulationOptions) -> PlayStats:
    stats = PlayStats()
    clicked: set[str] = set()
    with grpc.insecure_channel(address) as channel:
        recommender = pb2_grpc.RecommenderStub(channel)  # type: ignore[no-untyped-call]
        collector = events_pb2_grpc.EventCollectorStub(channel)  # type: ignore[no-untyped-call]
        for session in sessions:
            request_id = f"sim-{session.user_id}-{session.index}"
            request = pb2.RecommendRequest(
                user_id=session.user_id,
                k=options.k,
                experiment=EXPERIMENT,
                recent_item_ids=session.recent,
                exclude_item_ids=sorted(clicked),
            )
            response = recommender.Recommend(request, timeout=30, metadata=((REQUEST_ID_KEY, request_id),))
            events = session_events(session, response, request_id, clicked, options.purchase_rating)
            result = collector.LogEvents(events_pb2.LogEventsRequest(events=events), timeout=30)
            stats.sessions += 1
            stats.events += result.accepted
            stats.rejected += len(result.rejections)
            stats.by_variant[response.variant] += 1
    return stats


def play(address: str, users: Sequence[Sequence[Session]], options: SimulationOptions) -> PlayStats:
    """Act out every user's sessions against the server (users in parallel, sessions in order)."""
    total = PlayStats()
    with ThreadPoolExecutor(options.client_threads) as pool:
        for stats in pool.map(lambda s: _play_user(address, s, options), users):
            total.sessions += stats.sessions
            total.events += stats.events
            total.rejected += stats.rejected
            total.by_variant.update(stats.by_variant)
    return total


def write_experiments_file(path: Path, bundle: Path) -> Path:
    """Two variants on one bundle, 50/50: the model and the popularity control."""
    atomic_write_text(
        path,
        f"""[experiments.{EXPERIMENT}]
salt = "{EXPERIMENT}-1"
description = "simulated: two-tower vs popularity on held-out ml-100k interactions"

[experiments.{EXPERIMENT}.variants.{CONTROL}]
model = {json.dumps(str(bundle.resolve()))}
share = 50
strategy = "popularity"

[experiments.{EXPERIMENT}.variants.{TREATMENT}]
model = {json.dumps(str(bundle.resolve()))}
share = 50
""",
    )
    return path


def start_server(
    bundle: Path, experiments: Path, events_dir: Path, log_path: Path, threads: int = 2
) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m serving`` with the experiments and an event log; returns once SERVING."""
    port = free_port()
    argv = [
        *(sys.executable, "-m", "serving", "--bundle", str(bundle), "--experiments", str(experiments)),
        *("--events-dir", str(events_dir), "--port", str(port), "--threads", str(threads), "--grace", "5"),
    ]
    with log_path.open("wb") as out:
        process = subprocess.Popen(argv, cwd=_REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"server not serving after 300 s:\n{log_path.read_text()}")
        try:
            with grpc.insecure_channel(address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return process, address
        except grpc.RpcError:
            pass
        time.sleep(0.2)


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM: drain, compact the event log's WAL into Parquet, exit."""
    process.send_signal(signal.SIGTERM)
    if process.wait(timeout=120) != 0:
        raise RuntimeError(f"server exited with {process.returncode}")


@dataclass(frozen=True)
class SimulationResult:
    report: AbReport
    stats: PlayStats
    train_interactions: int
    heldout_interactions: int
    users: int
    seconds: dict[str, float]

    @property
    def passed(self) -> bool:
        comparison = self.report.comparison(TREATMENT)
        return self.report.ranking[0] == TREATMENT and comparison.ctr.p_value < 0.05


def run_simulation(
    data: Path, out: Path, config: Config, options: SimulationOptions | None = None
) -> SimulationResult:
    """Steps 1-5 of the module docstring, under ``out``; see :class:`SimulationResult`."""
    from training.data.io import find_canonical_files
    from training.data.movielens import import_movielens
    from training.pipeline import train

    options = options or SimulationOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    canonical = out / "data"
    if not (canonical / "interactions.parquet").is_file():
        import_movielens(data, canonical)
    interactions_path, users_path, items_path = find_canonical_files(canonical)
    frame = pl.read_parquet(interactions_path)
    training, heldout = time_split(frame, options.cut_quantile)
    training_path = out / "train_interactions.parquet"
    atomic_write_parquet(training_path, training)
    seconds["prepare"] = time.perf_counter() - started

    started = time.perf_counter()
    bundle = out / "bundle"
    train_config = dataclasses.replace(
        config,
        eval=dataclasses.replace(config.eval, protocol="none"),
        tracking=dataclasses.replace(config.tracking, enabled=False),
    )
    train(train_config, training_path, users_path, items_path, bundle, overwrite=True)
    seconds["train"] = time.perf_counter() - started

    events_dir = out / "events"
    if events_dir.exists():
        import shutil

        shutil.rmtree(events_dir)
    experiments = write_experiments_file(out / "experiments.toml", bundle)
    users = sessions_of(heldout, options.session_size, options.max_recent)
    started = time.perf_counter()
    process, address = start_server(bundle, experiments, events_dir, out / "serve.log")
    seconds["server_start"] = time.perf_counter() - started
    try:
        started = time.perf_counter()
        stats = play(address, users, options)
        seconds["play"] = time.perf_counter() - started
    finally:
        started = time.perf_counter()
        stop_server(process)
        seconds["server_stop"] = time.perf_counter() - started

    started = time.perf_counter()
    report = run_ab_report(events_dir, EXPERIMENT, out / "report", config.tracking, control=CONTROL)
    seconds["report"] = time.perf_counter() - started
    return SimulationResult(report, stats, training.height, heldout.height, len(users), seconds)


def main(argv: list[str] | None = None) -> int:
    from training.cli.args import add_config_arguments, config_from_arguments

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.simulate_ab", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data", type=Path, required=True, help="MovieLens directory (e.g. ml-100k)")
    parser.add_argument("--out", type=Path, default=Path("runs/ab-sim"), help="working directory")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--session-size", type=int, default=10)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_arguments(args, [f"train.epochs={args.epochs}"])
    wall = time.perf_counter()
    result = run_simulation(
        args.data, args.out, config, SimulationOptions(k=args.k, session_size=args.session_size)
    )
    stats = result.stats
    print(
        f"split: {result.train_interactions} training / {result.heldout_interactions} held-out interactions, "
        f"{result.users} held-out users, {stats.sessions} sessions "
        f"({', '.join(f'{v} {n}' for v, n in sorted(stats.by_variant.items()))}), "
        f"{stats.events} events logged, {stats.rejected} rejected"
    )
    print(format_table(result.report))
    print(
        "seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items())
        + f", wall {time.perf_counter() - wall:.1f}"
    )
    comparison = result.report.comparison(TREATMENT)
    verdict = "PASS" if result.passed else "FAIL"
    print(
        f"{verdict}: ranking {result.report.ranking}, "
        f"{TREATMENT} vs {CONTROL} CTR p = {comparison.ctr.p_value:.3g}; "
        f"report and plots in {args.out / 'report'}"
    )
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
