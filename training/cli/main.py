"""``recsys``: a thin command-line shell over the typed functions of this project.

Every sub-command parses flags, calls one importable function and prints a short
result. Heavy modules are imported per command, so ``recsys serve`` works in the
serving image, which has no training dependencies.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from serving.errors import RecsysError
from training.cli.args import (
    CommandInputError,
    add_config_arguments,
    check_output_flags,
    config_from_arguments,
    describe_os_error,
)
from training.cli.benchmark import add_benchmark_parser
from training.cli.distributed import add_distributed_arguments
from training.cli.lifecycle import add_lifecycle_parsers
from training.cli.profiles import add_profile_parsers
from training.cli.tune import add_tune_parser


def cmd_import(args: argparse.Namespace) -> None:
    from training.data.movielens import import_movielens

    summary = import_movielens(args.src, args.out)
    print(
        f"{summary.format}: {summary.interactions} interactions, {summary.users} users, "
        f"{summary.items} items -> {args.out}"
    )


def cmd_synth(args: argparse.Namespace) -> None:
    from training.data.synth import SynthConfig, synthesize

    summary = synthesize(
        SynthConfig(
            users=args.users,
            items=args.items,
            events=args.events,
            seed=args.seed,
            fraud_users=args.fraud_users,
        ),
        args.out,
    )
    counts = ", ".join(f"{k} {v}" for k, v in summary.event_counts.items())
    fraud = (
        f", {summary.fraud_users} injected fraud members ({summary.fraud_path})"
        if summary.fraud_users
        else ""
    )
    print(
        f"{summary.users} users, {summary.items} items, {summary.interactions} events ({counts}){fraud}"
        f" -> {args.out}"
    )


def cmd_prepare(args: argparse.Namespace) -> None:
    from training.data.stream_prepare import prepare_shards

    config = config_from_arguments(args)
    summary = prepare_shards(
        args.interactions,
        args.users,
        args.items,
        args.out,
        config.data,
        shards=args.shards,
        overwrite=args.overwrite,
        privacy=config.privacy,
    )
    print(
        f"{summary.interactions} interactions ({summary.duplicates_dropped} duplicates dropped), "
        f"{summary.users} users, {summary.items} items -> {summary.shards} shards in {summary.out} "
        f"({summary.seconds:.1f} s)"
    )


def cmd_train(args: argparse.Namespace) -> None:
    from training.cli.distributed import is_sharded_run, run_sharded_train
    from training.pipeline import train

    extra = [f"train.epochs={args.epochs}"] if args.epochs is not None else []
    config = config_from_arguments(args, extra)
    logging.getLogger(__name__).info("resolved config: %s", config.to_dict())
    if is_sharded_run(args):
        # --nproc / --prepared / started by torchrun: streamed shards, data-parallel workers.
        run_sharded_train(args, config)
        return
    if args.interactions is None:
        raise ValueError("recsys train needs --interactions FILE (or --prepared DIR)")
    summary = train(config, args.interactions, args.users, args.items, args.out, overwrite=args.overwrite)
    print(f"model {summary.model_version} -> {summary.bundle}")
    if summary.metrics:
        print("metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in summary.metrics.items()))
    print(
        f"training {summary.train_seconds:.1f} s ({summary.samples_per_second:.0f} samples/s), "
        f"total {summary.total_seconds:.1f} s, peak RSS {summary.peak_rss_mb:.0f} MiB"
    )
    if summary.run_id:
        print(
            f"MLflow run {summary.run_id}, registered {config.tracking.registered_model} "
            f"version {summary.registered_version}"
        )


def cmd_throughput(args: argparse.Namespace) -> None:
    from training.config import CLOSED_FORM_OBJECTIVES
    from training.data.io import find_canonical_files, load_dataset
    from training.features import prepare
    from training.fit.auto import candidates_of
    from training.fit.trainer import measure_throughput, train_model

    config = config_from_arguments(args)
    dataset = load_dataset(*find_canonical_files(args.data))
    prepared = prepare(dataset.interactions, dataset.users, dataset.items, config.data)
    # auto trains several candidates: each is timed (one line per objective).
    for name, candidate in candidates_of(config):
        if candidate.train.objective in CLOSED_FORM_OBJECTIVES:
            # A closed form has no training loop to feed: its cost is the one fit.
            started = time.perf_counter()
            train_model(prepared, candidate)
            print(f"{name}: closed form, fitted in {time.perf_counter() - started:.1f} s (no training loop)")
            continue
        result = measure_throughput(prepared, candidate, steps=args.steps)
        print(
            f"{name}: {result.steps} steps: full loop {result.pipeline_samples_per_second:.0f} samples/s, "
            f"model-only on pre-built tensors {result.model_only_samples_per_second:.0f} samples/s, "
            f"ratio {result.ratio:.3f}"
        )


def cmd_config(args: argparse.Namespace) -> None:
    from training.config import to_toml

    config = config_from_arguments(args)
    print(to_toml(config), end="")


def cmd_recommend(args: argparse.Namespace) -> None:
    from serving.cli import recommend_command

    recommend_command(args)


def cmd_lookalike(args: argparse.Namespace) -> None:
    from serving.audiences.batch import lookalike_command

    lookalike_command(args)


def cmd_serve(args: argparse.Namespace) -> None:
    from serving.cli import serve_command

    serve_command(args)


def cmd_query(args: argparse.Namespace) -> None:
    from serving.client import ClientTLS, RecommenderClient, token_from_env

    tls = None
    if args.tls_ca is not None or args.tls_cert is not None:
        tls = ClientTLS(
            ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name
        )
    import grpc

    token = token_from_env(args.token_env) if args.token_env else None
    with RecommenderClient(args.address, timeout=args.timeout, tls=tls, token=token) as client:
        try:
            print(f"health: {client.health()}")
            response = client.recommend(
                args.user, args.k, experiment=args.experiment, force_variant=args.force_variant
            )
        except grpc.RpcError as exc:
            raise CommandInputError(
                f"--address {args.address}: the call failed with {exc.code().name}: {exc.details()}"
            ) from None
        note = " (fallback: unknown user)" if response.fallback else ""
        variant = f", experiment {args.experiment} variant {response.variant}" if args.experiment else ""
        print(f"model {response.model_version}{variant}{note}")
        for rank, item in enumerate(response.items, start=1):
            print(f"{rank:4d}  {item.item_id:>12}  {item.score:.4f}")


def cmd_demo(args: argparse.Namespace) -> None:
    from training.cli.demo import run_demo

    config = config_from_arguments(args, [f"train.epochs={args.epochs}"])
    run_demo(config, args.out, users=args.users, items=args.items, events=args.events)


def cmd_ab_report(args: argparse.Namespace) -> None:
    from training.reports.ab_report import format_table, run_ab_report

    config = config_from_arguments(args)
    out = args.out if args.out is not None else Path("runs/ab-report") / args.experiment
    report = run_ab_report(
        args.events,
        args.experiment,
        out,
        config.tracking,
        control=args.control,
        bootstrap_resamples=args.bootstrap,
    )
    print(format_table(report))
    print(f"report, daily table and plots -> {out}")


def cmd_campaign_report(args: argparse.Namespace) -> None:
    from training.reports.campaign_report import format_report, run_campaign_report

    report = run_campaign_report(args.campaign, args.events, args.days, args.cost_per_contact, args.out)
    print(format_report(report))
    if args.out is not None:
        print(f"report -> {args.out}")


def build_parser() -> argparse.ArgumentParser:
    from serving.cli import add_recommend_arguments, add_serve_arguments

    parser = argparse.ArgumentParser(prog="recsys", description="Two-tower recommendation service.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("import", help="convert a public data set to the canonical input files")
    p.add_argument("format", choices=["movielens"], help="data set family")
    p.add_argument("src", type=Path, help="directory with the original files (100K, 1M, 10M, 20M/latest)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.set_defaults(func=cmd_import)

    p = commands.add_parser("synth", help="generate a realistic synthetic e-commerce data set")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--fraud-users",
        type=int,
        default=0,
        help="append this many known fraudulent members (bots, fake orders); truth in fraud.parquet",
    )
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_synth)

    p = commands.add_parser(
        "prepare", help="streamed feature pass: encoders, popularity and user-hash-sharded examples"
    )
    p.add_argument(
        "--interactions",
        required=True,
        help="interactions: a .parquet/.csv file, a directory of them (hive partitions welcome) or a glob",
    )
    p.add_argument("--users", type=Path, help="user attributes .parquet/.csv")
    p.add_argument("--items", type=Path, help="item attributes .parquet/.csv")
    p.add_argument("--out", type=Path, required=True, help="prepared directory to create")
    p.add_argument("--shards", type=int, help="number of shards (default: ~1M events each, at least 8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared directory")
    add_config_arguments(p)
    p.set_defaults(func=cmd_prepare)

    p = commands.add_parser("train", help="train, evaluate, write a bundle, log to MLflow")
    p.add_argument(
        "--interactions",
        type=Path,
        help="interactions .parquet/.csv, or an event-log directory (recsys serve --events-dir); "
        "with --nproc also a directory or glob of files (streamed)",
    )
    p.add_argument("--users", type=Path, help="user attributes .parquet/.csv")
    p.add_argument("--items", type=Path, help="item attributes .parquet/.csv")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    p.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle (atomically)")
    add_distributed_arguments(p)
    add_config_arguments(p)
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("config", help="print the resolved configuration as TOML")
    add_config_arguments(p)
    p.set_defaults(func=cmd_config)

    p = commands.add_parser("recommend", help="batch lists: one row per (user, rank, item, score)")
    add_recommend_arguments(p)
    p.set_defaults(func=cmd_recommend)

    p = commands.add_parser("lookalike", help="lookalike audience: the users most similar to a seed group")
    from serving.audiences.batch import add_lookalike_arguments

    add_lookalike_arguments(p)
    p.set_defaults(func=cmd_lookalike)

    p = commands.add_parser("serve", help="serve a bundle over gRPC")
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)

    p = commands.add_parser("query", help="call a running server: health and Recommend for one user")
    p.add_argument("--address", default="127.0.0.1:50051")
    p.add_argument("--user", required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--experiment", default="", help="answer as this A/B experiment's variant for the user")
    p.add_argument("--force-variant", default="", help="with --experiment: force this variant (QA)")
    p.add_argument("--tls-ca", type=Path, help="TLS: trust this CA certificate (PEM) for the server")
    p.add_argument("--tls-cert", type=Path, help="mutual TLS: client certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="mutual TLS: client private key (PEM)")
    p.add_argument("--tls-server-name", default="", help="TLS: name to check the server certificate for")
    p.add_argument(
        "--token-env",
        default="",
        metavar="VAR",
        help="send the bearer token held in environment variable VAR (never pass a token as an argument)",
    )
    p.set_defaults(func=cmd_query)

    p = commands.add_parser(
        "demo", help="synthesise, train, evaluate, serve and query: no server, no download"
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="working directory (default runs/demo)"
    )
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default 5: a quick demo)")
    add_config_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = commands.add_parser(
        "throughput", help="training samples/s: full loop vs model-only on pre-built tensors (ratio)"
    )
    p.add_argument("--data", type=Path, required=True, help="directory with the canonical input files")
    p.add_argument("--steps", type=int, default=30, help="timed steps per loop")
    add_config_arguments(p)
    p.set_defaults(func=cmd_throughput)

    p = commands.add_parser(
        "ab-report", help="A/B report from the event log: CTR, conversion, revenue/user, tests, plots"
    )
    p.add_argument(
        "--events", type=Path, required=True, help="event-log directory (recsys serve --events-dir)"
    )
    p.add_argument("--experiment", required=True, help="experiment name (as logged with the events)")
    p.add_argument("--control", help="control variant (default: the first variant by name)")
    p.add_argument("--out", type=Path, help="output directory (default runs/ab-report/EXPERIMENT)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    add_config_arguments(p)
    p.set_defaults(func=cmd_ab_report)

    p = commands.add_parser(
        "campaign-report",
        help="what a sent campaign did: reach, response, conversion, revenue, uplift over the control, ROI",
    )
    p.add_argument(
        "--campaign",
        type=Path,
        required=True,
        help="the campaign file written with the list (LIST.campaign.json; recsys recommend/lookalike "
        "--campaign/--control-share)",
    )
    p.add_argument(
        "--events", type=Path, required=True, help="event-log directory (recsys serve --events-dir)"
    )
    p.add_argument(
        "--days", type=float, default=14.0, help="response window after sending, in days (default 14)"
    )
    p.add_argument("--cost-per-contact", type=float, default=0.0, help="cost of one contact, for the ROI")
    p.add_argument("--out", type=Path, help="also write the report as JSON here")
    p.set_defaults(func=cmd_campaign_report)

    add_benchmark_parser(commands)
    add_lifecycle_parsers(commands)
    add_profile_parsers(commands)
    add_tune_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from training.config import ConfigError
    from training.data.io import InputError

    try:
        check_output_flags(args)
        args.func(args)
    except OSError as exc:
        # A path the command cannot use (a directory where a file goes, a parent that is a file,
        # no permission): name the flag that gave it. Our own FileExistsError("... --overwrite")
        # carries no errno and reads as it is.
        print(f"error: {describe_os_error(exc, args)}", file=sys.stderr)
        return 2
    except (ConfigError, InputError, RecsysError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not type(exc).__module__.startswith("polars"):
            raise  # a bug: the traceback is what a report needs
        # A file a reader did not catch (each reader names its file; this is the safety net).
        print(f"error: an input file cannot be used: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
