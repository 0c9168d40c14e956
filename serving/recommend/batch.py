"""Batch recommendation lists (campaign lists for e-mail, SMS, push).

One row per recommendation: ``user_id``, ``rank`` (from 1), ``item_id``, ``score``,
plus ``fallback`` (true where the user was unknown and popular items were listed).
Users are processed in batches: one tower pass and one index search per batch.
``recsys recommend`` then leaves out members flagged for abnormal behaviour and can order the
list by purchase propensity (:mod:`serving.profiles.campaign`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from serving.errors import InvalidArgumentError
from serving.recommend.engine import TwoTowerEngine

log = logging.getLogger(__name__)
_BATCH = 1024
MAX_K = 1000


def read_user_ids(path: Path) -> pl.Series:
    """User ids from a CSV/Parquet file with a ``user_id`` column, or a text file with one id per line."""
    path = Path(path)
    if path.is_dir():
        raise InvalidArgumentError(
            "users", f"{path}: is a directory; pass a .csv/.parquet file with a user_id column"
        )
    if not path.is_file():
        raise InvalidArgumentError("users", f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pl.read_parquet(path)
        elif suffix in (".csv", ".tsv"):
            frame = pl.read_csv(
                path, separator="\t" if suffix == ".tsv" else ",", schema_overrides={"user_id": pl.Utf8}
            )
        else:
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            frame = pl.DataFrame({"user_id": [line for line in lines if line]})
    except UnicodeDecodeError:
        raise InvalidArgumentError(
            "users",
            f"{path}: not UTF-8 text; pass a .csv/.parquet file with a user_id column or one id a line",
        ) from None
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InvalidArgumentError("users", f"{path}: cannot be read as {suffix.lstrip('.')}: {exc}") from exc
    if "user_id" not in frame.columns:
        raise InvalidArgumentError("users", f"{path}: no user_id column (found: {', '.join(frame.columns)})")
    ids = frame.get_column("user_id").cast(pl.Utf8).drop_nulls().str.strip_chars()
    return ids.filter(ids != "").unique(maintain_order=True)


def recommend_batch(engine: TwoTowerEngine, user_ids: pl.Series, k: int) -> pl.DataFrame:
    """Top-k unseen items for every user id; unknown users get the popularity fallback."""
    if not 1 <= k <= MAX_K:
        raise InvalidArgumentError("k", f"must be in 1..{MAX_K}, got {k}")
    item_ids = engine.bundle.item_ids
    index = engine.bundle.user_encoder.ids
    frames: list[pl.DataFrame] = []
    for start in range(0, len(user_ids), _BATCH):
        chunk = user_ids.slice(start, _BATCH)
        indices = index.encode(engine.bundle_user_ids(chunk))
        known = indices >= 2
        rows = np.full((len(chunk), k), -1, dtype=np.int64)
        scores = np.zeros((len(chunk), k), dtype=np.float32)
        if known.any():
            found, found_scores = engine.top_k_rows(indices[known] - 2, k)
            rows[known], scores[known] = found, found_scores
        if (~known).any():
            popular, popular_scores = engine.popular_rows(k)
            rows[~known, : len(popular)] = popular
            scores[~known, : len(popular)] = popular_scores
        valid = rows >= 0
        user_index = np.repeat(np.arange(len(chunk)), k)[valid.ravel()]
        frames.append(
            pl.DataFrame(
                {
                    "user_id": chunk.gather(user_index),
                    "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(chunk))[valid.ravel()],
                    "item_id": item_ids.gather(rows[valid]),
                    "score": scores[valid],
                    "fallback": ~known[user_index],
                }
            )
        )
    if not frames:
        return pl.DataFrame(
            schema={
                "user_id": pl.Utf8,
                "rank": pl.Int32,
                "item_id": pl.Utf8,
                "score": pl.Float32,
                "fallback": pl.Boolean,
            }
        )
    return pl.concat(frames)
