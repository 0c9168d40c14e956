"""Choosing the objective on the data: ``train.objective = "auto"`` and early stopping for any objective.

:func:`select_objective` carves a validation split out of the *training* interactions with the
evaluation protocol (the test part is never seen), trains each candidate with early stopping on it
and keeps the best by validation NDCG@k. Candidates share ``train.auto_budget_s``: each first trains for
an equal slice of its first half (whole epochs), the one with the best validation NDCG so far among
those that can still improve then trains on for the rest of it or until early stopping, so a slow
objective is judged on what it reaches in the same time as a fast one, and the whole choice takes
about the budget. A closed-form candidate (``linear``) is done after its one fit: it is judged on
that and takes no time from the others. The best validation NDCG over all candidates wins. The caller
then trains the chosen configuration on the whole training part for the winner's epoch count
(:func:`fit_selected`), so the final model sees every training interaction. With a concrete
objective the same path runs with one candidate and no budget: early stopping picks the epoch count.
A ``linear`` winner then gets its served width: the narrowest tower rank that keeps
``train.linear_rank_keep`` of its validation NDCG (:func:`~training.fit.linear_task.choose_tower_rank`).

Every candidate is an MLflow child run of the caller's run (params, validation curve, best
epoch); the choice and the table of candidates go into the bundle manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from training.config import Config, TrainConfig, validate
from training.evaluation import split_for
from training.features import Prepared, prepare
from training.fit.linear_task import choose_tower_rank
from training.fit.trainer import TrainingRun, TrainResult, train_model
from training.tracking import flatten, start_run

log = logging.getLogger(__name__)

CANDIDATES: tuple[tuple[str, Mapping[str, Mapping[str, Any]]], ...] = (
    (
        "bag",
        {
            "train": {"objective": "bag", "window_batch_size": 32, "bag_dropout": 0.75},
            "data": {"history_length": 200},
            "model": {"user_id_embedding": False},
        },
    ),
    ("interaction", {"train": {"objective": "interaction"}}),
    ("sequence-causal", {"train": {"objective": "sequence"}, "model": {"history_encoder": "causal"}}),
    ("linear", {"train": {"objective": "linear"}, "data": {"history_length": 1000}}),
    (
        "linear-decay-0.1",
        {"train": {"objective": "linear"}, "data": {"history_length": 1000}, "model": {"history_decay": 0.1}},
    ),
    (
        "linear-decay-0.5",
        {"train": {"objective": "linear"}, "data": {"history_length": 1000}, "model": {"history_decay": 0.5}},
    ),
    ("mf", {"train": {"objective": "mf"}, "data": {"history_length": 1000}}),
    ("elsa", {"train": {"objective": "elsa"}, "data": {"history_length": 1000}}),
)
"""What ``auto`` tries: the set objective (random splits, whole-taste data; small steps, the last
200 items, three in four hidden and no user-id table measured best on ml-100k rand), one example
per interaction with in-batch + uniform negatives (the former default, strongest on short time
splits) and next-item prediction at every position through the
causal encoder (sequential data: leave-last-out), and the closed-form item-item model in linear
towers (bag-of-items data, where EASE is the strongest known model; skipped above
``train.linear_max_items`` items), as a plain mean of the history and with the recent items
weighing more (``model.history_decay`` 0.1 and 0.5: a half-life of ~7 and ~1.4 items; "what next"
data such as leave-last-out, where the last items say most; one fit serves all three), and
implicit-feedback matrix factorisation with the user folded in from the history (time splits, where
the future is the whole taste: iALS led EASE on ml-100k time, 0.195 vs 0.174 on validation), and the
low-rank linear item-item model trained by mini-batches (ELSA: EASE's quality in items x rank memory,
the item-item candidate above ``linear_max_items``; docs/benchmarks/issue-22-catalogue-scale.md). Each is a
set of overrides of the configuration; everything else stays as configured. The even ``mixed``
objective was measured and never won (BENCHMARKS.md), so it is not tried."""

VALIDATION_USERS = 8000
"""At most this many validation users (a seeded sample) are ranked after each epoch: enough for a
stable NDCG, cheap enough to measure every epoch on large data."""

VALIDATION_PROTOCOL_WITHOUT_EVAL = "llo"
"""Protocol of the validation split when ``eval.protocol = "none"`` (nothing else says which)."""


@dataclass(frozen=True)
class CandidateResult:
    name: str
    validation_ndcg: float
    best_epoch: int
    epochs_run: int
    seconds: float
    seconds_per_epoch: float
    run_id: str | None = None


@dataclass(frozen=True)
class Selection:
    """The configuration to train with, and how it was chosen."""

    config: Config
    """Concrete objective (never ``auto``)."""
    name: str
    schedule: list[float] | None
    """Learning rate of each epoch to train the chosen configuration for (its run on the validation
    split up to its best epoch); None: ``train.epochs`` of the one-cycle schedule."""
    candidates: list[CandidateResult] = field(default_factory=list)
    protocol: str = ""
    tower_ranks: list[tuple[int, float]] = field(default_factory=list)
    """``linear`` winner: (tower rank, validation NDCG) of each rank tried for the served width (the
    full factorisation last); the chosen one is ``config.train.linear_tower_rank``."""

    @property
    def epochs(self) -> int:
        return len(self.schedule) if self.schedule is not None else self.config.train.epochs

    def manifest(self) -> dict[str, Any]:
        """The record written to the bundle manifest and logged to MLflow."""
        return {
            "chosen": self.name,
            "epochs": self.epochs,
            "schedule": self.schedule,
            "validation_protocol": self.protocol,
            "candidates": [dataclasses.asdict(c) for c in self.candidates],
            "tower_ranks": [{"rank": rank, "validation_ndcg": score} for rank, score in self.tower_ranks],
        }


def with_overrides(config: Config, overrides: Mapping[str, Mapping[str, Any]]) -> Config:
    """``config`` with ``{section: {key: value}}`` replaced (validated)."""
    changes = {
        section: dataclasses.replace(getattr(config, section), **values)
        for section, values in overrides.items()
    }
    resolved = dataclasses.replace(config, **changes)
    validate(resolved)
    return resolved


def candidates_of(config: Config) -> list[tuple[str, Config]]:
    """The configurations to compare: :data:`CANDIDATES` for ``auto``, else ``config`` alone."""
    if config.train.objective != "auto":
        return [(config.train.objective, config)]
    return [(name, with_overrides(config, overrides)) for name, overrides in CANDIDATES]


def select_objective(
    train: pl.DataFrame,
    users: pl.DataFrame | None,
    items: pl.DataFrame | None,
    config: Config,
    protocol: str,
    parent_run_id: str | None = None,
) -> Selection:
    """Train every candidate on ``train`` minus a validation split and keep the best (module docstring).

    ``protocol`` is the evaluation protocol (``llo``, ``rand`` or ``time``; ``none`` validates with
    :data:`VALIDATION_PROTOCOL_WITHOUT_EVAL`). Candidates still to run after ``train.auto_budget_s``
    seconds are skipped; the first candidate always runs. With ``train.patience = 0`` and a
    concrete objective nothing is trained: the configuration is returned as it is.
    """
    candidates = candidates_of(config)
    if config.train.patience == 0 and len(candidates) == 1:
        return Selection(config=config, name=candidates[0][0], schedule=None)
    protocol = protocol if protocol != "none" else VALIDATION_PROTOCOL_WITHOUT_EVAL
    parts = split_for(train, protocol, config.eval.min_interactions)  # type: ignore[arg-type]
    prepared = prepare(parts.train, users, items, config.data)
    validation = validation_users(parts.test, VALIDATION_USERS, config.train.seed)
    runs = [
        (name, candidate, TrainingRun(prepared, candidate, validation=validation))
        for name, candidate in candidates
        if candidate.train.objective != "linear" or prepared.n_items <= candidate.train.linear_max_items
    ]
    if len(runs) > 1:
        # Half the budget compares the candidates (an equal slice each), the rest lets the winner
        # train on; early stopping usually ends it sooner.
        started = time.perf_counter()
        share = config.train.auto_budget_s / 2 / len(runs)
        for name, _, run in runs:
            run.advance(share)
            log.info(
                "candidate %s: validation ndcg %.4f after %.0f s",
                name,
                run.best_validation,
                run.result.seconds,
            )
        # The rest goes to the best candidate that can still improve: a closed form (or a run
        # that stopped early) is judged on what it has, and must not keep the budget from the
        # iterative runner-up it may be beating only because that one has barely started.
        unfinished = [r for r in runs if not r[2].done]
        left = config.train.auto_budget_s - (time.perf_counter() - started)
        if unfinished and left > 0:
            max(unfinished, key=lambda r: r[2].best_validation)[2].advance(left)
        best_name, best_config, best_run = max(runs, key=lambda r: r[2].best_validation)
    else:
        best_name, best_config, best_run = runs[0]
        best_run.advance()  # a concrete objective: to early stopping
    results = [_record(name, candidate, run, parent_run_id) for name, candidate, run in runs]
    log.info(
        "objective: %s (validation ndcg %s)",
        best_name,
        ", ".join(f"{r.name}={r.validation_ndcg:.4f}" for r, _ in results),
    )
    tower_ranks: list[tuple[int, float]] = []
    if best_config.train.objective == "linear" and best_config.train.linear_tower_rank == 0:
        rank, tower_ranks = choose_tower_rank(prepared, best_config, validation)
        best_config = with_overrides(best_config, {"train": {"linear_tower_rank": rank}})
        log.info("linear tower rank: %d (validation ndcg per rank %s)", rank, tower_ranks)
    return Selection(
        config=best_config,
        name=best_name,
        schedule=best_run.result.schedule,
        candidates=[r for r, _ in results],
        protocol=protocol,
        tower_ranks=tower_ranks,
    )


def _record(
    name: str, config: Config, run: TrainingRun, parent_run_id: str | None
) -> tuple[CandidateResult, list[float]]:
    """Finish ``run`` and log it as an MLflow child run of ``parent_run_id``."""
    result = run.finish()
    tags = {"job": "objective-candidate", "candidate": name}
    with start_run(config.tracking, f"candidate-{name}", tags, parent_run_id=parent_run_id) as tracked:
        tracked.log_params(
            flatten({"train": _train_dict(config.train), "model": dataclasses.asdict(config.model)})
        )
        for epoch, score in enumerate(result.validation):
            tracked.log_metrics({f"validation_ndcg@{config.eval.k}": score}, step=epoch)
        best = max(result.validation) if result.validation else float("nan")
        tracked.log_metrics(
            {
                "best_validation_ndcg": best,
                "best_epoch": result.best_epoch,
                "seconds_per_epoch": result.seconds_per_epoch,
            }
        )
        run_id = tracked.info.run_id if tracked.info is not None else None
    log.info(
        "candidate %s: validation ndcg %.4f at epoch %d of %d (%.1f s)",
        name,
        best,
        result.best_epoch,
        len(result.epoch_losses),
        result.seconds,
    )
    candidate = CandidateResult(
        name=name,
        validation_ndcg=best,
        best_epoch=result.best_epoch,
        epochs_run=len(result.epoch_losses),
        seconds=result.seconds,
        seconds_per_epoch=result.seconds_per_epoch,
        run_id=run_id,
    )
    return candidate, result.schedule


def validation_users(frame: pl.DataFrame, limit: int, seed: int) -> pl.DataFrame:
    """The rows of at most ``limit`` users of ``frame`` (a seeded sample; all of them when fewer)."""
    users = frame.get_column("user_id").unique().sort()
    if users.len() <= limit:
        return frame
    chosen = users.sample(limit, seed=seed)
    return frame.filter(pl.col("user_id").is_in(chosen.implode()))


def _train_dict(train: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(train)


def fit_selected(
    prepared: Prepared,
    selection: Selection,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train the selected configuration on ``prepared`` with the selected per-epoch learning rates."""
    return train_model(prepared, selection.config, on_epoch, schedule=selection.schedule)
