"""Request-time user attributes -> encoded user features (profile-based cold start).

Attributes arrive as text keyed by training column name. :class:`RequestAttributes` builds a
one-row frame in the column's training dtype (numbers cast, dates parsed, multi-valued
attributes split on commas) and encodes it with the bundle's user
:class:`~serving.model.features.EntityEncoder` — the same ``transform`` training used — so a
request-time profile is encoded exactly like a stored one.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl

from serving.errors import InvalidArgumentError
from serving.model.features import EncodedFeatures, EntityEncoder
from serving.model.inputs import gather

FIELD = "user_attributes"


class RequestAttributes:
    """Encodes request attributes for one bundle's user encoder.

    ``stored`` is the bundle's user table (its schema gives each column's training
    dtype) and ``features`` its encoding (row r = user table row r).
    """

    def __init__(self, encoder: EntityEncoder, stored: pl.DataFrame, features: EncodedFeatures) -> None:
        self._encoder = encoder
        self._features = features
        self._kinds = {spec.name: spec.kind for spec in encoder.specs}
        self._dtypes = {name: stored.schema.get(name, pl.Utf8) for name in self._kinds}

    def encode(self, user_id: str, row: int | None, attributes: Mapping[str, str]) -> EncodedFeatures:
        """One user's encoded features (arrays of length 1).

        A known user (table ``row``) keeps the stored value of every attribute not given;
        an unknown user (``row`` None) gets the OOV id and missing attributes count as null.
        """
        encoded = self._encoder.transform(self._frame(user_id, attributes))
        if row is None:
            return encoded
        merged = gather(self._features, np.array([row], dtype=np.int64))
        for name in attributes:
            merged[name] = encoded[name]
        return merged

    def _frame(self, user_id: str, attributes: Mapping[str, str]) -> pl.DataFrame:
        columns: list[pl.Series] = [pl.Series(self._encoder.id_column, [user_id], dtype=pl.Utf8)]
        for name, value in attributes.items():
            if name not in self._kinds:
                known = ", ".join(self._kinds) or "none"
                raise InvalidArgumentError(FIELD, f"unknown user attribute {name!r} (known: {known})")
            columns.append(self._series(name, value.strip()))
        return pl.DataFrame(columns)

    def _series(self, name: str, value: str) -> pl.Series:
        kind = self._kinds[name]
        if not value:
            return pl.Series(name, [None])
        if kind == "multi_categorical":
            values = [v.strip() for v in value.split(",") if v.strip()]
            return pl.Series(name, [values], dtype=pl.List(pl.Utf8))
        if kind == "categorical":
            return pl.Series(name, [value], dtype=pl.Utf8)
        dtype = self._dtypes[name]
        text = pl.Series(name, [value], dtype=pl.Utf8)
        try:
            if dtype == pl.Date:
                return text.str.to_date()
            if isinstance(dtype, pl.Datetime):
                return text.str.to_datetime(time_unit=dtype.time_unit, time_zone=dtype.time_zone)
            return text.cast(dtype, strict=True)
        except (pl.exceptions.PolarsError, ValueError) as exc:
            raise InvalidArgumentError(f"{FIELD}[{name}]", f"{value!r} is not a valid {dtype} value") from exc
