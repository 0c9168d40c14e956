"""Feature encoding (serving.model.features), training.features.prepare and serving.model.history."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from conftest import TrainedBundle

from serving.model.features import (
    FIRST_TOKEN_INDEX,
    ID_FEATURE,
    OOV_INDEX,
    PAD_INDEX,
    EncoderOptions,
    EntityEncoder,
    FeatureSpec,
    Vocabulary,
    vocabulary,
)
from serving.model.features.privacy import personal_columns
from serving.model.history import Sequences, append_recent, last_items, windows
from training.config import DataConfig
from training.features import encoder_options, prepare
from training.fit.interaction_task import ExampleBatcher

PERSONAL_NAMES = DataConfig().personal_columns
OPTIONS = EncoderOptions(
    min_count=2, max_list_length=3, near_unique_ratio=0.9, personal_columns=PERSONAL_NAMES
)


def _ids(n: int, prefix: str = "u") -> pl.Series:
    return pl.Series("user_id", [f"{prefix}{i:03d}" for i in range(n)])


def _spec(encoder: EntityEncoder, name: str) -> FeatureSpec:
    return next(s for s in encoder.specs if s.name == name)


def _rich_table(n: int, seed: int = 0) -> pl.DataFrame:
    """``n`` users with every kind of attribute (and personal data)."""
    rng = np.random.default_rng(seed)
    colors = np.array(["red", "green", "blue", "rare0"])
    color = colors[rng.integers(0, 3, n)].astype(object)
    color[5] = "rare0"  # occurs once: below min_count
    color[7] = None
    tag_pool = ["a", "b", "c", "d", "solo"]
    tags: list[list[str] | None] = [
        [tag_pool[j] for j in rng.integers(0, 4, rng.integers(0, 6))] for _ in range(n)
    ]
    tags[3] = None
    tags[4] = ["solo", "a"]
    flag: list[bool | None] = [bool(x) for x in rng.integers(0, 2, n)]
    flag[2] = None
    age: list[int | None] = [int(x) for x in rng.integers(18, 80, n)]
    age[9] = None
    days = rng.integers(0, 900, n)
    return pl.DataFrame(
        {
            "user_id": _ids(n),
            "color": pl.Series(color.tolist(), dtype=pl.Utf8),
            "flag": pl.Series(flag, dtype=pl.Boolean),
            "age": pl.Series(age, dtype=pl.Int64),
            "spend": rng.lognormal(1.0, 2.5, n),
            "signup": pl.Series([dt.date(2020, 1, 1) + dt.timedelta(days=int(d)) for d in days]),
            "tags": pl.Series(tags, dtype=pl.List(pl.Utf8)),
            "title": [f"free text number {i}" for i in range(n)],
            "email": [f"person{i}@example.com" for i in range(n)],
            "contact": [f"user.{i}@mail.example.org" for i in range(n)],
            "Phone Number": [f"+1-202-555-{i % 100:04d}" for i in range(n)],
            "mob": [f"+44 20 7946 {i % 1000:04d}" for i in range(n)],
        }
    )


# ------------------------------------------------------------------ Vocabulary


def test_vocabulary_indices_and_reserved_buckets() -> None:
    vocab = Vocabulary(pl.Series(["x", "y", "z"]))
    assert len(vocab) == 3
    assert vocab.cardinality == 3 + FIRST_TOKEN_INDEX
    assert vocab.index_of("x") == FIRST_TOKEN_INDEX
    assert vocab.index_of("nope") is None
    assert vocab.token(FIRST_TOKEN_INDEX + 2) == "z"
    encoded = vocab.encode(pl.Series(["z", None, "nope", "x"]))
    assert encoded.tolist() == [4, OOV_INDEX, OOV_INDEX, 2]
    assert encoded.dtype == np.int64
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(pl.Series(["x", "x"]))
    with pytest.raises(ValueError, match="non-null"):
        Vocabulary(pl.Series(["x", None]))


@pytest.mark.parametrize("dtype", [pl.Utf8, pl.Categorical, pl.Int64])
def test_vocabulary_dict_path_equals_polars_path(dtype: Any) -> None:
    tokens = pl.Series([str(i) for i in range(0, 400, 3)])
    vocab = Vocabulary(tokens)
    rng = np.random.default_rng(1)
    raw: list[Any] = [str(x) for x in rng.integers(0, 500, 600)]
    raw[10] = None
    values = pl.Series("v", raw).cast(dtype) if dtype != pl.Int64 else pl.Series("v", raw).cast(pl.Int64)
    large = vocab.encode(values)  # > 256 values: the Polars replace_strict path
    small = np.concatenate([vocab.encode(values.slice(i, 1)) for i in range(len(values))])  # dict path
    chunks = np.concatenate([vocab.encode(values.slice(i, 200)) for i in range(0, len(values), 200)])
    np.testing.assert_array_equal(large, small)
    np.testing.assert_array_equal(large, chunks)
    assert large[10] == OOV_INDEX
    assert set(np.unique(large)) - {OOV_INDEX} <= set(range(FIRST_TOKEN_INDEX, vocab.cardinality))


@pytest.mark.parametrize("colliding", [False, True])
def test_big_vocabularies_look_up_through_sorted_hashes(
    monkeypatch: pytest.MonkeyPatch, colliding: bool
) -> None:
    # Above _DICT_MAX_TOKENS single look-ups use sorted hashes, not a dict; with a hash
    # that collides for every token of one length the token compare must still decide.
    monkeypatch.setattr(vocabulary, "_DICT_MAX_TOKENS", 10)
    if colliding:
        monkeypatch.setattr(vocabulary, "_token_hash", len)
    tokens = pl.Series([f"t{i}" for i in range(300)])
    vocab = Vocabulary(tokens)
    assert all(vocab.index_of(f"t{i}") == i + FIRST_TOKEN_INDEX for i in range(300))
    for unknown in ("t300", "", "x1"):
        assert vocab.index_of(unknown) is None
    assert isinstance(vocab._lookup, vocabulary._HashedTokens)
    values = pl.Series(["t5", None, "t299", "nope", "t0"])
    np.testing.assert_array_equal(vocab.encode(values), [7, OOV_INDEX, 301, OOV_INDEX, 2])


# ------------------------------------------------------------------ fitting


def test_fit_infers_feature_kinds_from_dtypes() -> None:
    table = _rich_table(40)
    encoder = EntityEncoder.fit("user_id", _ids(40), table, OPTIONS)
    kinds = {s.name: s.kind for s in encoder.specs}
    assert kinds == {
        "color": "categorical",
        "flag": "categorical",
        "age": "numeric",
        "spend": "numeric",
        "signup": "numeric",
        "tags": "multi_categorical",
    }
    assert _spec(encoder, "tags").max_length == 3
    assert _spec(encoder, "color").cardinality == 3 + FIRST_TOKEN_INDEX  # "rare0" is below min_count
    assert encoder.ids.tokens.to_list() == _ids(40).to_list()
    assert "near-unique" in encoder.dropped["title"]


def test_fit_other_dtypes_and_unusable_columns() -> None:
    n = 30
    table = pl.DataFrame(
        {
            "user_id": _ids(n),
            "small_int": pl.Series([i % 4 for i in range(n)], dtype=pl.Int8),
            "f32": pl.Series([i / 3 for i in range(n)], dtype=pl.Float32),
            "when": pl.Series([dt.datetime(2024, 1, 1) + dt.timedelta(hours=i) for i in range(n)]),
            "enum": pl.Series(["a", "b", "c"] * 10, dtype=pl.Enum(["a", "b", "c"])),
            "int_list": pl.Series([[i % 3, 7] for i in range(n)], dtype=pl.List(pl.Int64)),
            "empty": pl.Series([None] * n, dtype=pl.Utf8),
            "constant": [5.0] * n,
            "singletons": [f"s{i}" for i in range(n - 5)] + [None] * 5,  # near-unique after nulls
            "few_texts": [f"t{i}" for i in range(10)] + [None] * 20,  # < 20 values: not near-unique
        }
    )
    encoder = EntityEncoder.fit("user_id", _ids(n), table, OPTIONS)
    kinds = {s.name: s.kind for s in encoder.specs}
    assert kinds == {
        "small_int": "numeric",
        "f32": "numeric",
        "when": "numeric",
        "enum": "categorical",
        "int_list": "multi_categorical",
    }
    assert encoder.dropped["empty"] == "no values"
    assert encoder.dropped["constant"] == "constant"
    assert "near-unique" in encoder.dropped["singletons"]
    assert "2+ times" in encoder.dropped["few_texts"]  # kept by the ratio rule, but every value is rare


def test_fit_without_attributes_has_only_ids() -> None:
    encoder = EntityEncoder.fit("item_id", pl.Series(["b", "a"]), None, OPTIONS)
    assert encoder.specs == ()
    encoded = encoder.transform(pl.DataFrame({"item_id": ["a", "b", "zz"]}))
    assert list(encoded) == [ID_FEATURE]
    assert encoded[ID_FEATURE].tolist() == [3, 2, OOV_INDEX]


def test_oov_for_unknown_rare_and_null_categorical_values() -> None:
    n = 30
    table = pl.DataFrame(
        {
            "user_id": _ids(n),
            "color": ["red"] * 10 + ["blue"] * 9 + ["green"] * 9 + ["rare"] + [None],
        }
    )
    encoder = EntityEncoder.fit("user_id", _ids(n), table, OPTIONS)
    vocab = encoder.vocabularies["color"]
    # Most frequent first, ties by token.
    assert vocab.tokens.to_list() == ["red", "blue", "green"]
    query = pl.DataFrame(
        {"user_id": ["u000", "nobody", "u001", "u002"], "color": ["blue", "red", "rare", None]}
    )
    encoded = encoder.transform(query)
    assert encoded[ID_FEATURE].tolist() == [FIRST_TOKEN_INDEX, OOV_INDEX, FIRST_TOKEN_INDEX + 1, 4]
    assert encoded["color"].tolist() == [3, 2, OOV_INDEX, OOV_INDEX]
    unseen = encoder.transform(pl.DataFrame({"user_id": ["u000"], "color": ["purple"]}))
    assert unseen["color"].tolist() == [OOV_INDEX]


def test_attribute_column_named_count_is_fitted() -> None:
    n = 10
    table = pl.DataFrame({"user_id": _ids(n), "count": ["low", "high"] * 5})
    encoder = EntityEncoder.fit("user_id", _ids(n), table, OPTIONS)
    assert _spec(encoder, "count").kind == "categorical"
    assert encoder.transform(table)["count"].tolist() == [3, 2] * 5


def test_boolean_categories() -> None:
    n = 10
    flags = [True] * 6 + [False] * 3 + [None]
    table = pl.DataFrame({"user_id": _ids(n), "flag": pl.Series(flags, dtype=pl.Boolean)})
    encoder = EntityEncoder.fit("user_id", _ids(n), table, OPTIONS)
    assert _spec(encoder, "flag").kind == "categorical"
    encoded = encoder.transform(table)["flag"]
    assert encoded.tolist() == [2] * 6 + [3] * 3 + [OOV_INDEX]


def test_list_padding_truncation_and_oov() -> None:
    n = 6
    table = pl.DataFrame(
        {
            "user_id": _ids(n),
            "tags": pl.Series(
                [["a", "b"], ["a"], ["b", "a", "c", "a"], None, [], ["a", "once", None]],
                dtype=pl.List(pl.Utf8),
            ),
        }
    )
    encoder = EntityEncoder.fit("user_id", _ids(n), table, OPTIONS)
    vocab = encoder.vocabularies["tags"]
    assert vocab.tokens.to_list() == ["a", "b"]  # "c" and "once" occur once
    a, b = vocab.index_of("a"), vocab.index_of("b")
    encoded = encoder.transform(table)["tags"]
    assert encoded.dtype == np.int64
    assert encoded.shape == (n, 3)
    assert encoded.tolist() == [
        [a, b, PAD_INDEX],
        [a, PAD_INDEX, PAD_INDEX],
        [b, a, OOV_INDEX],  # truncated to max_list_length; "c" is rare
        [PAD_INDEX] * 3,  # null list
        [PAD_INDEX] * 3,  # empty list
        [a, OOV_INDEX, OOV_INDEX],  # unknown value and null element -> OOV, never padding
    ]


# ------------------------------------------------------------------ personal data


def test_personal_columns_by_name_and_by_values() -> None:
    frame = _rich_table(40).drop("user_id")
    found = personal_columns(frame, PERSONAL_NAMES)
    assert set(found) == {"email", "contact", "Phone Number", "mob"}
    assert found["email"] == "personal data (column name)"
    assert found["Phone Number"] == "personal data (column name)"  # case and spaces ignored
    assert "e-mail" in found["contact"]
    assert "phone" in found["mob"]
    for reason in found.values():
        assert "@" not in reason
        assert "555" not in reason
    other = personal_columns(pl.DataFrame({"E-Mail": ["x"], "notes": ["123"]}), PERSONAL_NAMES)
    assert set(other) == {"E-Mail"}


def test_short_numbers_and_mostly_normal_values_are_not_personal() -> None:
    frame = pl.DataFrame(
        {
            "sku": ["12-34", "56-78", "90-12"],
            "mixed": ["a@b.com", "plain", "text"],
            "year": ["2021", "2022", "2023"],
        }
    )
    assert personal_columns(frame, PERSONAL_NAMES) == {}


def test_personal_columns_never_become_features_or_data() -> None:
    table = _rich_table(40)
    encoder = EntityEncoder.fit("user_id", _ids(40), table, OPTIONS)
    for column in ("email", "contact", "Phone Number", "mob", "title"):
        assert column not in encoder.attribute_columns
        assert column in encoder.dropped
    description, vocabularies = encoder.to_data()
    text = json.dumps(description) + " ".join(vocabularies.get_column("token").to_list())
    assert "@" not in text
    assert "555" not in text
    assert "7946" not in text
    assert "free text number" not in text
    assert set(vocabularies.get_column("feature").unique().to_list()) == {"color", "flag", "tags"}


def test_bundle_users_file_holds_no_personal_data(trained: TrainedBundle) -> None:
    users_in = pl.read_parquet(trained.data.users_path)
    assert {"name", "email", "phone"} <= set(users_in.columns)
    users_out = pl.read_parquet(trained.bundle / "users.parquet")
    assert not {"name", "email", "phone"} & set(users_out.columns)
    vocabularies = pl.read_parquet(trained.bundle / "vocabularies.parquet")
    tokens = set(vocabularies.get_column("token").to_list())
    for column in ("name", "email", "phone"):
        assert not tokens & set(users_in.get_column(column).to_list())
    manifest_text = (trained.bundle / "manifest.json").read_text(encoding="utf-8")
    for value in users_in.get_column("email").head(50).to_list():
        assert value not in manifest_text
    dropped = trained.manifest["features"]["user"]["dropped_columns"]
    assert {"name", "email", "phone"} <= set(dropped)


# ------------------------------------------------------------------ numeric features


def test_numeric_statistics_come_from_fit_rows_only() -> None:
    n = 30
    ids = _ids(n)
    values = np.linspace(-3.0, 7.0, n)
    known = pl.DataFrame({"user_id": ids, "x": values})
    others = pl.DataFrame({"user_id": _ids(10, prefix="other"), "x": np.full(10, 1e6)})
    encoder = EntityEncoder.fit("user_id", ids, pl.concat([others, known]), OPTIONS)
    spec = _spec(encoder, "x")
    assert spec.log1p is False
    assert spec.mean == pytest.approx(values.mean())
    assert spec.std == pytest.approx(values.std())
    before = encoder.specs
    transformed = encoder.transform(pl.concat([known, others]))["x"]
    assert encoder.specs == before  # transform never refits
    assert transformed.dtype == np.float32
    np.testing.assert_allclose(transformed[:n], (values - values.mean()) / values.std(), atol=1e-5)
    assert transformed[n:].tolist() == [5.0] * 10  # clipped to the standardised range
    null_row = pl.DataFrame({"user_id": ["u000"], "x": [None]}, schema_overrides={"x": pl.Float64})
    empty = encoder.transform(null_row)
    assert empty["x"].tolist() == [0.0]  # null -> the mean


def test_heavy_tailed_non_negative_column_gets_log1p() -> None:
    n = 30
    counts = np.array([1.0] * 10 + [2.0] * 10 + [3.0] * 9 + [10_000.0])
    signed = counts.copy()
    signed[0] = -1.0
    table = pl.DataFrame(
        {"user_id": _ids(n), "count_col": counts, "signed": signed, "plain": np.arange(n) * 1.0}
    )
    encoder = EntityEncoder.fit("user_id", _ids(n), table, OPTIONS)
    spec = _spec(encoder, "count_col")
    assert spec.log1p is True
    logged = np.log1p(counts)
    assert spec.mean == pytest.approx(logged.mean())
    assert spec.std == pytest.approx(logged.std())
    expected = np.clip((logged - logged.mean()) / logged.std(), -5, 5)
    np.testing.assert_allclose(encoder.transform(table)["count_col"], expected, atol=1e-5)
    assert _spec(encoder, "signed").log1p is False  # negative values: no log
    assert _spec(encoder, "plain").log1p is False


def test_missing_attribute_columns_count_as_null() -> None:
    table = _rich_table(40)
    encoder = EntityEncoder.fit("user_id", _ids(40), table, OPTIONS)
    encoded = encoder.transform(pl.DataFrame({"user_id": ["u001", "stranger"]}))
    assert encoded[ID_FEATURE].tolist() == [FIRST_TOKEN_INDEX + 1, OOV_INDEX]
    assert encoded["color"].tolist() == [OOV_INDEX, OOV_INDEX]
    assert encoded["age"].tolist() == [0.0, 0.0]
    assert encoded["tags"].tolist() == [[PAD_INDEX] * 3] * 2
    with pytest.raises(ValueError, match="user_id"):
        encoder.transform(pl.DataFrame({"color": ["red"]}))


# ------------------------------------------------------------------ round trips and no drift


def _assert_same(left: dict[str, np.ndarray], right: dict[str, np.ndarray]) -> None:
    assert left.keys() == right.keys()
    for name in left:
        assert left[name].dtype == right[name].dtype, name
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


def test_to_data_from_data_round_trip() -> None:
    table = _rich_table(300)
    encoder = EntityEncoder.fit("user_id", _ids(280), table, OPTIONS)
    description, vocabularies = encoder.to_data()
    json.loads(json.dumps(description))  # plain, JSON-able data
    assert vocabularies.schema == pl.Schema({"feature": pl.Utf8, "token": pl.Utf8})
    restored = EntityEncoder.from_data(description, vocabularies, encoder.ids.tokens)
    assert restored.specs == encoder.specs
    assert restored.dropped == encoder.dropped
    assert restored.id_column == "user_id"
    _assert_same(encoder.transform(table), restored.transform(table))
    bad = description | {"features": [s.to_dict() | {"cardinality": 99} for s in encoder.specs]}
    with pytest.raises(ValueError, match="vocabulary has"):
        EntityEncoder.from_data(bad, vocabularies, encoder.ids.tokens)


def test_one_row_transform_equals_the_whole_table_row() -> None:
    """The serving path (one-row frames, dict lookups) equals the training path (big frames, Polars)."""
    table = _rich_table(300)
    encoder = EntityEncoder.fit("user_id", _ids(280), table, OPTIONS)  # 20 unknown ids in the table
    # Values never seen while fitting, too.
    every_17th = pl.int_range(pl.len()) % 17 == 0
    table = table.with_columns(pl.when(every_17th).then(pl.lit("violet")).otherwise("color").alias("color"))
    whole = encoder.transform(table)
    assert len(whole[ID_FEATURE]) > 256  # the large-input path
    lazy = encoder.transform(table.lazy())
    _assert_same(whole, lazy)
    for i in range(table.height):
        row = encoder.transform(table.slice(i, 1))
        for name, values in whole.items():
            assert row[name].dtype == values.dtype, name
            np.testing.assert_array_equal(row[name][0], values[i], err_msg=f"{name} row {i}")


def test_one_row_frame_built_from_python_values_matches() -> None:
    """A serving request builds a frame from Python values: the dtypes may differ from the table's."""
    table = _rich_table(300)
    encoder = EntityEncoder.fit("user_id", _ids(300), table, OPTIONS)
    whole = encoder.transform(table)
    for i in (0, 2, 3, 7, 9, 150):
        record = table.row(i, named=True)
        single = encoder.transform(pl.DataFrame([record]))
        for name, values in whole.items():
            np.testing.assert_array_equal(single[name][0], values[i], err_msg=f"{name} row {i}")
        nulls = pl.DataFrame({"user_id": [record["user_id"]], "color": [None], "age": [None], "tags": [None]})
        encoded = encoder.transform(nulls)
        assert encoded["color"].tolist() == [OOV_INDEX]
        assert encoded["age"].tolist() == [0.0]
        assert encoded["tags"].tolist() == [[PAD_INDEX] * 3]


