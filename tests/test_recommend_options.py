"""Request-time options on the real trained bundle over a real gRPC server: session items,
cold-start attributes, exclusions, filters, diversity, explanations, SimilarItems and
BatchRecommend."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import polars as pl
import pytest
from conftest import TrainedBundle

from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving.api.background import BackgroundServer
from serving.api.server import ServerOptions
from serving.client import RecommenderClient, recommend_request
from serving.recommend.cold_start import RequestAttributes
from serving.recommend.engine import TwoTowerEngine

pytestmark = pytest.mark.slow

GHOST = "ghost-user"


@dataclass(frozen=True)
class Catalogue:
    """The bundle's item attributes by item id."""

    category: dict[str, str]
    brand: dict[str, str]
    price: dict[str, float]
    tags: dict[str, list[str]]

    @property
    def ids(self) -> list[str]:
        return list(self.category)


@pytest.fixture(scope="module")
def catalogue(engine: TwoTowerEngine) -> Catalogue:
    items = engine.bundle.items
    ids = items.get_column("item_id").to_list()

    def column(name: str) -> dict[str, Any]:
        return dict(zip(ids, items.get_column(name).to_list(), strict=True))

    tags = {item: list(values or []) for item, values in column("tags").items()}
    return Catalogue(column("category"), column("brand"), column("price"), tags)


@pytest.fixture(scope="module")
def seen(trained: TrainedBundle) -> dict[str, set[str]]:
    grouped = trained.interactions.group_by("user_id").agg(pl.col("item_id").unique())
    return {user: set(items) for user, items in grouped.iter_rows()}


@pytest.fixture(scope="module")
def users(seen: dict[str, set[str]]) -> list[str]:
    """Thirty known users, sorted for determinism."""
    return sorted(seen)[:30]


@pytest.fixture(scope="module")
def server(trained: TrainedBundle) -> Iterator[BackgroundServer]:
    bundle = trained.bundle
    options = ServerOptions(host="127.0.0.1", port=0, grace_seconds=0.5, max_workers=2)
    with BackgroundServer(options, lambda: TwoTowerEngine.load(bundle), start_timeout=30) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> Iterator[RecommenderClient]:
    with RecommenderClient(server.address, timeout=20.0) as connected:
        yield connected


def _ids(response: pb2.RecommendResponse | pb2.SimilarItemsResponse) -> list[str]:
    return [item.item_id for item in response.items]


def _invalid(call: Callable[[], object]) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details: str = info.value.details()
    return details


# ------------------------------------------------------------------ filters and exclusions


def _filter_cases(catalogue: Catalogue) -> list[tuple[list[pb2.ItemFilter], Callable[[str], bool]]]:
    by_size = [c for c, _ in pl.Series(list(catalogue.category.values())).value_counts(sort=True).rows()]
    big, second = by_size[0], by_size[1]
    tag = pl.Series([t for ts in catalogue.tags.values() for t in ts]).mode().sort()[0]
    low, high = np.quantile(list(catalogue.price.values()), [0.25, 0.75])
    return [
        (
            [pb2.ItemFilter(attribute="category", any_of=[big, second])],
            lambda i: catalogue.category[i] in (big, second),
        ),
        ([pb2.ItemFilter(attribute="category", none_of=[big])], lambda i: catalogue.category[i] != big),
        ([pb2.ItemFilter(attribute="tags", any_of=[tag])], lambda i: tag in catalogue.tags[i]),
        ([pb2.ItemFilter(attribute="tags", none_of=[tag])], lambda i: tag not in catalogue.tags[i]),
        (
            [pb2.ItemFilter(attribute="price", min=float(low), max=float(high))],
            lambda i: low <= catalogue.price[i] <= high,
        ),
        (
            [
                pb2.ItemFilter(attribute="category", none_of=[big]),
                pb2.ItemFilter(attribute="tags", any_of=[tag]),
                pb2.ItemFilter(attribute="price", max=float(high)),
            ],
            lambda i: (
                catalogue.category[i] != big and tag in catalogue.tags[i] and catalogue.price[i] <= high
            ),
        ),
    ]


