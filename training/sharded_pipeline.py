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

Worker (:func:`worker_main`, every rank, also under a user's own ``torchrun --nnodes M ...``), the
steps of single-process training (:mod:`training.pipeline`) on shards:

1. The held-out split (:func:`training.fit.shard_holdout.carve_holdout`): ``eval.protocol``'s test
   part and a validation part of a seeded sample of users.
2. Train its shards without the held-out rows (:class:`training.fit.distributed.ShardedTraining`),
   stopping early on the validation part (``train.patience``); rank 0 evaluates the best epoch's
   model on the test part (:func:`training.evaluation.evaluate.evaluate`).
3. With ``train.refit_full`` (or ``eval.protocol = "none"``) train again on every event for the
   validated epochs at their learning rates; otherwise the evaluated model is the bundle's.
4. Rank 0 alone builds the bundle over every shard (embeddings, calibrated index) with the test
   figures as its metrics, writes it atomically, logs the run to MLflow (the same metric and
   objective records as single-process training, plus world size, per-rank samples/s and peak
   RSS) and registers the version. The other ranks write nothing. The bundle's member profiles
   are not built here (they read the raw event table).
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
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.config import CLOSED_FORM_OBJECTIVES, Config, to_toml

if TYPE_CHECKING:
    from serving.model.towers import TwoTowerModel
    from training.data.shards import PreparedShards
    from training.fit.auto import Selection
    from training.fit.distributed import RankInfo, ShardedResult, ShardedTraining
    from training.fit.shard_holdout import ShardHoldout
    from training.tracking import Tracker

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
    metrics: dict[str, float] = field(default_factory=dict)
    """Held-out test figures (empty with ``eval.protocol = "none"``)."""
    validation: list[float] = field(default_factory=list)
    best_epoch: int = 0


def check_config(config: Config) -> None:
    """Refuse what the sharded path cannot do, naming the field."""
    if config.train.objective in CLOSED_FORM_OBJECTIVES:
        raise ValueError(
            f"train.objective = {config.train.objective!r} is a closed form over every interaction at "
            "once (one process, items x items memory): with --nproc/--prepared set an iterative "
            "objective (interaction, sequence, bag, mixed or elsa)"
        )
    from training.fit.distributed import DATA_PARALLEL_OBJECTIVES

    if config.train.objective not in (*DATA_PARALLEL_OBJECTIVES, "auto"):
        raise ValueError(
            f"train.objective = {config.train.objective!r} does not train data-parallel: with "
            f"--nproc/--prepared set auto or one of {', '.join(DATA_PARALLEL_OBJECTIVES)}"
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
            privacy=config.privacy,
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
    from training.fit.shard_holdout import carve_holdout

    check_config(config)
    objective = config.train.objective
    info = rank_from_env()
    device = device_for(config, info)
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # The local ranks share the machine's cores: more threads than cores only adds switching.
        import torch

        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    with process_group(info, device):
        data = open_prepared(prepared)
        if config.privacy.pseudonymise_user_ids and not data.manifest.get("privacy"):
            raise ValueError(
                f"privacy.pseudonymise_user_ids is set but {prepared} holds raw user ids: prepare it "
                "again with the same setting (recsys prepare --set privacy.pseudonymise_user_ids=true)"
            )
        holdout = carve_holdout(data, config)
        chosen = _choose_objective(data, holdout, config, info)
        config = chosen.config if chosen is not None else config
        rows = holdout if holdout is not None and holdout.holds_out else None
        evaluated = _train(ShardedTraining(data, config, info, device, holdout=rows), max_steps)
        metrics = _test_metrics(evaluated.model, data, holdout, config) if info.is_main else {}
        final = evaluated
        refit = config.train.refit_full or config.eval.protocol == "none"
        if holdout is not None and holdout.holds_out and refit:
            # As single-process training: the validated epochs again, on every event.
            schedule = evaluated.schedule if evaluated.validation else None
            final = _train(ShardedTraining(data, config, info, device, schedule=schedule), max_steps)
    if not info.is_main:
        return  # only rank 0 writes
    selection = _selection(config, holdout, evaluated, chosen)
    run = ShardedRun(config, data, holdout, evaluated, final, metrics, selection, objective)
    summary = _write_outputs(run, out, overwrite, info.world_size)
    report = os.environ.get(REPORT_ENV)
    if report:
        payload = asdict(summary)
        payload["bundle"] = str(summary.bundle)
        tmp = Path(report).with_suffix(".tmp")
        tmp.write_text(json.dumps(payload))
        tmp.rename(report)


def _train(training: ShardedTraining, max_steps: int | None) -> ShardedResult:
    """Run ``training`` on this rank (collective) and release its DDP wrapper."""
    result = training.run(max_steps)
    # DDP's reducer holds the process group: released here, the group is torn down whole by
    # process_group, not by interpreter exit with its threads still joinable (a rank then
    # aborted, exit -6, in tests).
    del training
    gc.collect()
    return result


def _test_metrics(
    model: TwoTowerModel, data: PreparedShards, holdout: ShardHoldout | None, config: Config
) -> dict[str, float]:
    """Rank 0: the evaluated model's figures on the held-out test part (the same
    :func:`training.evaluation.evaluate.evaluate` as single-process training); {} without one."""
    from training.evaluation.evaluate import evaluate

    test = holdout.test_data(data.entities) if holdout is not None else None
    if test is None:
        return {}
    metrics = {k: float(v) for k, v in evaluate(model, test[0], test[1], config.eval.k).items()}
    log.info(
        "evaluation (%s, %d sampled users): %s",
        config.eval.protocol,
        len(holdout.users) if holdout is not None else 0,
        ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
    )
    return metrics


def _choose_objective(
    data: PreparedShards, holdout: ShardHoldout | None, config: Config, info: RankInfo
) -> Selection | None:
    """``auto``: rank 0 runs :func:`training.fit.auto.select_objective` in one process on the
    sampled users' rows (the test part left out; a probe of ``train.auto_probe_epochs`` each, the
    leader of each family to early stopping within ``train.auto_max_s``; memory bounded by the
    sample), trying the candidates that train data-parallel, no blend (the ranks train one model),
    and every rank gets its choice; None for a concrete objective. The candidate runs are not logged
    to MLflow (the run opens after training); their table goes into the bundle manifest."""
    from training.fit.auto import CANDIDATES, select_objective
    from training.fit.distributed import DATA_PARALLEL_OBJECTIVES, broadcast_from_main

    if config.train.objective != "auto":
        return None
    chosen: Selection | None = None
    if info.is_main:
        assert holdout is not None  # carve_holdout always samples for auto
        names = [n for n, o in CANDIDATES if o["train"]["objective"] in DATA_PARALLEL_OBJECTIVES]
        untracked = replace(
            config,
            tracking=replace(config.tracking, enabled=False),
            train=replace(config.train, auto_blend=False),
        )
        entities = data.entities
        started = time.perf_counter()
        chosen = select_objective(
            holdout.known_by_id(entities),
            entities.user_table,
            entities.item_table,
            untracked,
            config.eval.protocol,
            names=names,
        )
        chosen = replace(chosen, config=replace(chosen.config, tracking=config.tracking))
        log.info(
            "auto on %d sampled users (%.0f s): %s",
            len(holdout.users),
            time.perf_counter() - started,
            chosen.name,
        )
    return broadcast_from_main(chosen, info)


def _selection(
    config: Config, holdout: ShardHoldout | None, evaluated: ShardedResult, chosen: Selection | None
) -> Selection:
    """The objective record (:meth:`training.fit.auto.Selection.manifest`): ``auto``'s choice and
    candidate table (on the sampled users) or, for a concrete objective, one candidate validated by
    early stopping; the epochs and schedule are those of the run on every shard."""
    from training.fit.auto import CandidateResult, Selection

    if chosen is not None:
        schedule = evaluated.schedule if evaluated.validation else None
        return replace(chosen, schedule=schedule)
    if not evaluated.validation:
        return Selection(config=config, name=config.train.objective, schedule=None)
    epochs = len(evaluated.epoch_losses)
    candidate = CandidateResult(
        name=config.train.objective,
        validation_ndcg=max(evaluated.validation),
        best_epoch=evaluated.best_epoch,
        epochs_run=epochs,
        seconds=evaluated.seconds,
        seconds_per_epoch=evaluated.seconds / max(epochs, 1),
    )
    protocol = holdout.validation_protocol if holdout is not None else ""
    return Selection(
        config=config,
        name=config.train.objective,
        schedule=evaluated.schedule,
        candidates=[candidate],
        protocol=protocol,
    )


@dataclass(frozen=True)
class ShardedRun:
    """What rank 0 writes: the trained runs, the held-out split and figures, the objective record."""

    config: Config
    data: PreparedShards
    holdout: ShardHoldout | None
    evaluated: ShardedResult
    """The run on every event but the held-out ones (with early stopping on the validation part)."""
    final: ShardedResult
    """The bundle's model: ``evaluated`` or its refit on every event."""
    metrics: dict[str, float]
    selection: Selection

    base_objective: str = ""
    """``train.objective`` as configured (``auto`` or the concrete one)."""

    @property
    def refit(self) -> bool:
        return self.final is not self.evaluated


def _auto_record(run: ShardedRun) -> dict[str, Any]:
    """How ``auto`` chose on the sharded path (added to the manifest's objective record)."""
    from training.fit.auto import CANDIDATES
    from training.fit.distributed import DATA_PARALLEL_OBJECTIVES

    return {
        "chosen_on": "sampled users",
        "sample_users": len(run.holdout.users) if run.holdout is not None else 0,
        "sample_events": run.holdout.known.height if run.holdout is not None else 0,
        "not_tried": [n for n, o in CANDIDATES if o["train"]["objective"] not in DATA_PARALLEL_OBJECTIVES],
        "not_tried_because": "not data-parallel: a closed form needs every interaction in one process",
        "validation_on_every_shard": max(run.evaluated.validation) if run.evaluated.validation else None,
    }


def _write_outputs(run: ShardedRun, out: Path, overwrite: bool, world_size: int) -> ShardedSummary:
    """Rank 0: the bundle over every shard, the MLflow run and the registered version."""
    from serving.bundle.format import write_bundle
    from training.pipeline import BUNDLE_ARTIFACT, bundle_contents, log_index_calibration
    from training.profiles.build import profiles_for_bundle
    from training.tracking import flatten, start_run

    config, data, result, metrics = run.config, run.data, run.final, run.metrics
    counts = {k: int(data.manifest[k]) for k in ("interactions", "users", "items", "duplicates_dropped")}
    distributed = {
        "world_size": world_size,
        "rank_samples_per_second": [round(r, 1) for r in result.rank_samples_per_second],
        "rank_peak_rss_mb": [round(m, 1) for m in result.rank_peak_rss_mb],
        "prepared": str(data.root),
        "shards": data.shards,
        "steps": result.steps,
        "holdout": run.holdout.manifest() if run.holdout is not None else None,
        "refit_full": run.refit,
    }
    train_seconds = run.evaluated.seconds + (result.seconds if run.refit else 0.0)
    objective = run.selection.manifest()
    if run.selection.candidates and run.base_objective == "auto":
        objective["sharded"] = _auto_record(run)
    info = {
        "protocol": config.eval.protocol,
        "objective": objective,
        "epoch_losses": result.epoch_losses,
        "train_seconds": round(train_seconds, 3),
        "inputs": data.manifest.get("inputs", {}),
        "input_counts": counts,
        "distributed": distributed,
    }
    everything = data.prepared(range(data.shards))
    assembled = bundle_contents(
        result.model,
        everything,
        config.index,
        config=run.selection.config.to_dict(),
        metrics=metrics,
        info=info,
    )
    contents, version = assembled.contents, assembled.contents.model_version
    summary = ShardedSummary(
        bundle=out,
        model_version=version,
        world_size=world_size,
        train_seconds=train_seconds,
        samples_per_second=result.samples_per_second,
        rank_samples_per_second=result.rank_samples_per_second,
        rank_peak_rss_mb=result.rank_peak_rss_mb,
        epoch_losses=result.epoch_losses,
        prepared=str(data.root),
        metrics=metrics,
        validation=run.evaluated.validation,
        best_epoch=run.evaluated.best_epoch,
    )
    started = time.perf_counter()
    run_name = f"train-{datetime.now(UTC):%Y%m%dT%H%M%S}-x{world_size}"
    # The MLflow run opens only now, after every rank finished: a failed worker leaves no run behind.
    with start_run(config.tracking, run_name, {"job": "train", "world_size": str(world_size)}) as tracker:
        tracker.log_params(flatten(config.to_dict()))
        tracker.log_dict(config.to_dict(), "config.json")
        tracker.log_params({f"data.{k}": v for k, v in counts.items()})
        tracker.log_params({"distributed.world_size": world_size, "distributed.shards": data.shards})
        _log_training(tracker, run)
        tracker.log_metrics(
            {
                "train_seconds": train_seconds,
                "samples_per_second": result.samples_per_second,
                **{f"rank{r}_samples_per_second": v for r, v in enumerate(result.rank_samples_per_second)},
                **{f"rank{r}_peak_rss_mb": v for r, v in enumerate(result.rank_peak_rss_mb)},
            }
        )
        log_index_calibration(tracker, assembled.index)
        tracker.log_params({"user_index.type": assembled.user_index.built.spec.type})
        # Profiles of every member, shards read part by part (the same builders as single-process).
        profiles = profiles_for_bundle(
            config.profiles,
            data.member_events(),
            data.entities.user_table,
            data.entities.item_table,
            everything,
            assembled.user_embeddings,
            tracker,
        )
        contents = replace(
            contents,
            profiles=profiles.frame if profiles is not None else None,
            profiles_manifest=profiles.manifest if profiles is not None else {},
            privacy=dict(data.manifest.get("privacy") or {}),
        )
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


def _log_training(tracker: Tracker, run: ShardedRun) -> None:
    """The MLflow records single-process training writes: per-epoch losses (``eval_train_loss`` of
    the evaluated run when a refit follows, ``train_loss`` of the bundle's), the validation curve,
    the objective choice and the test figures (what `recsys promote`'s gate reads)."""
    if run.refit:
        for epoch, loss in enumerate(run.evaluated.epoch_losses):
            tracker.log_metrics({"eval_train_loss": loss}, step=epoch)
    for epoch, loss in enumerate(run.final.epoch_losses):
        tracker.log_metrics({"train_loss": loss}, step=epoch)
    for epoch, score in enumerate(run.evaluated.validation):
        tracker.log_metrics({f"validation_ndcg@{run.config.eval.k}": score}, step=epoch)
    if run.metrics:
        tracker.log_metrics(run.metrics)
    tracker.log_params({"objective.chosen": run.selection.name, "objective.epochs": run.selection.epochs})
    tracker.log_dict(run.selection.manifest(), "objective.json")
