"""``PusherClient``: the synchronous driver of the shared request plan (httpx.Client)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

import httpx
from httpx_sse import connect_sse
from pydantic import BaseModel

from preservarium_pusher_api.client._events import (
    DEFAULT_READ_TIMEOUT,
    EVENTS_PATH,
    Event,
    EventStreamPlan,
    retriable,
)
from preservarium_pusher_api.client._plan import (
    DEFAULT_URL,
    Operations,
    ResultT,
    Sleep,
    default_headers,
)
from preservarium_pusher_api.core.contract import CommandStatus
from preservarium_pusher_api.models import (
    BatchCommandResponse,
    CancelResponse,
    CommandListResponse,
    CommandResponse,
    CommandStatusResponse,
    DeviceListResponse,
    DeviceResponse,
)


class PusherClient:
    """Synchronous twin of ``PusherAPIClient`` (plain httpx.Client: safe inside Jupyter)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        *,
        backoff: float = 0.5,
        api_key_header: str = "X-API-Key",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._ops = Operations(retries, backoff, timeout)
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=default_headers(api_key, api_key_header),
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> PusherClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _run(self, operation: Generator[Any, Any, ResultT]) -> ResultT:
        reply: Any = None
        while True:
            try:
                step = operation.send(reply)
            except StopIteration as done:
                result: ResultT = done.value
                return result
            reply = None
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                continue
            with contextlib.suppress(httpx.TransportError):  # None: nothing was answered
                reply = self._http.request(**self._ops.request_options(step))

    def push_command(self, **fields: Any) -> bool:
        """True only when the command was accepted."""
        return self._run(self._ops.push_command(fields))

    def send_command(
        self,
        device_id: str,
        command_type: str,
        protocol: str,
        payload: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> CommandResponse:
        """Submit one command; the response has its ``request_id``."""
        return self._run(
            self._ops.send_command(
                device_id, command_type, protocol, payload, idempotency_key, fields
            )
        )

    def push_commands_batch(
        self,
        commands: Iterable[Mapping[str, Any] | BaseModel],
        *,
        idempotency_key: str | None = None,
    ) -> BatchCommandResponse:
        """Submit several commands; each item says whether it was accepted."""
        return self._run(self._ops.push_commands_batch(commands, idempotency_key))

    def get_status(
        self, request_id: str, wait: float = 0, last_status: str | CommandStatus | None = None
    ) -> CommandStatusResponse:
        """A command's status and history (``wait``: long-poll until it changes)."""
        return self._run(self._ops.get_status(request_id, wait, last_status))

    def wait_for_result(self, request_id: str, timeout: float = 60.0) -> CommandStatusResponse:
        """Long-poll until the command ends; ``ResultTimeout`` if it has not after ``timeout``."""
        return self._run(self._ops.wait_for_result(request_id, timeout))

    def list_commands(
        self,
        device_id: str | None = None,
        status: str | CommandStatus | None = None,
        since: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> CommandListResponse:
        """Commands, newest first; pass ``next_cursor`` for the next page."""
        return self._run(self._ops.list_commands(device_id, status, since, limit, cursor))

    def cancel(self, request_id: str) -> CancelResponse:
        """Cancel a command still queued."""
        return self._run(self._ops.cancel(request_id))

    def devices(self) -> DeviceListResponse:
        """Every device known to the API, with presence and pending commands."""
        return self._run(self._ops.devices())

    def device(self, device_id: str) -> DeviceResponse:
        """One device."""
        return self._run(self._ops.device(device_id))

    def events(
        self,
        device_id: str | Iterable[str] | None = None,
        request_id: str | Iterable[str] | None = None,
        status: str | Iterable[str] | None = None,
        *,
        last_event_id: str | None = None,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> Iterator[Event]:
        """Live events (``for event in client.events(device_id="pico-1")``); reconnects by
        itself with ``Last-Event-ID``, like ``PusherAPIClient.events``."""
        plan = EventStreamPlan(device_id, request_id, status, last_event_id, read_timeout)
        while True:
            error: BaseException | None = None
            try:
                with connect_sse(
                    self._http, "GET", EVENTS_PATH, **plan.request_options()
                ) as source:
                    if source.response.status_code != 200:
                        source.response.read()
                    plan.check(source.response)
                    for message in source.iter_sse():
                        event = plan.event(message)
                        if event is not None:
                            yield event
            except Exception as exc:
                if not retriable(exc):
                    raise
                error = exc
            time.sleep(plan.next_delay(error))
