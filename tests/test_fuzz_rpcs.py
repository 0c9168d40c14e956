"""Property-based fuzzing (hypothesis) of every RPC through a real channel to a real server.

Arbitrary ids (empty, huge, control characters, non-ASCII, and invalid UTF-8 through raw
bytes), k and sizes across the int32 range, random filters and diversity options, random
event batches and raw malformed protobuf. Invariants:

* the status is one of OK / INVALID_ARGUMENT / NOT_FOUND / FAILED_PRECONDITION /
  RESOURCE_EXHAUSTED, never INTERNAL or UNKNOWN (or anything else);
* OK answers keep the contract: k items when k eligible exist, no seen, recent or excluded
  item, no duplicates, scores sorted when no diversity re-ranking was asked for, filters held;
* health stays SERVING; every acknowledged event is in the event log afterwards.

``RECSYS_FUZZ_SCALE`` multiplies every example count (``python -m benchmarks.fuzz`` runs this
file with a larger scale); at scale 1 the file makes at least 2,000 calls.
"""

from __future__ import annotations

import collections
import itertools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import polars as pl
import pytest
from conftest import TrainedBundle
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving._proto.recsys.v1 import (
    audiences_pb2,
    audiences_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    profiles_pb2,
    profiles_pb2_grpc,
)
from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving._proto.recsys.v1 import recommender_pb2_grpc as pb2_grpc
from serving.api.background import BackgroundServer
from serving.api.server import ServerOptions
from serving.events.reader import read_events
from serving.lifecycle.live_models import load_bundle_engine
from serving.model.features.vocabulary import FIRST_TOKEN_INDEX

pytestmark = pytest.mark.slow

SCALE = max(1, int(os.environ.get("RECSYS_FUZZ_SCALE", "1")))
ALLOWED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
CALLS: collections.Counter[str] = collections.Counter()
STATUSES: collections.Counter[tuple[str, str]] = collections.Counter()


def _settings(examples: int) -> Any:
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@dataclass(frozen=True)
class Catalogue:
    """What the served bundle holds, to check answers against."""

    users: list[str]
    items: list[str]
    seen: dict[str, frozenset[str]]
    categories: list[str]
    prices: dict[str, float]
    category_of: dict[str, str | None]


@dataclass
class Fuzzed:
    channel: grpc.Channel
    server: BackgroundServer
    events_dir: Path
    catalogue: Catalogue
    acknowledged: set[str]


@pytest.fixture(scope="module")
def fuzzed(trained: TrainedBundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    items = pl.read_parquet(trained.bundle / "items.parquet")
    users = pl.read_parquet(trained.bundle / "users.parquet")
    item_ids = items.get_column("item_id").to_list()
    seen = {
        str(u): frozenset(item_ids[r - FIRST_TOKEN_INDEX] for r in rows)
        for u, rows in zip(users.get_column("user_id"), users.get_column("__sequence"), strict=True)
    }
    catalogue = Catalogue(
        users=[str(u) for u in users.get_column("user_id")],
        items=item_ids,
        seen=seen,
        categories=sorted({c for c in items.get_column("category").to_list() if c is not None}),
        prices=dict(zip(item_ids, items.get_column("price").to_list(), strict=True)),
        category_of=dict(zip(item_ids, items.get_column("category").to_list(), strict=True)),
    )
    events_dir = tmp_path_factory.mktemp("fuzz-events")
    options = ServerOptions(
        host="127.0.0.1", port=0, grace_seconds=1.0, max_workers=2, events_dir=events_dir, max_pending=4096
    )
    server = BackgroundServer(options, lambda: load_bundle_engine(trained.bundle), start_timeout=60)
    with server, grpc.insecure_channel(server.address) as channel:
        yield Fuzzed(channel, server, events_dir, catalogue, set())


def _call(name: str, call: Callable[[], Any]) -> tuple[grpc.StatusCode, Any]:
    """Run one RPC; returns (status, response or None) after checking the status is allowed."""
    CALLS[name] += 1
    try:
        response = call()
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        response, code = None, exc.code()
        if code not in ALLOWED:
            pytest.fail(f"{name}: {code.name}: {exc.details()}")
    STATUSES[(name, code.name)] += 1
    return code, response


# ------------------------------------------------------------------ strategies

WEIRD_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),  # any encodable code point
    max_size=40,
)
HUGE_TEXT = st.text(alphabet="abcé\x00\U0001f600", min_size=60, max_size=400)


