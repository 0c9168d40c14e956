"""training.data.io: reading and validating interactions/users/items from CSV and Parquet."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from training.data.io import (
    DEFAULT_EVENT_TYPE,
    InputError,
    find_canonical_files,
    load_dataset,
    load_entities,
    load_interactions,
    read_table,
)

EMAILS = ("alice.secret@example.com", "bob.hidden@example.org", "carol.private@example.net")
JAN_1_2024 = 1_704_067_200  # 2024-01-01T00:00:00Z


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _parquet(path: Path, frame: pl.DataFrame) -> Path:
    frame.write_parquet(path)
    return path


def _write(path: Path, frame: pl.DataFrame) -> Path:
    """CSV or Parquet by suffix."""
    if path.suffix == ".parquet":
        frame.write_parquet(path)
    else:
        frame.write_csv(path)
    return path


def _message(excinfo: pytest.ExceptionInfo[InputError]) -> str:
    return str(excinfo.value)


# ------------------------------------------------------------------ files and columns


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_missing_required_column_names_file_and_column(tmp_path: Path, suffix: str) -> None:
    frame = pl.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "email": [EMAILS[0]]})
    path = _write(tmp_path / f"interactions{suffix}", frame)
    with pytest.raises(InputError) as info:
        load_interactions(path)
    message = _message(info)
    assert str(path) in message
    assert "missing required column(s) timestamp" in message
    assert EMAILS[0] not in message


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_missing_id_column_in_entities(tmp_path: Path, suffix: str) -> None:
    path = _write(tmp_path / f"items{suffix}", pl.DataFrame({"id": ["i1"], "brand": ["b"]}))
    with pytest.raises(InputError, match="missing required column") as info:
        load_entities(path, "item_id")
    assert str(path) in _message(info)
    assert "item_id" in _message(info)


def test_missing_file_and_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        load_interactions(tmp_path / "absent.csv")
    path = _csv(tmp_path / "interactions.json", "{}")
    with pytest.raises(InputError, match="unsupported file type") as info:
        read_table(path)
    assert str(path) in _message(info)


def test_unreadable_parquet_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "interactions.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(InputError, match="cannot be read") as info:
        load_interactions(path)
    assert str(path) in _message(info)


def test_header_only_file_has_no_interactions(tmp_path: Path) -> None:
    path = _csv(tmp_path / "interactions.csv", "user_id,item_id,timestamp\n")
    with pytest.raises(InputError, match="no interactions"):
        load_interactions(path)


# ------------------------------------------------------------------ ids


def test_null_and_empty_ids_name_column_and_1_based_rows_csv(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "interactions.csv",
        "user_id,item_id,timestamp,email\n"
        f"u1,i1,1,{EMAILS[0]}\n"
        f",i2,2,{EMAILS[1]}\n"
        f"u3,i3,3,{EMAILS[2]}\n"
        f"   ,i4,4,{EMAILS[0]}\n",
    )
    with pytest.raises(InputError) as info:
        load_interactions(path)
    message = _message(info)
    assert str(path) in message
    assert "column user_id" in message
    assert "2 row(s)" in message
    assert "row 2" in message
    assert "row 4" in message
    assert "row 1" not in message
    assert "row 3" not in message
    assert not any(email in message for email in EMAILS)


def test_null_item_ids_in_parquet(tmp_path: Path) -> None:
    frame = pl.DataFrame(
        {"user_id": ["u1", "u2", "u3"], "item_id": ["i1", "i2", None], "timestamp": [1, 2, 3]}
    )
    path = _parquet(tmp_path / "interactions.parquet", frame)
    with pytest.raises(InputError, match=r"column item_id: null or empty ids in 1 row\(s\), first: row 3"):
        load_interactions(path)


def test_many_bad_rows_are_counted_but_only_a_few_shown(tmp_path: Path) -> None:
    frame = pl.DataFrame({"user_id": [""] * 12, "item_id": ["i"] * 12, "timestamp": list(range(12))})
    path = _parquet(tmp_path / "interactions.parquet", frame)
    with pytest.raises(InputError) as info:
        load_interactions(path)
    message = _message(info)
    assert "12 row(s)" in message
    assert "row 5" in message
    assert "row 6" not in message


def test_float_ids_are_rejected(tmp_path: Path) -> None:
    frame = pl.DataFrame({"user_id": [1.5, 2.0], "item_id": ["i1", "i2"], "timestamp": [1, 2]})
    path = _parquet(tmp_path / "interactions.parquet", frame)
    with pytest.raises(InputError, match="column user_id: ids must be strings"):
        load_interactions(path)


def test_integer_ids_become_strings(tmp_path: Path) -> None:
    frame = pl.DataFrame({"user_id": [1, 22], "item_id": [7, 8], "timestamp": [1, 2]})
    loaded, _ = load_interactions(_parquet(tmp_path / "interactions.parquet", frame))
    assert loaded.schema["user_id"] == pl.Utf8
    assert loaded.schema["item_id"] == pl.Utf8
    assert loaded.get_column("user_id").to_list() == ["1", "22"]
    assert loaded.get_column("item_id").to_list() == ["7", "8"]


def test_csv_ids_are_read_as_strings_keeping_leading_zeros(tmp_path: Path) -> None:
    path = _csv(tmp_path / "interactions.csv", "user_id,item_id,timestamp\n007,0001, 5\n 42 ,10,6\n")
    loaded, _ = load_interactions(path)
    assert loaded.get_column("user_id").to_list() == ["007", "42"]
    assert loaded.get_column("item_id").to_list() == ["0001", "10"]


# ------------------------------------------------------------------ timestamps


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_unparseable_timestamps_name_rows_and_only_timestamp_values(tmp_path: Path, suffix: str) -> None:
    frame = pl.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "item_id": ["i1", "i2", "i3"],
            "timestamp": ["2024-01-01", "yesterday", ""],
            "email": list(EMAILS),
        }
    )
    path = _write(tmp_path / f"interactions{suffix}", frame)
    with pytest.raises(InputError) as info:
        load_interactions(path)
    message = _message(info)
    assert str(path) in message
    assert "column timestamp" in message
    assert "2 row(s)" in message
    assert "row 2: 'yesterday'" in message
    assert "row 3" in message
    assert "row 1" not in message
    assert not any(email in message for email in EMAILS)
    assert "u2" not in message
    assert "i2" not in message


def test_datetime_strings_become_unix_seconds(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "interactions.csv",
        "user_id,item_id,timestamp\n"
        "u1,i1,2024-01-01\n"
        "u1,i2,2024-01-01 00:00:10\n"
        "u1,i3,2024-01-01T00:01:00\n"
        f"u1,i4,{JAN_1_2024 + 3600}\n",
    )
    loaded, _ = load_interactions(path)
    assert loaded.schema["timestamp"] == pl.Int64
    assert loaded.get_column("timestamp").to_list() == [
        JAN_1_2024,
        JAN_1_2024 + 10,
        JAN_1_2024 + 60,
        JAN_1_2024 + 3600,
    ]


def test_iso_8601_strings_with_utc_offsets_are_parsed(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "interactions.csv",
        "user_id,item_id,timestamp\nu1,i1,2024-01-01T00:00:00Z\nu1,i2,2024-01-01T02:00:00+01:00\n",
    )
    loaded, _ = load_interactions(path)
    assert loaded.get_column("timestamp").to_list() == [JAN_1_2024, JAN_1_2024 + 3600]


def test_date_and_datetime_columns_become_unix_seconds(tmp_path: Path) -> None:
    base = {"user_id": ["u1", "u2"], "item_id": ["i1", "i2"]}
    dates = pl.DataFrame({**base, "timestamp": [dt.date(2024, 1, 1), dt.date(2024, 1, 2)]})
    loaded, _ = load_interactions(_parquet(tmp_path / "dates.parquet", dates))
    assert loaded.get_column("timestamp").to_list() == [JAN_1_2024, JAN_1_2024 + 86400]

    naive = pl.DataFrame(
        {**base, "timestamp": [dt.datetime(2024, 1, 1, 0, 0, 5), dt.datetime(2024, 1, 1, 1)]}
    )
    naive = naive.with_columns(pl.col("timestamp").cast(pl.Datetime("ms")))
    loaded, _ = load_interactions(_parquet(tmp_path / "naive.parquet", naive))
    assert loaded.get_column("timestamp").to_list() == [JAN_1_2024 + 5, JAN_1_2024 + 3600]

    # Time-zone aware: the instant counts, not the wall clock (00:00 in Berlin is 23:00 UTC).
    aware = pl.DataFrame({**base, "timestamp": [dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1, 1)]})
    aware = aware.with_columns(pl.col("timestamp").dt.replace_time_zone("Europe/Berlin"))
    loaded, _ = load_interactions(_parquet(tmp_path / "aware.parquet", aware))
    assert loaded.get_column("timestamp").to_list() == [JAN_1_2024 - 3600, JAN_1_2024]


def test_float_timestamps_are_floored(tmp_path: Path) -> None:
    frame = pl.DataFrame({"user_id": ["u1", "u1"], "item_id": ["i1", "i2"], "timestamp": [10.9, 11.0]})
    loaded, _ = load_interactions(_parquet(tmp_path / "interactions.parquet", frame))
    assert loaded.get_column("timestamp").to_list() == [10, 11]


def test_null_timestamp_in_parquet_is_reported(tmp_path: Path) -> None:
    frame = pl.DataFrame({"user_id": ["u1", "u1"], "item_id": ["i1", "i2"], "timestamp": [10, None]})
    with pytest.raises(InputError, match=r"missing or unparseable timestamps in 1 row\(s\), first: row 2"):
        load_interactions(_parquet(tmp_path / "interactions.parquet", frame))


def test_unsupported_timestamp_type(tmp_path: Path) -> None:
    frame = pl.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "timestamp": [[1, 2]]})
    with pytest.raises(InputError, match="column timestamp: unsupported type"):
        load_interactions(_parquet(tmp_path / "interactions.parquet", frame))


# ------------------------------------------------------------------ canonical form


def test_canonical_columns_dtypes_and_defaults(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "interactions.tsv",
        "item_id\tuser_id\ttimestamp\textra\nb\ta\t1\tx\nc\ta\t2\ty\n",
    )
    loaded, dropped = load_interactions(path)
    assert dropped == 0
    assert loaded.schema == pl.Schema(
        {
            "user_id": pl.Utf8,
            "item_id": pl.Utf8,
            "timestamp": pl.Int64,
            "event_type": pl.Utf8,
            "value": pl.Float64,
        }
    )
    assert loaded.get_column("event_type").to_list() == [DEFAULT_EVENT_TYPE] * 2
    assert loaded.get_column("value").null_count() == 2


def test_event_type_nulls_are_filled_and_value_is_cast(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "interactions.csv",
        "user_id,item_id,timestamp,event_type,value\nu,i1,1,view,\nu,i2,2,,3\nu,i3,3,buy,2.5\n",
    )
    loaded, _ = load_interactions(path)
    assert loaded.get_column("event_type").to_list() == ["view", DEFAULT_EVENT_TYPE, "buy"]
    assert loaded.get_column("value").to_list() == [None, 3.0, 2.5]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_non_numeric_value_is_an_error_naming_rows(tmp_path: Path, suffix: str) -> None:
    frame = pl.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "item_id": ["i1", "i2", "i3"],
            "timestamp": [1, 2, 3],
            "value": ["1.5", "lots", None],
            "email": list(EMAILS),
        }
    )
    path = _write(tmp_path / f"interactions{suffix}", frame)
    with pytest.raises(InputError) as info:
        load_interactions(path)
    message = _message(info)
    assert str(path) in message
    assert "column value: not a number in 1 row(s), first: row 2: 'lots'" in message
    assert not any(email in message for email in EMAILS)


def test_exact_duplicates_are_dropped_and_counted(tmp_path: Path) -> None:
    path = _csv(
        tmp_path / "interactions.csv",
        "user_id,item_id,timestamp,event_type\n"
        "u1,i1,1,view\n"
        "u1,i1,1,view\n"  # exact duplicate
        "u1,i1,1,click\n"  # same time, different event: kept
        "u1,i1,2,view\n"  # different time: kept
        "u1,i1,1,view\n"  # exact duplicate again
        "u2,i1,1,view\n",
    )
    loaded, dropped = load_interactions(path)
    assert dropped == 2
    assert loaded.height == 4
    # Order of first occurrence is kept.
    assert loaded.select("user_id", "timestamp", "event_type").rows() == [
        ("u1", 1, "view"),
        ("u1", 1, "click"),
        ("u1", 2, "view"),
        ("u2", 1, "view"),
    ]
    dataset = load_dataset(path)
    assert dataset.duplicates_dropped == 2
    assert dataset.users is None
    assert dataset.items is None


# ------------------------------------------------------------------ users / items


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_same_user_twice_with_different_attributes_is_an_error(tmp_path: Path, suffix: str) -> None:
    frame = pl.DataFrame(
        {"user_id": ["u1", "u2", "u1"], "region": ["north", "south", "east"], "email": list(EMAILS)}
    )
    path = _write(tmp_path / f"users{suffix}", frame)
    with pytest.raises(InputError) as info:
        load_entities(path, "user_id")
    message = _message(info)
    assert str(path) in message
    assert "column user_id: the same id with different attributes" in message
    assert "'u1'" in message
    assert "row 1" in message
    assert "row 3" in message
    assert not any(email in message for email in EMAILS)
    assert "north" not in message
    assert "east" not in message


def test_exact_duplicate_entity_rows_are_harmless(tmp_path: Path) -> None:
    path = _csv(tmp_path / "users.csv", "user_id,age\n1,30\n1,30\n02,40\n")
    users = load_entities(path, "user_id")
    assert users.get_column("user_id").to_list() == ["1", "02"]
    assert users.get_column("age").to_list() == [30, 40]


def test_conflicting_entity_rows_are_numbered_as_in_the_file(tmp_path: Path) -> None:
    path = _csv(tmp_path / "users.csv", "user_id,age\nu1,30\nu1,30\nu2,40\nu2,41\n")
    with pytest.raises(InputError) as info:
        load_entities(path, "user_id")
    message = _message(info)
    assert "row 3: 'u2'" in message
    assert "row 4: 'u2'" in message


def test_empty_entity_id_names_rows(tmp_path: Path) -> None:
    path = _csv(tmp_path / "items.csv", f"item_id,email\ni1,{EMAILS[0]}\n,{EMAILS[1]}\n")
    with pytest.raises(InputError) as info:
        load_entities(path, "item_id")
    message = _message(info)
    assert "column item_id: null or empty ids in 1 row(s), first: row 2" in message
    assert not any(email in message for email in EMAILS)


def test_load_dataset_reads_all_three_files(tmp_path: Path) -> None:
    interactions = _csv(tmp_path / "interactions.csv", "user_id,item_id,timestamp\n1,10,5\n2,11,6\n")
    users = _parquet(tmp_path / "users.parquet", pl.DataFrame({"user_id": [1, 2], "age": [30, 40]}))
    items = _csv(tmp_path / "items.csv", "item_id,brand\n10,a\n11,b\n")
    dataset = load_dataset(interactions, users, items)
    assert dataset.interactions.height == 2
    assert dataset.users is not None
    assert dataset.items is not None
    assert dataset.users.get_column("user_id").to_list() == ["1", "2"]
    assert dataset.items.get_column("item_id").to_list() == ["10", "11"]
    assert dataset.duplicates_dropped == 0


def test_find_canonical_files_prefers_parquet(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no interactions"):
        find_canonical_files(tmp_path)
    _csv(tmp_path / "interactions.csv", "user_id,item_id,timestamp\n")
    _parquet(tmp_path / "interactions.parquet", pl.DataFrame({"user_id": ["u"]}))
    _csv(tmp_path / "items.csv", "item_id\n")
    interactions, users, items = find_canonical_files(tmp_path)
    assert interactions == tmp_path / "interactions.parquet"
    assert users is None
    assert items == tmp_path / "items.csv"
