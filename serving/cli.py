"""Command-line entry points of the serving side (no training dependencies).

``python -m serving serve ...`` / ``recsys serve ...`` and ``recsys recommend ...``
share these argument definitions and functions. torch, FAISS and the engine are imported
where they are used, so the supervising parent of ``--workers N`` never loads them.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import time
from pathlib import Path

from serving.api.server import ServerOptions, run_server
from serving.api.workers import run_workers
from serving.lifecycle.live_models import EngineSource, LiveModelOptions, load_bundle_engine
from serving.observability import tracing
from serving.observability.log_format import LOG_FORMATS, configure_logging
from serving.profiles.campaign import add_campaign_arguments
from serving.security.access import AccessOptions
from serving.security.tls import TlsFiles

log = logging.getLogger(__name__)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--bundle", type=Path, help="model bundle directory (served as it is)")
    what.add_argument(
        "--model",
        help="model reference: models:/NAME@ALIAS (watched: a moved alias is hot-swapped), "
        "models:/NAME/VERSION, or a bundle directory",
    )
    parser.add_argument(
        "--experiments",
        type=Path,
        help="A/B experiments file (TOML; see serving/lifecycle/experiments.py), reloaded when it changes",
    )
    parser.add_argument(
        "--model-poll-s",
        type=float,
        default=15.0,
        help="seconds between checks of where a models:/NAME@ALIAS points (default 15)",
    )
    parser.add_argument(
        "--experiments-poll-s",
        type=float,
        default=2.0,
        help="seconds between checks of the experiments file for changes (default 2; SIGHUP: at once)",
    )
    parser.add_argument(
        "--bundle-cache",
        type=Path,
        help="where registered bundles are cached (default mlflow/bundles-cache)",
    )
    parser.add_argument(
        "--tracking-uri",
        default="",
        help="MLflow registry for models:/ references (default $MLFLOW_TRACKING_URI, else mlflow/)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50051, help="port (0 picks a free one)")
    parser.add_argument(
        "--threads", type=int, default=4, help="engine threads per process (CPU-bound work; default 4)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the port (SO_REUSEPORT); >1 needs an explicit --port (default 1)",
    )
    parser.add_argument(
        "--max-batch", type=int, default=64, help="Recommend requests per engine call at most (default 64)"
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=2.0,
        help=(
            "with --batch-concurrency > 1: how long a queued Recommend waits for others to batch "
            "with while another batch runs (default 2 ms; an idle engine never waits)"
        ),
    )
    parser.add_argument(
        "--batch-concurrency",
        type=int,
        default=1,
        help="Recommend batches computed at once, each on an engine thread (default 1)",
    )
    parser.add_argument(
        "--max-pending",
        type=int,
        default=512,
        help="engine calls admitted at once per process (queued + running); more get "
        "RESOURCE_EXHAUSTED at once (default 512)",
    )
    parser.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=1024,
        help="hard cap on calls in progress per process, health checks included (default 1024)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus metrics on http://HOST:PORT/metrics (default 0: off); with --workers "
        "the parent serves them, summed over the workers",
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log every call at INFO (default: only failed calls)"
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text (default) or json: one JSON object per line, the access lines with method, code, "
        "duration_ms, request_id, client and trace_id as fields. Tracing itself is switched on by the "
        "OTEL_* environment (OTEL_TRACES_EXPORTER=otlp, OTEL_EXPORTER_OTLP_ENDPOINT=...)",
    )
    parser.add_argument("--grace", type=float, default=10.0, help="seconds in-flight calls get on SIGTERM")
    parser.add_argument(
        "--health-port",
        type=int,
        default=0,
        help="also serve the health service alone, plaintext, on this port (for probes that cannot "
        "do TLS, e.g. Kubernetes' grpc probe; default 0: off)",
    )
    parser.add_argument(
        "--events-dir",
        type=Path,
        help="feedback event log directory for LogEvents (write-ahead log + date-partitioned Parquet); "
        "without it LogEvents answers FAILED_PRECONDITION",
    )
    parser.add_argument(
        "--events-compact-s",
        type=float,
        default=30.0,
        help="seconds before logged events are compacted into readable Parquet (default 30)",
    )
    parser.add_argument(
        "--events-key-env",
        default="",
        metavar="VAR",
        help="store pseudonymous user ids in the event log, HMAC-keyed by $VAR (the bundle's "
        "privacy.key_env, e.g. RECSYS_ID_KEY); default: ids as sent",
    )
    parser.add_argument(
        "--profile-store",
        default="",
        metavar="STORE",
        help="where live member profiles keep the events logged after the bundle's snapshot: "
        "'embedded' (this process; the default with one process), 'off' (snapshot only; the default "
        "with --workers N), or redis://HOST:PORT/DB (loopback) / rediss://... shared by every replica; "
        "password from $RECSYS_PROFILE_STORE_PASSWORD or the file in $RECSYS_PROFILE_STORE_PASSWORD_FILE",
    )
    add_security_arguments(parser)


def add_security_arguments(parser: argparse.ArgumentParser) -> None:
    """TLS, tokens, exposure and input-size flags of ``recsys serve`` (docs/security.md)."""
    group = parser.add_argument_group("security")
    group.add_argument(
        "--tls-cert", type=Path, metavar="PEM", help="TLS certificate chain (PEM) of the server"
    )
    group.add_argument("--tls-key", type=Path, metavar="PEM", help="private key (PEM) of --tls-cert")
    group.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="PEM",
        help="mutual TLS: refuse clients without a certificate signed by this CA (PEM)",
    )
    group.add_argument(
        "--auth-tokens",
        type=Path,
        metavar="FILE",
        help="callers, token hashes, scopes and rates (TOML); calls need 'authorization: Bearer TOKEN'",
    )
    group.add_argument(
        "--security-poll-s",
        type=float,
        default=2.0,
        help="seconds between checks of the tokens and TLS files for changes (default 2; SIGHUP: at once)",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without TLS and tokens (only behind something that secures "
        "the network, e.g. a service mesh terminating mTLS)",
    )
    group.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="interface of the --metrics-port endpoint (default 127.0.0.1: not exposed)",
    )
    group.add_argument(
        "--max-receive-bytes",
        type=int,
        default=4 * 1024 * 1024,
        help="largest request message accepted, in bytes (default 4 MiB; larger: RESOURCE_EXHAUSTED)",
    )


def access_options(args: argparse.Namespace) -> AccessOptions:
    """The :class:`AccessOptions` of the security flags; :class:`ValueError` for an incomplete set."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key: give both or neither")
    if args.tls_client_ca is not None and args.tls_cert is None:
        raise ValueError("--tls-client-ca: mutual TLS needs --tls-cert and --tls-key too")
    tls = None if args.tls_cert is None else TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)
    return AccessOptions(
        tls=tls, auth_tokens=args.auth_tokens, insecure=args.insecure, poll_seconds=args.security_poll_s
    )


