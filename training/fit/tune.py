"""Hyper-parameter search for the two-tower model (``recsys tune``).

Contract:

* The search never sees the evaluation protocol's test part. The interactions are split
  once by ``config.eval.protocol`` (as ``recsys train`` and ``recsys benchmark`` do); the
  test part is set aside and the *training* part is split again by the same protocol into
  a fit part and a validation part. Every trial trains on the fit part and is scored
  (``ndcg@k``, full ranking, seen items excluded) on the validation part only.
* Trials are proposed by Optuna's TPE sampler seeded with ``config.train.seed``; each
  trial trains with ``config`` plus the trial's values for :data:`SEARCH_SPACE` keys and
  is logged as an MLflow child run of one parent ``tune`` run.
* The result is the best trial's full resolved config, written atomically as TOML that
  ``recsys train --config`` takes as it is.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import polars as pl

from serving.storage import atomic_write_text
from training.config import Config, ConfigError, merge, to_toml, validate
from training.data.io import Dataset
from training.evaluation import split_for
from training.evaluation.evaluate import evaluate
from training.features import prepare
from training.fit.trainer import train_model
from training.tracking import flatten, start_run

__all__ = ["SEARCH_SPACE", "Dimension", "TrialResult", "TuneResult", "tune", "validation_split"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dimension:
    """One searched setting: ``low``..``high`` (``log`` scale or linear), or one of ``choices``."""

    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()


SEARCH_SPACE: Final[Mapping[str, Dimension]] = {
    "train.learning_rate": Dimension(1e-3, 2e-2, log=True),
    "train.weight_decay": Dimension(1e-8, 1e-4, log=True),
    "train.others_history_share": Dimension(0.0, 0.6),
    "train.uniform_negatives": Dimension(choices=(0, 512, 2048)),
    "model.temperature": Dimension(0.03, 0.3, log=True),
    "model.dropout": Dimension(0.0, 0.3),
    "model.id_dropout": Dimension(0.0, 0.2),
    "model.history_encoder": Dimension(choices=("mean", "causal")),
    "train.objective": Dimension(choices=("sequence", "mixed", "bag", "interaction")),
    "train.bag_weight": Dimension(0.1, 0.9),
}
"""The default search: the settings BENCHMARKS.md found to matter, in ranges that held up there."""


@dataclass(frozen=True)
class TrialResult:
    """One trained-and-validated trial."""

    number: int
    values: dict[str, Any]
    metrics: dict[str, float]
    seconds: float


@dataclass
class TuneResult:
    """The search's outcome: the best trial, every trial, and where the best config went."""

    best: TrialResult
    trials: list[TrialResult]
    best_config: Config
    metric: str
    out: Path
    counts: dict[str, int] = field(default_factory=dict)
    run_id: str | None = None


