"""Python client of the pusher API: ``PusherAPIClient`` (async) and ``PusherClient`` (sync).

Needs only ``httpx`` and ``pydantic`` (``pip install 'preservarium-pusher[client]'``); it
never imports FastAPI, aiokafka or the server code, so it fits in a lab notebook::

    async with PusherAPIClient("http://pusher:8000", api_key="…") as client:
        accepted = await client.send_command(
            device_id="pico-w-lab-001", command_type="control_led", protocol="mqtt",
            payload={"pin": 25, "state": True},
        )
        final = await client.wait_for_result(accepted.request_id, timeout=30)

    client = PusherClient("http://pusher:8000")          # scripts, Jupyter: no event loop
    client.push_command(device_id=…, command_type=…, protocol="http", payload={…})  # → bool

503 (Kafka unavailable), 429 (rate limited) and connection failures are retried with
backoff, honouring ``Retry-After``; a POST carries one ``Idempotency-Key`` on every retry,
so a retry never creates a second command. Errors are typed: ``CommandRejected`` (4xx, with
the server's ``details``), ``Unauthorized``, ``RateLimited``, ``ServiceUnavailable``,
``CommandNotFound``, ``ResultTimeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from preservarium_pusher_api.contract import CommandStatus
from preservarium_pusher_api.core.models import (
    BatchCommandResponse,
    CancelResponse,
    CommandListResponse,
    CommandResponse,
    CommandStatusResponse,
    DeviceListResponse,
    DeviceResponse,
)

__all__ = [
    "CommandNotFound",
    "CommandRejected",
    "PusherAPIClient",
    "PusherClient",
    "PusherClientError",
    "RateLimited",
    "ResultTimeout",
    "ServiceUnavailable",
    "Unauthorized",
]

log = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:8000"
MAX_LONG_POLL_SECONDS = 60.0
_MAX_BACKOFF_SECONDS = 30.0
ModelT = TypeVar("ModelT", bound=BaseModel)
ResultT = TypeVar("ResultT")


# -- errors --------------------------------------------------------------------------


class PusherClientError(Exception):
    """Root of the client's errors; carries what the server said."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
        details: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
        http_request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_type = error_type
        self.details = details or []
        self.retry_after = retry_after
        self.http_request_id = http_request_id


class CommandRejected(PusherClientError):
    """The server refused the request as it is (400/404/409/413/422); do not resend it."""


class CommandNotFound(CommandRejected):
    """No command with that request_id (404)."""


class Unauthorized(PusherClientError):
    """The API key is missing or not accepted (401/403)."""


class RateLimited(PusherClientError):
    """Still rate limited (429) after the retries; ``retry_after`` says when to come back."""


class ServiceUnavailable(PusherClientError):
    """The API or its Kafka could not be reached after the retries (503, connection)."""


class ResultTimeout(PusherClientError, TimeoutError):
    """``wait_for_result`` ran out of time before the command ended; ``status`` is the last."""

    def __init__(self, message: str, status: CommandStatusResponse) -> None:
        super().__init__(message)
        self.status = status


# -- requests as data (shared by the async and the sync client) ----------------------


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Sleep:
    seconds: float


_Step = Generator[_Request | _Sleep, httpx.Response | None, Any]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _error_from(response: httpx.Response) -> PusherClientError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("error") or response.reason_phrase or f"HTTP {response.status_code}")
    options: dict[str, Any] = {
        "status_code": response.status_code,
        "error_type": body.get("type"),
        "details": body.get("details") if isinstance(body.get("details"), list) else [],
        "retry_after": _retry_after(response),
        "http_request_id": body.get("request_id") or response.headers.get("X-Request-ID"),
    }
    code = response.status_code
    if code in (401, 403):
        return Unauthorized(message, **options)
    if code == 429:
        return RateLimited(message, **options)
    if code == 404 and body.get("type") == "CommandNotFoundError":
        return CommandNotFound(message, **options)
    if 400 <= code < 500:
        return CommandRejected(message, **options)
    return ServiceUnavailable(message, **options)


def _in_progress(response: httpx.Response) -> bool:
    """A retry arrived while the first attempt with the same Idempotency-Key still runs."""
    if response.status_code != 409:
        return False
    try:
        return bool(response.json().get("type") == "IdempotencyKeyInProgressError")
    except (ValueError, AttributeError):
        return False


def _command_body(fields: Mapping[str, Any]) -> dict[str, Any]:
    body = {key: value for key, value in fields.items() if value is not None}
    body.setdefault("payload", {})
    return body


