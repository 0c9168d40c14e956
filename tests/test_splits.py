"""Hand-checked cases for the evaluation splitting protocols."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from training.evaluation.splits import Split, leave_last_out, random_split, split, time_split


def _frame(rows: list[tuple[str, str, int]]) -> pl.DataFrame:
    users, items, times = zip(*rows, strict=True)
    return pl.DataFrame(
        {
            "user_id": list(users),
            "item_id": list(items),
            "timestamp": list(times),
            "rating": [float(i) for i in range(len(rows))],  # extra column: must be carried through
        },
        schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "timestamp": pl.Int64, "rating": pl.Float64},
    )


def _triples(df: pl.DataFrame) -> list[tuple[str, str, int]]:
    return [(u, i, t) for u, i, t in df.select("user_id", "item_id", "timestamp").iter_rows()]


LLO_ROWS = [
    ("a", "x", 1),
    ("b", "x", 5),
    ("a", "y", 2),
    ("c", "x", 1),
    ("a", "z", 2),  # ties with (a, y, 2) but comes later in the input -> a's test row
    ("c", "y", 3),  # c's latest -> test
    ("b", "y", 1),  # b has only 2 interactions -> all train under min_interactions=3
    ("c", "w", 2),
]


def test_leave_last_out_tie_break_and_min_interactions() -> None:
    s = leave_last_out(_frame(LLO_ROWS))
    assert s.protocol == "llo"
    assert _triples(s.test) == [("a", "z", 2), ("c", "y", 3)]
    # train keeps the remaining rows in input order, with every input column
    assert _triples(s.train) == [r for r in LLO_ROWS if r not in {("a", "z", 2), ("c", "y", 3)}]
    assert s.train.columns == ["user_id", "item_id", "timestamp", "rating"]
    assert s.test["rating"].to_list() == [4.0, 5.0]


def test_leave_last_out_tie_break_follows_row_order() -> None:
    # Swap the two tied rows of user a: now (a, y, 2) is the later row and becomes the test row.
    rows = [r for r in LLO_ROWS if r[0] == "a"]
    rows[1], rows[2] = rows[2], rows[1]
    assert _triples(leave_last_out(_frame(rows)).test) == [("a", "y", 2)]


def test_leave_last_out_min_interactions_lower_and_lazy_input() -> None:
    s = leave_last_out(_frame(LLO_ROWS).lazy(), min_interactions=2)
    assert isinstance(s.train, pl.DataFrame)
    assert isinstance(s.test, pl.DataFrame)
    assert _triples(s.test) == [("b", "x", 5), ("a", "z", 2), ("c", "y", 3)]
    with pytest.raises(ValueError, match="min_interactions"):
        leave_last_out(_frame(LLO_ROWS), min_interactions=0)


def test_leave_last_out_drops_seen_pair() -> None:
    # d's last interaction re-visits x, which is already in train: the test row is dropped, not moved.
    rows = [("d", "x", 1), ("d", "y", 2), ("d", "x", 3)]
    s = leave_last_out(_frame(rows))
    assert s.test.height == 0
    assert _triples(s.train) == [("d", "x", 1), ("d", "y", 2)]


def _random_frame(counts: list[int]) -> pl.DataFrame:
    # user u{j} has counts[j] interactions with distinct items, so no seen-pair drops interfere.
    users = np.repeat([f"u{j}" for j in range(len(counts))], counts)
    items = np.concatenate([np.arange(n) for n in counts]).astype(str)
    rng = np.random.default_rng(1)
    return pl.DataFrame(
        {"user_id": users, "item_id": items, "timestamp": rng.integers(0, 1000, users.shape[0])}
    ).sample(fraction=1.0, shuffle=True, seed=3)


def test_random_split_fractions_follow_rounding_rule() -> None:
    # n_train = clip(floor(0.75 n + 0.5), 1, n - 1) for n >= 2, all of a 1-interaction user:
    #   n=1 -> 1/0, n=2 -> floor(2.0)=2 -> clipped to 1/1, n=3 -> floor(2.75)=2/1,
    #   n=4 -> 3/1, n=5 -> floor(4.25)=4/1, n=10 -> 8/2, n=20 -> 15/5
    counts = [1, 2, 3, 4, 5, 10, 20]
    expected_train = {"u0": 1, "u1": 1, "u2": 2, "u3": 3, "u4": 4, "u5": 8, "u6": 15}
    df = _random_frame(counts)
    s = random_split(df, train_fraction=0.75, seed=7)
    assert s.protocol == "rand"
    got_train = dict(s.train.group_by("user_id").len().iter_rows())
    got_test = dict(s.test.group_by("user_id").len().iter_rows())
    assert got_train == expected_train
    assert got_test == {
        u: n - expected_train[u] for u, n in zip(expected_train, counts, strict=True) if u != "u0"
    }
    # a partition of the input that keeps the original relative order
    both = pl.concat([s.train, s.test])
    assert both.sort(both.columns).equals(df.sort(df.columns))
    assert s.train.equals(df.join(s.train, on=df.columns, how="semi"))


def test_random_split_half_rounds_up() -> None:
    # train_fraction 0.5, n=3: floor(1.5 + 0.5) = 2 in train, 1 in test.
    s = random_split(_random_frame([3]), train_fraction=0.5, seed=0)
    assert (s.train.height, s.test.height) == (2, 1)


def test_random_split_is_deterministic_per_seed() -> None:
    df = _random_frame([6, 9, 12, 15])
    a, b = random_split(df, seed=11), random_split(df, seed=11)
    assert a.train.equals(b.train)
    assert a.test.equals(b.test)
    c = random_split(df, seed=12)
    assert not c.test.equals(a.test)
    with pytest.raises(ValueError, match="train_fraction"):
        random_split(df, train_fraction=1.0)


TIME_ROWS = [
    ("u1", "i1", 1),
    ("u1", "i2", 2),
    ("u2", "i1", 3),
    ("u2", "i3", 4),
    ("u3", "i2", 5),
    ("u1", "i3", 6),
    ("u2", "i2", 7),  # after the cut, known user & item, new pair -> test
    ("u1", "i1", 8),  # after the cut but pair seen in train -> dropped
    ("u1", "i4", 9),  # item i4 never in train -> dropped
    ("u4", "i1", 10),  # user u4 never in train -> dropped
]


def test_time_split_restricts_test_to_known_users_and_items() -> None:
    # quantile 0.6 of 1..10 with linear interpolation: position 0.6 * 9 = 5.4 -> cut = 6.4,
    # so timestamps 7..10 are after the cut.
    s = time_split(_frame(TIME_ROWS), quantile=0.6)
    assert s.protocol == "time"
    assert _triples(s.train) == TIME_ROWS[:6]
    assert _triples(s.test) == [("u2", "i2", 7)]


def test_time_split_interpolated_cut() -> None:
    rows = [("u", "i10", 10), ("u", "i20", 20), ("u", "i30", 30), ("v", "i10", 40), ("u", "i99", 50)]
    rows.append(("v", "i20", 5))  # makes v known in train
    s = time_split(_frame(rows), quantile=0.5)
    # sorted timestamps 5,10,20,30,40,50: linear median = 25 -> 30, 40, 50 after the cut;
    # i30 and i99 are unknown items -> only (v, i10, 40) remains.
    assert _triples(s.test) == [("v", "i10", 40)]
    assert sorted(t for _, _, t in _triples(s.train)) == [5, 10, 20]


def test_time_split_ties_at_cut_stay_in_train() -> None:
    rows = [("u", "a", 10), ("u", "b", 20), ("u", "c", 30), ("u", "a2", 40), ("u", "b2", 50)]
    rows += [("w", "a2", 1), ("w", "b2", 2)]  # a2 / b2 known from train
    # timestamps 1,2,10,20,30,40,50: linear median (pos 3) = 20 -> 20 stays train, 30..50 after the cut
    s = time_split(_frame(rows), quantile=0.5)
    assert _triples(s.test) == [("u", "a2", 40), ("u", "b2", 50)]  # c is unknown
    assert ("u", "b", 20) in _triples(s.train)


def test_dispatcher_and_errors() -> None:
    df = _frame(LLO_ROWS)
    via = split(df, "llo", min_interactions=2)
    assert isinstance(via, Split)
    direct = leave_last_out(df, min_interactions=2)
    assert via.train.equals(direct.train)
    assert via.test.equals(direct.test)
    assert split(df, "rand", seed=1).protocol == "rand"
    assert split(df, "time").protocol == "time"
    with pytest.raises(ValueError, match="llo, rand, time"):
        split(df, "bogus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="missing"):
        leave_last_out(df.drop("timestamp"))
    with pytest.raises(ValueError, match="nulls"):
        leave_last_out(df.with_columns(pl.lit(None, dtype=pl.Utf8).alias("user_id")))