def validation_split(frame: pl.DataFrame, config: Config) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(fit part, validation part): the protocol's training part, split again by the protocol.

    The protocol's test part is dropped here and never returned.
    """
    protocol = config.eval.protocol
    if protocol == "none":
        raise ConfigError("eval.protocol: tuning needs a splitting protocol (llo, rand or time), not 'none'")
    outer = split_for(frame, protocol, config.eval.min_interactions)
    inner = split_for(outer.train, protocol, config.eval.min_interactions)
    if inner.test.height == 0:
        raise ValueError(f"the {protocol} validation split left no validation interactions; too little data")
    return inner.train, inner.test


def _override(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in values.items():
        section, key = dotted.split(".", 1)
        nested.setdefault(section, {})[key] = value
    return nested


def _check_space(space: Mapping[str, Dimension], config: Config) -> None:
    for dotted, dim in space.items():
        if "." not in dotted:
            raise ConfigError(f"search space key {dotted!r}: expected section.key")
        if not dim.choices and not dim.low < dim.high:
            raise ConfigError(f"search space {dotted}: needs low < high or choices")
        if dim.log and dim.low <= 0:
            raise ConfigError(f"search space {dotted}: a log scale needs low > 0")
        sample = dim.choices[0] if dim.choices else (int(dim.low) if dim.integer else dim.low)
        try:
            validate(merge(config, _override({dotted: sample})))
        except (ConfigError, TypeError, ValueError) as exc:
            raise ConfigError(f"search space {dotted}: {exc}") from exc


def tune(
    config: Config,
    data: Dataset,
    out: Path,
    *,
    trials: int = 20,
    space: Mapping[str, Dimension] = SEARCH_SPACE,
    timeout_seconds: float | None = None,
    overwrite: bool = False,
) -> TuneResult:
    """Search ``space`` for ``trials`` trials (or until ``timeout_seconds``) and write the best config.

    Raises:
        ConfigError: for a bad search space or protocol ``none``.
        FileExistsError: when ``out`` exists and ``overwrite`` is false (checked before any training).
        ValueError: when the data leave no validation interactions, or ``trials < 1``.
    """
    import optuna

    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (use --overwrite to replace it)")
    _check_space(space, config)
    fit_part, validation = validation_split(data.interactions, config)
    prepared = prepare(fit_part, data.users, data.items, config.data)
    metric = f"ndcg@{config.eval.k}"
    counts = {
        "fit_interactions": fit_part.height,
        "validation_interactions": validation.height,
        "users": prepared.n_users,
        "items": prepared.n_items,
    }
    log.info("tune: %s, metric %s on the validation part", counts, metric)

    results: list[TrialResult] = []
    tags = {"job": "tune", "protocol": config.eval.protocol}
    with start_run(config.tracking, f"tune-{datetime.now(UTC):%Y%m%dT%H%M%S}", tags) as parent:
        parent_id = parent.info.run_id if parent.info is not None else None
        parent.log_params({"trials": trials, "metric": metric, **{f"data.{k}": v for k, v in counts.items()}})
        parent.log_dict({k: vars(v) for k, v in space.items()}, "search_space.json")
        parent.log_dict(config.to_dict(), "base_config.json")

        def objective(trial: optuna.Trial) -> float:
            values = {dotted: _suggest(trial, dotted, dim) for dotted, dim in space.items()}
            trial_config = merge(config, _override(values))
            validate(trial_config)
            with start_run(
                config.tracking, f"trial-{trial.number}", {**tags, "trial": str(trial.number)}, parent_id
            ) as child:
                child.log_params(flatten(trial_config.to_dict()))
                started = time.perf_counter()
                # Early stopping on the same validation part (the returned weights are the best epoch's).
                trained = train_model(prepared, trial_config, validation=validation)
                metrics = evaluate(trained.model, prepared, validation, config.eval.k)
                seconds = time.perf_counter() - started
                child.log_metrics({**metrics, "trial_seconds": seconds})
            results.append(TrialResult(trial.number, values, dict(metrics), seconds))
            value = float(metrics[metric])
            log.info("trial %d: %s=%.4f %s (%.1f s)", trial.number, metric, value, values, seconds)
            return value if math.isfinite(value) else 0.0

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.train.seed)
        )
        study.optimize(objective, n_trials=trials, timeout=timeout_seconds)
        best = max(results, key=lambda r: r.metrics[metric])
        best_config = merge(config, _override(best.values))
        header = (
            f"# Written by `recsys tune` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: best of {len(results)} "
            f"trials, {metric} = {best.metrics[metric]:.4f} on the {config.eval.protocol} validation split.\n"
        )
        atomic_write_text(out, header + to_toml(best_config))
        parent.log_metrics({f"best_{metric}": best.metrics[metric], "trials_done": len(results)})
        parent.log_params({f"best.{k}": v for k, v in best.values.items()})
        parent.log_dict(best_config.to_dict(), "best_config.json")
    return TuneResult(best, results, best_config, metric, out, counts, parent_id)


def _suggest(trial: Any, name: str, dim: Dimension) -> Any:
    if dim.choices:
        return trial.suggest_categorical(name, list(dim.choices))
    if dim.integer:
        return trial.suggest_int(name, int(dim.low), int(dim.high), log=dim.log)
    return trial.suggest_float(name, dim.low, dim.high, log=dim.log)


def format_trials(result: TuneResult, limit: int = 10) -> str:
    """The best ``limit`` trials as a plain-text table, best first."""
    ranked: Sequence[TrialResult] = sorted(result.trials, key=lambda r: -r.metrics[result.metric])[:limit]
    keys = sorted({k for r in ranked for k in r.values})
    header = ["trial", result.metric, "seconds", *keys]
    rows = [
        [
            str(r.number),
            f"{r.metrics[result.metric]:.4f}",
            f"{r.seconds:.1f}",
            *(_fmt(r.values[k]) for k in keys),
        ]
        for r in ranked
    ]
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
