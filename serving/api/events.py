"""The ``EventCollector`` gRPC servicer: validate, append durably, answer.

The servicer raises domain errors and never sets status codes (see
:mod:`serving.api.interceptors`). Without an event log every call raises
:class:`~serving.errors.NotConfiguredError` (``FAILED_PRECONDITION``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from serving._proto.recsys.v1 import events_pb2, events_pb2_grpc
from serving.api.bounds import check_event_count
from serving.errors import NotConfiguredError
from serving.events.log import EventLog
from serving.events.validation import validate_events
from serving.observability import tracing

_VALIDATE_INLINE_MAX: Final = 64
EVENT_COLLECTOR_SERVICE: str = events_pb2.DESCRIPTOR.services_by_name["EventCollector"].full_name


class EventCollectorServicer(events_pb2_grpc.EventCollectorServicer):
    """``LogEvents`` over an :class:`EventLog` (``None``: the server has no event log)."""

    def __init__(self, event_log: EventLog | None) -> None:
        self._event_log = event_log

    async def LogEvents(  # noqa: N802 - gRPC method name
        self, request: events_pb2.LogEventsRequest, context: Any
    ) -> events_pb2.LogEventsResponse:
        check_event_count(request.events)  # bounds first, whatever the server's configuration
        if self._event_log is None:
            raise NotConfiguredError("no event log on this server: start it with --events-dir DIR")
        # Large batches are validated off the event loop (1,000 events take a few ms);
        # file I/O never happens here: append waits on the log's writer thread.
        if len(request.events) > _VALIDATE_INLINE_MAX:
            accepted, rejections = await asyncio.to_thread(validate_events, request.events)
        else:
            accepted, rejections = validate_events(request.events)
        with tracing.span(tracing.EVENT_LOG_APPEND, {"recsys.events": len(accepted)}):
            await self._event_log.append(accepted)
        return events_pb2.LogEventsResponse(
            accepted=len(accepted),
            rejections=[
                events_pb2.EventRejection(index=r.index, field=r.field, reason=r.reason) for r in rejections
            ],
        )
