"""``recsys benchmark``: the two-tower model and the baselines on one split, scored identically.

1. Load the canonical files of a data directory and split the interactions ONCE by a protocol.
2. Fit every model on the same training part: the baselines of :mod:`training.evaluation.baselines`
   on the binary interactions, the two-tower model with the item/user attributes as in ``recsys train``.
3. Rank with :func:`training.evaluation.evaluate.rank_test_users` (full ranking over the training items,
   the user's training items excluded) and score with the same metrics: the accuracy metrics of
   :func:`training.evaluation.ranking_metrics` plus novelty and intra-list diversity
   (:mod:`training.evaluation.beyond_accuracy`), and the fitting time.
4. Print one table, log one parent MLflow run with a child run per model, return the rows.

All models share one user/item index space (the sorted ids of the training part), so their lists are
directly comparable; :func:`run_benchmark` checks that the two-tower preparation agrees.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import polars as pl

from serving.model.features import EntityEncoder
from training.config import Config
from training.data.io import find_canonical_files, load_dataset
from training.evaluation import PROTOCOLS, Protocol, split_for
from training.evaluation.baselines import BASELINES, baseline_scores, make_baseline
from training.evaluation.beyond_accuracy import beyond_accuracy_metrics, item_value_csr
from training.evaluation.evaluate import ScoreBatches, rank_test_users, two_tower_scores
from training.features import Prepared, encoder_options, prepare
from training.fit.auto import fit_selected, select_objective
from training.tracking import flatten, start_run

__all__ = ["MODELS", "BenchmarkResult", "BenchmarkRow", "format_table", "run_benchmark"]

log = logging.getLogger(__name__)

TWO_TOWER: Final = "two_tower"
MODELS: Final[tuple[str, ...]] = (TWO_TOWER, *BASELINES)
"""Every model the benchmark knows, in the default order."""

# Table columns: metric name stems (``@k`` appended) in display order.
_METRIC_COLUMNS: Final = ("ndcg", "recall", "hit_rate", "mrr", "coverage", "novelty", "diversity")

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class BenchmarkRow:
    """One model's result.

    Attributes:
        model: Model name (one of :data:`MODELS`).
        k: Cut-off of the metrics.
        metrics: ``ndcg@k``, ``recall@k``, ``hit_rate@k``, ``mrr@k``, ``precision@k``, ``coverage@k``,
            ``users`` (users evaluated), ``novelty@k`` and, when the items have a categorical attribute,
            ``diversity@k``.
        fit_seconds: Wall time of fitting (for the two-tower model: the whole training loop).
        eval_seconds: Wall time of scoring, ranking and computing the metrics.
        params: The model's hyper-parameters as logged.
        run_id: The model's child MLflow run (None when tracking is disabled).
    """

    model: str
    k: int
    metrics: dict[str, float]
    fit_seconds: float
    eval_seconds: float
    params: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None


@dataclass(frozen=True)
class BenchmarkResult:
    """Everything :func:`run_benchmark` measured.

    Attributes:
        rows: One per model, in the requested order.
        data_dir, protocol, k: What was benchmarked.
        counts: ``interactions``, ``train_interactions``, ``test_interactions``, ``train_users``,
            ``train_items`` of the split.
        diversity_attribute: Item column used for ``diversity@k``, or None when there was none.
        run_id: The parent MLflow run (None when tracking is disabled).
    """

    rows: list[BenchmarkRow]
    data_dir: Path
    protocol: str
    k: int
    counts: dict[str, int]
    diversity_attribute: str | None
    run_id: str | None

    def table(self) -> str:
        return format_table(self.rows)


def _cell(value: float | None, digits: int) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


def format_table(rows: Sequence[BenchmarkRow]) -> str:
    """Plain-text table, one line per row, columns aligned (names left, numbers right).

    Columns: model, the metrics at each row's ``k`` (``diversity@k`` only when some row has it; ``-`` where
    a row lacks a value or it is NaN), users evaluated, fit and evaluation seconds. Rows with different
    ``k`` get the headers of the first row's ``k``.
    """
    if not rows:
        return "(no models)"
    k = rows[0].k
    stems = [
        s for s in _METRIC_COLUMNS if s != "diversity" or any(f"diversity@{r.k}" in r.metrics for r in rows)
    ]
    header = ["model", *(f"{s}@{k}" for s in stems), "users", "fit s", "eval s"]
    body = [
        [
            row.model,
            *(_cell(row.metrics.get(f"{s}@{row.k}"), 3 if s == "novelty" else 4) for s in stems),
            _cell(row.metrics.get("users"), 0),
            _cell(row.fit_seconds, 1),
            _cell(row.eval_seconds, 1),
        ]
        for row in rows
    ]
    widths = [max(len(line[c]) for line in [header, *body]) for c in range(len(header))]

    def render(line: list[str]) -> str:
        cells = [
            line[0].ljust(widths[0]),
            *(cell.rjust(w) for cell, w in zip(line[1:], widths[1:], strict=True)),
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(header), rule, *(render(line) for line in body)])


def _parse_models(models: Sequence[str]) -> list[str]:
    names = [m.strip() for m in models if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        raise ValueError(f"unknown or no model(s) {unknown}; choose from {', '.join(MODELS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"models listed more than once: {names}")
    return names


def diversity_attribute_of(
    items: pl.DataFrame | None, item_ids: pl.Series, config: Config, requested: str | None
) -> str | None:
    """The item column that diversity is measured on, or None.

    ``requested`` must be a column of ``items`` (ValueError otherwise). By default: the first item column
    that the feature encoder, fitted on the training items with the data config, would use as a
    categorical or list (multi-categorical) feature; that skips identifiers, free text such as titles,
    personal data and numbers with the same rules as training.
    """
    if requested is not None:
        if items is None or requested not in items.columns or requested == "item_id":
            raise ValueError(f"diversity attribute {requested!r} is not an item attribute column")
        return requested
    if items is None:
        return None
    encoder = EntityEncoder.fit("item_id", item_ids, items, encoder_options(config.data))
    for spec in encoder.specs:
        if spec.kind in ("categorical", "multi_categorical"):
            return spec.name
    return None


def _item_values(items: pl.DataFrame, item_ids: pl.Series, column: str) -> tuple[IntArray, IntArray]:
    """Value-set CSR of ``column`` with one row per item row of the training vocabulary."""
    aligned = (
        item_ids.rename("item_id")
        .to_frame()
        .join(items.select("item_id", column), on="item_id", how="left", maintain_order="left")
    )
    return item_value_csr(aligned.get_column(column))


def run_benchmark(
    data_dir: Path,
    protocol: Protocol,
    k: int = 10,
    config: Config | None = None,
    models: Sequence[str] = MODELS,
    *,
    diversity_attribute: str | None = None,
    validation_protocol: Protocol | None = None,
    show: bool = True,
) -> BenchmarkResult:
    """Benchmark ``models`` on ``data_dir`` split once by ``protocol`` (module docstring).

    Args:
        data_dir: Directory with ``interactions`` and optional ``users``/``items`` (.parquet/.csv/.tsv).
        protocol: ``"llo"`` (with ``config.eval.min_interactions``), ``"rand"`` or ``"time"``.
        k: Cut-off of every metric.
        config: Data, model, training and tracking settings (defaults: ``Config()``); ``config.eval`` is
            not used apart from ``min_interactions``: ``protocol`` and ``k`` are.
        models: Names from :data:`MODELS`, fitted and shown in this order.
        diversity_attribute: Item column for ``diversity@k``; default: see :func:`diversity_attribute_of`.
        validation_protocol: The protocol the two-tower model's ``auto`` carves its validation split
            with (default: ``protocol``). A bundle trained with the default ``eval.protocol`` (``llo``)
            validates "what next" whatever its future is; ``protocol="rand"`` with
            ``validation_protocol="llo"`` measures that default on a "what else" future.
        show: Print the table (to stdout) when done.

    Raises:
        ValueError: for an unknown model or protocol, ``k < 1``, an unusable diversity attribute, or a
            model that refuses the data (EASE above its catalogue limit).
        training.data.io.InputError: for missing or invalid input files.
    """
    config = config if config is not None else Config()
    names = _parse_models(models)
    for given in (protocol, validation_protocol or protocol):
        if given not in PROTOCOLS:
            raise ValueError(f"unknown protocol {given!r}; choose from {', '.join(PROTOCOLS)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    data_dir = Path(data_dir)
    data = load_dataset(*find_canonical_files(data_dir))
    parts = split_for(data.interactions, protocol, config.eval.min_interactions)
    base = prepare(parts.train, None, None, config.data)
    item_ids = base.item_encoder.ids.tokens
    attribute = diversity_attribute_of(data.items, item_ids, config, diversity_attribute)
    item_values = (
        _item_values(data.items, item_ids, attribute) if attribute and data.items is not None else None
    )
    counts = {
        "interactions": data.interactions.height,
        "train_interactions": parts.train.height,
        "test_interactions": parts.test.height,
        "train_users": base.n_users,
        "train_items": base.n_items,
    }
    log.info("benchmark %s/%s: %s; diversity attribute %s", data_dir, protocol, counts, attribute)

    rows: list[BenchmarkRow] = []
    tags = {"job": "benchmark", "protocol": protocol, "data": data_dir.name}
    with start_run(config.tracking, f"benchmark-{data_dir.name}-{protocol}", tags) as parent:
        parent_id = parent.info.run_id if parent.info is not None else None
        parent.log_params(
            {
                "data_dir": str(data_dir),
                "protocol": protocol,
                "k": k,
                "models": ",".join(names),
                "diversity_attribute": attribute or "",
                **{f"data.{key}": value for key, value in counts.items()},
            }
        )
        parent.log_dict(config.to_dict(), "config.json")
        for name in names:
            with start_run(config.tracking, name, {**tags, "model": name}, parent_run_id=parent_id) as child:
                started = time.perf_counter()
                child_id = child.info.run_id if child.info is not None else None
                scores, train_part, params = _fit(
                    name,
                    parts.train,
                    base,
                    data.users,
                    data.items,
                    config,
                    validation_protocol or protocol,
                    child_id,
                )
                fitted = time.perf_counter()
                ranking = rank_test_users(scores, train_part, parts.test, k)
                # Novelty uses the training part's interaction counts (repeats included) for every model,
                # so it compares what the models recommend, not how each one counts popularity.
                metrics = {
                    **ranking.metrics(k),
                    **beyond_accuracy_metrics(ranking.topk, k, base.popularity, item_values),
                }
                del scores  # releases the model (EASE holds an n_items^2 matrix) before the next one
                row = BenchmarkRow(
                    model=name,
                    k=k,
                    metrics=metrics,
                    fit_seconds=fitted - started,
                    eval_seconds=time.perf_counter() - fitted,
                    params=params,
                    run_id=child.info.run_id if child.info is not None else None,
                )
                child.log_params({"model": name, "protocol": protocol, "k": k, **params})
                child.log_metrics(
                    {**metrics, "fit_seconds": row.fit_seconds, "eval_seconds": row.eval_seconds}
                )
            log.info("%s: %s", name, ", ".join(f"{key}={value:.4f}" for key, value in metrics.items()))
            rows.append(row)
        parent.log_metrics(
            {
                f"{row.model}.{key}": value
                for row in rows
                for key, value in row.metrics.items()
                if key != "users"
            }
        )
        table = format_table(rows)
        parent.log_dict(
            {"table": table, "rows": [_row_dict(r) for r in rows], "counts": counts}, "benchmark.json"
        )

    if show:
        print(f"{data_dir.name} / {protocol} / k={k}: {counts['test_interactions']} test interactions")
        print(table)
    return BenchmarkResult(
        rows=rows,
        data_dir=data_dir,
        protocol=protocol,
        k=k,
        counts=counts,
        diversity_attribute=attribute,
        run_id=parent_id,
    )


def _fit(
    name: str,
    train: pl.DataFrame,
    base: Prepared,
    users: pl.DataFrame | None,
    items: pl.DataFrame | None,
    config: Config,
    protocol: str,
    run_id: str | None,
) -> tuple[ScoreBatches, Prepared, dict[str, Any]]:
    """Fit model ``name``; return its scorer, the Prepared it ranks with, and its parameters.

    The two-tower model's objective (``auto``) and epoch count are chosen on a validation split
    carved from ``train`` by ``protocol`` (:func:`training.fit.auto.select_objective`)."""
    if name != TWO_TOWER:
        model = make_baseline(name)
        model.fit(base)
        return baseline_scores(model), base, model.params()
    prepared = prepare(train, users, items, config.data)
    # Attributes never change the id vocabularies, but the comparison is only fair if that holds.
    for ours, theirs in (
        (prepared.user_encoder.ids.tokens, base.user_encoder.ids.tokens),
        (prepared.item_encoder.ids.tokens, base.item_encoder.ids.tokens),
    ):
        if not ours.equals(theirs):
            raise RuntimeError("two-tower and baseline index spaces differ")  # pragma: no cover
    selection = select_objective(train, users, items, config, protocol, parent_run_id=run_id)
    result = fit_selected(prepared, selection)
    chosen = selection.config.to_dict()
    params = flatten({"model": chosen["model"], "train": chosen["train"]})
    params.update(
        {
            "objective.chosen": selection.name,
            "objective.epochs": selection.epochs,
            "objective.validation_protocol": protocol,
        }
    )
    params.update(
        {f"objective.{c.name}.validation_ndcg": round(c.validation_ndcg, 5) for c in selection.candidates}
    )
    params["seconds_per_epoch"] = round(result.seconds_per_epoch, 2)
    return two_tower_scores(result.model, prepared), prepared, params


def _row_dict(row: BenchmarkRow) -> dict[str, Any]:
    return {
        "model": row.model,
        "k": row.k,
        "metrics": row.metrics,
        "fit_seconds": row.fit_seconds,
        "eval_seconds": row.eval_seconds,
        "params": row.params,
        "run_id": row.run_id,
    }
