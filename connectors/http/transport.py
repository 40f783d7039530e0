"""HTTP transport: ``POST {base_url}/execute/{command_type}`` to agents such as the OT-2's.

The URL, TLS verification and credentials come from the device registry only, never from
the command, so the API cannot be used to make the connector call arbitrary hosts::

    ot2-lab-001:
      protocol: http
      address:
        base_url: https://ot2-lab-001.lab.internal:31960
        verify: /etc/pusher/lab-ca.pem      # true (default), false, or a CA bundle
      credentials: OT2_LAB_001_TOKEN        # sent as "Authorization: Bearer …"

What an answer means:

* 2xx with ``status: success`` → ``succeeded`` with the result;
* ``status: error`` or any other 4xx/5xx → ``failed`` with the device's message (the
  device decided; sending it again would not help, and a robot fault must not repeat);
* 409 → the device is busy with another command and ran nothing: offered again later
  (``DeviceBusy``), not counted as an attempt;
* no connection (refused, DNS, connect timeout) → nothing was sent: retried with backoff;
* a timeout or broken connection after the request was written → ``timed_out`` by the
  deadline, **never sent again** (the robot may be moving).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from connectors.errors import CommandRejected, DeliveryUncertain, DeviceBusy, TransportUnavailable
from connectors.parsers import DeviceAnswer
from connectors.registry import DeviceEntry
from connectors.settings import HttpSettings
from connectors.transport import Delivery, Receipt, Transport
from preservarium_pusher_api.core.contract import CommandMessage, DispatchPolicy, Protocol
from preservarium_pusher_api.core.logging import get_logger

log = get_logger(__name__)

_ERROR_TEXT_LIMIT = 500
DEFAULT_PATH = "/execute/{command_type}"


@dataclass(frozen=True, slots=True)
class HttpTarget:
    """Where and how one command is posted."""

    url: str
    verify: bool | str
    token: str | None


def _verify_option(value: Any) -> bool | str:
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise CommandRejected("registry address.verify must be true, false or a CA bundle path")


class HttpTransport(Transport):
    """Posts commands to registered HTTP devices; see the module docstring."""

    protocol = Protocol.HTTP
    # One protocol action at a time on a robot: wait for its answer before the next.
    default_dispatch = DispatchPolicy.ON_RESULT
    default_parser = "json_parameters"
    requires_registration = True

    def __init__(self, settings: HttpSettings) -> None:
        super().__init__()
        self.settings = settings
        self._clients: dict[bool | str, httpx.AsyncClient] = {}
        self.requests = 0
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        """Always: each request opens (or reuses) its own connection."""
        return True

    async def run(self) -> None:
        """Nothing to keep up between requests; closes the pools when cancelled."""
        if self.events is not None:
            self.events.transport_state(True)
        try:
            await asyncio.Event().wait()
        finally:
            clients, self._clients = list(self._clients.values()), {}
            for client in clients:
                await client.aclose()

    def target(self, command: CommandMessage, device: DeviceEntry | None) -> HttpTarget:
        """The device's URL for this command type, from the registry.

        Raises:
            CommandRejected: the device has no usable ``address.base_url`` or credential.
        """
        if device is None:
            raise CommandRejected(f"unknown device {command.device_id!r}: not in the registry")
        base_url = device.address.get("base_url")
        if not isinstance(base_url, str) or not base_url:
            raise CommandRejected(f"device {command.device_id!r} has no address.base_url")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CommandRejected(
                f"device {command.device_id!r}: address.base_url must be an http(s) URL"
            )
        template = device.address.get("path", DEFAULT_PATH)
        if not isinstance(template, str) or "{command_type}" not in template:
            raise CommandRejected("registry address.path must contain {command_type}")
        path = template.replace("{command_type}", quote(command.command_type, safe=""))
        try:
            token = device.secret()
        except LookupError as exc:
            raise CommandRejected(f"device {command.device_id!r}: {exc}") from None
        url = base_url.rstrip("/") + "/" + path.lstrip("/")
        return HttpTarget(url, _verify_option(device.address.get("verify")), token)

    def submit(self, delivery: Delivery) -> Awaitable[Receipt]:
        """Start the request now (tasks start in creation order)."""
        return asyncio.ensure_future(self._post(delivery))

    def _client(self, verify: bool | str) -> httpx.AsyncClient:
        client = self._clients.get(verify)
        if client is None:
            settings = self.settings
            tls: bool | ssl.SSLContext = (
                ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
            )
            client = httpx.AsyncClient(
                verify=tls,
                limits=httpx.Limits(
                    max_connections=settings.http_max_connections,
                    max_keepalive_connections=settings.http_max_keepalive_connections,
                ),
                headers={"User-Agent": settings.http_user_agent},
            )
            self._clients[verify] = client
        return client

    async def _post(self, delivery: Delivery) -> Receipt:
        target: HttpTarget = delivery.target
        command = delivery.command
        headers = {
            "Content-Type": getattr(delivery.parser, "CONTENT_TYPE", "application/octet-stream"),
            "X-Request-ID": command.request_id,
        }
        if delivery.traceparent:
            headers["traceparent"] = delivery.traceparent
        if target.token:
            headers["Authorization"] = f"Bearer {target.token}"
        timeout = httpx.Timeout(
            delivery.timeout_seconds,
            connect=min(self.settings.http_connect_timeout_seconds, delivery.timeout_seconds),
        )
        try:
            client = self._client(target.verify)
        except (OSError, ssl.SSLError) as exc:
            raise CommandRejected(f"TLS settings of the device cannot be used: {exc}") from None
        self.requests += 1
        try:
            response = await client.post(
                target.url, content=delivery.frame, headers=headers, timeout=timeout
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # The request was never written: safe to send again.
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            self.heard(command.device_id, False, "not reachable")
            raise TransportUnavailable(f"device not reachable: {self.last_error}") from exc
        except httpx.PoolTimeout as exc:
            self.last_error = "connection pool exhausted"
            raise TransportUnavailable("no free connection in the pool") from exc
        except httpx.TimeoutException as exc:
            self.last_error = f"{type(exc).__name__}"
            raise DeliveryUncertain(
                f"no answer within {delivery.timeout_seconds:g} s after the request was sent"
            ) from exc
        except httpx.TransportError as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            raise DeliveryUncertain(f"connection broke after sending: {self.last_error}") from exc
        self.heard(command.device_id, True)
        return Receipt(acknowledged=True, answer=self._answer(delivery, response))

    def _answer(self, delivery: Delivery, response: httpx.Response) -> DeviceAnswer:
        request_id = delivery.command.request_id
        code = response.status_code
        if code == 409:
            retry_after = response.headers.get("Retry-After", "")
            raise DeviceBusy(
                f"device busy: {_message(response)}",
                retry_after=int(retry_after) if retry_after.isdigit() else None,
            )
        try:
            answer = delivery.parser.decode(response.content, request_id)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            if self.events is not None:
                self.events.answer_invalid(delivery.command.device_id)
            if response.is_success:
                return DeviceAnswer(request_id, ok=False, error=f"answer not understood: {exc}")
            return DeviceAnswer(request_id, ok=False, error=f"HTTP {code}: {_message(response)}")
        if response.is_success:
            return DeviceAnswer(request_id, answer.ok, answer.result, answer.error)
        detail = answer.error or "error"
        return DeviceAnswer(
            request_id, ok=False, result=answer.result, error=f"HTTP {code}: {detail}"
        )

    def health(self) -> dict[str, Any]:
        """Request counters for ``/health``."""
        return {"connected": True, "requests": self.requests, "last_error": self.last_error}


def _message(response: httpx.Response) -> str:
    """The device's error text: ``error`` of a JSON body, else the body's start."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"][:_ERROR_TEXT_LIMIT]
    text = response.text.strip()
    return text[:_ERROR_TEXT_LIMIT] or response.reason_phrase
