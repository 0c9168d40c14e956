"""The training loop: read top to bottom.

A *task* (:class:`~training.fit.interaction_task.InteractionTask` for ``train.objective =
"interaction"``, :class:`~training.fit.sequence_task.SequenceTask` for ``sequence``, ``bag`` and
``mixed``) owns a fresh model, its optimizer and its data: ``batches`` cuts an epoch into steps,
``build`` is the data path (NumPy gathers, copies to the device), ``step`` the model path (forward,
loss, backward, update). The loop below is the same for every task: a one-cycle learning-rate
schedule (warm-up, cosine decay) over ``train.epochs`` or, when a validation split is given, NDCG@k
on it after every epoch, the learning rate cut at each plateau and early stopping back to the best
epoch (:func:`train_model`).
"""

from __future__ import annotations

import copy
import logging
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import polars as pl
import torch

from serving.model.towers import TwoTowerModel, TwoTowerSpec
from training.config import Config
from training.evaluation.evaluate import evaluate
from training.features import Prepared
from training.fit.interaction_task import InteractionTask
from training.fit.linear.elsa_task import ElsaTask
from training.fit.linear.factor_task import FactorTask
from training.fit.linear.linear_task import LinearTask
from training.fit.sequence_task import SequenceTask

log = logging.getLogger(__name__)
T = TypeVar("T")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class TrainResult:
    model: TwoTowerModel
    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    examples: int = 0
    """Loss rows (targets) seen per epoch."""
    validation: list[float] = field(default_factory=list)
    """Validation NDCG@k after each epoch (empty without a validation split)."""
    best_epoch: int = 0
    """Epochs whose weights were kept (all of them without a validation split)."""
    schedule: list[float] = field(default_factory=list)
    """Learning rate of each kept epoch (replayed by a refit on more data)."""

    @property
    def samples_per_second(self) -> float:
        return self.examples * len(self.epoch_losses) / self.seconds if self.seconds > 0 else 0.0

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(len(self.epoch_losses), 1)


class Task(Protocol):
    model: TwoTowerModel
    spec: TwoTowerSpec
    optimizer: torch.optim.Optimizer
    device: torch.device
    rng: np.random.Generator

    def __len__(self) -> int: ...
    def batches(self, order: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int64]]: ...
    def build(self, positions: npt.NDArray[np.int64]) -> Any: ...
    def step(self, batch: Any) -> torch.Tensor: ...


def make_task(prepared: Prepared, config: Config) -> Task:
    """The task of ``train.objective`` (``auto`` must have been resolved by :mod:`training.fit.auto`)."""
    objective = config.train.objective
    if objective == "interaction":
        return InteractionTask(prepared, config)
    if objective in ("sequence", "bag", "mixed"):
        return SequenceTask(prepared, config)
    if objective == "linear":
        return LinearTask(prepared, config)
    if objective == "mf":
        return FactorTask(prepared, config)
    if objective == "elsa":
        return ElsaTask(prepared, config)
    raise ValueError(f"train.objective {objective!r}: resolve 'auto' with training.fit.auto first")


LR_CUT_FACTOR = 0.25
"""Learning-rate factor at each validation plateau."""


@dataclass
class Plateau:
    """Early stopping on a validation score, one :meth:`update` per epoch (single-process and sharded
    training share it): ``patience`` epochs without a better score cut ``rate`` by
    :data:`LR_CUT_FACTOR`; the plateau after ``lr_cuts`` cuts sets ``stopped``."""

    patience: int
    lr_cuts: int
    rate: float
    best: float = -1.0
    best_epoch: int = 0
    """1-based epoch of ``best`` (0 before the first update)."""
    stale: int = 0
    cuts: int = 0
    stopped: bool = False

    def update(self, epoch: int, score: float) -> bool:
        """Record 0-based ``epoch``'s score; True when it is the best so far (keep its weights)."""
        improved = score > self.best
        if improved:
            self.best, self.best_epoch, self.stale = score, epoch + 1, 0
        else:
            self.stale += 1
        if self.patience > 0 and self.stale >= self.patience:
            self.stale = 0
            if self.cuts >= self.lr_cuts:
                self.stopped = True
            else:
                self.cuts += 1
                self.rate *= LR_CUT_FACTOR
        return improved


