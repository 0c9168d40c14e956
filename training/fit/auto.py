"""Choosing the objective on the data: ``train.objective = "auto"`` and early stopping for any objective.

:func:`select_objective` carves a validation split out of the *training* interactions with the
evaluation protocol (the test part is never seen), trains each candidate with early stopping on it
and keeps the best by validation NDCG@k. Every iterative candidate first trains
``train.auto_probe_epochs`` epochs (the probe: what it costs follows the data and the device, and the
outcome does not depend on the machine's speed); in each :func:`family` (next-item sequence models,
set models) the one with the best validation NDCG among those that can still improve then trains on
to early stopping (at most ``train.auto_max_s`` each), so the strongest iterative models are judged at
convergence, as the closed forms are: a closed-form candidate (``linear``, ``slist``, ``mf``) is done
after its one fit. The best validation NDCG over all candidates wins, blended with a runner-up when
that wins beyond noise (:mod:`training.fit.blend`); what the comparison spent is in the manifest
(:class:`Budget`). With a leave-last-out or random validation split a quarter of the validation users
are held out in the other shape of future, and only models that keep ``train.auto_guard_keep`` of the
best baseline's NDCG there (EASE, iALS, ELSA; within noise) can win (:mod:`training.fit.guard`): told
nothing about the future, the default must not collapse on either shape. The caller
then trains the chosen configuration on the whole training part for the winner's epoch count
(:func:`fit_selected`), so the final model sees every training interaction. With a concrete
objective the same path runs with one candidate and no budget: early stopping picks the epoch count.
A ``linear`` winner then gets its served width: the narrowest tower rank that keeps
``train.linear_rank_keep`` of its validation NDCG
(:func:`~training.fit.linear.linear_task.choose_tower_rank`).

Every candidate is an MLflow child run of the caller's run (params, validation curve, best
epoch); the choice and the table of candidates go into the bundle manifest.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from serving.model.towers import TwoTowerModel
from training.config import Config, TrainConfig, validate
from training.evaluation import split_for
from training.evaluation.evaluate import rank_test_users, two_tower_scores
from training.evaluation.metrics import paired_lower_bound
from training.features import Prepared, prepare
from training.fit.blend import (
    BlendChoice,
    EvaluatedBlend,
    blended,
    evaluate_blend,
    score_spread,
)
from training.fit.guard import Guard, GuardedSplit, guard_for, guard_ndcg, guarded_split
from training.fit.linear.linear_task import Judge, choose_tower_rank
from training.fit.trainer import TrainingRun, TrainResult, train_model
from training.tracking import flatten, start_run

log = logging.getLogger(__name__)

SASREC: Mapping[str, Mapping[str, Any]] = {
    "train": {
        "objective": "sequence",
        "learning_rate": 1e-3,
        "adam_beta2": 0.98,
        "weight_decay": 0.0,
        "uniform_negatives": 2048,
        "patience": 10,
        "lr_cuts": 0,
        "row_weighted_loss": True,
        "validation_users": 0,
    },
    "model": {
        "head": "tied",
        "history_encoder": "causal",
        "sequence_layers": 2,
        "user_id_embedding": False,
        "id_dropout": 0.0,
        "dropout": 0.2,
        "embedding_dropout": 0.2,
    },
}
"""The published SASRec recipe (Kang & McAuley 2018; pmixer/SASRec.pytorch, RecTools' SASRec) as a
configuration of the towers: the causal encoder's last state scored against the tied item-id table by
inner product, no user-id table, two pre-LN blocks with a final LayerNorm, dropout 0.2 on the
embeddings and in the blocks, Adam at 1e-3 with beta2 0.98, the next item at every position against
256 uniform negatives (the exact softmax on smaller catalogues), every position weighing the same,
early stopping after 10 flat epochs measured on every validation user
(docs/benchmarks/issue-21-sequence.md has the ablation, one change at a time)."""

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
    ("sasrec", SASREC),
    ("linear", {"train": {"objective": "linear"}, "data": {"history_length": 1000}}),
    (
        "linear-decay-0.1",
        {"train": {"objective": "linear"}, "data": {"history_length": 1000}, "model": {"history_decay": 0.1}},
    ),
    (
        "linear-decay-0.5",
        {"train": {"objective": "linear"}, "data": {"history_length": 1000}, "model": {"history_decay": 0.5}},
    ),
    (
        "slist",
        {
            "train": {"objective": "linear", "linear_model": "slist"},
            "data": {"history_length": 1000},
            "model": {"history_decay": 0.5},
        },
    ),
    ("mf", {"train": {"objective": "mf"}, "data": {"history_length": 1000}}),
    ("elsa", {"train": {"objective": "elsa"}, "data": {"history_length": 1000}}),
    (
        "elsa-decay-0.5",
        {"train": {"objective": "elsa"}, "data": {"history_length": 1000}, "model": {"history_decay": 0.5}},
    ),
)
"""What ``auto`` tries: the set objective (random splits, whole-taste data; small steps, the last
200 items, three in four hidden and no user-id table measured best on ml-100k rand), one example
per interaction with in-batch + uniform negatives (the former default, strongest on short time
splits), SASRec (:data:`SASREC`: next-item prediction at every position, sequential data such as
leave-last-out), and the closed-form item-item model in linear
towers (bag-of-items data, where EASE is the strongest known model; skipped above
``train.linear_max_items`` items), as a plain mean of the history and with the recent items
weighing more (``model.history_decay`` 0.1 and 0.5: a half-life of ~7 and ~1.4 items; "what next"
data such as leave-last-out, where the last items say most; one fit serves all three), and
implicit-feedback matrix factorisation with the user folded in from the history (time splits, where
the future is the whole taste: iALS led EASE on ml-100k time, 0.195 vs 0.174 on validation), and the
low-rank linear item-item model trained by mini-batches (ELSA: EASE's quality in items x rank memory,
the item-item candidate above ``linear_max_items``; docs/benchmarks/issue-22-catalogue-scale.md), as a
plain mean and with the recent items weighing more (decay 0.5: Beauty llo validation 0.0540 against
0.0436; a separate run each, as ELSA's validation curve depends on the served history). Each is a
set of overrides of the configuration; everything else stays as configured. The even ``mixed``
objective was measured and never won (BENCHMARKS.md), so it is not tried."""

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
    guard_ndcg: float | None = None
    """NDCG@k on the guard's users, in the other shape of future (:mod:`training.fit.guard`)."""


@dataclass(frozen=True)
class LeaderRun:
    """One iterative candidate that trained on after the probe."""

    name: str
    family: str
    """:func:`family` of the candidate: the best of each family trains on."""
    seconds: float
    """Seconds it trained after the probe."""
    converged: bool
    """Whether it stopped early (patience exhausted) rather than at ``max_s`` or ``train.epochs``."""


@dataclass(frozen=True)
class Budget:
    """What ``auto``'s comparison spent, for the manifest: every candidate's probe, then the leading
    iterative candidate of each family's run to early stopping."""

    probe_epochs: int
    max_s: float
    """At most this long for each leader's run."""
    leaders: tuple[LeaderRun, ...] = ()


def family(config: Config) -> str:
    """``"sequence"`` for the objectives that predict the next item at every position, ``"set"`` for
    the others. The probe compares candidates within a family only: a transformer's early epochs climb
    slower than a set model's (Beauty llo, 3-epoch probe: SASRec 0.0205, ELSA 0.0436, interaction
    0.0351; at convergence SASRec 0.0631, ELSA 0.0540), so one leader over both families would never
    let the sequence model reach its level."""
    return "sequence" if config.train.objective in ("sequence", "mixed") else "set"


BLEND_PARTNERS = 2
"""How many runners-up the best candidate is blended with (each costs a few validation rankings)."""


@dataclass(frozen=True)
class Partner:
    """The second part of a chosen blend: its candidate name, configuration and learning rates."""

    name: str
    config: Config
    schedule: list[float] | None


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
    budget: Budget | None = None
    blend: BlendChoice | None = None
    """Set when the best candidate blended with ``partner`` beat it by more than noise: the bundle is
    then the blend (:mod:`training.fit.blend`) of ``config`` and ``partner.config``."""
    partner: Partner | None = None
    guard: Guard | None = None
    """The other shape's check (:mod:`training.fit.guard`): what every candidate scored there and the
    floor the chosen model keeps."""

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
            "budget": dataclasses.asdict(self.budget) if self.budget is not None else None,
            "guard": self.guard.manifest() if self.guard is not None else None,
            "blend": None
            if self.blend is None or self.partner is None
            else {
                **dataclasses.asdict(self.blend),
                "partner": self.partner.name,
                "partner_epochs": len(self.partner.schedule) if self.partner.schedule is not None else None,
                "partner_config": self.partner.config.to_dict(),
            },
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


def candidates_of(config: Config, names: Collection[str] | None = None) -> list[tuple[str, Config]]:
    """The configurations to compare: :data:`CANDIDATES` (those in ``names`` when given) for
    ``auto``, else ``config`` alone."""
    if config.train.objective != "auto":
        return [(config.train.objective, config)]
    chosen = [(n, o) for n, o in CANDIDATES if names is None or n in names]
    return [(name, with_overrides(config, overrides)) for name, overrides in chosen]


def select_objective(
    train: pl.DataFrame,
    users: pl.DataFrame | None,
    items: pl.DataFrame | None,
    config: Config,
    protocol: str,
    parent_run_id: str | None = None,
    names: Collection[str] | None = None,
) -> Selection:
    """Train every candidate on ``train`` minus a validation split and keep the best (module docstring).

    ``names``: try only these of :data:`CANDIDATES` (the sharded path's data-parallel ones).

    ``protocol`` is the evaluation protocol (``llo``, ``rand`` or ``time``; ``none`` validates with
    :data:`VALIDATION_PROTOCOL_WITHOUT_EVAL`). With ``train.patience = 0`` and a
    concrete objective nothing is trained: the configuration is returned as it is.
    """
    candidates = candidates_of(config, names)
    if config.train.patience == 0 and len(candidates) == 1:
        return Selection(config=config, name=candidates[0][0], schedule=None)
    protocol = protocol if protocol != "none" else VALIDATION_PROTOCOL_WITHOUT_EVAL
    parts = split_for(train, protocol, config.eval.min_interactions)  # type: ignore[arg-type]
    guarded = None
    if len(candidates) > 1 and config.train.auto_guard_keep > 0:
        guarded = guarded_split(parts, protocol, config.eval.min_interactions, config.train.seed)
    prepared = prepare(parts.train if guarded is None else guarded.train, users, items, config.data)
    primary = parts.test if guarded is None else guarded.validation
    validation = validation_users(primary, config.train.validation_users, config.train.seed)
    runs = [
        (name, candidate, TrainingRun(prepared, candidate, validation=validation))
        for name, candidate in candidates
        if candidate.train.objective != "linear" or prepared.n_items <= candidate.train.linear_max_items
    ]
    budget: Budget | None = None
    blend: BlendChoice | None = None
    """Set when the best candidate blended with ``partner`` beat it by more than noise: the bundle is
    then the blend (:mod:`training.fit.blend`) of ``config`` and ``partner.config``."""
    partner: Partner | None = None
    if len(runs) > 1:
        budget = Budget(probe_epochs=config.train.auto_probe_epochs, max_s=config.train.auto_max_s)
        # Every candidate first trains the same number of epochs (a closed form is done after its
        # one fit): the probe costs what an epoch of each costs on this data and this device, and
        # the comparison does not depend on how fast the machine is.
        for name, _, run in runs:
            run.advance(epochs=config.train.auto_probe_epochs)
            log.info(
                "candidate %s: validation ndcg %.4f after %.0f s",
                name,
                run.best_validation,
                run.result.seconds,
            )
        # The iterative candidate leading the probe in each family then trains on to early
        # stopping (at most auto_max_s each): it is judged at convergence, as the closed forms are.
        leaders = []
        for kind in ("sequence", "set"):
            unfinished = [r for r in runs if not r[2].done and family(r[1]) == kind]
            if not unfinished:
                continue
            leader_name, _, leader = max(unfinished, key=lambda r: r[2].best_validation)
            before = leader.result.seconds
            leader.advance(seconds=config.train.auto_max_s or None)
            leaders.append(LeaderRun(leader_name, kind, leader.result.seconds - before, leader.stopped))
        budget = dataclasses.replace(budget, leaders=tuple(leaders))
    else:
        runs[0][2].advance()  # a concrete objective: to early stopping
    results = [_record(name, candidate, run, parent_run_id) for name, candidate, run in runs]
    guard = _guard(prepared, guarded, config, runs) if guarded is not None and len(runs) > 1 else None
    if guard is not None:
        results = [
            (dataclasses.replace(r, guard_ndcg=guard.scores[r.name]), schedule) for r, schedule in results
        ]
    # The best on validation among the models that keep the guard's floor (all of them without one).
    ranked = sorted(runs, key=lambda r: r[2].best_validation, reverse=True)
    best_name, best_config, best_run = next(r for r in ranked if guard is None or guard.eligible(r[0]))
    log.info(
        "objective: %s (validation ndcg %s)%s",
        best_name,
        ", ".join(f"{r.name}={r.validation_ndcg:.4f}" for r, _ in results),
        ""
        if guard is None
        else f"; {guard.shape} guard ndcg "
        + ", ".join(f"{n}={v:.4f}{'' if guard.eligible(n) else ' (out)'}" for n, v in guard.scores.items())
        + f", floor {guard.floor:.4f} ({guard.keep} x {guard.baseline})",
    )
    if len(runs) > 1 and config.train.auto_blend:
        blend, partner = _best_blend(prepared, validation, config.eval.k, ranked, best_name, guard)
        if blend is not None and partner is not None:  # the blend's first part, eligible or not
            best_name, best_config, best_run = next(r for r in ranked if r[0] == blend.names[0])
    # A blend's linear part gets the rank that keeps the *blend's* NDCG: at a small share its trailing
    # components barely move the blend's lists, and they are most of its served width.
    first_judge = partner_judge = None
    if blend is not None and partner is not None:  # a judge only for a linear side (none is built else)
        partner_model = next(r for r in ranked if r[0] == partner.name)[2].task.model
        if best_config.train.objective == "linear":
            first_judge = _blend_judge(
                prepared, validation, config.eval.k, blend, partner_model, linear_first=True
            )
        if partner.config.train.objective == "linear":
            partner_judge = _blend_judge(
                prepared, validation, config.eval.k, blend, best_run.task.model, linear_first=False
            )
    best_config, tower_ranks = _served_width(prepared, best_config, validation, first_judge)
    if partner is not None:
        partner = dataclasses.replace(
            partner, config=_served_width(prepared, partner.config, validation, partner_judge)[0]
        )
    return Selection(
        config=best_config,
        name=best_name,
        schedule=best_run.result.schedule,
        candidates=[r for r, _ in results],
        protocol=protocol,
        tower_ranks=tower_ranks,
        budget=budget,
        blend=blend,
        partner=partner,
        guard=guard,
    )


def _guard(
    prepared: Prepared, guarded: GuardedSplit, config: Config, runs: list[tuple[str, Config, TrainingRun]]
) -> Guard:
    """Every candidate's per-user NDCG@k on the guard's users and the baseline that sets the bar."""
    per_user = {
        name: guard_ndcg(run.task.model, prepared, guarded.guard, config.eval.k) for name, _, run in runs
    }
    return guard_for(guarded, per_user, config.train.auto_guard_keep)


def _served_width(
    prepared: Prepared, config: Config, validation: pl.DataFrame, judge: Judge | None = None
) -> tuple[Config, list[tuple[int, float]]]:
    """A ``linear`` configuration with its tower rank chosen on validation (when not set), and the
    ranks tried; any other configuration as it is. ``judge``: see
    :func:`~training.fit.linear.linear_task.choose_tower_rank` (a blend's part: the blend)."""
    if config.train.objective != "linear" or config.train.linear_tower_rank != 0:
        return config, []
    rank, tried = choose_tower_rank(prepared, config, validation, judge)
    log.info("linear tower rank: %d (validation ndcg per rank %s)", rank, tried)
    return with_overrides(config, {"train": {"linear_tower_rank": rank}}), tried


def _blend_judge(
    prepared: Prepared,
    validation: pl.DataFrame,
    k: int,
    choice: BlendChoice,
    other: TwoTowerModel,
    *,
    linear_first: bool,
) -> Judge:
    """Per-user NDCG@k on ``validation`` of ``choice``'s blend with a given model as its linear part
    (first or second) and ``other`` as the rest, each part's scores scaled by its own spread, as
    :func:`fit_selected` joins them."""
    other_scale = score_spread(other, prepared)

    def judge(linear: TwoTowerModel) -> npt.NDArray[np.float64]:
        scale = score_spread(linear, prepared)
        if linear_first:
            served = blended(linear, other, choice.weights((scale, other_scale)))
        else:
            served = blended(other, linear, choice.weights((other_scale, scale)))
        return rank_test_users(two_tower_scores(served, prepared), prepared, validation, k).per_user_ndcg(k)

    return judge


def _best_blend(
    prepared: Prepared,
    validation: pl.DataFrame,
    k: int,
    ranked: list[tuple[str, Config, TrainingRun]],
    eligible_best: str,
    guard: Guard | None,
) -> tuple[BlendChoice | None, Partner | None]:
    """The best candidate (``ranked[0]``, by validation NDCG) blended with each of the next
    :data:`BLEND_PARTNERS`; where a guard leaves the best out, also each of the best
    :data:`BLEND_PARTNERS` left out blended with the best eligible candidate and the guard's baseline
    (a model that collapses on the other shape can still lead a blend that does not). Of the blends that
    win by more than noise over their better eligible part, the narrowest that no wider one beats by more
    than noise (served width is serving cost: a blend pays for its width only with a gain beyond noise,
    on the same held-out users), or none. The chosen blend's first part is ``choice.names[0]``."""
    pairs = [(ranked[0], other) for other in ranked[1 : 1 + BLEND_PARTNERS]]
    if guard is not None and not guard.eligible(ranked[0][0]):
        left_out = [r for r in ranked if not guard.eligible(r[0])][:BLEND_PARTNERS]
        wanted = [r for r in ranked if r[0] in (eligible_best, guard.baseline)]
        pairs += [(first, other) for first in left_out for other in wanted if (first, other) not in pairs]
    kept: list[tuple[int, EvaluatedBlend, Partner]] = []
    for (name, _, run), (other_name, other_config, other_run) in pairs:
        evaluated = evaluate_blend(
            prepared, validation, k, (name, run.task.model), (other_name, other_run.task.model), guard
        )
        if evaluated is not None and evaluated.kept:
            width = run.task.model.spec.output_dim + other_run.task.model.spec.output_dim
            kept.append((width, evaluated, Partner(other_name, other_config, other_run.result.schedule)))
    if not kept:
        return None, None
    kept.sort(key=lambda entry: entry[0])
    for _, narrow, partner in kept:
        if not any(
            paired_lower_bound(wide.held_out - narrow.held_out) > 0
            for _, wide, _ in kept
            if wide is not narrow
        ):
            log.info("blend %s + %s kept (narrowest not beaten beyond noise)", *narrow.choice.names)
            return narrow.choice, partner
    _, best, partner = max(kept, key=lambda entry: entry[1].choice.validation_ndcg)
    return best.choice, partner


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
    """The rows of at most ``limit`` users of ``frame`` (a seeded sample; all of them when fewer, or
    when ``limit`` is 0)."""
    users = frame.get_column("user_id").unique().sort()
    if limit == 0 or users.len() <= limit:
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
    """Train the selected configuration on ``prepared`` with the selected per-epoch learning rates;
    for a blend, both parts (each with its own rates), joined with the chosen share."""
    first = train_model(prepared, selection.config, on_epoch, schedule=selection.schedule)
    if selection.blend is None or selection.partner is None:
        return first
    partner = selection.partner
    second = train_model(prepared, partner.config, on_epoch, schedule=partner.schedule)
    scales = (score_spread(first.model, prepared), score_spread(second.model, prepared))
    return dataclasses.replace(
        first,
        model=blended(first.model, second.model, selection.blend.weights(scales)),
        epoch_losses=first.epoch_losses + second.epoch_losses,
        seconds=first.seconds + second.seconds,
    )
