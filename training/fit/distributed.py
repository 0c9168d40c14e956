"""Data-parallel training over user shards: one process per rank, ``torch.distributed`` underneath.

Contract (what every rank does, :class:`ShardedTraining`):

* **Data**: rank ``r`` of ``W`` reads shards ``r, r + W, ...`` of a prepared directory, one shard at a
  time (:meth:`training.data.shards.PreparedShards.prepared`), so its memory is bounded by one shard
  plus the per-user and per-item arrays. A task (the same ``InteractionTask`` / ``SequenceTask`` /
  ``ElsaTask`` as single-process training) is re-pointed at each shard (:func:`bind_shard`) and cuts
  it into steps.
* **Global batch**: each rank's step is ``1/W`` of the configured ``batch_size`` /
  ``window_batch_size``, so W ranks take the same global batch and learning rate as one process.
  Before each step the ranks agree (one all-reduce) that all of them still have a batch; the epoch
  ends for all at the first rank out of data (ranks never wait for each other in a collective).
* **Gradients**: the loss runs inside :class:`~torch.nn.parallel.DistributedDataParallel`'s forward,
  so backward averages the gradients over ranks (gloo on CPU, NCCL on GPUs).
* **Negatives cross the ranks**: for the ``interaction`` objective the step's item embeddings (and
  ids, logQ corrections and uniform negatives) are all-gathered with autograd
  (:func:`torch.distributed.nn.functional.all_gather`), so each rank's softmax is over the global
  batch; with DDP's averaging the gradient is the single-process gradient of the global batch
  (:func:`interaction_loss`, checked by tests/test_distributed.py). With the exact softmax (catalogue
  no larger than ``uniform_negatives``) every rank already scores every item. Sequence objectives
  weight each rank's mean by its share of the step's loss rows, so the average over ranks is the
  global mean; their uniform negatives are drawn per rank (not gathered). ``elsa``'s loss is a mean
  over the step's users and depends on nothing outside them, so DDP's average of its item matrix's
  gradient is the global batch's; after each step every rank copies the new rows into its towers.
* **Schedule**: a linear warm-up over the first epoch, then, as in single-process training
  (:func:`training.fit.trainer.train_model`): with a validation part (``holdout``,
  :mod:`training.fit.shard_holdout`) rank 0 computes NDCG@``eval.k`` on it after every epoch and
  broadcasts it, so every rank takes the same :class:`~training.fit.trainer.Plateau` decisions
  (learning-rate cuts, the stop) and keeps the same best epoch's weights; with a ``schedule`` (the
  rates of such a run) exactly those epochs; with neither, ``train.epochs`` epochs of a cosine decay.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import nn

from serving.model.features import FIRST_TOKEN_INDEX
from serving.model.towers import Inputs, TwoTowerModel
from training.config import Config
from training.data.shards import PreparedShards
from training.evaluation.evaluate import evaluate
from training.features import Prepared
from training.fit.auto import with_overrides
from training.fit.interaction_task import ExampleBatcher, InteractionTask
from training.fit.linear.elsa_task import ElsaTask, elsa_batch_size, elsa_loss
from training.fit.losses import full_softmax_loss, sampled_softmax_loss
from training.fit.sequence_task import SequenceTask
from training.fit.shard_holdout import ShardHoldout
from training.fit.trainer import Plateau, Task, make_task, peak_rss_mb

log = logging.getLogger(__name__)
IntArray = npt.NDArray[np.int64]
T = TypeVar("T")


DATA_PARALLEL_OBJECTIVES = ("interaction", "sequence", "bag", "mixed", "elsa")
"""Objectives :class:`ShardedTraining` runs (:func:`bind_shard`): the closed forms (``linear``,
``mf``) need every interaction in one process at once."""


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = RankInfo(rank=0, world_size=1, local_rank=0)


def rank_from_env() -> RankInfo:
    """This process's rank as torchrun sets it (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); rank 0 of 1
    outside torchrun."""
    return RankInfo(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def device_for(config: Config, info: RankInfo) -> str:
    """``cuda:LOCAL_RANK`` when training on GPUs (one GPU per rank), else ``cpu``."""
    wanted = config.train.device
    if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
        return f"cuda:{info.local_rank}"
    return "cpu"


@contextmanager
def process_group(info: RankInfo, device: str) -> Iterator[None]:
    """The default process group for ``info`` (NCCL on GPUs, gloo on CPU); none for one rank."""
    if info.world_size == 1 or dist.is_initialized():
        yield
        return
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield
        # Every rank past its last collective before any tears the group down (a rank whose gloo
        # threads were still joinable at teardown aborted with exit -6 in a test). Skipped when the
        # body raised: a dead peer would leave the barrier waiting.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def broadcast_from_main(value: T, info: RankInfo) -> T:
    """Rank 0's ``value`` on every rank (pickled; other ranks pass a placeholder such as None)."""
    if info.world_size == 1:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return cast("T", box[0])


