"""Train/test splitting protocols for offline evaluation of interaction data.

Every protocol takes a Polars ``DataFrame`` or ``LazyFrame`` of interactions with at least the columns
``user_id`` (Utf8), ``item_id`` (Utf8) and ``timestamp`` (integer), plus any number of extra columns, which
are carried through unchanged. Exact duplicate rows are assumed to be removed already.

Contracts shared by all protocols:

* The result is a :class:`Split` of two eager ``DataFrame`` objects with exactly the input's columns (same
  names, same order, same dtypes), and rows in their original relative order.
* Every input row ends up in at most one of ``train`` / ``test``. Rows are only ever *dropped* from
  ``test`` (never from ``train``), in two cases:

  1. **Seen pairs.** A test row whose ``(user_id, item_id)`` pair also occurs in ``train`` is dropped.
     Evaluation ranks the full catalogue *excluding the items a user already interacted with in train*,
     so such a row could never be retrieved: keeping it would put an unreachable target in the ground
     truth and silently depress recall. Because the pair is already in ``train``, no pair is lost.
  2. **Cold start** (``time_split`` only): test rows whose user or item never appears in ``train``; an
     embedding model has nothing learned for them.

* Deterministic: the same input (same rows in the same order) and the same arguments give the same split.
* Key columns must not contain nulls (``ValueError`` otherwise); a null user or timestamp has no
  well-defined position in a per-user history.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import polars as pl

__all__ = [
    "PROTOCOLS",
    "Protocol",
    "Split",
    "leave_last_out",
    "random_split",
    "split",
    "time_split",
]

Protocol = Literal["llo", "rand", "time"]
PROTOCOLS: Final[tuple[Protocol, ...]] = ("llo", "rand", "time")

USER: Final = "user_id"
ITEM: Final = "item_id"
TIME: Final = "timestamp"
_KEYS: Final = (USER, ITEM, TIME)

# Private helper columns; the names are unlikely to clash, and _prepare refuses inputs that use them.
_ROW: Final = "__split_row__"
_IS_TEST: Final = "__split_is_test__"


@dataclass(frozen=True, slots=True)
class Split:
    """Result of a splitting protocol.

    Attributes:
        train: Training interactions (all input columns, original row order).
        test: Held-out interactions (all input columns, original row order); never contains a
            ``(user_id, item_id)`` pair that also occurs in ``train``.
        protocol: Name of the protocol that produced the split (``"llo"``, ``"rand"`` or ``"time"``).
    """

    train: pl.DataFrame
    test: pl.DataFrame
    protocol: str


def _prepare(df: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Collect ``df``, validate the key columns and append the original row index as ``_ROW``."""
    frame = df.collect() if isinstance(df, pl.LazyFrame) else df
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"expected a polars DataFrame or LazyFrame, got {type(df).__name__}")
    missing = [c for c in _KEYS if c not in frame.columns]
    if missing:
        raise ValueError(f"interactions are missing required column(s) {missing}; got {frame.columns}")
    clashing = [c for c in (_ROW, _IS_TEST) if c in frame.columns]
    if clashing:
        raise ValueError(f"column name(s) {clashing} are reserved for internal use by the splitter")
    if not frame.schema[TIME].is_integer():
        raise ValueError(f"column {TIME!r} must be an integer type, got {frame.schema[TIME]}")
    null_counts = frame.select(pl.col(c).null_count() for c in _KEYS).row(0)
    with_nulls = [c for c, n in zip(_KEYS, null_counts, strict=True) if n]
    if with_nulls:
        raise ValueError(f"key column(s) {with_nulls} contain nulls")
    return frame.with_row_index(_ROW)


def _finish(flagged: pl.DataFrame, protocol: str) -> Split:
    """Turn a frame carrying ``_ROW`` and a boolean ``_IS_TEST`` column into a :class:`Split`.

    Drops test rows whose (user, item) pair occurs in train (see the module docstring) and restores the
    original row order, since joins are not guaranteed to preserve it.
    """
    train = flagged.filter(~pl.col(_IS_TEST))
    test = flagged.filter(pl.col(_IS_TEST))
    seen_pairs = train.select(USER, ITEM).unique()
    test = test.join(seen_pairs, on=[USER, ITEM], how="anti")
    return Split(
        train=train.sort(_ROW).drop(_ROW, _IS_TEST),
        test=test.sort(_ROW).drop(_ROW, _IS_TEST),
        protocol=protocol,
    )


def leave_last_out(df: pl.DataFrame | pl.LazyFrame, min_interactions: int = 3) -> Split:
    """Hold out each user's most recent interaction.

    For every user with at least ``min_interactions`` interactions, the interaction with the largest
    ``timestamp`` goes to test; among rows sharing that timestamp the one appearing *later in the input*
    counts as the later one, so the result does not depend on sort stability. Users with fewer than
    ``min_interactions`` interactions are kept entirely in train (too short a history to hold one out).
    The held-out row is then dropped if the user interacted with the same item earlier (seen-pair rule),
    in which case the user simply has no test row.

    Raises:
        ValueError: if ``min_interactions < 1`` or the input is malformed.
    """
    if min_interactions < 1:
        raise ValueError(f"min_interactions must be >= 1, got {min_interactions}")
    frame = _prepare(df)
    # Position of each row in its user's history, ordered by (timestamp, original row); the last one is
    # the test candidate. Ordering by _ROW as a second key is what makes timestamp ties deterministic.
    position = pl.int_range(pl.len()).over(USER, order_by=[TIME, _ROW])
    n_user = pl.len().over(USER)
    flagged = frame.with_columns(
        ((n_user >= min_interactions) & (position == n_user - 1)).alias(_IS_TEST),
    )
    return _finish(flagged, "llo")


