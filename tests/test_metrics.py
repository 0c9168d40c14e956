"""Hand-computed checks of the ranking metrics, the truth CSR builder and top-k with exclusions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluation.metrics import ranking_metrics, top_k_excluding, truth_csr

L2_3 = math.log2(3)


def _csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.cumsum([0, *map(len, rows)]).astype(np.int64)
    indices = np.array([i for r in rows for i in r], dtype=np.int64)
    return indptr, indices


def test_single_user_hand_computed() -> None:
    # relevant {2, 5}, topk [5, 1, 2]: hits at ranks 1 and 3.
    # recall = 2/2 = 1; precision = 2/3; hit rate = 1; mrr = 1/1.
    # DCG = 1/log2(2) + 1/log2(4) = 1.5; IDCG (2 ideal hits) = 1/log2(2) + 1/log2(3).
    # coverage = 3 distinct items / 10.
    indptr, indices = _csr([[2, 5]])
    m = ranking_metrics(np.array([[5, 1, 2]]), indptr, indices, n_items=10, k=3)
    assert m == pytest.approx(
        {
            "recall@3": 1.0,
            "ndcg@3": 1.5 / (1.0 + 1.0 / L2_3),
            "hit_rate@3": 1.0,
            "mrr@3": 1.0,
            "precision@3": 2 / 3,
            "coverage@3": 0.3,
            "users": 1.0,
        }
    )


def test_k_smaller_than_width_uses_prefix_only() -> None:
    # k=1 looks at [5] only: 1 hit of 2 relevant -> recall 0.5; IDCG over min(2, 1) = 1 ideal hit,
    # DCG = 1 -> ndcg 1; precision 1/1; coverage counts the first column only: 1/10.
    indptr, indices = _csr([[2, 5]])
    m = ranking_metrics(np.array([[5, 1, 2]]), indptr, indices, n_items=10, k=1)
    assert m == pytest.approx(
        {
            "recall@1": 0.5,
            "ndcg@1": 1.0,
            "hit_rate@1": 1.0,
            "mrr@1": 1.0,
            "precision@1": 1.0,
            "coverage@1": 0.1,
            "users": 1.0,
        }
    )


def test_many_users_padding_and_empty_truth() -> None:
    # n_items = 6, k = 3.
    # user 0: rel {0},       topk [1, 0, -1]  -> hit at rank 2: recall 1, prec 1/3, rr 1/2,
    #                                            ndcg = (1/log2(3)) / 1
    # user 1: rel {},        topk [3, 4, 1]   -> excluded from averages (still counts for coverage)
    # user 2: rel {1,2,3,4}, topk [-1,-1,-1]  -> all zero (-1 is never a hit)
    # user 3: rel {5, 0},    topk [1, 3, 5]   -> hit at rank 3: recall 1/2, prec 1/3, rr 1/3,
    #                                            ndcg = (1/log2(4)) / (1 + 1/log2(3))
    # averages over 3 users; coverage = |{1,0} ∪ {3,4,1} ∪ {1,3,5}| / 6 = 5/6.
    topk = np.array([[1, 0, -1], [3, 4, 1], [-1, -1, -1], [1, 3, 5]], dtype=np.int64)
    indptr, indices = _csr([[0], [], [1, 2, 3, 4], [5, 0]])
    m = ranking_metrics(topk, indptr, indices, n_items=6, k=3)
    ndcg_u0 = 1.0 / L2_3
    ndcg_u3 = 0.5 / (1.0 + 1.0 / L2_3)
    assert m == pytest.approx(
        {
            "recall@3": (1.0 + 0.0 + 0.5) / 3,
            "ndcg@3": (ndcg_u0 + 0.0 + ndcg_u3) / 3,
            "hit_rate@3": 2 / 3,
            "mrr@3": (1 / 2 + 0 + 1 / 3) / 3,
            "precision@3": (1 / 3 + 0 + 1 / 3) / 3,
            "coverage@3": 5 / 6,
            "users": 3.0,
        }
    )


def test_idcg_capped_at_k() -> None:
    # 4 relevant items, k = 2, both slots hit: IDCG uses min(4, 2) = 2 ideal hits -> ndcg 1, recall 2/4.
    indptr, indices = _csr([[0, 1, 2, 3]])
    m = ranking_metrics(np.array([[1, 0]]), indptr, indices, n_items=4, k=2)
    assert m["ndcg@2"] == pytest.approx(1.0)
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["precision@2"] == pytest.approx(1.0)


def test_no_evaluable_users_gives_nan_but_coverage() -> None:
    indptr, indices = _csr([[], []])
    m = ranking_metrics(np.array([[0, 1], [1, -1]]), indptr, indices, n_items=4, k=2)
    assert m["users"] == 0.0
    assert math.isnan(m["recall@2"])
    assert math.isnan(m["ndcg@2"])
    assert m["coverage@2"] == pytest.approx(0.5)


def test_ranking_metrics_rejects_bad_input() -> None:
    indptr, indices = _csr([[0]])
    with pytest.raises(ValueError, match="k must be"):
        ranking_metrics(np.array([[0, 1]]), indptr, indices, n_items=3, k=3)
    with pytest.raises(ValueError, match="more than once"):
        ranking_metrics(np.array([[0, 0]]), indptr, indices, n_items=3, k=2)
    with pytest.raises(ValueError, match="topk entries"):
        ranking_metrics(np.array([[0, 5]]), indptr, indices, n_items=3, k=2)
    with pytest.raises(ValueError, match="duplicate"):
        ranking_metrics(np.array([[0, 1]]), *_csr([[0, 0]]), n_items=3, k=2)
    with pytest.raises(ValueError, match="n_users"):
        ranking_metrics(np.array([[0, 1], [1, 2]]), indptr, indices, n_items=3, k=2)


def test_truth_csr_sorts_and_dedups() -> None:
    # pairs (2,5) (0,3) (2,1) (0,3) (2,5): user 0 -> {3}, user 1 -> {}, user 2 -> {1, 5}, user 3 -> {}.
    indptr, indices = truth_csr(np.array([2, 0, 2, 0, 2]), np.array([5, 3, 1, 3, 5]), n_users=4)
    assert indptr.tolist() == [0, 1, 1, 3, 3]
    assert indices.tolist() == [3, 1, 5]
    assert indptr.dtype == np.int64
    assert indices.dtype == np.int64


def test_truth_csr_empty_and_errors() -> None:
    indptr, indices = truth_csr(np.array([], dtype=np.int64), np.array([], dtype=np.int64), n_users=2)
    assert indptr.tolist() == [0, 0, 0]
    assert indices.size == 0
    with pytest.raises(ValueError, match="user indices"):
        truth_csr(np.array([2]), np.array([0]), n_users=2)
    with pytest.raises(ValueError, match="length"):
        truth_csr(np.array([0, 1]), np.array([0]), n_users=2)


def test_top_k_excluding_masks_seen_and_pads() -> None:
    scores = np.array(
        [
            [9.0, 0.0, 0.0, 0.0, 0.0],  # row 0 of the CSR: not in this batch (row_offset=1)
            [0.1, 0.9, 0.5, 0.7, 0.3],  # exclude {1}: 3 (0.7) > 2 (0.5) > 4 (0.3) > 0 (0.1)
            [0.2, 0.8, 0.4, 0.6, 0.1],  # exclude {0,1,2,3}: only item 4 is eligible -> pad with -1
        ],
        dtype=np.float32,
    )
    ex_indptr, ex_indices = _csr([[0], [1], [3, 0, 2, 1]])
    batch = scores[1:].copy()
    top = top_k_excluding(batch, 3, ex_indptr, ex_indices, row_offset=1)
    assert top.tolist() == [[3, 2, 4], [4, -1, -1]]
    assert top.dtype == np.int64
    np.testing.assert_array_equal(batch, scores[1:])  # the caller's scores are not modified


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.longdouble, np.dtype(">f4")])
def test_top_k_excluding_takes_any_float_type(dtype: np.dtype) -> None:
    # torch selects the top k; types it cannot wrap (long double, big-endian) are widened first.
    scores = np.array([[0.1, 0.9, 0.5, 0.7, 0.3], [0.2, 0.8, 0.4, 0.6, 0.1]]).astype(dtype)
    ex_indptr, ex_indices = _csr([[1], []])
    assert top_k_excluding(scores, 2, ex_indptr, ex_indices).tolist() == [[3, 2], [1, 3]]


def test_top_k_excluding_ties_k_larger_than_catalogue_and_neg_inf() -> None:
    ex_indptr, ex_indices = _csr([[], [1]])
    scores = np.array([[1.0, 1.0, 1.0], [2.0, 5.0, -np.inf]], dtype=np.float32)
    # row 0: all tied -> ascending item index, then two -1 pads since k=5 > 3 items.
    # row 1: item 1 excluded, item 2 scored -inf (ineligible) -> only item 0.
    top = top_k_excluding(scores, 5, ex_indptr, ex_indices)
    assert top.tolist() == [[0, 1, 2, -1, -1], [0, -1, -1, -1, -1]]


def test_top_k_excluding_rejects_nan_and_short_csr() -> None:
    ex_indptr, ex_indices = _csr([[]])
    with pytest.raises(ValueError, match="NaN"):
        top_k_excluding(np.array([[np.nan, 1.0]], dtype=np.float32), 1, ex_indptr, ex_indices)
    with pytest.raises(ValueError, match="exclude_indptr"):
        top_k_excluding(np.zeros((2, 2), dtype=np.float32), 1, ex_indptr, ex_indices)


def test_top_k_matches_full_sort_batchwise() -> None:
    # Against a brute-force argsort, processing 50 users in batches of 16 with one global CSR.
    rng = np.random.default_rng(0)
    n_users, n_items, k = 50, 40, 7
    scores = rng.standard_normal((n_users, n_items)).astype(np.float32)
    seen_u = rng.integers(0, n_users, 300)
    seen_i = rng.integers(0, n_items, 300)
    ex_indptr, ex_indices = truth_csr(seen_u, seen_i, n_users)
    got = np.concatenate(
        [
            top_k_excluding(scores[s : s + 16], k, ex_indptr, ex_indices, row_offset=s)
            for s in range(0, n_users, 16)
        ]
    )
    masked = scores.copy()
    masked[seen_u, seen_i] = -np.inf
    expected = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(got, expected)
    # And the metrics accept what top_k_excluding produces.
    m = ranking_metrics(got, ex_indptr, ex_indices, n_items, k)
    assert m["recall@7"] == 0.0  # every recommended item is unseen by construction