def configure_compute_threads(threads: int) -> None:
    """One intra-op thread per engine thread: requests are parallel across threads (and
    batched), and nested parallelism inside each engine call only adds contention.

    Every native thread pool loaded in the process (NumPy's and FAISS's OpenBLAS, torch's
    and FAISS's OpenMP) is limited to one thread at run time with ``threadpoolctl``: an
    idle OpenBLAS or OpenMP team busy-waits after each call, and on the 2-core benchmark
    machine NumPy's OpenBLAS helper alone burnt ~0.75 of a core under load (the score
    matrix product of each batch woke it), halving Recommend throughput. ``OMP_NUM_THREADS``
    is set as well for libraries loaded later (it is read when OpenMP starts).
    """
    os.environ["OMP_NUM_THREADS"] = "1"
    import faiss
    import numpy  # noqa: F401  (its OpenBLAS must be loaded to be limited)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    threadpool_limits(limits=1)
    log.debug("engine threads: %d", threads)


def engine_source(args: argparse.Namespace) -> EngineSource:
    """What to serve: a fixed ``--bundle``, or live models (``--model``, ``--experiments``)."""
    if args.bundle is not None and args.experiments is None:
        return functools.partial(load_bundle_engine, Path(args.bundle))
    return LiveModelOptions(
        model=str(args.bundle if args.bundle is not None else args.model),
        experiments=args.experiments,
        poll_seconds=args.model_poll_s,
        experiments_poll_seconds=args.experiments_poll_s,
        cache_dir=args.bundle_cache,
        tracking_uri=args.tracking_uri,
    )


