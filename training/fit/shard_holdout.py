"""The held-out split of a sharded run: test and validation rows of a seeded sample of users.

Single-process training splits every user (:func:`training.evaluation.split_for`); a sharded run
cannot hold every user's rows in one process, so :func:`carve_holdout` draws a seeded sample of at
most :data:`HOLDOUT_USERS` users (all of them on small data), reads their events from every shard
(one shard at a time) and splits them with the same functions and protocols as single-process
training: ``eval.protocol`` gives the test part, then the same protocol (``llo`` when it is
``none``) carves the validation part out of what is left, as :func:`training.fit.auto.select_objective`
does. Every rank computes the same holdout (same seed, same shards; no collective).

Training then reads each shard through :meth:`ShardHoldout.training_rows`: the sampled users keep
only their training rows, every other user keeps every row. With the ``time`` protocol every event
after the test cut is left out too (for every user), so the evaluated model has not seen the test
period; the validation cut applies to the sampled users only (a later event of another user can
then inform the early stopping, never the test figure).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from serving.model.features import FIRST_TOKEN_INDEX
from serving.model.history import Sequences
from training.config import Config
from training.data.shards import PreparedShards
from training.evaluation import split_for
from training.features import Prepared
from training.fit.auto import VALIDATION_PROTOCOL_WITHOUT_EVAL

log = logging.getLogger(__name__)
IntArray = npt.NDArray[np.int64]

HOLDOUT_USERS = 8000
"""At most this many users are split (a seeded sample): their test rows give the bundle's figures and
their validation rows the early stopping; every one of them is ranked against the whole catalogue,
so the cost of an evaluation is bounded whatever the number of users (``train.validation_users``
is not read here: its 0, every user, would not be bounded on data that needs shards)."""

_SPLIT_COLUMNS = {"user_index": "user_id", "item_index": "item_id"}


@dataclass(frozen=True)
class ShardHoldout:
    """The sampled users' rows, split (module docstring). Frames hold ``user_index, item_index,
    timestamp`` (encoded, as in the shards), each user's rows in time order."""

    protocol: str
    """``eval.protocol`` (``none``: no test part)."""
    validation_protocol: str
    """Protocol of the validation part (``""``: none, ``train.patience = 0``)."""
    users: IntArray
    """Sampled user indices (encoded), ascending."""
    trained: pl.DataFrame
    """The sampled users' rows trained on."""
    validation: pl.DataFrame
    known: pl.DataFrame
    """``trained`` and ``validation``: the histories the test part is ranked after."""
    test: pl.DataFrame
    cut: int | None
    """``time``: the last timestamp trained on (every later event is held out of training)."""
    sampled_events: int

    @property
    def holds_out(self) -> bool:
        """Whether training leaves anything out (not so for ``auto``'s sample alone)."""
        return self.cut is not None or self.trained.height < self.sampled_events

    def training_rows(self, frame: pl.DataFrame) -> pl.DataFrame:
        """One shard's events (``user_index, item_index, timestamp``, shard order) without the
        held-out rows: for :meth:`training.data.shards.PreparedShards.prepared`."""
        sampled = pl.col("user_index").is_in(pl.Series(self.users).implode())
        kept = frame.filter(~sampled)
        if self.cut is not None:
            kept = kept.filter(pl.col("timestamp") <= self.cut)
        here = frame.filter(sampled).get_column("user_index").unique().implode()
        mine = self.trained.filter(pl.col("user_index").is_in(here)).select(frame.columns)
        # Each user's rows stay together and in time order: the reader sorts users stably.
        return pl.concat([kept, mine.cast(kept.schema)])

    def validation_data(self, entities: Prepared) -> tuple[Prepared, pl.DataFrame] | None:
        """(the sampled users' training histories, the validation rows by id) for
        :func:`training.evaluation.evaluate.evaluate`; None without a validation part."""
        if not self.validation_protocol:
            return None
        return _with_sequences(entities, self.trained), _by_id(entities, self.validation)

    def test_data(self, entities: Prepared) -> tuple[Prepared, pl.DataFrame] | None:
        """(the sampled users' histories before the test part, the test rows by id); None with
        ``eval.protocol = "none"``."""
        if self.protocol == "none":
            return None
        return _with_sequences(entities, self.known), _by_id(entities, self.test)

    def known_by_id(self, entities: Prepared) -> pl.DataFrame:
        """The sampled users' rows but the test part, by id: where ``auto`` chooses the objective
        (as single-process training chooses inside its training part)."""
        return _by_id(entities, self.known)

    def manifest(self) -> dict[str, Any]:
        """What the bundle manifest records of the split."""
        return {
            "users": len(self.users),
            "sampled_events": self.sampled_events,
            "trained_events_of_sampled_users": self.trained.height,
            "validation_events": self.validation.height,
            "test_events": self.test.height,
            "validation_protocol": self.validation_protocol,
            "time_cut": self.cut,
        }


