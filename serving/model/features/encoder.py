"""Schema-first feature encoding for one entity type (users or items).

:meth:`EntityEncoder.fit` infers each attribute's feature kind from its column type
and fits vocabularies / normalisation statistics on training rows only.
:meth:`EntityEncoder.transform` is the single encoding path used by training (whole
tables) and by serving (one-row frames), so the two cannot drift. The fitted state is
plain data (:meth:`to_data` / :meth:`from_data`), stored in the bundle.

Feature kinds, by column type:
- strings, categoricals, booleans -> ``categorical`` (embedding; rare/unknown/null -> OOV);
- numbers, dates, datetimes -> ``numeric`` (log1p for heavy-tailed non-negative values,
  then standardised; null -> 0, i.e. the mean);
- lists -> ``multi_categorical`` (pooled embedding of up to ``max_length`` values).
Personal-data columns and near-unique strings (titles, free text) never become features.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
import polars as pl

from serving.model.features.privacy import personal_columns
from serving.model.features.vocabulary import OOV_INDEX, PAD_INDEX, Vocabulary

log = logging.getLogger(__name__)

FeatureKind = Literal["categorical", "multi_categorical", "numeric"]
EncodedFeatures = dict[str, npt.NDArray[Any]]
"""Feature name -> array: int64 (n,) categorical and ``"id"``; int64 (n, max_length)
multi-valued (PAD_INDEX padded); float32 (n,) numeric."""

ID_FEATURE = "id"
RESERVED_PREFIX = "__"
"""Column names with this prefix are the bundle's own (e.g. ``__sequence``), never attributes."""
_CLIP = 5.0
_HEAVY_TAIL_RATIO = 50.0


@dataclass(frozen=True)
class EncoderOptions:
    min_count: int = 2
    max_list_length: int = 16
    near_unique_ratio: float = 0.9
    personal_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeatureSpec:
    """One fitted attribute feature."""

    name: str
    kind: FeatureKind
    cardinality: int = 0
    """Categorical kinds: embedding rows (vocabulary + padding + OOV)."""
    max_length: int = 0
    """multi_categorical: values kept per row."""
    mean: float = 0.0
    std: float = 1.0
    log1p: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(**data)


def _is_categorical(dtype: pl.DataType) -> bool:
    return dtype in (pl.Utf8, pl.Categorical, pl.Boolean) or isinstance(dtype, pl.Enum | pl.Categorical)


def _is_numeric(dtype: pl.DataType) -> bool:
    return dtype.is_numeric() or dtype.is_temporal()


def _numeric_values(series: pl.Series) -> npt.NDArray[np.float64]:
    """Float values with NaN for nulls; dates/datetimes become days since the epoch."""
    dtype = series.dtype
    if dtype == pl.Date:
        series = series.cast(pl.Int64)
    elif isinstance(dtype, pl.Datetime):
        series = series.dt.epoch("s").cast(pl.Float64) / 86400.0
    elif isinstance(dtype, pl.Duration):
        series = series.dt.total_seconds()
    return series.cast(pl.Float64).fill_null(np.nan).to_numpy().astype(np.float64)


def _counted_vocabulary(values: pl.Series, min_count: int) -> Vocabulary:
    # Fixed internal names: a column may itself be called "count".
    counts = values.drop_nulls().cast(pl.Utf8).rename("token").value_counts(name="n")
    kept = counts.filter(pl.col("n") >= min_count).sort(["n", "token"], descending=[True, False])
    return Vocabulary(kept.get_column("token"))


