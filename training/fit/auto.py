"""Choosing the objective on the data: ``train.objective = "auto"`` and early stopping for any objective.

:func:`select_objective` carves a validation split out of the *training* interactions with the
evaluation protocol (the test part is never seen), trains each candidate with early stopping on it
and keeps the best by validation NDCG@k. The caller then trains the chosen configuration on the
whole training part for the best candidate's epoch count (:func:`fit_selected`), so the final
model sees every training interaction. With a concrete objective the same path runs with one
candidate: early stopping picks the epoch count.

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
from training.fit.trainer import TrainResult, train_model
from training.tracking import flatten, start_run

log = logging.getLogger(__name__)

CANDIDATES: tuple[tuple[str, Mapping[str, Mapping[str, Any]]], ...] = (
    ("sequence", {"train": {"objective": "sequence"}}),
    ("mixed", {"train": {"objective": "mixed", "bag_weight": 0.5}}),
    ("bag", {"train": {"objective": "bag"}}),
)
"""What ``auto`` tries, in order: next-item prediction at every position (sequential data), the
set objective (random splits, whole-taste data) and their even mix. Each is a set of overrides of
the configuration; everything else stays as configured."""

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
    validation = _sample_users(parts.test, VALIDATION_USERS, config.train.seed)
    started = time.perf_counter()
    results: list[tuple[CandidateResult, list[float], Config]] = []
    for name, candidate in candidates:
        if results and time.perf_counter() - started > config.train.auto_budget_s:
            log.warning(
                "objective auto: budget of %.0f s spent, %s not tried", config.train.auto_budget_s, name
            )
            continue
        results.append((*_run_candidate(name, candidate, prepared, validation, parent_run_id), candidate))
    best, best_schedule, best_config = max(results, key=lambda r: r[0].validation_ndcg)
    log.info(
        "objective: %s (validation ndcg %s)",
        best.name,
        ", ".join(f"{r.name}={r.validation_ndcg:.4f}" for r, _, _ in results),
    )
    return Selection(
        config=best_config,
        name=best.name,
        schedule=best_schedule,
        candidates=[r for r, _, _ in results],
        protocol=protocol,
    )


def _run_candidate(
    name: str, config: Config, prepared: Prepared, validation: pl.DataFrame, parent_run_id: str | None
) -> tuple[CandidateResult, list[float]]:
    tags = {"job": "objective-candidate", "candidate": name}
    with start_run(config.tracking, f"candidate-{name}", tags, parent_run_id=parent_run_id) as run:
        run.log_params(
            flatten({"train": _train_dict(config.train), "model": dataclasses.asdict(config.model)})
        )
        result = train_model(prepared, config, validation=validation)
        for epoch, score in enumerate(result.validation):
            run.log_metrics({f"validation_ndcg@{config.eval.k}": score}, step=epoch)
        best = max(result.validation) if result.validation else float("nan")
        run.log_metrics(
            {
                "best_validation_ndcg": best,
                "best_epoch": result.best_epoch,
                "seconds_per_epoch": result.seconds_per_epoch,
            }
        )
        run_id = run.info.run_id if run.info is not None else None
    log.info(
        "candidate %s: validation ndcg %.4f at epoch %d (%.1f s)",
        name,
        best,
        result.best_epoch,
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


def _sample_users(frame: pl.DataFrame, limit: int, seed: int) -> pl.DataFrame:
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