def test_filters_are_never_violated_and_fill_k(
    client: RecommenderClient, catalogue: Catalogue, users: list[str], seen: dict[str, set[str]]
) -> None:
    k = 6
    for filters, passes in _filter_cases(catalogue):
        for user in [*users, GHOST]:
            # The unfiltered full ranking restricted to eligible items is the filtered answer.
            full = _ids(client.recommend(user, 1000))
            eligible = [i for i in full if passes(i)]
            response = client.recommend(user, k, filters=filters)
            items = _ids(response)
            assert all(passes(i) for i in items), (user, filters)
            assert not set(items) & seen.get(user, set())
            assert len(items) == min(k, len(eligible)), (user, filters)
            assert items == eligible[:k], (user, filters)
            assert response.fallback is (user == GHOST)


def test_filters_reaching_fewer_than_k_items_return_all_of_them(
    client: RecommenderClient, catalogue: Catalogue, users: list[str], seen: dict[str, set[str]]
) -> None:
    rare = min(set(catalogue.brand.values()), key=lambda b: (list(catalogue.brand.values()).count(b), b))
    brand_items = {i for i, b in catalogue.brand.items() if b == rare}
    for user in users[:5]:
        response = client.recommend(user, 50, filters=[pb2.ItemFilter(attribute="brand", any_of=[rare])])
        assert set(_ids(response)) == brand_items - seen[user]


def test_exclude_item_ids_are_never_returned(client: RecommenderClient, users: list[str]) -> None:
    k = 5
    for user in [*users[:10], GHOST]:
        full = _ids(client.recommend(user, 1000))
        excluded = [full[0], full[2], "no-such-item"]
        items = _ids(client.recommend(user, k, exclude_item_ids=excluded))
        assert items == [i for i in full if i not in excluded][:k]


# ------------------------------------------------------------------ session items and cold start