def random_split(df: pl.DataFrame | pl.LazyFrame, train_fraction: float = 0.75, seed: int = 42) -> Split:
    """Per user, send a random ``train_fraction`` of the user's interactions to train, the rest to test.

    Rounding rule: a user with ``n`` interactions keeps
    ``n_train = clip(floor(train_fraction * n + 0.5), 1, n - 1)`` interactions in train when ``n >= 2``
    (round half up, then clamped so such a user always has at least one train *and* one test
    interaction); a user with a single interaction keeps it in train.

    Which interactions go to train is decided by the rank of a uniform random key within the user; the
    keys are drawn from ``numpy.random.default_rng(seed)`` in input row order, so the split is
    reproducible for a given seed and input order (reordering the input changes the draw).

    Test rows whose pair also occurs in train are then dropped (seen-pair rule), so a user may end up with
    fewer test rows than ``n - n_train``, or none.

    Raises:
        ValueError: if ``train_fraction`` is not strictly between 0 and 1, or the input is malformed.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    frame = _prepare(df)
    key = "__split_key__"
    if key in frame.columns:
        raise ValueError(f"column name {key!r} is reserved for internal use by the splitter")
    rng = np.random.default_rng(seed)
    frame = frame.with_columns(pl.Series(key, rng.random(frame.height), dtype=pl.Float64))
    n_user = pl.len().over(USER).cast(pl.Int64)
    n_train = (
        (pl.lit(train_fraction) * n_user + 0.5)
        .floor()
        .cast(pl.Int64)
        .clip(1, pl.max_horizontal(n_user - 1, 1))
    )
    # Break (practically impossible) key ties by row so the rank is a strict order.
    rank = pl.int_range(pl.len()).over(USER, order_by=[key, _ROW])
    flagged = frame.with_columns((rank >= n_train).alias(_IS_TEST)).drop(key)
    return _finish(flagged, "rand")


def time_split(df: pl.DataFrame | pl.LazyFrame, quantile: float = 0.8) -> Split:
    """Split globally in time: interactions strictly after the ``quantile`` of all timestamps are test.

    The cut is ``timestamp.quantile(quantile, interpolation="linear")`` over all rows; rows with
    ``timestamp <= cut`` are train, rows with ``timestamp > cut`` are test candidates. A candidate is kept
    only if both its user and its item appear in train (cold-start users/items cannot be scored by the
    model) and its pair does not occur in train (seen-pair rule). Dropped candidates are *not* moved to
    train: that would leak the future into training.

    Raises:
        ValueError: if ``quantile`` is not strictly between 0 and 1, or the input is malformed.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    frame = _prepare(df)
    if frame.height == 0:
        return _finish(frame.with_columns(pl.lit(False).alias(_IS_TEST)), "time")
    cut = frame[TIME].quantile(quantile, interpolation="linear")
    assert cut is not None  # non-empty and null-free, checked above
    flagged = frame.with_columns((pl.col(TIME) > cut).alias(_IS_TEST))
    train = flagged.filter(~pl.col(_IS_TEST))
    test = (
        flagged.filter(pl.col(_IS_TEST))
        .join(train.select(USER).unique(), on=USER, how="semi")
        .join(train.select(ITEM).unique(), on=ITEM, how="semi")
    )
    return _finish(pl.concat([train, test]), "time")


def split(df: pl.DataFrame | pl.LazyFrame, protocol: Protocol, **kwargs: Any) -> Split:
    """Dispatch to a splitting protocol by name.

    ``"llo"`` -> :func:`leave_last_out`, ``"rand"`` -> :func:`random_split`, ``"time"`` -> :func:`time_split`;
    ``kwargs`` are passed to that function unchanged (an argument it does not accept raises ``TypeError``).

    Raises:
        ValueError: for an unknown protocol name.
    """
    if protocol == "llo":
        return leave_last_out(df, **kwargs)
    if protocol == "rand":
        return random_split(df, **kwargs)
    if protocol == "time":
        return time_split(df, **kwargs)
    raise ValueError(f"unknown split protocol {protocol!r}; valid protocols are {', '.join(PROTOCOLS)}")


def split_for(df: pl.DataFrame | pl.LazyFrame, protocol: Protocol, min_interactions: int) -> Split:
    """:func:`split` as the configuration asks: ``min_interactions`` (``eval.min_interactions``)
    applies to leave-last-out, the only protocol that takes it."""
    if protocol == "llo":
        return leave_last_out(df, min_interactions=min_interactions)
    return split(df, protocol)
