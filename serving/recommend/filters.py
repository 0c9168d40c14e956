"""Item filters: validated against the bundle's item table, evaluated once per filter list.

:class:`ItemFilters` turns a tuple of :class:`~serving.recommend.types.ItemFilter` into the set of
index rows that pass all of them (a Polars expression over ``items.parquet``'s kept
attributes) and a FAISS ``IDSelectorBitmap`` over those rows, so the index search itself
skips filtered items and a top-k search returns k eligible items whenever they exist.
Results are cached per filter tuple (a small LRU): popular filter lists cost one
dictionary lookup after the first request.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
import numpy.typing as npt
import polars as pl

from serving.errors import InvalidArgumentError
from serving.recommend.types import ItemFilter

BoolArray = npt.NDArray[np.bool_]
_CACHE_SIZE = 64


@dataclass(frozen=True)
class AllowedRows:
    """Index rows passing a filter list: a mask, its count and a FAISS selector.

    ``params`` points at ``selector``, which points into ``bitmap`` (FAISS keeps raw
    pointers): all three live as long as this object does. Read-only, shared by
    concurrent searches.
    """

    mask: BoolArray
    count: int
    bitmap: npt.NDArray[np.uint8]
    selector: faiss.IDSelector
    params: faiss.SearchParameters


def _is_list(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.List | pl.Array)


def _is_numeric(dtype: pl.DataType) -> bool:
    return dtype.is_numeric() or dtype.is_temporal()


class ItemFilters:
    """Filters over one bundle's item table (row r = FAISS row r).

    ``attributes`` are the item columns filters may name: the attribute columns stored in
    the bundle. Thread-safe: the cache tolerates concurrent misses (computed twice).
    """

    def __init__(self, items: pl.DataFrame, attributes: Sequence[str]) -> None:
        self._items = items.select(attributes)
        self.attributes: tuple[str, ...] = tuple(attributes)
        self._allowed = functools.lru_cache(maxsize=_CACHE_SIZE)(self._compute)

    @property
    def n_items(self) -> int:
        return self._items.height

    def validate(self, filters: Sequence[ItemFilter], field: str = "filters") -> None:
        """Raise :class:`InvalidArgumentError` naming ``field[i]`` for a bad filter."""
        schema = self._items.schema
        for i, item_filter in enumerate(filters):
            name = f"{field}[{i}]"
            attribute = item_filter.attribute
            if attribute not in schema:
                known = ", ".join(self.attributes) or "none"
                raise InvalidArgumentError(
                    f"{name}.attribute", f"unknown item attribute {attribute!r} (known: {known})"
                )
            bounds = (item_filter.min, item_filter.max)
            if not (item_filter.any_of or item_filter.none_of or any(b is not None for b in bounds)):
                raise InvalidArgumentError(name, "sets none of any_of, none_of, min, max")
            if any(b is not None for b in bounds):
                if not _is_numeric(schema[attribute]):
                    raise InvalidArgumentError(
                        name, f"min/max need a numeric attribute; {attribute!r} is {schema[attribute]}"
                    )
                if any(b is not None and math.isnan(b) for b in bounds):
                    raise InvalidArgumentError(name, "min/max must not be NaN")
                low, high = bounds
                if low is not None and high is not None and low > high:
                    raise InvalidArgumentError(name, f"min {low} is greater than max {high}")

    def allowed(self, filters: tuple[ItemFilter, ...]) -> AllowedRows | None:
        """Rows passing every filter (validated first); None when there are no filters."""
        if not filters:
            return None
        self.validate(filters)
        return self._allowed(filters)

    def _compute(self, filters: tuple[ItemFilter, ...]) -> AllowedRows:
        condition = pl.lit(True)
        for item_filter in filters:
            condition = condition & self._expression(item_filter)
        mask = self._items.select(condition.fill_null(False).alias("ok")).to_series().to_numpy()
        mask = np.ascontiguousarray(np.broadcast_to(mask, (self.n_items,)), dtype=np.bool_)
        bitmap = np.packbits(mask, bitorder="little")
        selector = faiss.IDSelectorBitmap(self.n_items, faiss.swig_ptr(bitmap))
        params = faiss.SearchParameters()
        params.sel = selector
        return AllowedRows(mask, int(mask.sum()), bitmap, selector, params)

    def _expression(self, item_filter: ItemFilter) -> pl.Expr:
        column = pl.col(item_filter.attribute)
        dtype = self._items.schema[item_filter.attribute]
        parts: list[pl.Expr] = []
        if item_filter.any_of:
            parts.append(_matches(column, dtype, item_filter.any_of).fill_null(False))
        if item_filter.none_of:
            parts.append(~_matches(column, dtype, item_filter.none_of).fill_null(False))
        if item_filter.min is not None or item_filter.max is not None:
            values = _numeric(column, dtype)
            if item_filter.min is not None:
                parts.append((values >= item_filter.min).fill_null(False))
            if item_filter.max is not None:
                parts.append((values <= item_filter.max).fill_null(False))
        condition = parts[0]
        for part in parts[1:]:
            condition = condition & part
        return condition


def _numeric(column: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Float values; dates and datetimes in days since 1970-01-01 (as the encoder sees them)."""
    if isinstance(dtype, pl.Datetime):
        return column.dt.epoch("s").cast(pl.Float64) / 86400.0
    if isinstance(dtype, pl.Duration):
        return column.dt.total_seconds().cast(pl.Float64)
    return column.to_physical().cast(pl.Float64)


def _matches(column: pl.Expr, dtype: pl.DataType, values: tuple[str, ...]) -> pl.Expr:
    """True where the value (list attributes: any element) is one of ``values``; null when absent."""
    wanted = pl.Series(values, dtype=pl.Utf8).implode()
    if _is_list(dtype):
        return column.cast(pl.List(pl.Utf8)).list.eval(pl.element().is_in(wanted)).list.any()
    return column.cast(pl.Utf8).is_in(wanted)