def ids(known: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(known),
        st.just(""),
        st.sampled_from(
            [" ", "\x00", "\n", "\t\r", "../../etc/passwd", "' OR 1=1 --", "%s%n", "__popularity"]
        ),
        WEIRD_TEXT,
        HUGE_TEXT,
    )


FLOATS = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def item_filters(draw: st.DrawFn, catalogue: Catalogue) -> pb2.ItemFilter:
    attribute = draw(st.sampled_from(["category", "brand", "price", "tags", "__popularity"]) | WEIRD_TEXT)
    values = st.lists(st.sampled_from(catalogue.categories) | WEIRD_TEXT, max_size=4)
    item_filter = pb2.ItemFilter(attribute=attribute, any_of=draw(values), none_of=draw(values))
    if draw(st.booleans()):
        item_filter.min = draw(FLOATS | st.floats(0, 100))
    if draw(st.booleans()):
        item_filter.max = draw(FLOATS | st.floats(0, 100))
    return item_filter


@st.composite
def diversities(draw: st.DrawFn) -> pb2.Diversity:
    return pb2.Diversity(
        mmr_lambda=draw(st.floats(width=32) | st.sampled_from([0.0, 0.5, 1.0])),
        max_per_category=draw(INT32 | st.integers(0, 5)),
        category_attribute=draw(st.sampled_from(["", "category", "brand", "tags", "price"]) | WEIRD_TEXT),
    )


@st.composite
def recommend_requests(draw: st.DrawFn, catalogue: Catalogue) -> pb2.RecommendRequest:
    """Half plausible requests (the contract checks get OK answers to look at), half hostile."""
    if draw(st.booleans()):
        request = pb2.RecommendRequest(
            user_id=draw(st.sampled_from(catalogue.users) | st.just("a-new-user")),
            k=draw(st.integers(1, 70)),
            recent_item_ids=draw(st.lists(st.sampled_from(catalogue.items), max_size=4)),
            exclude_item_ids=draw(st.lists(st.sampled_from(catalogue.items), max_size=8)),
        )
        if draw(st.booleans()):
            category = st.sampled_from(catalogue.categories)
            request.filters.append(
                pb2.ItemFilter(
                    attribute="category",
                    any_of=draw(st.lists(category, max_size=2)),
                    none_of=[draw(category)],
                )
            )
        if draw(st.booleans()):
            request.filters.append(
                pb2.ItemFilter(attribute="price", min=draw(st.floats(0, 60)), max=draw(st.floats(40, 200)))
            )
        if draw(st.booleans()):
            request.diversity.CopyFrom(
                pb2.Diversity(
                    mmr_lambda=draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])),
                    max_per_category=draw(st.integers(0, 3)),
                )
            )
        return request
    item = ids(catalogue.items)
    request = pb2.RecommendRequest(
        user_id=draw(ids(catalogue.users)),
        k=draw(st.integers(1, 30) | INT32),
        recent_item_ids=draw(st.lists(item, max_size=5)),
        exclude_item_ids=draw(st.lists(item, max_size=8)),
        filters=draw(st.lists(item_filters(catalogue), max_size=2)),
        experiment=draw(st.just("") | WEIRD_TEXT),
    )
    if draw(st.booleans()):
        names = st.sampled_from(["gender", "age", "region", "tier"]) | WEIRD_TEXT
        request.user_attributes.update(draw(st.dictionaries(names, WEIRD_TEXT, max_size=3)))
    if draw(st.booleans()):
        request.diversity.CopyFrom(draw(diversities()))
    return request


# ------------------------------------------------------------------ contract checks


def _check_recommendation(
    request: pb2.RecommendRequest, response: pb2.RecommendResponse, cat: Catalogue
) -> None:
    returned = [item.item_id for item in response.items]
    assert len(returned) == len(set(returned)), "duplicate items"
    assert len(returned) <= request.k
    forbidden = (
        set(request.exclude_item_ids) | set(request.recent_item_ids) | cat.seen.get(request.user_id, set())
    )
    assert not forbidden & set(returned), "a seen, recent or excluded item was returned"
    diversity = request.HasField("diversity") and (
        request.diversity.mmr_lambda not in (0.0, 1.0) or request.diversity.max_per_category > 0
    )
    if not diversity:
        scores = [item.score for item in response.items]
        assert scores == sorted(scores, reverse=True), "scores not sorted"
    for item_filter in request.filters:
        for item_id in returned:
            _check_filter(item_filter, item_id, cat)
    if not request.filters and not (request.HasField("diversity") and request.diversity.max_per_category > 0):
        known_forbidden = forbidden & set(cat.items)
        eligible = len(cat.items) - len(known_forbidden)
        assert len(returned) == min(request.k, eligible), "fewer than k items while k were eligible"


