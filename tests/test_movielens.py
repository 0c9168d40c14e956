"""MovieLens import: each release layout from tiny hand-written files (no real data needed)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from training.data.movielens import ML100K_GENRES, MovieLensFormat, detect_format, import_movielens

INTERACTIONS_SCHEMA: dict[str, object] = {
    "user_id": pl.Utf8,
    "item_id": pl.Utf8,
    "timestamp": pl.Int64,
    "event_type": pl.Utf8,
    "value": pl.Float64,
}
ITEMS_SCHEMA: dict[str, object] = {
    "item_id": pl.Utf8,
    "title": pl.Utf8,
    "year": pl.Int64,
    "genres": pl.List(pl.Utf8),
}


def _write(path: Path, text: str, encoding: str = "utf-8") -> None:
    path.write_bytes(text.encode(encoding))


def _flags(*on: int) -> str:
    return "|".join("1" if i in on else "0" for i in range(19))


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    src = tmp_path / "ml-100k"
    src.mkdir()
    _write(
        src / "u.data",
        "1\t10\t4\t881250949\n2\t10\t3\t881250950\n2\t20\t5\t881250951\n10\t30\t1\t881250952\n",
    )
    _write(src / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n10|33|F|writer|T8H1N\n")
    _write(
        src / "u.item",
        f"10|Toy Story (1995)|01-Jan-1995||http://x|{_flags(3, 4, 5)}\n"
        f"20|Misérables, Les (1995)|01-Jan-1995||http://x|{_flags(8, 12)}\n"
        f"30|unknown|||http://x|{_flags(0)}\n",
        encoding="latin-1",
    )
    _write(src / "u.genre", "".join(f"{name}|{i}\n" for i, name in enumerate(ML100K_GENRES)) + "\n")
    return src


def _read(out: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(interactions, users, items) as written to ``out``."""
    return (
        pl.read_parquet(out / "interactions.parquet"),
        pl.read_parquet(out / "users.parquet"),
        pl.read_parquet(out / "items.parquet"),
    )


def test_100k_schema_counts_latin1_genres_and_year(ml100k: Path, tmp_path: Path) -> None:
    summary = import_movielens(ml100k, tmp_path / "out")
    interactions, users, items = _read(tmp_path / "out")

    assert summary.format is MovieLensFormat.ML_100K
    assert (summary.interactions, summary.users, summary.items) == (4, 3, 3)
    assert summary.items_path == tmp_path / "out" / "items.parquet"
    assert dict(interactions.schema) == INTERACTIONS_SCHEMA
    assert interactions.row(0) == ("1", "10", 881250949, "rating", 4.0)
    assert dict(users.schema) == (
        {"user_id": pl.Utf8, "age": pl.Int64, "gender": pl.Utf8, "occupation": pl.Utf8, "zip_code": pl.Utf8}
    )
    assert users["user_id"].to_list() == ["1", "2", "10"]  # numeric id order
    assert users.filter(pl.col("user_id") == "10")["zip_code"].item() == "T8H1N"
    assert dict(items.schema) == ITEMS_SCHEMA
    assert items.rows() == [
        ("10", "Toy Story (1995)", 1995, ["Animation", "Children's", "Comedy"]),
        ("20", "Misérables, Les (1995)", 1995, ["Drama", "Musical"]),
        ("30", "unknown", None, ["unknown"]),
    ]


def test_100k_without_genre_file_uses_standard_names(ml100k: Path, tmp_path: Path) -> None:
    (ml100k / "u.genre").unlink()
    import_movielens(ml100k, tmp_path / "out")
    _, _, items = _read(tmp_path / "out")
    assert items["genres"][0].to_list() == ["Animation", "Children's", "Comedy"]


