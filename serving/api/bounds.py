"""Size bounds of every string and repeated field of ``recsys.v1`` requests, checked before any work.

A hostile or buggy caller must not be able to make the server hash a megabyte-long user id,
encode 100,000 recent items or build a FAISS selector from a million filter values: every
request is checked against these bounds on the event loop, before it is admitted to the
engine, and a request over one fails with
:class:`~serving.errors.InvalidArgumentError` naming the field and the limit
(``recent_item_ids: at most 1000 items, got 1001``). Non-finite numbers (NaN, infinities)
in filters and diversity options are refused the same way: every comparison with NaN is
false, so a NaN bound would silently let everything (or nothing) through.

The bounds are part of the contract: each is documented next to its field in
``protos/recsys/v1/*.proto`` and in docs/security.md ("Bounded input"). Invalid UTF-8 never gets
this far: it is refused when the request is parsed (:mod:`serving.api.decode`). The whole
message is bounded first by the server's maximum receive size (``--max-receive-bytes``).

String lengths are counted in UTF-8 bytes (what travels and what is stored), not in
characters: a 256-character id of 4-byte characters is 1 KiB.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Final

from serving._proto.recsys.v1 import audiences_pb2, events_pb2
from serving._proto.recsys.v1 import recommender_pb2 as pb2
from serving.errors import InvalidArgumentError
from serving.events.validation import MAX_EVENTS_PER_CALL

MAX_ID_BYTES: Final = 256
"""Every id and name: user, item, seed and event ids, experiment and variant names, filter
and attribute names, filter values, user attribute names."""
MAX_ATTRIBUTE_VALUE_BYTES: Final = 1024
"""A user attribute value (may be a comma-separated list, hence longer than an id)."""
MAX_RECENT_ITEMS: Final = 1000
MAX_EXCLUDED_ITEMS: Final = 1000
MAX_FILTERS: Final = 32
MAX_FILTER_VALUES: Final = 1000
"""``any_of`` and ``none_of`` of one filter, each."""
MAX_USER_ATTRIBUTES: Final = 64
MAX_BATCH_REQUESTS: Final = 1000
MAX_SEED_USERS: Final = 1000
"""Seeds of one ``FindSimilarUsers`` call (larger groups: ``recsys lookalike`` on a file)."""
MAX_EVENTS: Final = MAX_EVENTS_PER_CALL
"""Events of one ``LogEvents`` call (1000; owned by :mod:`serving.events.validation`)."""

# Any str of at most this many characters is at most MAX_ID_BYTES in UTF-8 (4 bytes per
# character at most), so the common short id is checked without encoding it.
_SHORT: Final = MAX_ID_BYTES // 4


def utf8_length(text: str) -> int:
    """Length of ``text`` in UTF-8 bytes."""
    return len(text.encode("utf-8", "surrogatepass"))


def check_string(text: str, field: str, limit: int = MAX_ID_BYTES) -> None:
    """Raise :class:`InvalidArgumentError` when ``text`` is longer than ``limit`` UTF-8 bytes."""
    if len(text) > limit // 4 and utf8_length(text) > limit:
        raise InvalidArgumentError(field, f"at most {limit} UTF-8 bytes, got {utf8_length(text)}")


def check_strings(texts: Collection[str], field: str, max_count: int, what: str = "items") -> None:
    """At most ``max_count`` entries, each at most :data:`MAX_ID_BYTES` UTF-8 bytes."""
    if len(texts) > max_count:
        raise InvalidArgumentError(field, f"at most {max_count} {what}, got {len(texts)}")
    for i, text in enumerate(texts):
        if len(text) > _SHORT:
            check_string(text, f"{field}[{i}]")


def check_finite(value: float, field: str) -> None:
    if not math.isfinite(value):
        raise InvalidArgumentError(field, f"must be a finite number, got {value}")


def check_filters(filters: Collection[pb2.ItemFilter], field: str) -> None:
    """At most :data:`MAX_FILTERS` filters; names, values and finite ``min``/``max`` bounded."""
    if len(filters) > MAX_FILTERS:
        raise InvalidArgumentError(field, f"at most {MAX_FILTERS} filters, got {len(filters)}")
    for i, item_filter in enumerate(filters):
        where = f"{field}[{i}]"
        check_string(item_filter.attribute, f"{where}.attribute")
        check_strings(item_filter.any_of, f"{where}.any_of", MAX_FILTER_VALUES, "values")
        check_strings(item_filter.none_of, f"{where}.none_of", MAX_FILTER_VALUES, "values")
        if item_filter.HasField("min"):
            check_finite(item_filter.min, f"{where}.min")
        if item_filter.HasField("max"):
            check_finite(item_filter.max, f"{where}.max")


def check_attributes(attributes: Mapping[str, str], field: str) -> None:
    if len(attributes) > MAX_USER_ATTRIBUTES:
        raise InvalidArgumentError(field, f"at most {MAX_USER_ATTRIBUTES} attributes, got {len(attributes)}")
    for name, value in attributes.items():
        check_string(name, f"{field} name")
        check_string(value, f"{field}[{name[:_SHORT]!r}]", MAX_ATTRIBUTE_VALUE_BYTES)


def check_recommend(request: pb2.RecommendRequest, prefix: str = "") -> None:
    """The bounds of one ``RecommendRequest``; field names in errors start with ``prefix``.

    On the hot path: a request setting only ``user_id`` and ``k`` costs three length checks.
    """
    check_string(request.user_id, f"{prefix}user_id")
    check_string(request.experiment, f"{prefix}experiment")
    check_string(request.force_variant, f"{prefix}force_variant")
    if request.recent_item_ids:
        check_strings(request.recent_item_ids, f"{prefix}recent_item_ids", MAX_RECENT_ITEMS)
    if request.exclude_item_ids:
        check_strings(request.exclude_item_ids, f"{prefix}exclude_item_ids", MAX_EXCLUDED_ITEMS)
    if request.filters:
        check_filters(request.filters, f"{prefix}filters")
    if request.user_attributes:
        check_attributes(request.user_attributes, f"{prefix}user_attributes")
    if request.HasField("diversity"):
        check_finite(request.diversity.mmr_lambda, f"{prefix}diversity.mmr_lambda")
        check_string(request.diversity.category_attribute, f"{prefix}diversity.category_attribute")


def check_batch_size(requests: Collection[pb2.RecommendRequest]) -> None:
    if len(requests) > MAX_BATCH_REQUESTS:
        raise InvalidArgumentError(
            "requests", f"at most {MAX_BATCH_REQUESTS} requests per call, got {len(requests)}"
        )


def check_similar_items(request: pb2.SimilarItemsRequest) -> None:
    check_string(request.item_id, "item_id")
    check_strings(request.exclude_item_ids, "exclude_item_ids", MAX_EXCLUDED_ITEMS)
    check_filters(request.filters, "filters")


def check_user_id(user_id: str) -> None:
    """``GetUserEmbedding`` / ``GetUserProfile``: the one string they carry."""
    check_string(user_id, "user_id")


def check_seeds(request: audiences_pb2.FindSimilarUsersRequest) -> None:
    check_strings(request.seed_user_ids, "seed_user_ids", MAX_SEED_USERS, "seed users")


def check_event_count(events: Collection[events_pb2.Event]) -> None:
    """``LogEvents``: at most :data:`MAX_EVENTS` per call. Each event's own fields are
    validated one by one (:mod:`serving.events.validation`): a bad event is rejected with a
    reason and the call's good events are kept."""
    if len(events) > MAX_EVENTS:
        raise InvalidArgumentError("events", f"at most {MAX_EVENTS} per call, got {len(events)}")