def _check_filter(item_filter: pb2.ItemFilter, item_id: str, cat: Catalogue) -> None:
    if item_filter.attribute == "category":
        value = cat.category_of[item_id]
        if item_filter.any_of:
            assert value in item_filter.any_of
        assert value not in item_filter.none_of
    if item_filter.attribute == "price":
        price = cat.prices[item_id]
        if item_filter.HasField("min"):
            assert price >= item_filter.min
        if item_filter.HasField("max"):
            assert price <= item_filter.max


# ------------------------------------------------------------------ the fuzzed RPCs


@given(data=st.data())
@_settings(600)
def test_fuzz_recommend(fuzzed: Fuzzed, data: st.DataObject) -> None:
    request = data.draw(recommend_requests(fuzzed.catalogue))
    stub = pb2_grpc.RecommenderStub(fuzzed.channel)
    code, response = _call("Recommend", lambda: stub.Recommend(request, timeout=30))
    if code is grpc.StatusCode.OK:
        _check_recommendation(request, response, fuzzed.catalogue)


@given(data=st.data())
@_settings(120)
def test_fuzz_batch_recommend(fuzzed: Fuzzed, data: st.DataObject) -> None:
    requests = data.draw(st.lists(recommend_requests(fuzzed.catalogue), max_size=6))
    stub = pb2_grpc.RecommenderStub(fuzzed.channel)
    batch = pb2.BatchRecommendRequest(requests=requests)
    code, response = _call("BatchRecommend", lambda: stub.BatchRecommend(batch, timeout=30))
    if code is grpc.StatusCode.OK:
        assert len(response.responses) == len(requests)
        for request, answer in zip(requests, response.responses, strict=True):
            _check_recommendation(request, answer, fuzzed.catalogue)


@given(data=st.data())
@_settings(300)
def test_fuzz_similar_items(fuzzed: Fuzzed, data: st.DataObject) -> None:
    cat = fuzzed.catalogue
    request = pb2.SimilarItemsRequest(
        item_id=data.draw(ids(cat.items)),
        k=data.draw(st.integers(1, 30) | INT32),
        filters=data.draw(st.lists(item_filters(cat), max_size=2)),
        exclude_item_ids=data.draw(st.lists(ids(cat.items), max_size=5)),
    )
    stub = pb2_grpc.RecommenderStub(fuzzed.channel)
    code, response = _call("SimilarItems", lambda: stub.SimilarItems(request, timeout=30))
    if code is grpc.StatusCode.OK:
        returned = [item.item_id for item in response.items]
        assert request.item_id not in returned
        assert not set(request.exclude_item_ids) & set(returned)
        assert len(returned) == len(set(returned)) <= request.k
        scores = [item.score for item in response.items]
        assert scores == sorted(scores, reverse=True)


@given(user_id=st.data())
@_settings(200)
def test_fuzz_user_embedding_and_profile(fuzzed: Fuzzed, user_id: st.DataObject) -> None:
    user = user_id.draw(ids(fuzzed.catalogue.users))
    recommender = pb2_grpc.RecommenderStub(fuzzed.channel)
    code, response = _call(
        "GetUserEmbedding",
        lambda: recommender.GetUserEmbedding(pb2.GetUserEmbeddingRequest(user_id=user), timeout=30),
    )
    if code is grpc.StatusCode.OK:
        assert response.values
        assert all(math.isfinite(v) for v in response.values)
    profiles = profiles_pb2_grpc.MemberProfilesStub(fuzzed.channel)
    request = profiles_pb2.GetUserProfileRequest(user_id=user, include_embedding=user_id.draw(st.booleans()))
    code, response = _call("GetUserProfile", lambda: profiles.GetUserProfile(request, timeout=30))
    if code is grpc.StatusCode.OK:
        assert response.user_id == user


@given(data=st.data())
@_settings(200)
def test_fuzz_find_similar_users(fuzzed: Fuzzed, data: st.DataObject) -> None:
    request = audiences_pb2.FindSimilarUsersRequest(
        seed_user_ids=data.draw(st.lists(ids(fuzzed.catalogue.users), max_size=8)),
        size=data.draw(st.integers(1, 50) | INT32),
        scoring=data.draw(st.integers(0, 3) | INT32),
    )
    stub = audiences_pb2_grpc.AudiencesStub(fuzzed.channel)
    code, response = _call("FindSimilarUsers", lambda: stub.FindSimilarUsers(request, timeout=30))
    if code is grpc.StatusCode.OK:
        returned = [u.user_id for u in response.users]
        assert len(returned) == len(set(returned)) <= request.size
        assert not set(request.seed_user_ids) & set(returned)
        scores = [u.score for u in response.users]
        assert scores == sorted(scores, reverse=True)


