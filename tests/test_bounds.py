"""Every documented bound, through a real server: over it -> INVALID_ARGUMENT naming the field and
the limit; at it -> accepted. Undecodable bytes (invalid UTF-8, malformed protobuf) sent with a
generic client -> INVALID_ARGUMENT, never INTERNAL; an oversized message -> RESOURCE_EXHAUSTED."""

from __future__ import annotations

import math
from collections.abc import Callable

import grpc
import pytest
from conftest import TrainedBundle
from google.protobuf.message import Message

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
from serving.api import bounds
from serving.api.decode import bad_utf8_field, parse_request

pytestmark = pytest.mark.slow

LONG_ID = "x" * (bounds.MAX_ID_BYTES + 1)
# 65 four-byte characters: within 256 characters, over 256 UTF-8 bytes.
WIDE_ID = "\U0001f600" * 65


def _user(trained: TrainedBundle) -> str:
    return str(trained.interactions.get_column("user_id")[0])


def _invalid(call: Callable[[], object]) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return info.value.details() or ""


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"user_id": LONG_ID}, "user_id: at most 256 UTF-8 bytes, got 257"),
        ({"user_id": WIDE_ID}, "user_id: at most 256 UTF-8 bytes, got 260"),
        ({"experiment": LONG_ID}, "experiment: at most 256 UTF-8 bytes"),
        ({"force_variant": LONG_ID}, "force_variant: at most 256 UTF-8 bytes"),
        ({"recent_item_ids": ["i"] * 1001}, "recent_item_ids: at most 1000 items, got 1001"),
        ({"recent_item_ids": ["i", LONG_ID]}, "recent_item_ids[1]: at most 256 UTF-8 bytes"),
        ({"exclude_item_ids": ["i"] * 1001}, "exclude_item_ids: at most 1000 items, got 1001"),
        (
            {"filters": [pb2.ItemFilter(attribute="a", any_of=["v"])] * 33},
            "filters: at most 32 filters, got 33",
        ),
        ({"filters": [pb2.ItemFilter(attribute=LONG_ID)]}, "filters[0].attribute: at most 256 UTF-8 bytes"),
        (
            {"filters": [pb2.ItemFilter(attribute="a", any_of=["v"] * 1001)]},
            "filters[0].any_of: at most 1000",
        ),
        (
            {"filters": [pb2.ItemFilter(attribute="a", none_of=["v", LONG_ID])]},
            "filters[0].none_of[1]: at most",
        ),
        (
            {"filters": [pb2.ItemFilter(attribute="a", min=math.nan)]},
            "filters[0].min: must be a finite number",
        ),
        (
            {"filters": [pb2.ItemFilter(attribute="a", max=math.inf)]},
            "filters[0].max: must be a finite number",
        ),
        (
            {"user_attributes": {f"a{i}": "v" for i in range(65)}},
            "user_attributes: at most 64 attributes, got 65",
        ),
        ({"user_attributes": {LONG_ID: "v"}}, "user_attributes name: at most 256 UTF-8 bytes"),
        ({"user_attributes": {"a": "v" * 1025}}, "user_attributes['a']: at most 1024 UTF-8 bytes"),
        ({"diversity": pb2.Diversity(mmr_lambda=math.nan)}, "diversity.mmr_lambda: must be a finite number"),
        (
            {"diversity": pb2.Diversity(category_attribute=LONG_ID)},
            "diversity.category_attribute: at most 256",
        ),
    ],
    ids=lambda value: str(value)[:40] if isinstance(value, str) else None,
)
def test_recommend_bounds(
    served_channel: grpc.Channel, trained: TrainedBundle, fields: dict, message: str
) -> None:
    stub = pb2_grpc.RecommenderStub(served_channel)
    request = pb2.RecommendRequest(user_id=_user(trained), k=5)
    for name, value in fields.items():
        if name in ("diversity",):
            getattr(request, name).CopyFrom(value)
        elif name == "user_attributes":
            request.user_attributes.update(value)
        elif isinstance(value, list):
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    assert message in _invalid(lambda: stub.Recommend(request, timeout=10))
    batch = pb2.BatchRecommendRequest(requests=[pb2.RecommendRequest(user_id="u", k=1), request])
    assert f"requests[1].{message}" in _invalid(lambda: stub.BatchRecommend(batch, timeout=10))


def test_requests_at_the_bounds_are_accepted(served_channel: grpc.Channel, trained: TrainedBundle) -> None:
    stub = pb2_grpc.RecommenderStub(served_channel)
    request = pb2.RecommendRequest(
        user_id="u" * 256,
        k=5,
        recent_item_ids=["i"] * 1000,
        exclude_item_ids=[f"x{i}" for i in range(1000)],
    )
    assert len(stub.Recommend(request, timeout=10).items) == 5
    batch = pb2.BatchRecommendRequest(requests=[pb2.RecommendRequest(user_id=_user(trained), k=1)] * 1000)
    assert len(stub.BatchRecommend(batch, timeout=30).responses) == 1000
    too_many = pb2.BatchRecommendRequest(requests=[pb2.RecommendRequest(user_id="u", k=1)] * 1001)
    assert "requests: at most 1000 requests per call, got 1001" in _invalid(
        lambda: stub.BatchRecommend(too_many, timeout=10)
    )


