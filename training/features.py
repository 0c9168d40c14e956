"""From validated inputs to model-ready arrays (Polars, vectorised, no per-row loops).

:func:`prepare` fits (or reuses) the entity encoders, maps interactions to indices,
orders each user's interactions by time into :class:`Sequences`, counts item
popularity and encodes the attribute tables. The result is everything the training
loop, the evaluation and the bundle need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from serving.model.features import FIRST_TOKEN_INDEX, EncodedFeatures, EncoderOptions, EntityEncoder
from serving.model.history import Sequences
from training.config import DataConfig


@dataclass(frozen=True)
class Prepared:
    """Encoded interactions and entities. Row r of every user/item array is index r + 2."""

    user_encoder: EntityEncoder
    item_encoder: EntityEncoder
    user_table: pl.DataFrame
    item_table: pl.DataFrame
    user_features: EncodedFeatures
    item_features: EncodedFeatures
    sequences: Sequences
    """Per user row: item indices in time order (ties keep input order)."""
    popularity: npt.NDArray[np.int64]
    """Interactions per item row."""
    dropped_interactions: int
    """Interactions whose user or item is unknown to reused encoders."""

    @property
    def n_users(self) -> int:
        return self.user_table.height

    @property
    def n_items(self) -> int:
        return self.item_table.height


def encoder_options(config: DataConfig) -> EncoderOptions:
    return EncoderOptions(
        min_count=config.min_count,
        max_list_length=config.max_list_length,
        near_unique_ratio=config.near_unique_ratio,
        personal_columns=config.personal_columns,
    )


def aligned_table(ids: pl.Series, id_column: str, table: pl.DataFrame | None) -> pl.DataFrame:
    """The attribute table in vocabulary order (entities without a row get nulls)."""
    frame = ids.rename(id_column).to_frame()
    if table is None:
        return frame
    return frame.join(table, on=id_column, how="left", maintain_order="left")


def prepare(
    interactions: pl.DataFrame,
    users: pl.DataFrame | None,
    items: pl.DataFrame | None,
    config: DataConfig,
    encoders: tuple[EntityEncoder, EntityEncoder] | None = None,
) -> Prepared:
    """Fit encoders on ``interactions`` (or reuse ``encoders``) and build the arrays.

    With fitted encoders reused, interactions of unknown users or items are dropped
    (counted in ``dropped_interactions``); the vocabularies never grow.
    """
    if encoders is None:
        options = encoder_options(config)
        user_ids = interactions.get_column("user_id").unique().sort()
        item_ids = interactions.get_column("item_id").unique().sort()
        user_encoder = EntityEncoder.fit("user_id", user_ids, users, options)
        item_encoder = EntityEncoder.fit("item_id", item_ids, items, options)
    else:
        user_encoder, item_encoder = encoders

    indexed = (
        interactions.lazy()
        .with_row_index("_order")
        .select(
            user_encoder.ids.expr(pl.col("user_id")).alias("user_index"),
            item_encoder.ids.expr(pl.col("item_id")).alias("item_index"),
            "timestamp",
            "_order",
        )
        .collect()
    )
    known = indexed.filter(
        (pl.col("user_index") >= FIRST_TOKEN_INDEX) & (pl.col("item_index") >= FIRST_TOKEN_INDEX)
    ).sort(["user_index", "timestamp", "_order"])
    n_users = len(user_encoder.ids)
    n_items = len(item_encoder.ids)
    user_rows = known.get_column("user_index").to_numpy().astype(np.int64) - FIRST_TOKEN_INDEX
    item_indices = known.get_column("item_index").to_numpy().astype(np.int64)
    counts = np.bincount(user_rows, minlength=n_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    popularity = np.bincount(item_indices - FIRST_TOKEN_INDEX, minlength=n_items).astype(np.int64)

    user_table = aligned_table(user_encoder.ids.tokens, "user_id", users)
    item_table = aligned_table(item_encoder.ids.tokens, "item_id", items)
    return Prepared(
        user_encoder=user_encoder,
        item_encoder=item_encoder,
        user_table=user_table,
        item_table=item_table,
        user_features=user_encoder.transform(user_table),
        item_features=item_encoder.transform(item_table),
        sequences=Sequences(indptr, item_indices),
        popularity=popularity,
        dropped_interactions=indexed.height - known.height,
    )
