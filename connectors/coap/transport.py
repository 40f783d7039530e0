"""CoAP transport: ``POST coap://{host}:{port}/{path}`` with aiocoap.

The address comes from the device registry only::

    efento-001:
      protocol: coap
      address: {host: 10.0.4.21, port: 5683, path: "/{command_type}"}
      parser: sensor_config_parser      # a binary frame instead of JSON

``confirmable`` (the command's, else ``address.confirmable``, else true) picks CON or NON:

* CON: aiocoap retransmits until the device acknowledges (``COAP_ACK_TIMEOUT_SECONDS``,
  ``COAP_MAX_RETRANSMIT``); the exchange completing means ``delivered``. No
  acknowledgement after the last retransmission → ``timed_out`` at once, never sent again.
* NON: one datagram, ``sent`` only; the answer (or the command's timeout) ends it.

The response is the result: 2.xx → ``succeeded`` with ``{"code": "2.04 Changed", "payload":
…}`` (the payload read by the device's parser), 4.xx → ``failed`` with the code and the
device's diagnostic text, never retried, 5.xx → ``failed`` with the code. A closed port
(ICMP port unreachable: nothing ran) is retried with backoff. Payloads larger than one
datagram go block-wise (aiocoap's Block1). aiocoap runs one CON exchange at a time per peer;
the runtime keeps each device's commands in order and many devices in flight.

aiocoap does not tell its users when an empty ACK arrives ahead of a separate response, so
for a device that answers separately ``delivered`` is reported with the response.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import aiocoap
import aiocoap.error
from aiocoap.numbers import ContentFormat, Reliable, TransportTuning, Unreliable

from connectors.errors import (
    CommandRejected,
    DeliveryTimedOut,
    DeliveryUncertain,
    TransportUnavailable,
)
from connectors.parsers import DeviceAnswer
from connectors.registry import DeviceEntry
from connectors.settings import CoapSettings
from connectors.transport import Delivery, Receipt, Transport
from preservarium_pusher_api.core.contract import CommandMessage, DispatchPolicy, Protocol
from preservarium_pusher_api.core.logging import get_logger

log = get_logger(__name__)

DEFAULT_PATH = "/{command_type}"
_DIAGNOSTIC_LIMIT = 300
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class CoapTarget:
    """Where one command goes."""

    uri: str
    confirmable: bool | None


def _host(value: Any, device_id: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CommandRejected(f"device {device_id!r} has no address.host")
    host = value.strip()
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        if not all(_LABEL.fullmatch(part) for part in host.split(".")):
            raise CommandRejected(f"device {device_id!r}: address.host is not a host") from None
    return host


def _tuning(base: type[TransportTuning], settings: CoapSettings) -> TransportTuning:
    tuning = base()
    tuning.ACK_TIMEOUT = settings.coap_ack_timeout_seconds
    tuning.MAX_RETRANSMIT = settings.coap_max_retransmit
    return tuning


class CoapTransport(Transport):
    """Sends commands to registered CoAP devices; see the module docstring."""

    protocol = Protocol.COAP
    # The lane waits for each exchange (ACK or response) before the device's next command.
    default_dispatch = DispatchPolicy.ON_ACK
    default_parser = "json_parameters"
    requires_registration = True

    def __init__(self, settings: CoapSettings) -> None:
        super().__init__()
        self.settings = settings
        self._context: aiocoap.Context | None = None
        self._reliable = _tuning(Reliable, settings)
        self._unreliable = _tuning(Unreliable, settings)
        self.requests = 0
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        """Whether the client context (its UDP socket) is up."""
        return self._context is not None

    async def run(self) -> None:
        """Open the client context and keep it until cancelled."""
        context = await aiocoap.Context.create_client_context(loggername="pusher-coap")
        self._context = context
        if self.events is not None:
            self.events.transport_state(True)
        try:
            await asyncio.Event().wait()
        finally:
            self._context = None
            await context.shutdown()

    def target(self, command: CommandMessage, device: DeviceEntry | None) -> CoapTarget:
        """The device's URI for this command type, from the registry.

        Raises:
            CommandRejected: the device has no usable address.
        """
        if device is None:
            raise CommandRejected(f"unknown device {command.device_id!r}: not in the registry")
        address = device.address
        host = _host(address.get("host"), command.device_id)
        port = address.get("port", aiocoap.COAP_PORT)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise CommandRejected(f"device {command.device_id!r}: address.port is not a port")
        template = address.get("path", DEFAULT_PATH)
        if not isinstance(template, str) or not template.startswith("/"):
            raise CommandRejected("registry address.path must start with /")
        path = template.replace("{command_type}", command.command_type)
        confirmable = address.get("confirmable")
        return CoapTarget(
            f"coap://{host}:{port}{path}", confirmable if isinstance(confirmable, bool) else None
        )

    def submit(self, delivery: Delivery) -> Awaitable[Receipt]:
        """Start the exchange now (tasks start in creation order)."""
        return asyncio.ensure_future(self._exchange(delivery))

    async def _exchange(self, delivery: Delivery) -> Receipt:
        context = self._context
        if context is None:
            raise TransportUnavailable("CoAP client not started")
        target: CoapTarget = delivery.target
        command = delivery.command
        confirmable = command.confirmable
        if confirmable is None:
            confirmable = target.confirmable if target.confirmable is not None else True
        message = aiocoap.Message(
            code=aiocoap.POST,
            uri=target.uri,
            payload=delivery.frame,
            transport_tuning=self._reliable if confirmable else self._unreliable,
        )
        media_type = getattr(delivery.parser, "CONTENT_TYPE", None)
        if media_type:
            try:
                message.opt.content_format = ContentFormat.by_media_type(media_type)
            except KeyError:
                pass
        self.requests += 1
        request = context.request(message)
        try:
            async with asyncio.timeout(delivery.timeout_seconds):
                response = await request.response
        except TimeoutError:
            raise DeliveryUncertain(f"no response within {delivery.timeout_seconds:g} s") from None
        except aiocoap.error.ConRetransmitsExceeded as exc:
            self.last_error = "no acknowledgement"
            self.heard(command.device_id, False, "no acknowledgement")
            raise DeliveryTimedOut(
                f"no acknowledgement after {self.settings.coap_max_retransmit} retransmissions"
            ) from exc
        except aiocoap.error.ResolutionError as exc:
            self.last_error = f"cannot resolve: {exc}"[:300]
            raise TransportUnavailable(f"device address not resolved: {exc}") from exc
        except aiocoap.error.MessageError as exc:
            raise CommandRejected("the device reset the exchange (RST)") from exc
        except aiocoap.error.NetworkError as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            if _refused(exc):
                self.heard(command.device_id, False, "port closed")
                raise TransportUnavailable(
                    "device port closed (ICMP port unreachable): nothing ran"
                ) from exc
            raise DeliveryUncertain(f"exchange broke: {self.last_error}") from exc
        self.heard(command.device_id, True)
        return Receipt(acknowledged=confirmable, answer=self._answer(delivery, response))

    def _answer(self, delivery: Delivery, response: aiocoap.Message) -> DeviceAnswer:
        request_id = delivery.command.request_id
        code = response.code
        if not code.is_successful():
            diagnostic = response.payload.decode("utf-8", errors="replace").strip()
            detail = f"{code}: {diagnostic[:_DIAGNOSTIC_LIMIT]}" if diagnostic else str(code)
            return DeviceAnswer(request_id, ok=False, error=detail)
        try:
            answer = delivery.parser.decode(response.payload, request_id)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            if self.events is not None:
                self.events.answer_invalid(delivery.command.device_id)
            return DeviceAnswer(request_id, ok=False, error=f"{code}: answer not understood: {exc}")
        result = {"code": str(code), "payload": answer.result}
        if not answer.ok:
            return DeviceAnswer(request_id, ok=False, result=result, error=answer.error)
        return DeviceAnswer(request_id, ok=True, result=result)

    def health(self) -> dict[str, Any]:
        """Client state for ``/health``."""
        return {
            "connected": self.connected,
            "requests": self.requests,
            "last_error": self.last_error,
        }


def _refused(exc: BaseException) -> bool:
    """Whether the error is an ICMP port unreachable (nothing listened: nothing ran)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or (
            isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED
        ):
            return True
        cause = cause.__cause__
    return False