def test_other_services_bounds(served_channel: grpc.Channel, trained: TrainedBundle) -> None:
    recommender = pb2_grpc.RecommenderStub(served_channel)
    item = str(trained.interactions.get_column("item_id")[0])
    cases: list[tuple[Callable[[], object], str]] = [
        (
            lambda: recommender.SimilarItems(pb2.SimilarItemsRequest(item_id=LONG_ID, k=3)),
            "item_id: at most 256",
        ),
        (
            lambda: recommender.SimilarItems(
                pb2.SimilarItemsRequest(item_id=item, k=3, exclude_item_ids=["i"] * 1001)
            ),
            "exclude_item_ids: at most 1000 items",
        ),
        (
            lambda: recommender.SimilarItems(
                pb2.SimilarItemsRequest(
                    item_id=item, k=3, filters=[pb2.ItemFilter(attribute="a", min=-math.inf)]
                )
            ),
            "filters[0].min: must be a finite number",
        ),
        (
            lambda: recommender.GetUserEmbedding(pb2.GetUserEmbeddingRequest(user_id=LONG_ID)),
            "user_id: at most 256 UTF-8 bytes",
        ),
        (
            lambda: profiles_pb2_grpc.MemberProfilesStub(served_channel).GetUserProfile(
                profiles_pb2.GetUserProfileRequest(user_id=WIDE_ID)
            ),
            "user_id: at most 256 UTF-8 bytes",
        ),
        (
            lambda: audiences_pb2_grpc.AudiencesStub(served_channel).FindSimilarUsers(
                audiences_pb2.FindSimilarUsersRequest(seed_user_ids=[f"s{i}" for i in range(1001)], size=5)
            ),
            "seed_user_ids: at most 1000 seed users, got 1001",
        ),
        (
            lambda: audiences_pb2_grpc.AudiencesStub(served_channel).FindSimilarUsers(
                audiences_pb2.FindSimilarUsersRequest(seed_user_ids=[_user(trained), LONG_ID], size=5)
            ),
            "seed_user_ids[1]: at most 256 UTF-8 bytes",
        ),
    ]
    for call, message in cases:
        assert message in _invalid(call)


def test_log_events_is_bounded_before_the_event_log_is_asked(served_channel: grpc.Channel) -> None:
    # The shared server has no event log (FAILED_PRECONDITION), yet an oversized call is refused
    # as such: the bound comes first.
    stub = events_pb2_grpc.EventCollectorStub(served_channel)
    events = [events_pb2.Event(user_id="u", item_id="i")] * 1001
    assert "events: at most 1000 per call, got 1001" in _invalid(
        lambda: stub.LogEvents(events_pb2.LogEventsRequest(events=events), timeout=10)
    )


RAW_RECOMMEND = "/recsys.v1.Recommender/Recommend"


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited field (payload shorter than 128 bytes)."""
    return bytes([number << 3 | 2, len(payload)]) + payload


@pytest.mark.parametrize(
    ("method", "data", "message"),
    [
        (RAW_RECOMMEND, _field(1, b"\xff\xfe"), "user_id: not valid UTF-8"),
        (
            RAW_RECOMMEND,
            _field(1, b"ok") + _field(3, b"a") + _field(3, b"\xc3\x28"),
            "recent_item_ids[1]: not valid",
        ),
        (RAW_RECOMMEND, _field(6, _field(2, b"\xed\xa0\x80")), "filters[0].any_of[0]: not valid UTF-8"),
        (RAW_RECOMMEND, _field(4, _field(1, b"\x80")), "user_attributes.key: not valid UTF-8"),
        (RAW_RECOMMEND, b"\x0a\xff", "request: not a valid recsys.v1.RecommendRequest message"),
        (RAW_RECOMMEND, b"\x0b\x01", "request: not a valid recsys.v1.RecommendRequest message"),
        (
            "/recsys.v1.Recommender/BatchRecommend",
            _field(1, _field(1, b"ok")) + _field(1, _field(1, b"\xff")),
            "requests[1].user_id: not valid UTF-8",
        ),
        (
            "/recsys.v1.EventCollector/LogEvents",
            _field(1, _field(2, b"\xff")),
            "events[0].item_id: not valid UTF-8",
        ),
        (
            "/recsys.v1.Audiences/FindSimilarUsers",
            _field(1, b"\xff"),
            "seed_user_ids[0]: not valid UTF-8",
        ),
        (
            "/recsys.v1.MemberProfiles/GetUserProfile",
            b"\xff\xff\xff",
            "not a valid recsys.v1.GetUserProfileRequest",
        ),
    ],
)
def test_undecodable_bytes_are_invalid_argument_naming_the_field(
    served_channel: grpc.Channel, method: str, data: bytes, message: str
) -> None:
    call = served_channel.unary_unary(method)  # bytes in, bytes out: a generic client
    assert message in _invalid(lambda: call(data, timeout=10))


def test_an_oversized_message_is_resource_exhausted(served_channel: grpc.Channel) -> None:
    call = served_channel.unary_unary(RAW_RECOMMEND)
    with pytest.raises(grpc.RpcError) as info:
        call(_field(1, b"u") + b"\x1a" + b"\x80\x80\x80\x02" + b"x" * (4 * 1024 * 1024), timeout=10)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_utf8_walk_matches_the_parser() -> None:
    good = pb2.RecommendRequest(user_id="é", recent_item_ids=["a", "b"], user_attributes={"k": "v"})
    data = good.SerializeToString()
    assert bad_utf8_field(pb2.RecommendRequest.DESCRIPTOR, data) is None
    parsed: Message = parse_request(pb2.RecommendRequest.FromString, data)
    assert parsed == good