def test_recent_items_change_the_answer_and_are_excluded(
    client: RecommenderClient, users: list[str], seen: dict[str, set[str]]
) -> None:
    k = 8
    for user in users[:10]:
        plain = client.recommend(user, k)
        unseen = _ids(client.recommend(user, 1000))
        recent = [unseen[0], unseen[len(unseen) // 2], "no-such-item"]
        response = client.recommend(user, k, recent_item_ids=recent)
        items = _ids(response)
        assert len(items) == k
        assert not set(items) & (set(recent) | seen[user])
        assert response.fallback is False
        before = {i.item_id: i.score for i in plain.items}
        after = {i.item_id: i.score for i in response.items}
        # The user embedding moved: the scores of items in both lists changed.
        shared = before.keys() & after.keys()
        assert shared
        assert any(abs(before[i] - after[i]) > 1e-4 for i in shared), user
        for item in response.items:
            assert item.explanation_item_id in seen[user] | set(recent[:2])


def test_recent_items_explain_like_history_items(
    client: RecommenderClient, engine: TwoTowerEngine, users: list[str]
) -> None:
    """A known user's recent items join the history the explanations are drawn from: no
    recent item is more similar to a recommended item than the item named to explain it."""
    vectors = engine.item_vectors
    rows = {item: i for i, item in enumerate(engine.bundle.item_ids.to_list())}
    explained_by_recent = 0
    for user in users[:10]:
        unseen = _ids(client.recommend(user, 1000))
        recent = [unseen[3], unseen[len(unseen) // 3]]
        for item in client.recommend(user, 10, recent_item_ids=recent).items:
            target = vectors[rows[item.item_id]]
            best = vectors[rows[item.explanation_item_id]] @ target
            assert all(vectors[rows[r]] @ target <= best + 1e-5 for r in recent), user
            explained_by_recent += item.explanation_item_id in recent
    assert explained_by_recent > 0


def test_unknown_user_with_recent_items_is_personalised(
    client: RecommenderClient, catalogue: Catalogue
) -> None:
    k = 10
    fallback = client.recommend(GHOST, k)
    assert fallback.fallback is True
    assert all(item.explanation_item_id == "" for item in fallback.items)
    popular = _ids(fallback)
    for recent in ([popular[0]], [catalogue.ids[5], catalogue.ids[17], "no-such-item"]):
        response = client.recommend(GHOST, k, recent_item_ids=recent)
        items = _ids(response)
        assert response.fallback is False
        assert response.fallback_reason == pb2.FALLBACK_REASON_UNSPECIFIED
        assert len(items) == k
        assert not set(items) & set(recent)
        assert items != [i for i in popular if i not in recent][:k]
        assert {item.explanation_item_id for item in response.items} <= set(recent) - {"no-such-item"}
    # Only ids the model does not know: nothing to personalise with.
    assert client.recommend(GHOST, k, recent_item_ids=["no-such-item"]).fallback is True


def _profile(trained: TrainedBundle, user: str) -> dict[str, str]:
    row = pl.read_parquet(trained.data.users_path).filter(pl.col("user_id") == user)
    return {name: str(row.get_column(name)[0]) for name in ("gender", "age", "region", "tier", "signup_date")}


def test_cold_start_attributes_personalise_unknown_users(
    trained: TrainedBundle, client: RecommenderClient, users: list[str]
) -> None:
    k = 10
    young = {"gender": "F", "age": "19", "region": "north", "tier": "bronze", "signup_date": "2025-01-15"}
    old = {"gender": "M", "age": "77", "region": "south", "tier": "platinum", "signup_date": "2022-03-01"}
    answers = []
    for attributes in (young, old):
        response = client.recommend(GHOST, k, user_attributes=attributes)
        assert response.fallback is False
        assert len(response.items) == k
        assert all(item.explanation_item_id == "" for item in response.items)  # no history
        answers.append([(i.item_id, round(i.score, 4)) for i in response.items])
    assert answers[0] != answers[1]
    # A partial profile is fine (the rest counts as missing).
    assert client.recommend(GHOST, k, user_attributes={"age": "40"}).fallback is False


def test_stored_attributes_given_again_change_nothing_and_overrides_apply(
    trained: TrainedBundle, client: RecommenderClient, users: list[str]
) -> None:
    for user in users[:5]:
        plain = client.recommend(user, 10)
        same = client.recommend(user, 10, user_attributes=_profile(trained, user))
        assert _ids(same) == _ids(plain)
        np.testing.assert_allclose([i.score for i in same.items], [i.score for i in plain.items], atol=1e-5)
        override = {
            "age": "99",
            "tier": "platinum" if _profile(trained, user)["tier"] != "platinum" else "bronze",
        }
        changed = client.recommend(user, 10, user_attributes=override)
        assert [i.score for i in changed.items] != pytest.approx([i.score for i in plain.items], abs=1e-5)


def test_multi_valued_attributes_are_comma_separated(engine: TwoTowerEngine) -> None:
    # The bundle's users have no list attribute; its items do, and the encoding path is the same.
    bundle = engine.bundle
    item_features = bundle.item_features()
    profiles = RequestAttributes(bundle.item_encoder, bundle.items, item_features)
    row = 3
    stored = bundle.items.row(row, named=True)
    given = {
        "tags": " , ".join(stored["tags"]),
        "price": str(stored["price"]),
        "category": stored["category"],
    }
    encoded = profiles.encode(stored["item_id"], None, given)
    for name in given:
        np.testing.assert_array_equal(encoded[name][0], item_features[name][row])


def test_bad_attribute_and_filter_names_are_invalid_arguments(client: RecommenderClient) -> None:
    details = _invalid(lambda: client.recommend("u000001", 5, user_attributes={"shoe_size": "42"}))
    assert details.startswith("user_attributes: unknown user attribute 'shoe_size'")
    assert "known: gender, age, region, tier, signup_date" in details
    details = _invalid(lambda: client.recommend(GHOST, 5, user_attributes={"email": "a@b.example"}))
    assert "'email'" in details  # personal data is never a feature, so never an attribute
    details = _invalid(lambda: client.recommend("u000001", 5, user_attributes={"age": "old"}))
    assert details.startswith("user_attributes[age]: 'old' is not a valid")

    unknown = pb2.ItemFilter(attribute="colour", any_of=["red"])
    details = _invalid(lambda: client.recommend("u000001", 5, filters=[unknown]))
    assert (
        details
        == "filters[0].attribute: unknown item attribute 'colour' (known: category, brand, price, tags)"
    )
    details = _invalid(lambda: client.similar_items("i000001", 5, filters=[unknown]))
    assert details.startswith("filters[0].attribute: unknown item attribute 'colour'")
    bad_range = pb2.ItemFilter(attribute="price", min=10.0, max=5.0)
    assert _invalid(lambda: client.recommend("u000001", 5, filters=[bad_range])).startswith("filters[0]: ")
    not_numeric = pb2.ItemFilter(attribute="category", min=1.0)
    assert "numeric" in _invalid(lambda: client.recommend("u000001", 5, filters=[not_numeric]))
    empty = pb2.ItemFilter(attribute="category")
    assert _invalid(lambda: client.recommend("u000001", 5, filters=[empty])).startswith("filters[0]: ")

    for diversity, field in [
        (pb2.Diversity(mmr_lambda=1.5), "diversity.mmr_lambda"),
        (pb2.Diversity(max_per_category=-1), "diversity.max_per_category"),
        (pb2.Diversity(max_per_category=1, category_attribute="tags"), "diversity.category_attribute"),
    ]:
        assert _invalid(lambda d=diversity: client.recommend("u000001", 5, diversity=d)).startswith(field)


# ------------------------------------------------------------------ diversity and explanations


def test_category_cap_of_one_gives_distinct_categories(
    client: RecommenderClient, catalogue: Catalogue, users: list[str]
) -> None:
    k = 8
    cap = pb2.Diversity(max_per_category=1)
    for user in [*users[:10], GHOST]:
        items = _ids(client.recommend(user, k, diversity=cap))
        assert len(items) == k
        assert len({catalogue.category[i] for i in items}) == k, user
    by_brand = pb2.Diversity(max_per_category=2, category_attribute="brand")
    for user in users[:5]:
        items = _ids(client.recommend(user, 12, diversity=by_brand))
        assert len(items) == 12
        assert (
            max(list(map(catalogue.brand.get, items)).count(b) for b in map(catalogue.brand.get, items)) <= 2
        )


def test_category_cap_can_exhaust_the_catalogue(client: RecommenderClient, catalogue: Catalogue) -> None:
    categories = set(catalogue.category.values())
    items = _ids(client.recommend(GHOST, 1000, diversity=pb2.Diversity(max_per_category=1)))
    assert len(items) == len(categories)


def test_mmr_lowers_mean_pairwise_similarity(
    client: RecommenderClient, engine: TwoTowerEngine, users: list[str]
) -> None:
    vectors = engine.item_vectors
    rows = {item: i for i, item in enumerate(engine.bundle.item_ids.to_list())}

    def mean_similarity(items: list[str]) -> float:
        picked = vectors[[rows[i] for i in items]]
        sims = picked @ picked.T
        return float(sims[np.triu_indices(len(items), 1)].mean())

    plain_means, diverse_means = [], []
    for user in users[:12]:
        plain = client.recommend(user, 10)
        same = client.recommend(user, 10, diversity=pb2.Diversity(mmr_lambda=1.0))
        assert _ids(same) == _ids(plain)
        diverse = client.recommend(user, 10, diversity=pb2.Diversity(mmr_lambda=0.3))
        assert len(diverse.items) == 10
        plain_means.append(mean_similarity(_ids(plain)))
        diverse_means.append(mean_similarity(_ids(diverse)))
    assert np.mean(diverse_means) < np.mean(plain_means) - 0.01


def test_mmr_reranks_the_popularity_fallback(
    client: RecommenderClient, engine: TwoTowerEngine, catalogue: Catalogue
) -> None:
    vectors = engine.item_vectors
    rows = {item: i for i, item in enumerate(engine.bundle.item_ids.to_list())}

    def mean_similarity(items: list[str]) -> float:
        picked = vectors[[rows[i] for i in items]]
        return float((picked @ picked.T)[np.triu_indices(len(items), 1)].mean())

    plain = client.recommend(GHOST, 10)
    same = client.recommend(GHOST, 10, diversity=pb2.Diversity(mmr_lambda=1.0))
    diverse = client.recommend(GHOST, 10, diversity=pb2.Diversity(mmr_lambda=0.2))
    assert diverse.fallback
    assert diverse.fallback_reason == pb2.FALLBACK_REASON_UNKNOWN_USER
    assert _ids(same) == _ids(plain)
    assert len(diverse.items) == 10
    assert len(set(_ids(diverse))) == 10
    assert _ids(diverse) != _ids(plain)
    assert _ids(diverse)[0] == _ids(plain)[0]  # the most popular item is picked first
    assert mean_similarity(_ids(diverse)) < mean_similarity(_ids(plain))
    # With the category cap as well: both apply, still k items.
    capped = _ids(client.recommend(GHOST, 10, diversity=pb2.Diversity(mmr_lambda=0.2, max_per_category=1)))
    assert len(capped) == 10
    assert len({catalogue.category[i] for i in capped}) == 10


def test_explanations_are_history_items(
    client: RecommenderClient, engine: TwoTowerEngine, users: list[str], seen: dict[str, set[str]]
) -> None:
    vectors = engine.item_vectors
    rows = {item: i for i, item in enumerate(engine.bundle.item_ids.to_list())}
    for user in users[:10]:
        response = client.recommend(user, 10)
        explanations = [item.explanation_item_id for item in response.items]
        assert all(explanations), user
        assert set(explanations) <= seen[user]
        # The explanation is the most similar of the user's (recent) history items.
        for item in response.items:
            best = vectors[rows[item.explanation_item_id]] @ vectors[rows[item.item_id]]
            assert all(vectors[rows[h]] @ vectors[rows[item.item_id]] <= best + 1e-5 for h in explanations)


# ------------------------------------------------------------------ SimilarItems


def test_similar_items(client: RecommenderClient, engine: TwoTowerEngine, catalogue: Catalogue) -> None:
    vectors = engine.item_vectors
    ids = engine.bundle.item_ids.to_list()
    for row in (0, 7, 33):
        item = ids[row]
        response = client.similar_items(item, 5)
        items = _ids(response)
        expected = [ids[r] for r in np.argsort(-(vectors @ vectors[row]), kind="stable") if r != row][:5]
        assert len(items) == 5
        assert item not in items
        assert set(items) == set(expected)
        scores = [i.score for i in response.items]
        assert all(a >= b for a, b in itertools.pairwise(scores))
        assert response.model_version == engine.model_version

        category = catalogue.category[item]
        same = [pb2.ItemFilter(attribute="category", any_of=[category])]
        in_category = [i for i in ids if catalogue.category[i] == category and i != item]
        filtered = _ids(client.similar_items(item, 5, filters=same, exclude_item_ids=items[:1]))
        assert all(catalogue.category[i] == category for i in filtered)
        assert item not in filtered
        assert items[0] not in filtered
        assert len(filtered) == min(5, len([i for i in in_category if i != items[0]]))


def test_similar_items_unknown_item_and_bad_k(client: RecommenderClient) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.similar_items("no-such-item", 5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-item" in info.value.details()
    assert _invalid(lambda: client.similar_items("i000001", 0)) == "k: must be in 1..1000, got 0"
    assert _invalid(lambda: client.similar_items("i000001", 1001)) == "k: must be in 1..1000, got 1001"


# ------------------------------------------------------------------ BatchRecommend


def test_batch_recommend_equals_single_requests_in_order(
    client: RecommenderClient, catalogue: Catalogue, users: list[str], trained: TrainedBundle
) -> None:
    cheap = pb2.ItemFilter(attribute="price", max=float(np.median(list(catalogue.price.values()))))
    requests = [
        recommend_request(users[0], 5),
        recommend_request(GHOST, 4),
        recommend_request(users[1], 7, filters=[cheap]),
        recommend_request(users[2], 3, recent_item_ids=[catalogue.ids[4]]),
        recommend_request("ghost-2", 6, user_attributes=_profile(trained, users[3])),
        recommend_request(users[4], 5, filters=[cheap], exclude_item_ids=[catalogue.ids[1]]),
        recommend_request(users[5], 6, diversity=pb2.Diversity(mmr_lambda=0.5, max_per_category=2)),
        recommend_request(GHOST, 5, filters=[cheap], recent_item_ids=[catalogue.ids[9]]),
        *[recommend_request(user, 5) for user in users[6:20]],
    ]
    responses = client.batch_recommend(requests).responses
    assert len(responses) == len(requests)
    for request, batched in zip(requests, responses, strict=True):
        single = client.stub.Recommend(request, timeout=client.timeout)
        assert _ids(batched) == _ids(single), request.user_id
        np.testing.assert_allclose(
            [i.score for i in batched.items], [i.score for i in single.items], atol=1e-5
        )
        assert [i.explanation_item_id for i in batched.items] == [i.explanation_item_id for i in single.items]
        assert (batched.fallback, batched.model_version) == (single.fallback, single.model_version)


def test_batch_recommend_limits(client: RecommenderClient, users: list[str]) -> None:
    too_many = [recommend_request(users[0], 1)] * 1001
    details = _invalid(lambda: client.batch_recommend(too_many))
    assert details == "requests: at most 1000 requests per call, got 1001"
    bad = [recommend_request(users[0], 1), recommend_request(users[1], 1, user_attributes={"x": "1"})]
    assert _invalid(lambda: client.batch_recommend(bad)).startswith("requests[1].user_attributes: ")
    assert len(client.batch_recommend([recommend_request(users[0], 2)] * 1000).responses) == 1000