# ------------------------------------------------------------------ prepare


def _interactions(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [r[2] for r in rows],
            "event_type": ["view"] * len(rows),
            "value": [None] * len(rows),
        },
        schema_overrides={"timestamp": pl.Int64, "value": pl.Float64},
    )


def test_prepare_orders_sequences_by_time_with_ties_in_input_order() -> None:
    frame = _interactions(
        [
            ("b", "x", 5),
            ("a", "z", 3),
            ("b", "y", 1),
            ("b", "z", 5),  # tie with ("b", "x", 5): keeps input order x, z
            ("a", "x", 1),
            ("b", "w", 9),
            ("a", "x", 2),
        ]
    )
    users = pl.DataFrame({"user_id": ["a", "b", "c"], "age": [20, 30, 40]})
    prepared = prepare(frame, users, None, DataConfig())
    assert prepared.user_encoder.ids.tokens.to_list() == ["a", "b"]  # only users with interactions
    assert prepared.item_encoder.ids.tokens.to_list() == ["w", "x", "y", "z"]
    assert prepared.n_users == 2
    assert prepared.n_items == 4
    item = prepared.item_encoder.ids.index_of
    assert prepared.sequences.row(0).tolist() == [item("x"), item("x"), item("z")]
    assert prepared.sequences.row(1).tolist() == [item("y"), item("x"), item("z"), item("w")]
    assert prepared.popularity.tolist() == [1, 3, 1, 2]  # w, x, y, z
    assert prepared.popularity.dtype == np.int64
    assert prepared.dropped_interactions == 0
    assert prepared.user_table.get_column("user_id").to_list() == ["a", "b"]
    assert prepared.user_table.get_column("age").to_list() == [20, 30]
    assert prepared.item_table.columns == ["item_id"]
    assert prepared.user_features[ID_FEATURE].tolist() == [2, 3]


