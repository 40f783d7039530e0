"""``PusherAPIClient``: the async driver of the shared request plan (httpx.AsyncClient)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Generator, Iterable, Mapping
from types import TracebackType
from typing import Any

import httpx
from httpx_sse import aconnect_sse
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


class PusherAPIClient:
    """Async client; use as ``async with`` or call ``aclose()``. See the module docstring."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        *,
        backoff: float = 0.5,
        api_key_header: str = "X-API-Key",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._ops = Operations(retries, backoff, timeout)
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=default_headers(api_key, api_key_header),
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> PusherAPIClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _run(self, operation: Generator[Any, Any, ResultT]) -> ResultT:
        reply: Any = None
        while True:
            try:
                step = operation.send(reply)
            except StopIteration as done:
                result: ResultT = done.value
                return result
            reply = None
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                continue
            with contextlib.suppress(httpx.TransportError):  # None: nothing was answered
                reply = await self._http.request(**self._ops.request_options(step))

    async def push_command(self, **fields: Any) -> bool:
        """Compat with the original module: True only when the command was accepted."""
        return await self._run(self._ops.push_command(fields))

    async def send_command(
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
        return await self._run(
            self._ops.send_command(
                device_id, command_type, protocol, payload, idempotency_key, fields
            )
        )

    async def push_commands_batch(
        self,
        commands: Iterable[Mapping[str, Any] | BaseModel],
        *,
        idempotency_key: str | None = None,
    ) -> BatchCommandResponse:
        """Submit several commands; each item says whether it was accepted."""
        return await self._run(self._ops.push_commands_batch(commands, idempotency_key))

    async def get_status(
        self, request_id: str, wait: float = 0, last_status: str | CommandStatus | None = None
    ) -> CommandStatusResponse:
        """A command's status and history (``wait``: long-poll until it changes)."""
        return await self._run(self._ops.get_status(request_id, wait, last_status))

    async def wait_for_result(
        self,
        request_id: str,
        timeout: float = 60.0,  # noqa: ASYNC109 - a server-side long-poll budget, not a cancel
    ) -> CommandStatusResponse:
        """Long-poll until the command ends; ``ResultTimeout`` if it has not after ``timeout``."""
        return await self._run(self._ops.wait_for_result(request_id, timeout))

    async def list_commands(
        self,
        device_id: str | None = None,
        status: str | CommandStatus | None = None,
        since: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> CommandListResponse:
        """Commands, newest first; pass ``next_cursor`` for the next page."""
        return await self._run(self._ops.list_commands(device_id, status, since, limit, cursor))

    async def cancel(self, request_id: str) -> CancelResponse:
        """Cancel a command still queued."""
        return await self._run(self._ops.cancel(request_id))

    async def devices(self) -> DeviceListResponse:
        """Every device known to the API, with presence and pending commands."""
        return await self._run(self._ops.devices())

    async def device(self, device_id: str) -> DeviceResponse:
        """One device."""
        return await self._run(self._ops.device(device_id))

    async def events(
        self,
        device_id: str | Iterable[str] | None = None,
        request_id: str | Iterable[str] | None = None,
        status: str | Iterable[str] | None = None,
        *,
        last_event_id: str | None = None,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> AsyncIterator[Event]:
        """Live events (``async for event in client.events(device_id="pico-1")``).

        Reconnects by itself with ``Last-Event-ID`` (no gap, no duplicate); raises
        ``EventsGone`` when the server no longer keeps what was missed, and ``Unauthorized``
        or ``CommandRejected`` at once.
        """
        plan = EventStreamPlan(device_id, request_id, status, last_event_id, read_timeout)
        while True:
            error: BaseException | None = None
            try:
                async with aconnect_sse(
                    self._http, "GET", EVENTS_PATH, **plan.request_options()
                ) as source:
                    if source.response.status_code != 200:
                        await source.response.aread()
                    plan.check(source.response)
                    async for message in source.aiter_sse():
                        event = plan.event(message)
                        if event is not None:
                            yield event
            except Exception as exc:
                if not retriable(exc):
                    raise
                error = exc
            await asyncio.sleep(plan.next_delay(error))
