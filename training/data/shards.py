"""Reading a prepared directory (:mod:`training.data.stream_prepare`): encoders, tables, shards.

:func:`open_prepared` loads what grows with users and items (encoders, encoded attribute tables,
popularity) and none of the events. :meth:`PreparedShards.prepared` then reads the events of some
shards only and returns a :class:`training.features.Prepared` whose sequences hold just those
shards' users (every other user row is empty), so a trainer's memory is bounded by the shards it
holds at a time, not by the data. ``prepared(all shards)`` is the whole data set (the bundle's).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from serving.model.features import FIRST_TOKEN_INDEX, EntityEncoder
from serving.model.history import Sequences
from serving.profiles.build import MemberEvents
from training.data.io import InputError
from training.data.stream_prepare import FORMAT, FORMAT_VERSION, shard_name
from training.features import Prepared

KEY_COLUMNS = ("user_index", "item_index", "timestamp")
"""What training reads of each event (:meth:`PreparedShards.read_shard`'s default)."""

PROFILE_PART_EVENTS = 5_000_000
"""Events per part of :meth:`PreparedShards.member_events`: about 3 GiB of profile work at a time
(1M members, 100M events: 23 parts, 3.2 GiB over the entities the process already held)."""

ShardRows = Callable[[pl.DataFrame], pl.DataFrame]
"""Keeps some of one shard's events (:meth:`PreparedShards.prepared`)."""


@dataclass(frozen=True)
class PreparedShards:
    """A prepared directory, opened."""

    root: Path
    manifest: dict[str, Any]
    entities: Prepared
    """Encoders, tables, encoded features and popularity of every user and item, no events
    (every sequence empty): what :meth:`prepared` completes with some shards' sequences."""

    @property
    def shards(self) -> int:
        return int(self.manifest["shards"])

    @property
    def interactions(self) -> int:
        return int(self.manifest["interactions"])

    def shard_path(self, shard: int) -> Path:
        return self.root / "shards" / shard_name(shard)

    def prepared(self, shards: Sequence[int], rows: ShardRows | None = None) -> Prepared:
        """The events of ``shards`` as a Prepared (global encoders, features and popularity).

        ``rows``: what to keep of each shard's events (``user_index, item_index, timestamp`` in the
        shard's order in, the kept rows out, each user's still in time order; deterministic, as it
        runs twice per shard): the training rows of a run with a held-out split.

        Two passes over the shards: per-user counts, then each shard's events written straight
        into their users' slots. Users are disjoint across shards and time-ordered within one,
        so a stable sort inside a shard keeps every sequence in time order, and memory holds
        the result plus one shard (not the result three times over, as a global sort would).
        """
        for shard in shards:
            if not 0 <= shard < self.shards:
                raise ValueError(f"{self.root}: shard {shard} does not exist ({self.shards} shards)")
        if len(set(shards)) != len(shards):
            raise ValueError(f"{self.root}: shards {list(shards)} name a shard twice")
        n_users = self.entities.n_users
        counts = np.zeros(n_users, dtype=np.int64)
        for shard in shards:
            user_rows, _ = self._read_shard(shard, ("user_index",), rows)
            counts += np.bincount(user_rows, minlength=n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        item_indices = np.empty(int(indptr[-1]), dtype=np.int64)
        # Per-user write cursor: a user found in two shards (which `recsys prepare` never writes)
        # would still get every event, in shard order, rather than overwritten or unset slots.
        filled = np.zeros(n_users, dtype=np.int64)
        for shard in shards:
            user_rows, items = self._read_shard(shard, ("user_index", "item_index"), rows)
            order = np.argsort(user_rows, kind="stable")
            user_rows, items = user_rows[order], items[order]
            starts = np.flatnonzero(np.r_[True, user_rows[1:] != user_rows[:-1]]) if len(user_rows) else order
            rank = np.arange(len(user_rows)) - np.repeat(starts, np.diff(np.r_[starts, len(user_rows)]))
            item_indices[indptr[user_rows] + filled[user_rows] + rank] = items
            filled += np.bincount(user_rows, minlength=n_users)
        if not np.array_equal(filled, counts):  # the shards changed between the two passes
            raise InputError(f"{self.root}: shards changed while being read")
        return replace(self.entities, sequences=Sequences(indptr, item_indices))

    def events(self, shards: Sequence[int] | None = None) -> pl.LazyFrame:
        """The events of ``shards`` (default: every shard) by id (``user_id, item_id, timestamp,
        event_type, value``), lazily: a scan of the shards joined with the vocabularies."""
        entities = self.entities
        ids = {
            name: pl.DataFrame(
                {
                    f"{name}_index": np.arange(len(encoder.ids.tokens), dtype=np.int64) + FIRST_TOKEN_INDEX,
                    f"{name}_id": encoder.ids.tokens,
                }
            ).lazy()
            for name, encoder in (("user", entities.user_encoder), ("item", entities.item_encoder))
        }
        chosen = range(self.shards) if shards is None else shards
        paths = [str(self.shard_path(shard)) for shard in chosen]
        return (
            pl.scan_parquet(paths)
            .join(ids["user"], on="user_index", how="left", maintain_order="left")
            .join(ids["item"], on="item_index", how="left", maintain_order="left")
            .select("user_id", "item_id", "timestamp", "event_type", "value")
        )

    def member_events(self, part_events: int = PROFILE_PART_EVENTS) -> MemberEvents:
        """Every event as parts of consecutive shards holding about ``part_events`` events each
        (a shard is never split; no member spans two shards): what member profiles read, so
        that their memory follows one part, not the data."""
        rows = [
            int(r)
            for r in self.manifest.get("shard_rows") or [self.interactions // self.shards] * self.shards
        ]
        groups: list[list[int]] = [[]]
        held = 0
        for shard, count in enumerate(rows):
            if groups[-1] and held + count > part_events:
                groups.append([])
                held = 0
            groups[-1].append(shard)
            held += count
        return MemberEvents(tuple(self.events(group) for group in groups))

    def read_shard(self, shard: int, columns: Sequence[str] = KEY_COLUMNS) -> pl.DataFrame:
        """``columns`` of one shard's events, in the shard's order (user, then time)."""
        path = self.shard_path(shard)
        try:
            return pl.read_parquet(path, columns=list(columns))
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise InputError(f"{path}: cannot be read: {exc}") from exc

    def _read_shard(
        self, shard: int, columns: tuple[str, ...], rows: ShardRows | None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(user rows, item indices) of one shard's kept ``rows``; item indices are empty unless
        asked for."""
        path = self.shard_path(shard)
        frame = self.read_shard(shard, columns if rows is None else KEY_COLUMNS)
        if rows is not None:
            frame = rows(frame)
        users = frame.get_column("user_index").to_numpy().astype(np.int64) - FIRST_TOKEN_INDEX
        if len(users) and (users.min() < 0 or users.max() >= self.entities.n_users):
            raise InputError(f"{path}: holds user indices outside the vocabulary")
        items = (
            frame.get_column("item_index").to_numpy().astype(np.int64)
            if "item_index" in columns
            else np.zeros(0, dtype=np.int64)
        )
        return users, items


def read_prepared_manifest(root: Path) -> dict[str, Any]:
    """The manifest of ``root`` written by ``recsys prepare``, with every shard file it names
    present; a missing or foreign directory is an InputError naming the file. Reads nothing
    else (no tables, no encoders): enough to plan ranks over the shards."""
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"{manifest_path}: not found (is {root} a directory written by `recsys prepare`?)")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise InputError(
            f"{manifest_path}: format {manifest.get('format')!r} version {manifest.get('version')!r}, "
            f"expected {FORMAT!r} version {FORMAT_VERSION}"
        )
    for shard in range(int(manifest["shards"])):
        if not (root / "shards" / shard_name(shard)).is_file():
            raise InputError(f"{root / 'shards' / shard_name(shard)}: missing shard")
    return dict(manifest)


def open_prepared(root: Path) -> PreparedShards:
    """Open ``root`` written by ``recsys prepare``: :func:`read_prepared_manifest`, then the
    tables, encoders and popularity; a missing or foreign directory is an InputError naming
    the file."""
    root = Path(root)
    manifest = read_prepared_manifest(root)
    user_table = pl.read_parquet(root / "users.parquet")
    item_table = pl.read_parquet(root / "items.parquet")
    user_encoder = _encoder(root, "user", user_table.get_column("user_id"))
    item_encoder = _encoder(root, "item", item_table.get_column("item_id"))
    popularity = np.load(root / "popularity.npy").astype(np.int64)
    if len(popularity) != item_table.height:
        raise InputError(
            f"{root / 'popularity.npy'}: {len(popularity)} items, items.parquet has {item_table.height}"
        )
    no_events = Sequences(np.zeros(user_table.height + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))
    entities = Prepared(
        user_encoder=user_encoder,
        item_encoder=item_encoder,
        user_table=user_table,
        item_table=item_table,
        user_features=user_encoder.transform(user_table),
        item_features=item_encoder.transform(item_table),
        sequences=no_events,
        popularity=popularity,
        dropped_interactions=0,
    )
    return PreparedShards(root=root, manifest=manifest, entities=entities)


def _encoder(root: Path, name: str, ids: pl.Series) -> EntityEncoder:
    description = json.loads((root / f"{name}_encoder.json").read_text())
    vocabularies = pl.read_parquet(root / f"{name}_vocab.parquet")
    return EntityEncoder.from_data(description, vocabularies, ids)
