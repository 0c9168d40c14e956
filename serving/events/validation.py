"""Per-event validation of ``LogEvents`` input.

Each event is checked on its own: a bad event is rejected with its index, the field and
the reason, and never stops the good events of the same call from being kept. Only the
first problem of an event is reported (fixing it may reveal the next one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from serving._proto.recsys.v1 import events_pb2
from serving.events.schema import EVENT_TYPE_NAMES

MAX_EVENTS_PER_CALL: Final = 1_000
# In UTF-8 bytes, like every id of the API (serving.api.bounds.MAX_ID_BYTES).
MAX_ID_LENGTH: Final = 256
# 1990-01-01T00:00:00Z. Older timestamps are almost always unit mistakes (seconds sent as
# milliseconds land in January 1970); 1990 still admits replays of historical data sets.
MIN_TIMESTAMP_MS: Final = 631_152_000_000
# Clocks disagree a little; a timestamp more than a day ahead is a unit mistake (microseconds).
MAX_FUTURE_MS: Final = 24 * 3600 * 1000

_ALLOWED_TYPES = ", ".join(EVENT_TYPE_NAMES.values())


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why the event at ``index`` of the request was not kept."""

    index: int
    field: str
    reason: str


def _too_long(text: str) -> bool:
    # A string of at most MAX_ID_LENGTH / 4 characters cannot exceed the bound: skip encoding it.
    return len(text) > MAX_ID_LENGTH // 4 and len(text.encode("utf-8")) > MAX_ID_LENGTH


def problem_of(event: events_pb2.Event, now_ms: int) -> tuple[str, str] | None:
    """``(field, reason)`` of the first problem of ``event``, or None when it is valid."""
    for name in ("user_id", "item_id"):
        text: str = getattr(event, name)
        if not text.strip():
            return name, "must not be empty"
        if _too_long(text):
            return name, f"longer than {MAX_ID_LENGTH} UTF-8 bytes"
    for name in ("experiment", "variant", "model_version", "request_id", "event_id"):
        if _too_long(getattr(event, name)):
            return name, f"longer than {MAX_ID_LENGTH} UTF-8 bytes"
    if event.event_type not in EVENT_TYPE_NAMES:
        return "event_type", f"must be one of {_ALLOWED_TYPES} (got {event.event_type})"
    if event.timestamp_ms == 0:
        return "timestamp_ms", "missing (unix milliseconds)"
    if event.timestamp_ms < MIN_TIMESTAMP_MS:
        return "timestamp_ms", f"{event.timestamp_ms} is before 1990-01-01 (seconds instead of milliseconds?)"
    if event.timestamp_ms > now_ms + MAX_FUTURE_MS:
        return "timestamp_ms", f"{event.timestamp_ms} is more than a day in the future"
    if not math.isfinite(event.value):
        return "value", "must be a finite number"
    if event.value < 0:
        return "value", f"must not be negative (got {event.value})"
    if event.position < 0:
        return "position", f"must not be negative (got {event.position})"
    return None


def validate_events(
    events: Sequence[events_pb2.Event], now_ms: int | None = None
) -> tuple[list[events_pb2.Event], list[Rejection]]:
    """Split ``events`` into the valid ones (ids stripped of surrounding blanks) and rejections."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    accepted: list[events_pb2.Event] = []
    rejections: list[Rejection] = []
    for index, event in enumerate(events):
        problem = problem_of(event, now)
        if problem is not None:
            rejections.append(Rejection(index, *problem))
            continue
        clean = events_pb2.Event()
        clean.CopyFrom(event)
        clean.user_id = event.user_id.strip()
        clean.item_id = event.item_id.strip()
        accepted.append(clean)
    return accepted, rejections