def train_model(
    prepared: Prepared,
    config: Config,
    on_epoch: Callable[[int, float], None] | None = None,
    *,
    validation: pl.DataFrame | None = None,
    schedule: list[float] | None = None,
) -> TrainResult:
    """Train a fresh model on every interaction of ``prepared``; deterministic for a seed on CPU.

    Three ways to run, by what is given:

    * ``validation`` (held-out interactions of users in ``prepared``): NDCG@``eval.k`` after each
      epoch; the learning rate (after a one-epoch linear warm-up) is cut by :data:`LR_CUT_FACTOR`
      when ``train.patience`` epochs bring no improvement, and training stops at the next plateau
      after ``train.lr_cuts`` cuts (or at ``train.epochs``). The best epoch's weights are returned and
      ``result.schedule`` holds the learning rate of each epoch up to it.
    * ``schedule`` (per-epoch learning rates from such a run): exactly that many epochs at those
      rates, the same warm-up; the refit of a validated configuration on more data.
    * neither: ``train.epochs`` epochs of a one-cycle schedule (warm-up, cosine decay).
    """
    run = TrainingRun(prepared, config, on_epoch, validation=validation, schedule=schedule)
    run.advance()
    return run.finish()


class TrainingRun:
    """:func:`train_model` in steps of whole epochs, so that a caller can share time between runs.

    ``advance(seconds)`` trains epochs until the run is over (``done``) or, when ``seconds`` is
    given, until an epoch ends after that many seconds of this call; a later ``advance`` resumes
    exactly where it stopped (same model, optimizer, schedule and early-stopping state), so a run
    advanced in slices is the run advanced at once. ``finish`` restores the best weights and
    returns the result.
    """

    def __init__(
        self,
        prepared: Prepared,
        config: Config,
        on_epoch: Callable[[int, float], None] | None = None,
        *,
        validation: pl.DataFrame | None = None,
        schedule: list[float] | None = None,
    ) -> None:
        cfg = config.train
        self.prepared, self.config, self.on_epoch = prepared, config, on_epoch
        self.validation, self.schedule = validation, schedule
        self.task = make_task(prepared, config)
        self.n = len(self.task)
        # A closed-form task is done after its one step: nothing to iterate, nothing to schedule.
        closed_form = getattr(self.task, "closed_form", False)
        steps_per_epoch = max(len(self.task.batches(np.arange(self.n, dtype=np.int64))), 1)
        self.scheduler = (
            torch.optim.lr_scheduler.OneCycleLR(
                self.task.optimizer,
                max_lr=cfg.learning_rate,
                total_steps=steps_per_epoch * cfg.epochs,
                pct_start=0.1,
            )
            if validation is None and schedule is None and not closed_form
            else None
        )
        self.epochs = 1 if closed_form else len(schedule) if schedule is not None else cfg.epochs
        self.result = TrainResult(model=self.task.model)
        self.best_state: dict[str, torch.Tensor] | None = None
        self.plateau = Plateau(cfg.patience, cfg.lr_cuts, cfg.learning_rate)
        self.rate = cfg.learning_rate
        self.rates: list[float] = []

    @property
    def stopped(self) -> bool:
        """Whether early stopping ended the run (converged, not cut short by a budget)."""
        return self.plateau.stopped

    @property
    def done(self) -> bool:
        return self.plateau.stopped or len(self.result.epoch_losses) >= self.epochs

    @property
    def best_validation(self) -> float:
        """Best validation NDCG so far (-1 before the first epoch or without validation)."""
        return self.plateau.best

    def advance(self, seconds: float | None = None, epochs: int | None = None) -> None:
        """Train epochs until :attr:`done`, or with ``seconds`` until the first epoch end past it, or
        with ``epochs`` until this many more epochs have run (whichever comes first)."""
        started = time.perf_counter()
        ran = 0
        while not self.done and (epochs is None or ran < epochs):
            self._epoch(len(self.result.epoch_losses))
            ran += 1
            if seconds is not None and time.perf_counter() - started >= seconds:
                break
        self.result.seconds += time.perf_counter() - started

    def _epoch(self, epoch: int) -> None:
        cfg, task = self.config.train, self.task
        if self.schedule is not None:
            self.rate = self.schedule[epoch]
        self.rates.append(self.rate)
        batches = task.batches(task.rng.permutation(self.n).astype(np.int64))
        # Summed on the device: reading a loss back every step would wait for the GPU each time.
        total = torch.zeros((), device=task.device)
        rows = 0
        for step, positions in enumerate(
            _progress(batches, cfg.progress, f"epoch {epoch + 1}/{self.epochs}")
        ):
            if self.scheduler is None:
                warm = (step + 1) / len(batches) if epoch == 0 else 1.0
                for group in task.optimizer.param_groups:
                    group["lr"] = self.rate * warm
            batch = task.build(positions)
            rows += _rows(batch, positions)
            total += task.step(batch)
            if self.scheduler is not None:
                self.scheduler.step()
        self.result.examples = rows
        epoch_loss = float(total) / max(len(batches), 1)
        self.result.epoch_losses.append(epoch_loss)
        message = f"epoch {epoch + 1}/{self.epochs} lr {self.rate:.2g} loss {epoch_loss:.4f}"
        if self.validation is not None:
            task.model.eval()
            k = self.config.eval.k
            score = evaluate(task.model, self.prepared, self.validation, k)[f"ndcg@{k}"]
            self.result.validation.append(score)
            message += f" validation ndcg@{k} {score:.4f}"
            if self.plateau.update(epoch, score):
                self.result.best_epoch = self.plateau.best_epoch
                self.best_state = copy.deepcopy(task.model.state_dict())
            if self.schedule is None:
                self.rate = self.plateau.rate
        log.info(message)
        if self.on_epoch is not None:
            self.on_epoch(epoch, epoch_loss)
        if self.plateau.stopped:
            log.info(
                "early stop: best validation ndcg %.4f at epoch %d", self.plateau.best, self.result.best_epoch
            )

    def finish(self) -> TrainResult:
        """The best epoch's weights (the last epoch's without validation) and the run's record."""
        result = self.result
        if self.best_state is not None:
            self.task.model.load_state_dict(self.best_state)
        else:
            result.best_epoch = len(result.epoch_losses)
        result.schedule = self.rates[: result.best_epoch]
        self.task.model.eval()
        return result