class EntityEncoder:
    """Fitted encoding of one entity type: its id vocabulary plus attribute features."""

    def __init__(
        self,
        id_column: str,
        ids: Vocabulary,
        specs: tuple[FeatureSpec, ...],
        vocabularies: dict[str, Vocabulary],
        dropped: dict[str, str],
    ) -> None:
        self.id_column = id_column
        self.ids = ids
        self.specs = specs
        self.vocabularies = vocabularies
        self.dropped = dropped

    @property
    def attribute_columns(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.specs)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        id_column: str,
        ids: pl.Series,
        attributes: pl.DataFrame | None,
        options: EncoderOptions,
    ) -> EntityEncoder:
        """Fit on training data only.

        ``ids``: the entities known to the model, in index order (index = position + 2).
        ``attributes``: one row per entity (``id_column`` + attribute columns) or None;
        only rows of entities in ``ids`` are used for fitting.
        """
        id_vocab = Vocabulary(ids)
        if attributes is None:
            return cls(id_column, id_vocab, (), {}, {})
        rows = attributes.join(ids.rename(id_column).to_frame(), on=id_column, how="semi")
        dropped = personal_columns(rows.drop(id_column), options.personal_columns)
        specs: list[FeatureSpec] = []
        vocabularies: dict[str, Vocabulary] = {}
        for column, dtype in rows.schema.items():
            if column == id_column or column in dropped:
                continue
            if column.startswith(RESERVED_PREFIX):
                dropped[column] = (
                    f"reserved name (columns starting with {RESERVED_PREFIX!r} belong to the bundle)"
                )
                continue
            series = rows.get_column(column)
            spec, vocab, reason = _fit_column(series, dtype, options)
            if spec is None:
                dropped[column] = reason
                continue
            specs.append(spec)
            if vocab is not None:
                vocabularies[column] = vocab
        for column, reason in dropped.items():
            log.info("%s: column %r is not a feature: %s", id_column, column, reason)
        return cls(id_column, id_vocab, tuple(specs), vocabularies, dropped)

    # ------------------------------------------------------------ transforming
    def transform(self, frame: pl.DataFrame | pl.LazyFrame) -> EncodedFeatures:
        """Encode rows (one per entity). Missing attribute columns count as null.

        Unknown ids map to the OOV index, so the towers fall back to attributes and
        history for entities the model has never seen.
        """
        wanted = [self.id_column, *self.attribute_columns]
        if isinstance(frame, pl.LazyFrame):
            present = [c for c in wanted if c in frame.collect_schema().names()]
            frame = frame.select(present).collect()
        if self.id_column not in frame.columns:
            raise ValueError(f"missing column {self.id_column!r}")
        encoded: EncodedFeatures = {ID_FEATURE: self.ids.encode(frame.get_column(self.id_column))}
        n = frame.height
        for spec in self.specs:
            if spec.name in frame.columns:
                series = frame.get_column(spec.name)
            else:
                series = pl.Series(spec.name, [None] * n)
            encoded[spec.name] = self._encode(spec, series)
        return encoded

    def _encode(self, spec: FeatureSpec, series: pl.Series) -> npt.NDArray[Any]:
        if spec.kind == "categorical":
            return self.vocabularies[spec.name].encode(series)
        if spec.kind == "multi_categorical":
            return _encode_lists(series, self.vocabularies[spec.name], spec.max_length)
        values = _numeric_values(series)
        if spec.log1p:
            values = np.log1p(np.maximum(values, 0.0))
        scaled = (values - spec.mean) / spec.std
        return np.clip(np.nan_to_num(scaled, nan=0.0), -_CLIP, _CLIP).astype(np.float32)

    # ---------------------------------------------------------- serialisation
    def to_data(self) -> tuple[dict[str, Any], pl.DataFrame]:
        """(JSON-able description, vocabulary table ``feature, token`` in index order).

        The id vocabulary is not included: the bundle stores it as the entity table.
        """
        description = {
            "id_column": self.id_column,
            "features": [spec.to_dict() for spec in self.specs],
            "dropped_columns": dict(self.dropped),
        }
        tables = [
            pl.DataFrame(
                {"feature": [name] * len(vocab), "token": vocab.tokens},
                schema={"feature": pl.Utf8, "token": pl.Utf8},
            )
            for name, vocab in self.vocabularies.items()
        ]
        empty = pl.DataFrame(schema={"feature": pl.Utf8, "token": pl.Utf8})
        return description, pl.concat([empty, *tables]) if tables else empty

    @classmethod
    def from_data(
        cls, description: dict[str, Any], vocabularies: pl.DataFrame, ids: pl.Series
    ) -> EntityEncoder:
        specs = tuple(FeatureSpec.from_dict(d) for d in description["features"])
        vocabs: dict[str, Vocabulary] = {}
        for spec in specs:
            if spec.kind == "numeric":
                continue
            tokens = vocabularies.filter(pl.col("feature") == spec.name).get_column("token")
            vocab = Vocabulary(tokens)
            if vocab.cardinality != spec.cardinality:
                raise ValueError(
                    f"feature {spec.name!r}: vocabulary has {vocab.cardinality} rows, manifest says "
                    f"{spec.cardinality}"
                )
            vocabs[spec.name] = vocab
        return cls(
            cast(str, description["id_column"]),
            Vocabulary(ids),
            specs,
            vocabs,
            dict(description.get("dropped_columns", {})),
        )