def test_prepare_with_reused_encoders_drops_unknown_users_and_items() -> None:
    first = prepare(_interactions([("a", "x", 1), ("b", "y", 2), ("a", "y", 3)]), None, None, DataConfig())
    later = _interactions(
        [("a", "y", 10), ("new_user", "x", 11), ("b", "new_item", 12), ("b", "x", 13), ("a", "x", 9)]
    )
    prepared = prepare(later, None, None, DataConfig(), encoders=(first.user_encoder, first.item_encoder))
    assert prepared.dropped_interactions == 2
    assert prepared.user_encoder is first.user_encoder
    assert prepared.item_encoder.ids.tokens.to_list() == ["x", "y"]  # the vocabulary never grows
    x, y = 2, 3
    assert prepared.sequences.row(0).tolist() == [x, y]  # a: x@9, y@10
    assert prepared.sequences.row(1).tolist() == [x]  # b: x@13
    assert prepared.popularity.tolist() == [2, 1]


def test_prepare_users_without_attributes_get_nulls() -> None:
    users = pl.DataFrame({"user_id": ["b", "zz"], "tier": ["gold", "gold"]})
    prepared = prepare(_interactions([("a", "x", 1), ("b", "x", 2)]), users, None, DataConfig(min_count=1))
    assert prepared.user_table.get_column("tier").to_list() == [None, "gold"]
    assert prepared.user_features["tier"].tolist() == [OOV_INDEX, FIRST_TOKEN_INDEX]
    assert encoder_options(DataConfig(min_count=5)).min_count == 5