class _Operations:
    """Every API call as a generator of requests/sleeps; drivers do the I/O."""

    def __init__(self, retries: int, backoff: float, timeout: float) -> None:
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout

    def request_options(self, step: _Request) -> dict[str, Any]:
        """httpx ``request`` arguments; a long-poll gets its wait on top of the timeout."""
        wait = float(step.params.get("wait", 0)) if step.params else 0.0
        return {
            "method": step.method,
            "url": step.path,
            "params": step.params,
            "json": step.json,
            "headers": step.headers,
            "timeout": self.timeout + wait,
        }

    def _delay(self, attempt: int, hinted: float | None) -> float:
        if hinted is not None:
            return min(hinted, _MAX_BACKOFF_SECONDS)
        ceiling = min(_MAX_BACKOFF_SECONDS, self.backoff * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security

    def exchange(self, request: _Request) -> _Step:
        """One call with retries on 503/429/connection failures; returns the response."""
        attempt = 0
        while True:
            response = yield request
            failure: PusherClientError
            if response is None:  # the connection failed; nothing was answered
                failure = ServiceUnavailable(f"cannot reach the pusher API ({request.path})")
                hinted = None
            elif response.status_code in (429, 503) or _in_progress(response):
                failure = _error_from(response)
                hinted = failure.retry_after
            elif response.is_success:
                return response
            else:
                raise _error_from(response)
            if attempt >= self.retries:
                raise failure
            delay = self._delay(attempt, hinted)
            log.info("pusher API busy or unreachable; retrying in %.2f s", delay)
            attempt += 1
            yield _Sleep(delay)

    def call(self, model: type[ModelT], request: _Request) -> Generator[Any, Any, ModelT]:
        response = yield from self.exchange(request)
        return model.model_validate(response.json())

    def send_command(
        self,
        device_id: str,
        command_type: str,
        protocol: str,
        payload: Mapping[str, Any] | None,
        idempotency_key: str | None,
        fields: Mapping[str, Any],
    ) -> Generator[Any, Any, CommandResponse]:
        body = _command_body(
            {
                "device_id": device_id,
                "command_type": command_type,
                "protocol": protocol,
                "payload": dict(payload or {}),
                **fields,
            }
        )
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        request = _Request("POST", "/api/v1/commands", json=body, headers=headers)
        return (yield from self.call(CommandResponse, request))

    def push_command(self, fields: dict[str, Any]) -> Generator[Any, Any, bool]:
        """The original module's call: True only when the command was accepted."""
        try:
            response = yield from self.send_command(
                fields.pop("device_id", None),
                fields.pop("command_type", None),
                fields.pop("protocol", None),
                fields.pop("payload", None),
                fields.pop("idempotency_key", None),
                fields,
            )
        except PusherClientError as exc:
            log.warning("command not accepted: %s", exc.message)
            return False
        return response.success

    def push_commands_batch(
        self, commands: Iterable[Mapping[str, Any] | BaseModel], idempotency_key: str | None
    ) -> Generator[Any, Any, BatchCommandResponse]:
        items = [
            c.model_dump(mode="json", exclude_none=True) if isinstance(c, BaseModel) else c
            for c in commands
        ]
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        body = {"commands": [_command_body(item) for item in items]}
        request = _Request("POST", "/api/v1/commands/batch", json=body, headers=headers)
        return (yield from self.call(BatchCommandResponse, request))

    def get_status(
        self, request_id: str, wait: float = 0, last_status: str | None = None
    ) -> Generator[Any, Any, CommandStatusResponse]:
        params: dict[str, Any] = {}
        if wait:
            params["wait"] = min(wait, MAX_LONG_POLL_SECONDS)
        if last_status:
            params["last_status"] = str(last_status)
        path = f"/api/v1/commands/{quote(request_id, safe='')}/status"
        return (yield from self.call(CommandStatusResponse, _Request("GET", path, params)))

    def wait_for_result(
        self, request_id: str, timeout: float
    ) -> Generator[Any, Any, CommandStatusResponse]:
        deadline = time.monotonic() + timeout
        status = yield from self.get_status(request_id)
        while not status.status.is_terminal:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResultTimeout(
                    f"command {request_id} is still {status.status.value} after {timeout:g} s",
                    status,
                )
            status = yield from self.get_status(
                request_id, wait=max(0.1, remaining), last_status=status.status.value
            )
        return status

    def list_commands(
        self,
        device_id: str | None,
        status: str | None,
        since: str | None,
        limit: int,
        cursor: str | None,
    ) -> Generator[Any, Any, CommandListResponse]:
        params = {
            key: value
            for key, value in {
                "device_id": device_id,
                "status": str(status) if status else None,
                "since": since,
                "limit": limit,
                "cursor": cursor,
            }.items()
            if value is not None
        }
        return (
            yield from self.call(CommandListResponse, _Request("GET", "/api/v1/commands", params))
        )

    def cancel(self, request_id: str) -> Generator[Any, Any, CancelResponse]:
        path = f"/api/v1/commands/{quote(request_id, safe='')}"
        return (yield from self.call(CancelResponse, _Request("DELETE", path)))

    def devices(self) -> Generator[Any, Any, DeviceListResponse]:
        return (yield from self.call(DeviceListResponse, _Request("GET", "/api/v1/devices")))

    def device(self, device_id: str) -> Generator[Any, Any, DeviceResponse]:
        path = f"/api/v1/devices/{quote(device_id, safe='')}"
        return (yield from self.call(DeviceResponse, _Request("GET", path)))


def _headers(api_key: str | None, api_key_header: str) -> dict[str, str]:
    headers = {"User-Agent": "preservarium-pusher-client", "Accept": "application/json"}
    if api_key:
        headers[api_key_header] = api_key
    return headers


# -- async ---------------------------------------------------------------------------


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
        self._ops = _Operations(retries, backoff, timeout)
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=_headers(api_key, api_key_header),
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
            if isinstance(step, _Sleep):
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


# -- sync ----------------------------------------------------------------------------


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
        self._ops = _Operations(retries, backoff, timeout)
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=_headers(api_key, api_key_header),
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
            if isinstance(step, _Sleep):
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
