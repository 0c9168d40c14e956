"""``recsys prepare``: the streamed feature pass gives what the in-memory pass gives, sharded by user."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from training.cli.main import main
from training.config import DataConfig
from training.data.io import InputError, load_dataset
from training.data.shards import open_prepared
from training.data.stream_prepare import prepare_shards
from training.data.synth import SynthConfig, synthesize
from training.features import prepare


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize(SynthConfig(users=300, items=80, events=6000, seed=3), out)
    return out


def _hive_directory(frame: pl.DataFrame, root: Path) -> Path:
    """The interactions split into ``day=N/part.parquet`` files (a hive-partitioned directory)."""
    days = frame.with_columns((pl.col("timestamp") // 86400 % 3).alias("day"))
    for (day,), part in days.group_by("day"):
        folder = root / f"day={day}"
        folder.mkdir(parents=True)
        part.drop("day").write_parquet(folder / "part.parquet")
    return root


def test_streamed_prepare_equals_the_in_memory_pass(synth: Path, tmp_path: Path) -> None:
    frame = pl.read_parquet(synth / "interactions.parquet")
    # A duplicate row, to be dropped as the in-memory reader drops it.
    frame = pl.concat([frame, frame.head(3)])
    source = _hive_directory(frame, tmp_path / "events")
    summary = prepare_shards(
        source, synth / "users.parquet", synth / "items.parquet", tmp_path / "prep", DataConfig(), shards=4
    )
    memory = load_dataset(synth / "interactions.parquet", synth / "users.parquet", synth / "items.parquet")
    reference = prepare(memory.interactions, memory.users, memory.items, DataConfig())

    shards = open_prepared(tmp_path / "prep")
    streamed = shards.prepared(range(shards.shards))
    assert summary.shards == 4
    assert summary.duplicates_dropped == 3 + memory.duplicates_dropped
    assert streamed.user_encoder.ids.tokens.equals(reference.user_encoder.ids.tokens)
    assert streamed.item_encoder.ids.tokens.equals(reference.item_encoder.ids.tokens)
    np.testing.assert_array_equal(streamed.popularity, reference.popularity)
    np.testing.assert_array_equal(streamed.sequences.indptr, reference.sequences.indptr)
    np.testing.assert_array_equal(streamed.sequences.items, reference.sequences.items)
    for name, values in reference.user_features.items():
        np.testing.assert_array_equal(streamed.user_features[name], values)
    for name, values in reference.item_features.items():
        np.testing.assert_array_equal(streamed.item_features[name], values)
    # No personal data in the prepared directory: only feature columns are copied.
    assert set(shards.entities.user_table.columns) == {"user_id", *reference.user_encoder.attribute_columns}

    # Every user lives in exactly one shard, and each shard is time-ordered per user.
    owners: dict[int, int] = {}
    for shard in range(shards.shards):
        part = pl.read_parquet(shards.shard_path(shard))
        assert part.equals(part.sort(["user_index", "timestamp"], maintain_order=True))
        for user in part.get_column("user_index").unique().to_list():
            assert owners.setdefault(user, shard) == shard


def test_prepare_cli_reads_a_csv_glob(
    synth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frame = pl.read_parquet(synth / "interactions.parquet")
    half = frame.height // 2
    frame.head(half).write_csv(tmp_path / "a.csv")
    frame.tail(frame.height - half).write_csv(tmp_path / "b.csv")
    code = main(
        ["prepare", "--interactions", str(tmp_path / "*.csv"), "--out", str(tmp_path / "p"), "--shards", "2"]
    )
    assert code == 0
    assert "2 shards" in capsys.readouterr().out
    prepared = open_prepared(tmp_path / "p")
    assert prepared.interactions == frame.unique().height
    assert main(["prepare", "--interactions", str(tmp_path / "*.csv"), "--out", str(tmp_path / "p")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_prepare_names_the_bad_column_and_leaves_nothing(tmp_path: Path) -> None:
    pl.DataFrame({"user_id": ["u1", None], "item_id": ["i1", "i2"], "timestamp": [1, 2]}).write_parquet(
        tmp_path / "events.parquet"
    )
    with pytest.raises(InputError, match="column user_id: 1 row"):
        prepare_shards(tmp_path / "events.parquet", None, None, tmp_path / "out", DataConfig())
    pl.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "timestamp": ["yesterday"]}).write_parquet(
        tmp_path / "events.parquet"
    )
    with pytest.raises(InputError, match="column timestamp"):
        prepare_shards(tmp_path / "events.parquet", None, None, tmp_path / "out", DataConfig())
    with pytest.raises(InputError, match="not found"):
        open_prepared(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.parquet"]


def test_sequences_of_some_shards_are_whole_and_a_shard_named_twice_is_refused(
    synth: Path, tmp_path: Path
) -> None:
    prepare_shards(
        synth / "interactions.parquet",
        synth / "users.parquet",
        synth / "items.parquet",
        tmp_path / "p",
        DataConfig(),
        shards=4,
    )
    shards = open_prepared(tmp_path / "p")
    whole = shards.prepared(range(4))
    some = shards.prepared([2, 0])
    frames = [pl.read_parquet(shards.shard_path(s)) for s in (0, 2)]
    held = set(pl.concat(frames).get_column("user_index").to_list())
    for user in range(whole.sequences.rows):
        expected = whole.sequences.row(user) if user + 2 in held else np.zeros(0, dtype=np.int64)
        np.testing.assert_array_equal(some.sequences.row(user), expected)
    with pytest.raises(ValueError, match="name a shard twice"):
        shards.prepared([1, 1])


def test_pseudonymised_prepare_writes_no_raw_user_id(
    synth: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.pseudonym import Pseudonymiser
    from training.config import load_config

    monkeypatch.setenv("RECSYS_TEST_ID_KEY", "test-key-0123456789-abcdef")
    config = load_config(None, ["privacy.pseudonymise_user_ids=true", 'privacy.key_env="RECSYS_TEST_ID_KEY"'])
    prepare_shards(
        synth / "interactions.parquet",
        synth / "users.parquet",
        synth / "items.parquet",
        tmp_path / "prep",
        config.data,
        shards=2,
        privacy=config.privacy,
    )
    shards = open_prepared(tmp_path / "prep")
    pseudonymise = Pseudonymiser(b"test-key-0123456789-abcdef")
    raw = pl.read_parquet(synth / "interactions.parquet").get_column("user_id").unique()
    assert sorted(shards.entities.user_encoder.ids.tokens.to_list()) == sorted(pseudonymise(u) for u in raw)
    assert shards.manifest["privacy"]["key_env"] == "RECSYS_TEST_ID_KEY"
    # Every string written (tables, vocabularies, shards) is free of the raw ids.
    raw_ids = set(raw.to_list())
    for file in (tmp_path / "prep").rglob("*.parquet"):
        frame = pl.read_parquet(file)
        for column in frame.columns:
            if frame.schema[column] == pl.Utf8:
                assert raw_ids.isdisjoint(frame.get_column(column).to_list()), file
    # The events keep their event types and values (member profiles read them), by pseudonym.
    events = shards.events().collect()
    assert events.height == shards.interactions
    assert events.get_column("user_id").str.starts_with("p_").all()
    assert events.get_column("event_type").n_unique() > 1