# ------------------------------------------------------------------ history


def test_windows_are_right_aligned_and_padded() -> None:
    items = np.array([10, 11, 12, 13, 14], dtype=np.int64)
    out = windows(items, np.array([0, 2, 2, 0]), np.array([3, 5, 2, 5]), 4)
    assert out.tolist() == [
        [PAD_INDEX, 10, 11, 12],
        [PAD_INDEX, 12, 13, 14],
        [PAD_INDEX] * 4,  # empty: end == start
        [11, 12, 13, 14],  # longer than the window: most recent kept
    ]
    assert out.dtype == np.int64
    empty = windows(np.zeros(0, dtype=np.int64), np.array([0]), np.array([0]), 3)
    assert empty.tolist() == [[PAD_INDEX] * 3]


def test_last_items_and_take() -> None:
    sequences = Sequences.from_lists([[5, 6, 7], [], [8], [9, 10]])
    assert sequences.rows == 4
    assert sequences.lengths().tolist() == [3, 0, 1, 2]
    assert last_items(sequences, np.array([0, 1, 2, 3]), 2).tolist() == [[6, 7], [0, 0], [0, 8], [9, 10]]
    taken = sequences.take(np.array([3, 1, 0, 3], dtype=np.int64))
    assert [taken.row(i).tolist() for i in range(taken.rows)] == [[9, 10], [], [5, 6, 7], [9, 10]]
    assert taken.indptr.tolist() == [0, 2, 2, 5, 7]
    none = sequences.take(np.zeros(0, dtype=np.int64))
    assert none.rows == 0
    assert len(none.items) == 0
    assert Sequences.from_lists([]).rows == 0