def serve_command(args: argparse.Namespace) -> None:
    """Serve ``args.bundle`` until SIGTERM/SIGINT (``--workers N``: N processes).

    Raises :class:`ValueError` for bad options (a
    :class:`~serving.observability.tracing.TracingConfigError` is one),
    :class:`~serving.api.server.ServerStartupError` when the server cannot start, and
    :class:`SystemExit` (non-zero) when a worker of ``--workers N`` dies while serving.
    """
    options = ServerOptions(
        host=args.host,
        port=args.port,
        max_workers=args.threads,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        grace_seconds=args.grace,
        health_port=args.health_port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        batch_concurrency=args.batch_concurrency,
        max_pending=args.max_pending,
        metrics_port=args.metrics_port,
        access_log=args.access_log,
        events_dir=args.events_dir,
        events_compact_interval_s=args.events_compact_s,
        events_key_env=args.events_key_env,
        access=access_options(args),
        metrics_host=args.metrics_host,
        max_receive_message_bytes=args.max_receive_bytes,
        profile_store=args.profile_store,
        log_format=args.log_format,
    )
    if args.workers < 1:
        raise ValueError(f"--workers: must be >= 1, got {args.workers}")
    if args.workers > 1 and args.profile_store == "embedded":
        raise ValueError(
            "--profile-store embedded: with --workers N each process would keep its own live profiles; "
            "use redis://... to share them, or leave it out (snapshot profiles)"
        )
    # Before anything starts: OTEL_* asking for an exporter that is not installed fails here.
    tracing.check_environment()
    if args.log_format != "text":  # text: the entry point's configuration stays
        configure_logging(args.log_format, logging.getLogger().getEffectiveLevel())
    load = engine_source(args)
    if args.workers > 1:
        status = run_workers(
            options, args.workers, load, prepare=functools.partial(configure_compute_threads, args.threads)
        )
        if status != 0:
            raise SystemExit(status)
        return
    configure_compute_threads(args.threads)
    run_server(options, load)


def add_recommend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory")
    parser.add_argument(
        "--users",
        type=Path,
        required=True,
        help="user ids: CSV/Parquet with a user_id column, or a text file, one per line",
    )
    parser.add_argument("--k", type=int, default=10, help="items per user (1..1000)")
    parser.add_argument("--out", type=Path, required=True, help="output .csv or .parquet")
    add_campaign_arguments(parser)


def recommend_command(args: argparse.Namespace) -> None:
    from serving.campaigns.holdout import write_campaign_list
    from serving.profiles.campaign import ListRules, apply_campaign_rules, check_clv_available, member_flags
    from serving.recommend.batch import read_user_ids, recommend_batch
    from serving.recommend.engine import TwoTowerEngine

    started = time.perf_counter()
    rules = ListRules.from_arguments(args)
    engine = TwoTowerEngine.load(args.bundle)
    check_clv_available(engine.bundle.manifest, rules)
    users = read_user_ids(args.users)
    listed = recommend_batch(engine, users, args.k)
    profiles = member_flags(engine.bundle.path, engine.bundle.manifest)
    campaign = apply_campaign_rules(
        listed, engine.bundle_user_ids(listed.get_column("user_id")), profiles, rules
    )
    frame = campaign.frame
    held_out = write_campaign_list(
        args,
        frame,
        engine.bundle_user_ids(frame.get_column("user_id")),
        profiles,
        "recommend",
        engine.model_version,
    )
    seconds = time.perf_counter() - started
    fallback_users = frame.filter(frame["fallback"]).get_column("user_id").n_unique()
    print(
        f"wrote {frame.height} rows for {len(users)} users ({fallback_users} unknown: popularity fallback) "
        f"to {args.out} in {seconds:.2f} s ({len(users) / max(seconds, 1e-9):.0f} users/s), "
        f"model {engine.model_version}; {campaign.flagged_removed} flagged members left out"
        + (f" ({campaign.note})" if campaign.note else "")
        + (
            f"; {campaign.below_min_clv_removed} members below --min-clv {rules.min_clv:g} left out"
            if rules.min_clv is not None
            else ""
        )
        + (f"; {held_out}" if held_out else "")
    )
