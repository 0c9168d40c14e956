"""``recsys train --nproc N`` / ``--prepared DIR``: streamed shards -> data-parallel training -> bundle.

Launcher (:func:`launch_training`, the process the user started):

1. Fail fast on what would fail after hours: an existing bundle without ``--overwrite``, a config
   the sharded path cannot train (``auto``, pseudonymisation), fewer shards than ranks.
2. ``recsys prepare`` (:func:`training.data.stream_prepare.prepare_shards`) unless ``--prepared DIR``
   is given; the shards go to ``--prepared-out`` (default ``OUT.prepared`` beside the bundle) and are
   kept for the next run (``--prepared``).
3. Start N workers with ``torch.distributed.run`` (the library behind torchrun; ``c10d`` rendezvous
   on localhost, no restarts). A worker that dies fails the run with
   :class:`DistributedTrainingError` naming its rank and its error; the others are stopped by the
   agent. Nothing is written by then: only rank 0 writes, and only after every rank has finished.

Worker (:func:`worker_main`, every rank, also under a user's own ``torchrun --nnodes M ...``):
train its shards (:class:`training.fit.distributed.ShardedTraining`); then rank 0 alone builds the
bundle over every shard (embeddings, calibrated index), writes it atomically, logs the run to
MLflow (world size, per-rank samples/s and peak RSS) and registers the version. The other ranks
write nothing. The bundle's member profiles are not built here (they read the raw event table) and
there is no held-out evaluation (no split is carved from shards): ``recsys benchmark`` evaluates.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from training.config import CLOSED_FORM_OBJECTIVES, Config, to_toml

log = logging.getLogger(__name__)

REPORT_ENV = "RECSYS_WORKER_REPORT"
"""Where rank 0 writes its summary for the launcher (a JSON file in the launcher's temp folder)."""


class DistributedTrainingError(RuntimeError):
    """A worker of a data-parallel run failed; the message names the rank."""


@dataclass(frozen=True)
class ShardedInputs:
    interactions: Path | None = None
    users: Path | None = None
    items: Path | None = None
    prepared: Path | None = None
    """A directory written by ``recsys prepare`` (then ``interactions`` is not read)."""
    prepared_out: Path | None = None
    shards: int | None = None


@dataclass
class ShardedSummary:
    bundle: Path
    model_version: str
    world_size: int
    train_seconds: float = 0.0
    samples_per_second: float = 0.0
    rank_samples_per_second: list[float] = field(default_factory=list)
    rank_peak_rss_mb: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    run_id: str | None = None
    registered_version: str | None = None
    prepared: str = ""


def check_config(config: Config) -> None:
    """Refuse what the sharded path cannot do, naming the field."""
    if config.train.objective == "auto":
        raise ValueError(
            "train.objective = 'auto' is single-process (it trains candidates on a validation split): "
            "with --nproc/--prepared set a concrete objective, e.g. --set train.objective=interaction"
        )
    if config.train.objective in CLOSED_FORM_OBJECTIVES:
        raise ValueError(
            f"train.objective = {config.train.objective!r} is a closed form over every interaction at "
            "once (one process, items x items memory): with --nproc/--prepared set an iterative "
            "objective (interaction, sequence, bag or mixed)"
        )
    if config.train.objective == "elsa":
        raise ValueError(
            "train.objective = 'elsa' is single-process for now (its item matrix is trained outside the "
            "data-parallel model wrapper): with --nproc/--prepared set interaction, sequence, bag or mixed"
        )
    if config.privacy.pseudonymise_user_ids:
        raise ValueError(
            "privacy.pseudonymise_user_ids is not supported by the sharded path yet: pseudonymise the "
            "input files first or train single-process"
        )


def default_prepared_dir(out: Path) -> Path:
    return Path(out).with_name(f"{Path(out).name}.prepared")


def launch_training(
    config: Config,
    inputs: ShardedInputs,
    out: Path,
    *,
    nproc: int,
    overwrite: bool = False,
    max_steps: int | None = None,
) -> ShardedSummary:
    """Prepare (unless given), start ``nproc`` workers, return rank 0's summary (module docstring)."""
    from training.data.shards import read_prepared_manifest
    from training.data.stream_prepare import prepare_shards

    check_config(config)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (use --overwrite to replace it atomically)")
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    prepared = inputs.prepared
    if prepared is None:
        if inputs.interactions is None:
            raise ValueError("recsys train --nproc needs --interactions PATH or --prepared DIR")
        prepared = inputs.prepared_out or default_prepared_dir(out)
        prepare_shards(
            inputs.interactions,
            inputs.users,
            inputs.items,
            prepared,
            config.data,
            shards=inputs.shards,
            overwrite=True,
        )
    shards = int(read_prepared_manifest(prepared)["shards"])
    if shards < nproc:
        raise ValueError(f"{prepared}: {shards} shard(s) for {nproc} ranks; prepare with --shards >= {nproc}")
    with tempfile.TemporaryDirectory(prefix="recsys-train-") as scratch:
        config_file = Path(scratch) / "config.toml"
        config_file.write_text(to_toml(config))
        report = Path(scratch) / "report.json"
        argv = ["train", "--prepared", str(prepared), "--out", str(out), "--config", str(config_file)]
        argv += ["--overwrite"] if overwrite else []
        argv += ["--max-steps", str(max_steps)] if max_steps is not None else []
        run_workers(nproc, argv, {REPORT_ENV: str(report)})
        if not report.is_file():
            raise DistributedTrainingError("rank 0 finished without writing its report")
        data = json.loads(report.read_text())
    data["bundle"] = Path(data["bundle"])
    return ShardedSummary(**data)


def run_workers(nproc: int, argv: list[str], env: dict[str, str]) -> None:
    """``python -m training ARGV`` on ``nproc`` local ranks via ``torch.distributed.run``'s launcher."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"recsys-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as `torchrun --standalone` does
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
    )
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # the workers inherit the launcher's environment
    try:
        elastic_launch(launch, sys.executable)("-m", "training", *argv)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        detail = _failure_message(failure.message)
        raise DistributedTrainingError(
            f"training worker rank {rank} of {nproc} failed (exit code {failure.exitcode}): {detail}; "
            "no bundle was written and no model version registered"
        ) from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _failure_message(message: Any) -> str:
    """The worker's own error line from torchelastic's record (a dict with the traceback), or its text."""
    if isinstance(message, dict):
        inner = message.get("message", message)
        if isinstance(inner, dict):
            text = str(inner.get("message", ""))
            return text.strip().splitlines()[-1] if text.strip() else "no message"
        return str(inner)
    text = str(message).strip()
    return text.splitlines()[-1] if text else "see its log above (no error file)"


def worker_main(
    config: Config, prepared: Path, out: Path, *, overwrite: bool = False, max_steps: int | None = None
) -> None:
    """One rank of the job (module docstring); collective: every rank of the world must call it."""
    from torch.distributed.elastic.multiprocessing.errors import record

    record(_worker)(config, Path(prepared), Path(out), overwrite, max_steps)


def _worker(config: Config, prepared: Path, out: Path, overwrite: bool, max_steps: int | None) -> None:
    from training.data.shards import open_prepared
    from training.fit.distributed import ShardedTraining, device_for, process_group, rank_from_env

    check_config(config)
    info = rank_from_env()
    device = device_for(config, info)
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # The local ranks share the machine's cores: more threads than cores only adds switching.
        import torch

        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    with process_group(info, device):
        data = open_prepared(prepared)
        training = ShardedTraining(data, config, info, device)
        result = training.run(max_steps)
        # DDP's reducer holds the process group: released here, the group is torn down whole by
        # process_group, not by interpreter exit with its threads still joinable (a rank then
        # aborted, exit -6, in tests).
        del training
        gc.collect()
    if not info.is_main:
        return  # only rank 0 writes
    summary = _write_outputs(config, data, result, out, overwrite, info.world_size)
    report = os.environ.get(REPORT_ENV)
    if report:
        payload = asdict(summary)
        payload["bundle"] = str(summary.bundle)
        tmp = Path(report).with_suffix(".tmp")
        tmp.write_text(json.dumps(payload))
        tmp.rename(report)


def _write_outputs(
    config: Config, data: Any, result: Any, out: Path, overwrite: bool, world_size: int
) -> ShardedSummary:
    """Rank 0: the bundle over every shard, the MLflow run and the registered version."""
    from serving.bundle.format import write_bundle
    from training.pipeline import BUNDLE_ARTIFACT, bundle_contents, log_index_calibration
    from training.tracking import flatten, start_run

    counts = {k: int(data.manifest[k]) for k in ("interactions", "users", "items", "duplicates_dropped")}
    distributed = {
        "world_size": world_size,
        "rank_samples_per_second": [round(r, 1) for r in result.rank_samples_per_second],
        "rank_peak_rss_mb": [round(m, 1) for m in result.rank_peak_rss_mb],
        "prepared": str(data.root),
        "shards": data.shards,
        "steps": result.steps,
    }
    info = {
        "protocol": "none",
        "objective": {"chosen": config.train.objective, "epochs": config.train.epochs, "candidates": []},
        "epoch_losses": result.epoch_losses,
        "train_seconds": round(result.seconds, 3),
        "inputs": data.manifest.get("inputs", {}),
        "input_counts": counts,
        "distributed": distributed,
    }
    assembled = bundle_contents(
        result.model,
        data.prepared(range(data.shards)),
        config.index,
        config=config.to_dict(),
        metrics={},
        info=info,
    )
    contents, version = assembled.contents, assembled.contents.model_version
    summary = ShardedSummary(
        bundle=out,
        model_version=version,
        world_size=world_size,
        train_seconds=result.seconds,
        samples_per_second=result.samples_per_second,
        rank_samples_per_second=result.rank_samples_per_second,
        rank_peak_rss_mb=result.rank_peak_rss_mb,
        epoch_losses=result.epoch_losses,
        prepared=str(data.root),
    )
    started = time.perf_counter()
    run_name = f"train-{datetime.now(UTC):%Y%m%dT%H%M%S}-x{world_size}"
    # The MLflow run opens only now, after every rank finished: a failed worker leaves no run behind.
    with start_run(config.tracking, run_name, {"job": "train", "world_size": str(world_size)}) as tracker:
        tracker.log_params(flatten(config.to_dict()))
        tracker.log_dict(config.to_dict(), "config.json")
        tracker.log_params({f"data.{k}": v for k, v in counts.items()})
        tracker.log_params({"distributed.world_size": world_size, "distributed.shards": data.shards})
        for epoch, loss in enumerate(result.epoch_losses):
            tracker.log_metrics({"train_loss": loss}, step=epoch)
        tracker.log_metrics(
            {
                "train_seconds": result.seconds,
                "samples_per_second": result.samples_per_second,
                **{f"rank{r}_samples_per_second": v for r, v in enumerate(result.rank_samples_per_second)},
                **{f"rank{r}_peak_rss_mb": v for r, v in enumerate(result.rank_peak_rss_mb)},
            }
        )
        log_index_calibration(tracker, assembled.index)
        write_bundle(out, contents, overwrite=overwrite)
        log.info(
            "bundle %s written to %s (%.1f s after training)", version, out, time.perf_counter() - started
        )
        tracker.set_tags({"model_version": version})
        tracker.log_directory(out, BUNDLE_ARTIFACT)
        summary.registered_version = tracker.register_model(
            config.tracking.registered_model, BUNDLE_ARTIFACT, {"model_version": version}
        )
        if tracker.info is not None:
            summary.run_id = tracker.info.run_id
    return summary