def test_append_recent() -> None:
    history = np.array([0, 0, 5, 6], dtype=np.int64)
    assert append_recent(history, np.array([7], dtype=np.int64)).tolist() == [0, 5, 6, 7]
    assert append_recent(history, np.array([7, 0, 8, 9], dtype=np.int64)).tolist() == [5, 6, 7, 8, 9][-4:]
    assert append_recent(history, np.array([0], dtype=np.int64)).tolist() == [0, 0, 5, 6]


def test_training_history_is_strictly_before_each_example() -> None:
    frame = _interactions([("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("b", "z", 1), ("b", "y", 2)])
    prepared = prepare(frame, None, None, DataConfig())
    batcher = ExampleBatcher(prepared, history_length=2, id_dropout=0.0, rng=np.random.default_rng(0))
    assert len(batcher) == 5
    positions = np.arange(5, dtype=np.int64)
    user_inputs, item_inputs, item_ids = batcher.batch(positions, device=torch.device("cpu"))
    x, y, z = 2, 3, 4
    assert item_ids.tolist() == [x, y, z, z, y]
    assert item_inputs[ID_FEATURE].tolist() == [x, y, z, z, y]
    assert user_inputs["history"].tolist() == [
        [PAD_INDEX, PAD_INDEX],  # a's first interaction: nothing before it
        [PAD_INDEX, x],
        [x, y],
        [PAD_INDEX, PAD_INDEX],  # b's first: a's items never leak in
        [PAD_INDEX, z],
    ]
    assert user_inputs[ID_FEATURE].tolist() == [2, 2, 2, 3, 3]


def test_other_items_history_never_holds_the_target_nor_other_users_items() -> None:
    frame = _interactions(
        [("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("b", "z", 1), ("b", "y", 2), ("c", "x", 1)]
    )
    prepared = prepare(frame, None, None, DataConfig())
    batcher = ExampleBatcher(
        prepared, history_length=8, id_dropout=0.0, rng=np.random.default_rng(0), others_share=1.0
    )
    x, y, z = 2, 3, 4
    for _ in range(20):  # random draws: check the invariant many times
        user_inputs, _, item_ids = batcher.batch(np.arange(6, dtype=np.int64), device=torch.device("cpu"))
        history = user_inputs["history"].tolist()
        targets = item_ids.tolist()
        mine = {0: {x, y, z}, 1: {x, y, z}, 2: {x, y, z}, 3: {y, z}, 4: {y, z}, 5: {x}}
        for row, (items, target) in enumerate(zip(history, targets, strict=True)):
            assert target not in items
            assert set(items) - {PAD_INDEX} <= mine[row] - {target}
        assert history[5] == [PAD_INDEX] * 8  # c has no other item