def shards_of(info: RankInfo, shards: int) -> list[int]:
    """The shards rank ``info.rank`` reads: every ``world_size``-th from its rank."""
    if shards < info.world_size:
        raise ValueError(
            f"{shards} shard(s) for {info.world_size} ranks: prepare at least one shard per rank (--shards)"
        )
    return list(range(info.rank, shards, info.world_size))


def per_rank_config(config: Config, world_size: int) -> Config:
    """``config`` with the step sizes split over the ranks (the global batch stays the configured one).

    ELSA's step size must be resolved first (0 means "from the data": :class:`ShardedTraining` sizes it
    from the whole data set); an unresolved 0 is refused rather than split into one user a step."""
    train = config.train
    if train.objective == "elsa" and train.elsa_batch_size == 0:
        raise ValueError("train.elsa_batch_size: resolve 0 (from the data) before splitting it over ranks")
    return with_overrides(
        config,
        {
            "train": {
                "batch_size": max(train.batch_size // world_size, 2),
                "window_batch_size": max(train.window_batch_size // world_size, 1),
                "elsa_batch_size": max(train.elsa_batch_size // world_size, 1),
            }
        },
    )


def bind_shard(task: Task, prepared: Prepared) -> None:
    """Point ``task`` at the examples of ``prepared`` (one shard), keeping its model, optimizer and
    random state. The global per-item arrays (features, popularity) are the same in every shard."""
    if isinstance(task, InteractionTask):
        spec, cfg = task.spec, task.config
        task.batcher = ExampleBatcher(
            prepared, spec.history_length, cfg.model.id_dropout, task.rng, cfg.train.others_history_share
        )
        task.negatives.batcher = task.batcher
    elif isinstance(task, SequenceTask):
        from training.fit.sequences import sequence_windows

        task.prepared = prepared
        task.windows = sequence_windows(prepared.sequences, task.spec.history_length)
    elif isinstance(task, ElsaTask):
        task.bind(prepared)
    else:
        raise TypeError(f"no shard binding for {type(task).__name__}")


def gather_with_grad(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """All ranks' ``tensor`` concatenated in rank order; gradients flow back to each rank's part."""
    if world_size == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor))  # type: ignore[no-untyped-call]


def gather_plain(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """All ranks' ``tensor`` concatenated in rank order (no gradient)."""
    if world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def interaction_loss(
    task: InteractionTask, batch: tuple[Inputs, Inputs, torch.Tensor], info: RankInfo
) -> torch.Tensor:
    """The interaction objective over the global batch (module docstring); ``info.world_size == 1``
    is :class:`~training.fit.interaction_task.NegativeSampler`'s loss."""
    model, negatives = task.model, task.negatives
    user_inputs, item_inputs, item_ids = batch
    users = model.user_scoring(user_inputs)
    if negatives.exact:
        every = negatives._items(model, np.arange(negatives.n_items, dtype=np.int64))
        return full_softmax_loss(users, every, item_ids - FIRST_TOKEN_INDEX, negatives.temperature)
    world = info.world_size
    items = gather_with_grad(model.item_scoring(item_inputs), world)
    ids = gather_plain(item_ids, world)
    local_log_q = negatives.log_expected[item_ids - FIRST_TOKEN_INDEX] if negatives.correct else None
    log_q = gather_plain(local_log_q, world) if local_log_q is not None else None
    extra_items = extra_ids = extra_log_q = None
    if negatives.uniform > 0:
        rows = task.rng.choice(negatives.n_items, size=negatives.uniform, replace=False).astype(np.int64)
        row_tensor = torch.from_numpy(rows).to(task.device)
        extra_items = gather_with_grad(negatives._items(model, rows), world)
        extra_ids = gather_plain(row_tensor + FIRST_TOKEN_INDEX, world)
        if log_q is not None:
            extra_log_q = gather_plain(negatives.log_expected[row_tensor], world)
    return sampled_softmax_loss(
        users,
        items,
        ids,
        negatives.temperature,
        log_q,
        extra_items,
        extra_ids,
        extra_log_q,
        offset=info.rank * users.shape[0],
    )


class _StepLoss(nn.Module):
    """The task's loss as a module forward, so that DDP sees (and syncs) the whole step."""

    def __init__(self, task: Task, info: RankInfo) -> None:
        super().__init__()
        self.model: TwoTowerModel = task.model
        self.task = task
        self.info = info
        if isinstance(task, ElsaTask):
            # ELSA's trained parameter is its raw item matrix, which the towers only copy after each
            # step: registered here, DDP averages its gradient over the ranks.
            self.elsa_weights = task.weights

    def forward(self, batch: Any, weight: torch.Tensor) -> torch.Tensor:
        task = self.task
        if isinstance(task, InteractionTask):
            loss = interaction_loss(task, batch, self.info)
        elif isinstance(task, SequenceTask):
            loss = task.loss(batch)
        elif isinstance(task, ElsaTask):
            loss = elsa_loss(task.weights, batch)
        else:
            raise TypeError(f"no distributed loss for {type(task).__name__}")
        if not loss.requires_grad:
            # No loss rows here: still a graph over every parameter, so all ranks run the same backward.
            loss = loss + 0.0 * sum(p.sum() for p in self.parameters())
        return loss * weight


@dataclass
class ShardedResult:
    model: TwoTowerModel
    epoch_losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    rows: int = 0
    """Loss rows this rank trained on, over every epoch."""
    rank_samples_per_second: list[float] = field(default_factory=list)
    """Per rank (index = rank), every rank's figure (gathered)."""
    rank_peak_rss_mb: list[float] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)
    """Validation NDCG@k after each epoch (empty without a validation part)."""
    best_epoch: int = 0
    """Epochs whose weights were kept (all of them without a validation part)."""
    schedule: list[float] = field(default_factory=list)
    """Learning rate of each kept epoch (replayed by a refit on every event)."""

    @property
    def samples_per_second(self) -> float:
        return float(sum(self.rank_samples_per_second))


class ShardedTraining:
    """One rank's share of data-parallel training over a prepared directory (module docstring)."""

    def __init__(
        self,
        data: PreparedShards,
        config: Config,
        info: RankInfo,
        device: str,
        *,
        holdout: ShardHoldout | None = None,
        schedule: list[float] | None = None,
    ) -> None:
        """``holdout``: train without its held-out rows and, unless ``schedule`` is given, stop early
        on its validation part; ``schedule``: per-epoch learning rates to replay (module docstring).
        ``config.train.objective`` is concrete (``auto`` is resolved before)."""
        self.data, self.info = data, info
        if config.train.objective == "elsa":
            # ELSA's step size from the whole data set, then split over the ranks (per_rank_config).
            step_users = elsa_batch_size(config.train, int(data.manifest["users"]))
            config = with_overrides(config, {"train": {"elsa_batch_size": step_users}})
        self.config = config
        self.holdout, self.schedule = holdout, schedule
        self.validating = schedule is None and holdout is not None and bool(holdout.validation_protocol)
        self.validation = (
            holdout.validation_data(data.entities)
            if holdout is not None and self.validating and info.is_main
            else None
        )
        rank_config = per_rank_config(with_overrides(config, {"train": {"device": device}}), info.world_size)
        self.shards = shards_of(info, data.shards)
        # The model and optimizer are built on an empty shard set; bind_shard brings the examples.
        self.task = make_task(data.entities, rank_config)
        # Each rank its own stream (shuffles, uniform negatives, id dropout); the same init weights
        # everywhere (seeded before the rng; DDP broadcasts rank 0's anyway).
        self.task.rng = np.random.default_rng([config.train.seed, info.rank])
        if isinstance(self.task, InteractionTask):
            self.task.batcher.rng = self.task.rng
            self.task.negatives.expect_draws(data.entities.popularity, data.interactions, info.world_size)
        self.step_loss: nn.Module = _StepLoss(self.task, info)
        if info.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [torch.device(device).index] if device.startswith("cuda") else None
            self.step_loss = DistributedDataParallel(
                self.step_loss, device_ids=ids, find_unused_parameters=True
            )
        self.batch_rows = rank_config.train.batch_size
        self.device = torch.device(device)

    def _positions(self) -> Iterator[IntArray]:
        """Example positions of each step of one epoch on this rank, shard after shard (shuffled)."""
        task = self.task
        for shard in task.rng.permutation(np.asarray(self.shards, dtype=np.int64)):
            rows = self.holdout.training_rows if self.holdout is not None else None
            bind_shard(task, self.data.prepared([int(shard)], rows))
            n = len(task)
            for positions in task.batches(task.rng.permutation(n).astype(np.int64)):
                if isinstance(task, InteractionTask) and len(positions) != self.batch_rows:
                    continue  # all-gathered steps need one size on every rank
                yield positions

    def _steps_per_epoch(self) -> int:
        """Global steps of an epoch, estimated from the manifest alone (every rank gets the same figure,
        so every rank sets the same learning rate): the length of the first epoch's warm-up."""
        cfg, data = self.config.train, self.data
        if isinstance(self.task, SequenceTask):
            windows = data.interactions / max(self.task.spec.history_length, 1) + int(data.manifest["users"])
            return max(int(windows // max(cfg.window_batch_size, 1)), 1)
        if isinstance(self.task, ElsaTask):
            return max(int(data.manifest["users"]) // max(cfg.elsa_batch_size, 1), 1)
        return max(data.interactions // max(cfg.batch_size, 1), 1)

    def _agree(self, has_batch: bool, rows: int) -> tuple[bool, int]:
        """(every rank has a batch, loss rows of the global step): one small all-reduce."""
        if self.info.world_size == 1:
            return has_batch, rows
        flags = torch.tensor([int(has_batch), rows], dtype=torch.int64)
        if self.device.type == "cuda":
            flags = flags.to(self.device)
        dist.all_reduce(flags)
        return int(flags[0]) == self.info.world_size, int(flags[1])

    def run(self, max_steps: int | None = None) -> ShardedResult:
        """Train (module docstring: schedule), each epoch at most ``max_steps`` steps; collective on
        every rank."""
        cfg, task, world = self.config.train, self.task, self.info.world_size
        epochs = len(self.schedule) if self.schedule is not None else cfg.epochs
        estimated = self._steps_per_epoch()
        result = ShardedResult(model=task.model)
        plateau = Plateau(cfg.patience, cfg.lr_cuts, cfg.learning_rate)
        best_state: dict[str, torch.Tensor] | None = None
        rates: list[float] = []
        started = time.perf_counter()
        for epoch in range(epochs):
            if self.schedule is not None:
                rate = self.schedule[epoch]
            elif self.validating:
                rate = plateau.rate
            else:
                rate = cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * epoch / max(epochs, 1)))
            rates.append(rate)
            total, steps = 0.0, 0
            batches = self._positions()
            while max_steps is None or steps < max_steps:
                positions = next(batches, None)
                batch = task.build(positions) if positions is not None else None
                rows = _rows(batch, positions) if batch is not None and positions is not None else 0
                everyone, global_rows = self._agree(batch is not None, rows)
                if not everyone or batch is None:
                    break
                warm = min((steps + 1) / estimated, 1.0) if epoch == 0 else 1.0
                for group in task.optimizer.param_groups:
                    group["lr"] = rate * warm
                # Sequence objectives: this rank's mean counts by its share of the global rows.
                weight = world * rows / global_rows if isinstance(task, SequenceTask) and global_rows else 1.0
                task.model.train()
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                    loss = self.step_loss(batch, torch.tensor(weight, device=self.device))
                task.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                task.optimizer.step()
                if isinstance(task, ElsaTask):
                    task.write_towers()  # the stepped item matrix into the towers the bundle holds
                total += float(loss.detach())
                steps += 1
                result.rows += rows
            result.steps += steps
            mean = self._mean(total / max(steps, 1))
            result.epoch_losses.append(mean)
            message = ""
            if self.validating:
                score = self._validation_score()
                result.validation.append(score)
                message = f", validation ndcg@{self.config.eval.k} {score:.4f}"
                if plateau.update(epoch, score):
                    best_state = copy.deepcopy(task.model.state_dict())
            log.info(
                "rank %d epoch %d/%d: %d steps, lr %.2g, loss %.4f%s, peak RSS %.0f MiB",
                self.info.rank,
                epoch + 1,
                epochs,
                steps,
                rate,
                mean,
                message,
                peak_rss_mb(),
            )
            if plateau.stopped:
                log.info(
                    "early stop: best validation ndcg %.4f at epoch %d", plateau.best, plateau.best_epoch
                )
                break
        if best_state is not None:
            task.model.load_state_dict(best_state)
            result.best_epoch = plateau.best_epoch
        else:
            result.best_epoch = len(result.epoch_losses)
        result.schedule = rates[: result.best_epoch]
        result.seconds = time.perf_counter() - started
        mine = torch.tensor([result.rows / max(result.seconds, 1e-9), peak_rss_mb()], dtype=torch.float64)
        every = gather_plain(mine.to(self.device), self.info.world_size).cpu().view(self.info.world_size, -1)
        result.rank_samples_per_second = [float(r[0]) for r in every]
        result.rank_peak_rss_mb = [float(r[1]) for r in every]
        task.model.eval()
        return result

    def _validation_score(self) -> float:
        """NDCG@``eval.k`` on the validation part, computed by rank 0 and broadcast to every rank
        (the early-stopping decisions then agree everywhere)."""
        score = 0.0
        if self.validation is not None:
            prepared, frame = self.validation
            self.task.model.eval()
            k = self.config.eval.k
            score = evaluate(self.task.model, prepared, frame, k)[f"ndcg@{k}"]
        if self.info.world_size == 1:
            return score
        tensor = torch.tensor([score], dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, src=0)
        return float(tensor[0])

    def _mean(self, value: float) -> float:
        if self.info.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)  # NCCL: device tensors
        dist.all_reduce(tensor)
        return float(tensor[0]) / self.info.world_size


def _rows(batch: Any, positions: IntArray) -> int:
    rows = getattr(batch, "rows", None)
    return int(rows) if rows is not None else len(positions)
