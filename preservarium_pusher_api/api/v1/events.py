"""The live event stream: ``GET /api/v1/events`` (Server-Sent Events).

The stream opens with an id-only message (``id:`` and ``retry:``, no event) so that a
client reconnecting before any event arrived still resumes where it began; then one
``event: status`` or ``event: presence`` per change, each with its ``id``; a heartbeat
every ``EVENTS_HEARTBEAT_SECONDS`` (a comment line with the id of how far the client has
been served, which also moves the id's time forward while no event matches). A
``Last-Event-ID`` too old to replay gets one ``event: error`` (the JSON error shape,
``type`` ``EventsGone``, details ``status`` 410) and the end of the stream: the client
resyncs from the list API. A client that takes no data for
``EVENTS_SEND_TIMEOUT_SECONDS`` is disconnected.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from preservarium_pusher_api.api.common import device_id_checked, error_docs
from preservarium_pusher_api.api.dependencies import caller_scope
from preservarium_pusher_api.api.errors import request_id_of
from preservarium_pusher_api.core.contract import REQUEST_ID_MAX_LENGTH, CommandStatus
from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.exceptions import InvalidQueryError
from preservarium_pusher_api.services.events import (
    EventFilter,
    EventPosition,
    EventReader,
    EventsGone,
    EventStreams,
    InvalidEventId,
)

log = get_logger(__name__)

_READ_TIMEOUT_MS = 500
_MAX_FILTER_VALUES = 100


class _EventStreamResponse(EventSourceResponse):
    """Releases the caller's stream budget and the reader however the stream ends."""

    def __init__(self, content: Any, on_close: Callable[[], Any], **options: Any) -> None:
        super().__init__(content, **options)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.warning("event stream client too slow; disconnected")
        finally:
            await self._on_close()


def _filter(device_id: list[str], request_id: list[str], status: list[str]) -> EventFilter:
    if max(len(device_id), len(request_id), len(status)) > _MAX_FILTER_VALUES:
        raise InvalidQueryError(f"at most {_MAX_FILTER_VALUES} values per filter")
    statuses = {item.value for item in CommandStatus}
    unknown = [value for value in status if value not in statuses]
    if unknown:
        raise InvalidQueryError(
            f"unknown status; one of {', '.join(sorted(statuses))}",
            details=[{"loc": ["query", "status"]}],
        )
    if any(len(item) > REQUEST_ID_MAX_LENGTH for item in request_id):
        raise InvalidQueryError(
            f"request_id longer than {REQUEST_ID_MAX_LENGTH} characters",
            details=[{"loc": ["query", "request_id"]}],
        )
    return EventFilter(
        device_ids=frozenset(device_id_checked(item, "query") for item in device_id),
        request_ids=frozenset(item.lower() for item in request_id),
        statuses=frozenset(status),
    )


def _message(kind: str, data: dict[str, Any], event_id: str | None = None) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(data, separators=(",", ":")), event=kind, id=event_id)


class _Progress:
    """How far a stream's client has been served; heartbeats carry it as their ``id``, so a
    client that saw no event for hours still resumes within the retention window."""

    def __init__(self, start: EventPosition) -> None:
        self.served = start

    def heartbeat(self) -> ServerSentEvent:
        now = EventPosition(self.served.offsets, int(time.time() * 1000))
        return ServerSentEvent(comment="ping", id=now.encode())


async def _events(
    reader: EventReader,
    progress: _Progress,
    wanted: EventFilter,
    retry_ms: int,
) -> AsyncIterator[ServerSentEvent]:
    yield ServerSentEvent(id=progress.served.encode(), retry=retry_ms)
    while True:
        try:
            fetched = await reader.read(_READ_TIMEOUT_MS)
        except KafkaError as exc:  # the client reconnects with its Last-Event-ID
            log.warning("event stream ended: kafka read failed", error=type(exc).__name__)
            return
        for event, position in fetched:
            if wanted.matches(event):
                yield _message(event.kind, event.data, position.encode())
            # reached once the event above went out (or was filtered out)
            progress.served = position


async def _gone(error: str, request: Request) -> AsyncIterator[ServerSentEvent]:
    body = {
        "error": error,
        "type": "EventsGone",
        "details": [{"status": 410, "resync": "/api/v1/commands"}],
        "request_id": request_id_of(request),
    }
    yield _message("error", body)


async def stream_events(
    request: Request,
    device_id: Annotated[list[str], Query(max_length=_MAX_FILTER_VALUES)] = [],  # noqa: B006
    request_id: Annotated[list[str], Query(max_length=_MAX_FILTER_VALUES)] = [],  # noqa: B006
    status: Annotated[list[str], Query(max_length=_MAX_FILTER_VALUES)] = [],  # noqa: B006
    last_event_id: Annotated[str | None, Header(max_length=8192)] = None,
) -> EventSourceResponse:
    """Live status and presence events, resumable with ``Last-Event-ID``."""
    settings = request.app.state.settings
    streams: EventStreams = request.app.state.events
    wanted = _filter(device_id, request_id, status)
    since = None
    if last_event_id:
        try:
            since = EventPosition.decode(last_event_id)
        except InvalidEventId as exc:
            raise InvalidQueryError(
                str(exc), details=[{"loc": ["header", "last-event-id"]}]
            ) from None
    # per API key; with auth off per client address (tabs of one browser share it)
    scope = caller_scope(request, settings)
    if not settings.enable_auth:
        scope = "ip:" + (request.client.host if request.client else "unknown")
    release = streams.admit(scope)
    options: dict[str, Any] = {
        "ping": settings.events_heartbeat_seconds,
        "send_timeout": settings.events_send_timeout_seconds,
        "headers": {"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    }
    try:
        reader, start = await streams.reader(since)
    except EventsGone as exc:

        async def released() -> None:
            release()

        return _EventStreamResponse(_gone(str(exc), request), released, **options)
    except InvalidEventId as exc:
        release()
        raise InvalidQueryError(str(exc), details=[{"loc": ["header", "last-event-id"]}]) from None
    except BaseException:
        release()
        raise

    async def close() -> None:
        release()
        await streams.close(reader)

    progress = _Progress(start)
    content = _events(reader, progress, wanted, settings.events_retry_ms)
    return _EventStreamResponse(content, close, ping_message_factory=progress.heartbeat, **options)


def build_router() -> APIRouter:
    """The event stream route."""
    router = APIRouter(tags=["events"])
    router.add_api_route(
        "/events",
        stream_events,
        methods=["GET"],
        response_class=EventSourceResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "The event stream"},
            **error_docs(401, 422, 429, 503),
        },
        summary="Live status and presence events (Server-Sent Events)",
    )
    return router
