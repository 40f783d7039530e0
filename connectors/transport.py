"""What a protocol adds to the runtime: a ``Transport`` that reaches devices.

The runtime owns Kafka, ordering, retries, reporting and commits; a transport only knows
how to resolve a device's target, hand it bytes and tell what came back. Transports call
the ``DeviceEvents`` sink for what devices say on their own (answers, presence).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

from connectors.parsers import DEFAULT_PARSER, DeviceAnswer, Parser
from connectors.registry import DeviceEntry
from preservarium_pusher_api.core.contract import CommandMessage, DispatchPolicy
from preservarium_pusher_api.core.contract import Protocol as WireProtocol


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the transport knows once a send completed.

    ``acknowledged``: the transport (broker, CoAP ACK, HTTP response) confirmed receipt.
    ``answer``: the device's answer when the transport is request/response.
    """

    acknowledged: bool
    answer: DeviceAnswer | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """Everything a transport needs to send one command."""

    command: CommandMessage
    frame: bytes
    target: Any
    parser: Parser
    device: DeviceEntry | None
    timeout_seconds: float
    traceparent: str | None = None


class DeviceEvents(Protocol):
    """Where a transport reports what devices say without being asked."""

    def device_answered(self, device_id: str, answer: DeviceAnswer) -> None:
        """A device answered a command (matched by ``answer.request_id``)."""

    def device_presence(self, device_id: str, online: bool | None, detail: str | None) -> None:
        """A device said it is online/offline (None: heard from, state unknown)."""

    def device_parser(self, device_id: str) -> Parser:
        """The parser that reads this device's answers."""
        ...

    def answer_invalid(self, device_id: str) -> None:
        """A device sent something that is not an answer."""

    def message_refused(self, reason: str, topic: str, error: BaseException) -> None:
        """A device message was dropped unread (see ``connectors.ingress``)."""

    def device_online(self, device_id: str) -> bool | None:
        """What the device last said: True online, False offline, None never heard."""

    def transport_state(self, connected: bool) -> None:
        """The transport connected or lost its connection."""


class Transport(abc.ABC):
    """One protocol's delivery; see the module docstring."""

    protocol: WireProtocol
    default_dispatch: DispatchPolicy = DispatchPolicy.ON_ACK
    # HTTP and CoAP need an address from the registry; MQTT can address by topic alone.
    requires_registration: bool = True
    # Parser used when neither the command nor the registry names one.
    default_parser: str = DEFAULT_PARSER
    # A device that keeps being heard from is reported to the presence topic at most this
    # often (changes of online/offline are reported at once).
    presence_heartbeat_seconds: float = 30.0

    def __init__(self) -> None:
        self.events: DeviceEvents | None = None

    def bind(self, events: DeviceEvents) -> None:
        """Attach the runtime's sink before ``run``."""
        self.events = events

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """Whether sending can be attempted now."""

    def ready(self, device_id: str) -> bool:
        """Whether ``device_id`` should be sent to now (connected and not known offline)."""
        return self.connected

    @abc.abstractmethod
    async def run(self) -> None:
        """Keep the connection up (reconnect loop) until cancelled."""

    @abc.abstractmethod
    def target(self, command: CommandMessage, device: DeviceEntry | None) -> Any:
        """Where the command goes (topic, URI, URL), from the registry only.

        Raises:
            CommandRejected: the device cannot be addressed.
        """

    @abc.abstractmethod
    def submit(self, delivery: Delivery) -> Awaitable[Receipt]:
        """Start sending now, in call order; the awaitable completes with the receipt.

        The awaitable raises ``TransportUnavailable`` (nothing left the process),
        ``DeliveryUncertain`` (it may have arrived) or ``CommandRejected``.
        """

    def heard(self, device_id: str, reachable: bool, detail: str | None = None) -> None:
        """Request/response transports: the device answered (reachable) or could not be
        reached; the runtime turns it into presence for ``GET /api/v1/devices``."""
        if self.events is not None:
            self.events.device_presence(device_id, reachable, detail)

    def health(self) -> dict[str, Any]:
        """Transport details for the health endpoint."""
        return {"connected": self.connected}
