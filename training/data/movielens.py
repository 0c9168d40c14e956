"""Import a GroupLens MovieLens release into the canonical input directory.

Supported releases, detected from the files present in the source directory:

* ``ml-100k``: ``u.data``, ``u.user``, ``u.item`` (``u.genre`` optional).
* ``ml-1m``: ``ratings.dat``, ``users.dat``, ``movies.dat`` (``::``-separated, Latin-1).
* ``ml-10m``: ``ratings.dat``, ``movies.dat`` without ``users.dat`` (tags are ignored).
* ``ml-20m``: ``ratings.csv``, ``movies.csv`` (also ml-25m/32m and ml-latest[-small]).

Every rating becomes one interaction with ``event_type = "rating"`` and ``value`` = the rating.
Titles are kept verbatim (including the trailing "(1995)"); ``year`` is derived from it (or from
the release date for 100K) and is null when absent. Releases without user attributes get a
``users.parquet`` holding only the user ids seen in the ratings.

Text files are decoded as UTF-8 when they are valid UTF-8 and as Latin-1 otherwise: the 100K and
1M releases are Latin-1, the 10M and later ones UTF-8, and this rule reads both correctly
without trusting the release guess.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import polars as pl

from serving.storage import atomic_write_parquet

INTERACTIONS_FILE = "interactions.parquet"
USERS_FILE = "users.parquet"
ITEMS_FILE = "items.parquet"

# Genre order of the 19 flag columns in ml-100k's u.item (as listed in its u.genre).
ML100K_GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)  # fmt: skip

NO_GENRES = "(no genres listed)"

# A title ends with "(1995)"; a few ml-latest titles carry a range such as "(2006-2007)".
_TITLE_YEAR = r"\((\d{4})(?:\s*[-–]\s*\d{0,4})?\)\s*$"
_DATE_YEAR = r"(\d{4})\s*$"
# Unit separator: never present in MovieLens text, so each physical line is read as one field.
_LINE_SEPARATOR = "\x1f"


class MovieLensFormat(StrEnum):
    """The MovieLens release layout that was detected."""

    ML_100K = "ml-100k"
    ML_1M = "ml-1m"
    ML_10M = "ml-10m"
    ML_20M = "ml-20m"


# Files whose presence identifies each layout, checked in this order (1M before 10M because
# the 1M file set is a superset of the 10M one).
_REQUIRED_FILES: tuple[tuple[MovieLensFormat, tuple[str, ...]], ...] = (
    (MovieLensFormat.ML_20M, ("ratings.csv", "movies.csv")),
    (MovieLensFormat.ML_1M, ("ratings.dat", "users.dat", "movies.dat")),
    (MovieLensFormat.ML_10M, ("ratings.dat", "movies.dat")),
    (MovieLensFormat.ML_100K, ("u.data", "u.user", "u.item")),
)


@dataclass(frozen=True)
class ImportSummary:
    """What ``import_movielens`` wrote."""

    format: MovieLensFormat
    interactions: int
    users: int
    items: int
    interactions_path: Path
    users_path: Path
    items_path: Path


@dataclass(frozen=True)
class _Tables:
    interactions: pl.DataFrame
    users: pl.DataFrame
    items: pl.DataFrame


def detect_format(src: Path) -> MovieLensFormat:
    """Return the release layout of ``src``; raise ``ValueError`` naming the expected files."""
    if not src.is_dir():
        raise ValueError(f"MovieLens source {src} is not a directory")
    for fmt, files in _REQUIRED_FILES:
        if all((src / name).is_file() for name in files):
            return fmt
    expected = "; ".join(f"{fmt.value}: {', '.join(files)}" for fmt, files in _REQUIRED_FILES)
    present = ", ".join(sorted(p.name for p in src.iterdir())) or "nothing"
    raise ValueError(
        f"{src} does not look like a MovieLens release. Expected one of the file sets "
        f"[{expected}]; found: {present}"
    )


def import_movielens(src: Path, out: Path) -> ImportSummary:
    """Convert the MovieLens release in ``src`` into the canonical directory ``out``.

    Raises ``ValueError`` when the layout is unknown or a file is malformed (wrong number of
    fields, non-numeric rating/timestamp, duplicate ids). Each output file is written
    atomically; ``out`` is created if needed and existing canonical files are replaced.
    """
    src, out = Path(src), Path(out)
    fmt = detect_format(src)
    loaders = {
        MovieLensFormat.ML_100K: _load_100k,
        MovieLensFormat.ML_1M: _load_1m,
        MovieLensFormat.ML_10M: _load_10m,
        MovieLensFormat.ML_20M: _load_20m,
    }
    tables = loaders[fmt](src)
    paths = (out / INTERACTIONS_FILE, out / USERS_FILE, out / ITEMS_FILE)
    for path, frame in zip(paths, (tables.interactions, tables.users, tables.items), strict=True):
        atomic_write_parquet(path, frame)
    return ImportSummary(
        format=fmt,
        interactions=tables.interactions.height,
        users=tables.users.height,
        items=tables.items.height,
        interactions_path=paths[0],
        users_path=paths[1],
        items_path=paths[2],
    )


# --------------------------------------------------------------------------- per-release loaders


def _load_100k(src: Path) -> _Tables:
    interactions = _load_delimited_ratings(src / "u.data", "\t")
    users = _read_fields(src / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip_code"])
    users = _check_unique(
        users.select("user_id", _to_int("age"), "gender", "occupation", "zip_code"), "user_id", src / "u.user"
    )
    return _Tables(interactions, users, _load_100k_items(src))


def _load_100k_items(src: Path) -> pl.DataFrame:
    genres = _read_100k_genres(src / "u.genre")
    flag_cols = [f"genre_{i}" for i in range(len(genres))]
    raw = _read_fields(
        src / "u.item",
        "|",
        ["item_id", "title", "release_date", "video_release_date", "imdb_url", *flag_cols],
    )
    # One literal per flag column, kept where the flag is "1": a vectorised bitmap → list.
    genre_list = pl.concat_list(
        [pl.when(pl.col(c) == "1").then(pl.lit(name)) for c, name in zip(flag_cols, genres, strict=True)]
    ).list.drop_nulls()
    items = raw.select(
        "item_id",
        "title",
        pl.col("release_date").str.extract(_DATE_YEAR, 1).cast(pl.Int64).alias("year"),
        genre_list.alias("genres"),
    )
    return _check_unique(items, "item_id", src / "u.item")


def _read_100k_genres(path: Path) -> tuple[str, ...]:
    """Genre names ordered by flag index, from ``u.genre`` when present."""
    if not path.is_file():
        return ML100K_GENRES
    table = _read_fields(path, "|", ["name", "index"])
    table = table.with_columns(pl.col("index").cast(pl.Int64, strict=False))
    if table["index"].null_count() or table["index"].sort().to_list() != list(range(table.height)):
        raise ValueError(f"{path}: genre indices must be 0..n-1, got {table['index'].to_list()}")
    return tuple(table.sort("index")["name"].to_list())


def _load_1m(src: Path) -> _Tables:
    users = _read_fields(src / "users.dat", "::", ["user_id", "gender", "age", "occupation", "zip_code"])
    # Age is the bucket code (1, 18, 25, ...) and occupation a numeric code kept as a string.
    users = _check_unique(
        users.select("user_id", "gender", _to_int("age"), "occupation", "zip_code"),
        "user_id",
        src / "users.dat",
    )
    interactions = _load_delimited_ratings(src / "ratings.dat", "::")
    return _Tables(interactions, users, _load_dat_movies(src / "movies.dat"))


def _load_10m(src: Path) -> _Tables:
    interactions = _load_delimited_ratings(src / "ratings.dat", "::")
    return _Tables(interactions, _users_from(interactions), _load_dat_movies(src / "movies.dat"))


def _load_20m(src: Path) -> _Tables:
    path = src / "ratings.csv"
    ratings = pl.scan_csv(path, infer_schema=False, encoding="utf8-lossy")
    columns = ratings.collect_schema().names()
    expected = ["userId", "movieId", "rating", "timestamp"]
    if any(c not in columns for c in expected):
        raise ValueError(f"{path}: expected header columns {expected}, got {columns}")
    ratings = ratings.select(
        pl.col("userId").alias("user_id"), pl.col("movieId").alias("item_id"), "rating", "timestamp"
    )
    interactions = _check_ratings(_interactions_query(ratings).collect(), path)
    return _Tables(interactions, _users_from(interactions), _load_csv_movies(src / "movies.csv"))


def _load_delimited_ratings(path: Path, separator: str) -> pl.DataFrame:
    """``user item rating timestamp`` lines (u.data, ratings.dat) → canonical interactions."""
    names = ["user_id", "item_id", "rating", "timestamp"]
    frame = _interactions_query(
        _split_fields(_scan_lines(path), separator, names), keep=["_line_number", "_n_fields"]
    )
    return _check_ratings(_validated(frame.collect(), len(names), separator, path), path)


def _load_dat_movies(path: Path) -> pl.DataFrame:
    raw = _read_fields(path, "::", ["item_id", "title", "genres"])
    return _check_unique(_movies_frame(raw), "item_id", path)


def _load_csv_movies(path: Path) -> pl.DataFrame:
    # Titles contain commas and quotes, so this one needs a real CSV parser, not a split.
    raw = pl.read_csv(io.BytesIO(_read_text_as_utf8(path)), infer_schema=False)
    expected = ["movieId", "title", "genres"]
    if any(c not in raw.columns for c in expected):
        raise ValueError(f"{path}: expected header columns {expected}, got {raw.columns}")
    raw = raw.select(pl.col("movieId").str.strip_chars().alias("item_id"), "title", "genres")
    return _check_unique(_movies_frame(raw), "item_id", path)


# --------------------------------------------------------------------------- shared helpers


def _movies_frame(raw: pl.DataFrame) -> pl.DataFrame:
    """``item_id, title, genres ('A|B')`` strings → canonical items with year and genre list."""
    genres = pl.col("genres").str.strip_chars()
    return raw.select(
        "item_id",
        pl.col("title").str.strip_chars(),
        pl.col("title").str.extract(_TITLE_YEAR, 1).cast(pl.Int64).alias("year"),
        pl.when(genres.is_in([NO_GENRES, ""]) | genres.is_null())
        .then(pl.lit([], dtype=pl.List(pl.Utf8)))
        .otherwise(genres.str.split("|"))
        .alias("genres"),
    )


def _interactions_query(ratings: pl.LazyFrame, keep: list[str] | None = None) -> pl.LazyFrame:
    """String columns ``user_id, item_id, rating, timestamp`` → canonical interaction columns.

    Timestamps go through Float64 so that "881250949.0" is accepted. Unparseable numbers become
    null here and are rejected by ``_check_ratings``. ``keep`` passes helper columns through.
    """
    return ratings.select(
        *(keep or []),
        pl.col("user_id").str.strip_chars(),
        pl.col("item_id").str.strip_chars(),
        pl.col("timestamp").str.strip_chars().cast(pl.Float64, strict=False).floor().cast(pl.Int64),
        pl.lit("rating").alias("event_type"),
        pl.col("rating").str.strip_chars().cast(pl.Float64, strict=False).alias("value"),
    )


def _check_ratings(frame: pl.DataFrame, path: Path) -> pl.DataFrame:
    """Raise ``ValueError`` if any rating row has an empty id or a non-numeric rating/timestamp."""
    bad = pl.any_horizontal(pl.all().is_null()) | (pl.col("user_id") == "") | (pl.col("item_id") == "")
    n_bad = frame.select(bad.sum()).item()
    if n_bad:
        raise ValueError(f"{path}: {n_bad} rating rows have a missing or non-numeric field")
    return frame


def _users_from(interactions: pl.DataFrame) -> pl.DataFrame:
    """Users table with only ``user_id`` for releases that ship no user attributes."""
    return _sort_ids(interactions.select("user_id").unique(), "user_id")


def _check_unique(frame: pl.DataFrame, key: str, path: Path) -> pl.DataFrame:
    """Reject duplicate ids (a join key must be unique) and return ``frame`` sorted by id."""
    duplicated = frame.filter(pl.col(key).is_duplicated())[key].unique()
    if duplicated.len():
        raise ValueError(f"{path}: duplicate {key} values, e.g. {duplicated.head(5).to_list()}")
    return _sort_ids(frame, key)


def _sort_ids(frame: pl.DataFrame, key: str) -> pl.DataFrame:
    # Numeric order when ids are numeric ("2" before "10"); string order breaks ties/non-numerics.
    return frame.sort(pl.col(key).cast(pl.Int64, strict=False), pl.col(key), nulls_last=True)


def _to_int(column: str) -> pl.Expr:
    return pl.col(column).str.strip_chars().cast(pl.Int64, strict=False)


def _read_text_as_utf8(path: Path) -> bytes:
    """File bytes re-encoded as UTF-8: kept as-is if valid UTF-8, else decoded as Latin-1."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1").encode("utf-8")
    return raw