def test_1m_latin1_users_and_title_year(tmp_path: Path) -> None:
    src = tmp_path / "ml-1m"
    src.mkdir()
    _write(src / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    _write(src / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    _write(
        src / "movies.dat",
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::Café au lait (1993)::Comedy|Romance\n",
        encoding="latin-1",
    )
    summary = import_movielens(src, tmp_path / "out")
    interactions, users, items = _read(tmp_path / "out")

    assert summary.format is MovieLensFormat.ML_1M
    assert (summary.interactions, summary.users, summary.items) == (3, 2, 2)
    assert dict(interactions.schema) == INTERACTIONS_SCHEMA
    assert users.rows() == [("1", "F", 1, "10", "48067"), ("2", "M", 56, "16", "70072")]
    assert users.schema["age"] == pl.Int64
    assert users.schema["occupation"] == pl.Utf8
    assert dict(items.schema) == ITEMS_SCHEMA
    assert items.rows() == [
        ("661", "Café au lait (1993)", 1993, ["Comedy", "Romance"]),
        ("1193", "One Flew Over the Cuckoo's Nest (1975)", 1975, ["Drama"]),
    ]


def test_10m_utf8_no_users_file_and_no_genres(tmp_path: Path) -> None:
    src = tmp_path / "ml-10M100K"
    src.mkdir()
    _write(src / "ratings.dat", "10::1::3.5::1111111111\n2::2::4.5::1111111112\n10::2::1::1111111113\n")
    _write(
        src / "movies.dat",
        "1::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::Comedy|Romance\n"
        "2::Untitled::(no genres listed)\n",
    )
    _write(src / "tags.dat", "15::4973::excellent!::1215184630\n")
    summary = import_movielens(src, tmp_path / "out")
    interactions, users, items = _read(tmp_path / "out")

    assert summary.format is MovieLensFormat.ML_10M
    assert interactions["value"].to_list() == [3.5, 4.5, 1.0]
    assert users.columns == ["user_id"]
    assert users["user_id"].to_list() == ["2", "10"]
    assert items.rows() == [
        ("1", "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)", 2001, ["Comedy", "Romance"]),
        ("2", "Untitled", None, []),
    ]


def test_20m_csv_quoted_titles_and_float_timestamps(tmp_path: Path) -> None:
    src = tmp_path / "ml-20m"
    src.mkdir()
    _write(
        src / "ratings.csv", "userId,movieId,rating,timestamp\n1,11,3.5,1112486027\n2,12,4.0,1112484676.0\n"
    )
    _write(
        src / "movies.csv",
        "movieId,title,genres\n"
        '11,"American President, The (1995)",Comedy|Drama|Romance\n'
        '12,"Big ""Quote"" Movie (2006-2007)",(no genres listed)\n',
    )
    summary = import_movielens(src, tmp_path / "out")
    interactions, users, items = _read(tmp_path / "out")

    assert summary.format is MovieLensFormat.ML_20M
    assert dict(interactions.schema) == INTERACTIONS_SCHEMA
    assert interactions["timestamp"].to_list() == [1112486027, 1112484676]
    assert users.columns == ["user_id"]
    assert users.height == 2
    assert items.rows() == [
        ("11", "American President, The (1995)", 1995, ["Comedy", "Drama", "Romance"]),
        ("12", 'Big "Quote" Movie (2006-2007)', 2006, []),
    ]


def test_unknown_directory_names_dir_and_expected_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"does not look like a MovieLens release") as info:
        import_movielens(tmp_path, tmp_path / "out")
    message = str(info.value)
    assert str(tmp_path) in message
    for name in ("u.data", "ratings.dat", "movies.dat", "users.dat", "ratings.csv", "notes.txt"):
        assert name in message
    assert not (tmp_path / "out").exists()


def test_missing_directory_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        detect_format(tmp_path / "absent")


def test_wrong_field_count_reports_file_and_line(ml100k: Path, tmp_path: Path) -> None:
    _write(ml100k / "u.user", "1|24|M|technician|85711\n2|53|F|other\n")
    with pytest.raises(ValueError, match=r"u\.user: line 2 has 4 '\|'-separated fields, expected 5"):
        import_movielens(ml100k, tmp_path / "out")


def test_non_numeric_rating_is_rejected(ml100k: Path, tmp_path: Path) -> None:
    _write(ml100k / "u.data", "1\t10\tfour\t881250949\n")
    with pytest.raises(ValueError, match=r"u\.data: 1 rating rows have a missing or non-numeric field"):
        import_movielens(ml100k, tmp_path / "out")