_EVENT_IDS = itertools.count()


@st.composite
def events(draw: st.DrawFn, catalogue: Catalogue) -> events_pb2.Event:
    return events_pb2.Event(
        user_id=draw(ids(catalogue.users)),
        item_id=draw(ids(catalogue.items)),
        event_type=draw(st.integers(1, 4) | st.integers(1, 4) | INT32),
        experiment=draw(st.just("") | st.just("home_feed") | WEIRD_TEXT | HUGE_TEXT),
        variant=draw(st.just("") | WEIRD_TEXT),
        request_id=draw(st.just("") | WEIRD_TEXT),
        timestamp_ms=draw(
            st.integers(1_600_000_000_000, 1_760_000_000_000)
            | st.integers(1_600_000_000_000, 1_760_000_000_000)
            | st.integers(-(2**63), 2**63 - 1)
            | st.just(0)
        ),
        value=draw(st.floats(0, 500) | st.floats(0, 500) | FLOATS),
        position=draw(st.integers(0, 20) | INT32),
        event_id=f"fuzz-{next(_EVENT_IDS)}",  # assigned, to find every acknowledged event later
    )


@given(data=st.data())
@_settings(200)
def test_fuzz_log_events(fuzzed: Fuzzed, data: st.DataObject) -> None:
    batch = data.draw(st.lists(events(fuzzed.catalogue), max_size=12))
    stub = events_pb2_grpc.EventCollectorStub(fuzzed.channel)
    code, response = _call(
        "LogEvents", lambda: stub.LogEvents(events_pb2.LogEventsRequest(events=batch), timeout=30)
    )
    if code is grpc.StatusCode.OK:
        rejected = {r.index for r in response.rejections}
        assert response.accepted + len(rejected) == len(batch)
        fuzzed.acknowledged.update(e.event_id for i, e in enumerate(batch) if i not in rejected)


RAW_METHODS = (
    "/recsys.v1.Recommender/Recommend",
    "/recsys.v1.Recommender/BatchRecommend",
    "/recsys.v1.Recommender/SimilarItems",
    "/recsys.v1.Recommender/GetUserEmbedding",
    "/recsys.v1.MemberProfiles/GetUserProfile",
    "/recsys.v1.Audiences/FindSimilarUsers",
    "/recsys.v1.EventCollector/LogEvents",
)


@st.composite
def raw_messages(draw: st.DrawFn) -> bytes:
    """Arbitrary bytes, or a string field (any number) whose payload is arbitrary bytes (often
    invalid UTF-8), possibly nested one level, after a valid prefix."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    number = draw(st.integers(1, 11))
    payload = draw(st.binary(max_size=60))
    field = bytes([number << 3 | 2, len(payload)]) + payload
    if draw(st.booleans()):
        field = bytes([1 << 3 | 2, len(field)]) + field
    return draw(st.binary(max_size=10)) + field if draw(st.booleans()) else field


@given(method=st.sampled_from(RAW_METHODS), data=raw_messages())
@_settings(350)
def test_fuzz_raw_bytes(fuzzed: Fuzzed, method: str, data: bytes) -> None:
    call = fuzzed.channel.unary_unary(method)  # generic client: bytes in, bytes out
    _call(f"raw {method.rsplit('/', 1)[1]}", lambda: call(data, timeout=30))


# ------------------------------------------------------------------ afterwards


def test_health_stays_serving_and_every_acknowledged_event_is_logged(fuzzed: Fuzzed) -> None:
    health = health_pb2_grpc.HealthStub(fuzzed.channel)
    for service in ("", "recsys.v1.Recommender", "recsys.v1.EventCollector"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    fuzzed.server.stop()  # a graceful stop compacts the whole WAL into Parquet
    if fuzzed.acknowledged:
        logged = set(read_events(fuzzed.events_dir).get_column("event_id").to_list())
        assert fuzzed.acknowledged <= logged, f"{len(fuzzed.acknowledged - logged)} acknowledged events lost"
    total = sum(CALLS.values())
    print(f"\nfuzzed calls: {total} ({dict(sorted(CALLS.items()))})")
    print(f"acknowledged events: {len(fuzzed.acknowledged)}")
    print("statuses:", dict(sorted(STATUSES.items())))
    if len(CALLS) == 7 + len(RAW_METHODS):  # every fuzz test of this file ran
        assert total >= 2000 * SCALE
