"""Hand-computed checks of novelty, intra-list diversity and the item value CSR."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from training.evaluation import beyond_accuracy
from training.evaluation.beyond_accuracy import (
    beyond_accuracy_metrics,
    intra_list_diversity,
    item_value_csr,
    novelty,
)

# Popularity shares 4/8, 2/8, 1/8, 1/8 -> self-information 1, 2, 3, 3 bits.
POPULARITY = np.array([4, 2, 1, 1])


def test_novelty_hand_computed() -> None:
    # user 0: items 0, 1 -> (1 + 2) / 2 = 1.5; user 1: item 2 and an empty slot -> 3.
    topk = np.array([[0, 1], [2, -1]])
    assert novelty(topk, POPULARITY) == pytest.approx((1.5 + 3.0) / 2)
    # k = 1: user 0 -> 1 bit, user 1 -> 3 bits.
    assert novelty(topk, POPULARITY, k=1) == pytest.approx(2.0)


def test_novelty_skips_empty_lists_and_is_nan_without_any() -> None:
    assert novelty(np.array([[3, -1], [-1, -1]]), POPULARITY) == pytest.approx(3.0)
    assert math.isnan(novelty(np.array([[-1, -1]]), POPULARITY))


def test_novelty_rejects_unseen_items_and_bad_input() -> None:
    with pytest.raises(ValueError, match="zero popularity"):
        novelty(np.array([[1]]), np.array([1, 0]))
    with pytest.raises(ValueError, match="topk entries"):
        novelty(np.array([[4]]), POPULARITY)
    with pytest.raises(ValueError, match=">= 0"):
        novelty(np.array([[0]]), np.array([-1, 2]))


def test_item_value_csr_scalar_and_list_columns() -> None:
    indptr, codes = item_value_csr(pl.Series(["a", "b", None, "a"]))
    assert indptr.tolist() == [0, 1, 2, 2, 3]
    assert codes[0] == codes[2] != codes[1]  # equal strings share a code

    indptr, codes = item_value_csr(pl.Series([["x", "y"], [], None, ["y", "y", None]]))
    assert indptr.tolist() == [0, 2, 2, 2, 3]  # empty list and null: no values; repeats and nulls drop
    assert codes[2] == codes[1] != codes[0]


def _csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.cumsum([0, *map(len, rows)]).astype(np.int64)
    return indptr, np.array([v for r in rows for v in r], dtype=np.int64)


def test_diversity_single_valued_attribute() -> None:
    # Categories: 0 -> a, 1 -> a, 2 -> b, 3 -> unknown.
    values = _csr([[0], [0], [1], []])
    # Pairs (0,1) same -> 0, (0,2) and (1,2) differ -> 1: mean 2/3. Item 3 has no value: its pairs skip.
    assert intra_list_diversity(np.array([[0, 1, 2, 3]]), *values) == pytest.approx(2 / 3)
    # A list whose only pair involves an unknown item has no scored pair and is not averaged.
    assert intra_list_diversity(np.array([[0, 1, -1], [0, 3, -1]]), *values) == pytest.approx(0.0)
    assert math.isnan(intra_list_diversity(np.array([[0, 3]]), *values))


def test_diversity_list_attribute_uses_jaccard_distance() -> None:
    # {x, y}, {y, z}, {x}: distances 1 - 1/3, 1 - 1/2, 1 - 0/2 -> mean (2/3 + 1/2 + 1) / 3 = 13/18.
    values = _csr([[0, 1], [1, 2], [0]])
    assert intra_list_diversity(np.array([[0, 1, 2]]), *values) == pytest.approx(13 / 18)
    # Users are averaged equally: the second list is one pair at distance 1 - 1/3.
    both = intra_list_diversity(np.array([[0, 1, 2], [0, 1, -1]]), *values)
    assert both == pytest.approx((13 / 18 + 2 / 3) / 2)
    # The cut-off applies before pairing: k = 2 leaves pair (0, 1) only.
    assert intra_list_diversity(np.array([[0, 1, 2]]), *values, k=2) == pytest.approx(2 / 3)


def test_diversity_is_the_same_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    values = _csr([list(rng.choice(6, size=rng.integers(0, 4), replace=False)) for _ in range(30)])
    topk = np.array([rng.choice(30, size=5, replace=False) for _ in range(50)])
    topk[::7, -2:] = -1
    whole = intra_list_diversity(topk, *values)
    monkeypatch.setattr(beyond_accuracy, "_USERS_PER_CHUNK", 3)
    assert intra_list_diversity(topk, *values) == pytest.approx(whole)


def test_beyond_accuracy_metrics_keys() -> None:
    topk = np.array([[0, 1]])
    assert set(beyond_accuracy_metrics(topk, 2, POPULARITY)) == {"novelty@2"}
    both = beyond_accuracy_metrics(topk, 2, POPULARITY, _csr([[0], [1], [0], [1]]))
    assert both == pytest.approx({"novelty@2": 1.5, "diversity@2": 1.0})