def _rows(batch: Any, positions: npt.NDArray[np.int64]) -> int:
    """Loss rows of a built batch: its targets (sequence tasks) or its interactions."""
    rows = getattr(batch, "rows", None)
    return int(rows) if rows is not None else len(positions)


@dataclass(frozen=True)
class Throughput:
    """Training samples/s with the real data path vs on pre-built tensors (same batches)."""

    pipeline_samples_per_second: float
    model_only_samples_per_second: float
    steps: int
    batch_size: int

    @property
    def ratio(self) -> float:
        """Share of the model-only speed the full loop reaches (1.0: the data path costs nothing)."""
        return self.pipeline_samples_per_second / self.model_only_samples_per_second


def measure_throughput(
    prepared: Prepared, config: Config, steps: int = 30, warmup: int = 3, rounds: int = 3
) -> Throughput:
    """Time training steps with the batch built on the fly (the real loop) and on the same
    batches pre-built (the model-only floor), alternating in ``rounds`` so that noise from
    other work on the machine hits both alike."""
    task = make_task(prepared, config)
    all_batches = task.batches(task.rng.permutation(len(task)).astype(np.int64))
    positions = (all_batches * (1 + (steps + warmup) // max(len(all_batches), 1)))[: steps + warmup]
    for p in positions[:warmup]:
        task.step(task.build(p))
    timed = positions[warmup:]
    prebuilt = [task.build(p) for p in timed]
    model_only = pipeline = 0.0
    for _ in range(rounds):
        _synchronize(task.device)
        started = time.perf_counter()
        for batch in prebuilt:
            task.step(batch)
        _synchronize(task.device)
        model_only += time.perf_counter() - started
        started = time.perf_counter()
        for p in timed:
            task.step(task.build(p))
        _synchronize(task.device)
        pipeline += time.perf_counter() - started
    samples = rounds * sum(_rows(b, p) for b, p in zip(prebuilt, timed, strict=True))
    return Throughput(samples / pipeline, samples / model_only, rounds * len(timed), config.train.batch_size)


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings include it (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress(items: list[T], enabled: bool, description: str) -> Iterable[T]:
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a training extra; progress bars are optional
        return items
    wrapped: Iterable[T] = tqdm(items, desc=description, leave=False, disable=None)
    return wrapped
