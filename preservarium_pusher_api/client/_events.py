"""The event stream's rules, shared by the async and the sync client.

A stream is read until the caller stops iterating. When the connection drops (or the
server restarts), the client reconnects after the server's ``retry:`` delay with
``Last-Event-ID``, so no event is missed or seen twice while the server still keeps them;
when it no longer does, ``EventsGone`` is raised (resync from ``list_commands``). 401 and
4xx answers are raised at once; 429 and 503 are retried after ``Retry-After``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import ServerSentEvent

from preservarium_pusher_api.client._errors import PusherClientError
from preservarium_pusher_api.client._plan import _error_from

EVENTS_PATH = "/api/v1/events"
# Without a heartbeat (every 15 s by default) for this long, the connection is dead.
DEFAULT_READ_TIMEOUT = 60.0


class EventsGone(PusherClientError):
    """The events since the last one seen are no longer kept: resync from the list API."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event of the stream: ``kind`` ``status`` or ``presence``, its ``id`` and body."""

    kind: str
    id: str
    data: dict[str, Any]

    @property
    def device_id(self) -> str:
        return str(self.data.get("device_id", ""))

    @property
    def request_id(self) -> str | None:
        return self.data.get("request_id")

    @property
    def status(self) -> str | None:
        return self.data.get("status")


class EventStreamPlan:
    """Where a stream stands (last id, reconnect delay) and what each message means."""

    def __init__(
        self,
        device_id: str | Iterable[str] | None,
        request_id: str | Iterable[str] | None,
        status: str | Iterable[str] | None,
        last_event_id: str | None,
        read_timeout: float,
    ) -> None:
        self.params = [
            *(("device_id", value) for value in _values(device_id)),
            *(("request_id", value) for value in _values(request_id)),
            *(("status", value) for value in _values(status)),
        ]
        self.last_event_id = last_event_id
        self.retry_seconds = 3.0
        self.read_timeout = read_timeout
        self.failures = 0

    def request_options(self) -> dict[str, Any]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        return {
            "params": self.params,
            "headers": headers,
            "timeout": httpx.Timeout(10.0, read=self.read_timeout),
        }

    def check(self, response: httpx.Response) -> None:
        """Raise what an answer other than a stream means (429/503 are ``retriable``); the
        caller has read the body of such an answer."""
        if response.status_code == 200:
            self.failures = 0
            return
        raise _error_from(response)

    def next_delay(self, error: BaseException | None) -> float:
        """Seconds to wait before reconnecting after ``error`` (None: the stream ended)."""
        self.failures += 1
        hinted = getattr(error, "retry_after", None)
        if hinted:
            return float(hinted)
        return min(30.0, self.retry_seconds * max(1, self.failures))

    def event(self, message: ServerSentEvent) -> Event | None:
        """The event a message stands for, None for id-only or unknown ones.

        Raises:
            EventsGone: the server no longer keeps the events after the last id.
        """
        if message.retry is not None:
            self.retry_seconds = message.retry / 1000
        if message.event == "error":
            body = _json(message.data)
            details = body.get("details") if isinstance(body.get("details"), list) else []
            raise EventsGone(
                str(body.get("error", "the stream cannot resume")),
                status_code=410,
                error_type=body.get("type"),
                details=details,
                http_request_id=body.get("request_id"),
            )
        if message.id:
            self.last_event_id = message.id
        if not message.data or message.event not in ("status", "presence"):
            return None
        return Event(message.event, message.id, _json(message.data))


def retriable(error: BaseException) -> bool:
    """Worth reconnecting after: connection trouble, 429, 503."""
    if isinstance(error, httpx.TransportError):
        return True
    return isinstance(error, PusherClientError) and error.status_code in (429, 502, 503, 504)


def _values(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(item) for item in value]


def _json(text: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


__all__ = ["DEFAULT_READ_TIMEOUT", "Event", "EventStreamPlan", "EventsGone", "retriable"]