def sample_users(n_users: int, limit: int, seed: int) -> IntArray:
    """At most ``limit`` user indices (encoded) of ``n_users``, seeded, ascending; all when fewer."""
    rows = (
        np.arange(n_users) if n_users <= limit else np.random.default_rng(seed).choice(n_users, limit, False)
    )
    return np.sort(rows).astype(np.int64) + FIRST_TOKEN_INDEX


def carve_holdout(data: PreparedShards, config: Config, limit: int = HOLDOUT_USERS) -> ShardHoldout | None:
    """The holdout of a sharded run (module docstring); None when nothing is to be held out
    (``eval.protocol = "none"``, ``train.patience = 0`` and a concrete objective: ``auto`` chooses
    on the sampled users' rows, :meth:`ShardHoldout.known_by_id`)."""
    protocol = config.eval.protocol
    validate = config.train.patience > 0
    if protocol == "none" and not validate and config.train.objective != "auto":
        return None
    users = sample_users(data.entities.n_users, limit, config.train.seed)
    wanted = pl.Series(users).implode()
    sample = pl.concat(
        [data.read_shard(shard).filter(pl.col("user_index").is_in(wanted)) for shard in range(data.shards)]
    ).rename(_SPLIT_COLUMNS)
    empty = sample.clear()
    cut = None
    if protocol != "none":
        parts = split_for(sample, protocol, config.eval.min_interactions)
        known, test = parts.train, parts.test
        if protocol == "time" and known.height:
            cut = int(known.get_column("timestamp").max())  # type: ignore[arg-type]
    else:
        known, test = sample, empty
    validation_protocol = ""
    trained, validation = known, empty
    if validate:
        validation_protocol = protocol if protocol != "none" else VALIDATION_PROTOCOL_WITHOUT_EVAL
        parts = split_for(known, validation_protocol, config.eval.min_interactions)  # type: ignore[arg-type]
        trained, validation = parts.train, parts.test
    inverse = {v: k for k, v in _SPLIT_COLUMNS.items()}
    holdout = ShardHoldout(
        protocol=protocol,
        validation_protocol=validation_protocol,
        users=users,
        trained=trained.rename(inverse),
        validation=validation.rename(inverse),
        known=known.rename(inverse),
        test=test.rename(inverse),
        cut=cut,
        sampled_events=sample.height,
    )
    log.info("holdout: %s", holdout.manifest())
    return holdout


def _with_sequences(entities: Prepared, frame: pl.DataFrame) -> Prepared:
    """``entities`` with the sequences of ``frame``'s rows (its users' rows in time order)."""
    users = frame.get_column("user_index").to_numpy().astype(np.int64) - FIRST_TOKEN_INDEX
    order = np.argsort(users, kind="stable")
    counts = np.bincount(users, minlength=entities.n_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    items = frame.get_column("item_index").to_numpy().astype(np.int64)[order]
    return replace(entities, sequences=Sequences(indptr, items))


def _by_id(entities: Prepared, frame: pl.DataFrame) -> pl.DataFrame:
    """``frame``'s rows with ``user_id``/``item_id`` strings (what evaluation maps through the encoders)."""
    users = frame.get_column("user_index").to_numpy() - FIRST_TOKEN_INDEX
    items = frame.get_column("item_index").to_numpy() - FIRST_TOKEN_INDEX
    return pl.DataFrame(
        {
            "user_id": entities.user_encoder.ids.tokens.gather(users),
            "item_id": entities.item_encoder.ids.tokens.gather(items),
            "timestamp": frame.get_column("timestamp"),
        }
    )