def _read_small_lines(path: Path) -> pl.LazyFrame:
    """Non-empty lines of a small metadata file (users/items/genres), encoding-normalised."""
    return _lines_frame(io.BytesIO(_read_text_as_utf8(path)))


def _scan_lines(path: Path) -> pl.LazyFrame:
    """Non-empty lines of a (possibly large, ASCII) ratings file, scanned lazily from disk."""
    return _lines_frame(path)


def _lines_frame(source: Path | io.BytesIO) -> pl.LazyFrame:
    lines = pl.scan_csv(
        source,
        separator=_LINE_SEPARATOR,
        has_header=False,
        quote_char=None,
        schema={"line": pl.Utf8},
        encoding="utf8-lossy",
    )
    line = pl.col("line").str.strip_chars_end("\r\n")
    return (
        lines.with_row_index("line_number", offset=1)
        .select("line_number", line)
        .filter(line.is_not_null() & (line.str.strip_chars() != ""))
    )


def _split_fields(lines: pl.LazyFrame, separator: str, names: list[str]) -> pl.LazyFrame:
    """Split each line into ``len(names)`` string fields, keeping ``_line_number``/``_n_fields``.

    The helper columns let ``_validated`` reject lines with another field count after the one
    pass that reads the file (a second scan just to validate would double the cost on 25M rows).
    """
    return lines.select(
        pl.col("line_number").alias("_line_number"),
        (pl.col("line").str.count_matches(separator, literal=True) + 1).alias("_n_fields"),
        pl.col("line").str.split_exact(separator, len(names) - 1).struct.rename_fields(names),
    ).unnest("line")


def _validated(frame: pl.DataFrame, n_fields: int, separator: str, path: Path) -> pl.DataFrame:
    """Drop the helper columns; raise ``ValueError`` naming the first line with a wrong field count.

    A wrong separator or a truncated file thus fails loudly instead of producing nulls.
    """
    bad = frame.filter(pl.col("_n_fields") != n_fields)
    if bad.height:
        raise ValueError(
            f"{path}: line {bad['_line_number'][0]} has {bad['_n_fields'][0]} {separator!r}-separated "
            f"fields, expected {n_fields} ({bad.height} such lines)"
        )
    return frame.drop("_line_number", "_n_fields")


def _read_fields(path: Path, separator: str, names: list[str]) -> pl.DataFrame:
    """All lines of a small metadata file split into validated string columns ``names``."""
    frame = _split_fields(_read_small_lines(path), separator, names).collect()
    return _validated(frame, len(names), separator, path)