def _fit_column(
    series: pl.Series, dtype: pl.DataType, options: EncoderOptions
) -> tuple[FeatureSpec | None, Vocabulary | None, str]:
    name = series.name
    non_null = series.drop_nulls()
    if len(non_null) == 0:
        return None, None, "no values"
    if isinstance(dtype, pl.List | pl.Array):
        flat = series.cast(pl.List(pl.Utf8)).explode().drop_nulls().rename(name)
        vocab = _counted_vocabulary(flat, options.min_count)
        if len(vocab) == 0:
            return None, None, f"no value occurs {options.min_count}+ times"
        spec = FeatureSpec(
            name, "multi_categorical", cardinality=vocab.cardinality, max_length=options.max_list_length
        )
        return spec, vocab, ""
    if _is_categorical(dtype):
        distinct = non_null.n_unique()
        if dtype == pl.Utf8 and len(non_null) >= 20 and distinct / len(non_null) > options.near_unique_ratio:
            return None, None, "near-unique strings (free text or an identifier)"
        vocab = _counted_vocabulary(series, options.min_count)
        if len(vocab) == 0:
            return None, None, f"no value occurs {options.min_count}+ times"
        return FeatureSpec(name, "categorical", cardinality=vocab.cardinality), vocab, ""
    if _is_numeric(dtype):
        values = _numeric_values(series)
        finite = values[np.isfinite(values)]
        if len(finite) == 0:
            return None, None, "no finite values"
        median = float(np.median(np.abs(finite)))
        use_log = bool(finite.min() >= 0 and finite.max() > _HEAVY_TAIL_RATIO * max(median, 1e-9))
        if use_log:
            finite = np.log1p(finite)
        std = float(finite.std())
        if std == 0.0:
            return None, None, "constant"
        return FeatureSpec(name, "numeric", mean=float(finite.mean()), std=std, log1p=use_log), None, ""
    return None, None, f"unsupported type {dtype}"


def _encode_lists(series: pl.Series, vocab: Vocabulary, max_length: int) -> npt.NDArray[np.int64]:
    """(n, max_length) indices, left-aligned, PAD_INDEX-padded; null lists are empty."""
    n = len(series)
    out = np.full((n, max_length), PAD_INDEX, dtype=np.int64)
    if series.dtype == pl.Null:
        return out
    truncated = series.cast(pl.List(pl.Utf8)).list.head(max_length)
    lengths = truncated.list.len().fill_null(0).to_numpy().astype(np.int64)
    total = int(lengths.sum())
    if total == 0:
        return out
    flat = truncated.filter(pl.Series(lengths > 0)).explode()
    codes = vocab.encode(flat)
    codes[codes == PAD_INDEX] = OOV_INDEX
    rows = np.repeat(np.arange(n), lengths)
    starts = np.cumsum(lengths) - lengths
    cols = np.arange(total) - np.repeat(starts, lengths)
    out[rows, cols] = codes
    return out
