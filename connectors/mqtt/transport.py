"""MQTT transport: commands to ``{prefix}/{device_id}/command``, answers from ``+/result``.

A persistent session (clean session off, a stable client id) keeps device answers queued
at the broker while the connector restarts. Each connection is a new client, so a publish
that was never confirmed is never re-sent by the library on reconnect: the runtime, not
the MQTT stack, decides what may be sent again.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Awaitable
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from connectors.errors import CommandRejected, DeliveryUncertain, TransportUnavailable
from connectors.ingress import (
    MessageRefused,
    check_depth,
    check_device_id,
    check_size,
    check_utf8,
)
from connectors.registry import DeviceEntry
from connectors.settings import MqttSettings
from connectors.transport import Delivery, Receipt, Transport
from preservarium_pusher_api.core.backoff import backoff_delay
from preservarium_pusher_api.core.contract import (
    CommandMessage,
    DispatchPolicy,
    Protocol,
    check_command_topic,
)
from preservarium_pusher_api.core.logging import get_logger

# TCP_NODELAY, for every MQTT connection of the connector.
NO_DELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

log = get_logger(__name__)


def broker_address(url: str) -> tuple[str, int, bool]:
    """``mqtt://host:1883`` or ``mqtts://host:8883`` → (host, port, tls)."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"MQTT_BROKER_URL scheme must be mqtt or mqtts, not {parts.scheme!r}")
    tls = parts.scheme in ("mqtts", "ssl")
    return parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), tls


def check_topic(topic: object) -> str:
    """A topic a command may be published to (see ``check_command_topic``).

    Raises:
        CommandRejected: the topic is not allowed.
    """
    try:
        return check_command_topic(topic)
    except ValueError as exc:
        raise CommandRejected(f"metadata.topic {exc}") from None


def presence_from(payload: str) -> bool | None:
    """``online``/``offline`` from a status message (plain text or ``{"status": …}``)."""
    text = payload.strip()
    if text.startswith("{"):
        try:
            text = str(json.loads(text).get("status", ""))
        except (ValueError, AttributeError):
            return None
    lowered = text.lower()
    if lowered == "online":
        return True
    if lowered == "offline":
        return False
    return None


class MqttTransport(Transport):
    """Delivers commands over one MQTT connection; see the module docstring."""

    protocol = Protocol.MQTT
    default_dispatch = DispatchPolicy.ON_ACK
    requires_registration = False

    def __init__(self, settings: MqttSettings) -> None:
        super().__init__()
        self.presence_heartbeat_seconds = settings.mqtt_presence_heartbeat_seconds
        self.settings = settings
        self.host, self.port, self.tls = broker_address(settings.mqtt_broker_url)
        self.prefix = settings.mqtt_topic_prefix
        self._client: aiomqtt.Client | None = None
        self.connections = 0
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        """Whether a connection to the broker is up."""
        return self._client is not None

    def ready(self, device_id: str) -> bool:
        """Connected, and (when holding for offline devices) the device is not offline."""
        if self._client is None:
            return False
        if not self.settings.mqtt_hold_while_offline or self.events is None:
            return True
        return self.events.device_online(device_id) is not False

    def target(self, command: CommandMessage, device: DeviceEntry | None) -> str:
        """The command topic: the registry's ``address.topic`` or ``{prefix}/{id}/command``;
        ``metadata.topic`` only when the registry lists it in the device's
        ``allowed_topics``, and never a topic in another device's namespace.

        Raises:
            CommandRejected: the topic is not one this command may be published to.
        """
        own = f"{self.prefix}/{command.device_id}/command"
        if device is not None and "topic" in device.address:
            own = check_topic(device.address["topic"])
        requested = command.metadata.get("topic")
        if requested is None or requested == own:
            return own
        topic = check_topic(requested)
        if topic not in (device.allowed_topics if device is not None else ()):
            raise CommandRejected(
                "metadata.topic is not in this device's allowed_topics in the device registry"
            )
        levels = topic.split("/")
        if len(levels) > 2 and levels[0] == self.prefix and levels[1] != command.device_id:
            raise CommandRejected("metadata.topic is in another device's namespace")
        return topic

    def submit(self, delivery: Delivery) -> Awaitable[Receipt]:
        """Start the publish now (tasks start in creation order, so order is kept)."""
        return asyncio.ensure_future(self._publish(delivery))

    async def _publish(self, delivery: Delivery) -> Receipt:
        client = self._client
        if client is None:
            raise TransportUnavailable("not connected to the MQTT broker")
        command = delivery.command
        try:
            await client.publish(
                delivery.target, delivery.frame, qos=command.qos, retain=command.retain
            )
        except aiomqtt.MqttCodeError as exc:
            if exc.rc is not None and exc.rc != 0 and not self._was_queued(exc):
                raise TransportUnavailable(f"publish refused: {exc}") from exc
            raise DeliveryUncertain(f"publish not confirmed: {exc}") from exc
        except aiomqtt.MqttError as exc:
            raise DeliveryUncertain(f"publish not confirmed: {exc}") from exc
        return Receipt(acknowledged=command.qos >= 1)

    @staticmethod
    def _was_queued(exc: aiomqtt.MqttCodeError) -> bool:
        # "Could not publish message" is raised when the client refused the publish before
        # writing anything (e.g. not connected). Its str() shows only the code, so the
        # message is read from the exception's arguments.
        return not (exc.args and exc.args[0] == "Could not publish message")

    def health(self) -> dict[str, Any]:
        """Broker connection for ``/health``."""
        return {
            "connected": self.connected,
            "broker": f"{self.host}:{self.port}",
            "connections": self.connections,
            "last_error": self.last_error,
        }

    # -- connection -------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        settings = self.settings
        options: dict[str, Any] = {
            "identifier": settings.mqtt_session_id,
            "clean_session": not settings.mqtt_persistent_session,
            "keepalive": settings.mqtt_keepalive_seconds,
            "max_inflight_messages": settings.mqtt_max_inflight,
            "timeout": 10,
            # Small MQTT packets go out at once: with Nagle, a PUBLISH written while the
            # previous packet's ACK is delayed by the peer waits ~40 ms for it.
            "socket_options": [NO_DELAY],
        }
        if settings.mqtt_username:
            options["username"] = settings.mqtt_username
            if settings.mqtt_password is not None:
                options["password"] = settings.mqtt_password.get_secret_value()
        if self.tls or settings.mqtt_tls_ca_file:
            context = ssl.create_default_context(
                cafile=str(settings.mqtt_tls_ca_file) if settings.mqtt_tls_ca_file else None
            )
            if settings.mqtt_tls_cert_file:
                context.load_cert_chain(
                    str(settings.mqtt_tls_cert_file),
                    str(settings.mqtt_tls_key_file) if settings.mqtt_tls_key_file else None,
                )
            options["tls_context"] = context
        return options

    def _subscriptions(self) -> list[tuple[str, int]]:
        """Plain subscriptions: every replica reads every answer (the owner of the device's
        partition reports it) and every status, retained ones included (a shared
        subscription would split both, and the broker hands it no retained message)."""
        return [(f"{self.prefix}/+/result", 1), (f"{self.prefix}/+/status", 1)]

    async def run(self) -> None:
        """Connect, subscribe, read answers; reconnect with capped backoff and jitter."""
        attempt = 0
        while True:
            try:
                client = aiomqtt.Client(self.host, self.port, **self._client_options())
                # publishes waiting for PUBACK are normal here, up to the in-flight window
                client.pending_calls_threshold = self.settings.mqtt_max_inflight
                async with client:
                    await client.subscribe(self._subscriptions())
                    self._client = client
                    self.connections += 1
                    attempt = 0
                    self.last_error = None
                    log.info("mqtt connected", broker=f"{self.host}:{self.port}")
                    if self.events is not None:
                        self.events.transport_state(True)
                    async for message in client.messages:
                        self._on_message(message)
            except aiomqtt.MqttError as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("mqtt connection lost; reconnecting", error=self.last_error)
            finally:
                was_connected = self._client is not None
                self._client = None
                if was_connected and self.events is not None:
                    self.events.transport_state(False)
            attempt += 1
            await asyncio.sleep(
                backoff_delay(attempt, self.settings.mqtt_reconnect_max_backoff_seconds)
            )

    def _on_message(self, message: aiomqtt.Message) -> None:
        """Read one device message. Whatever it holds, the reader goes on: a refused or
        unreadable message is counted and dropped (``connectors.ingress``)."""
        topic = message.topic.value
        if self.events is None:
            return
        try:
            self._read(topic, message.payload if isinstance(message.payload, bytes) else b"")
        except MessageRefused as exc:
            self.events.message_refused(exc.reason, topic, exc)
        except Exception as exc:  # one message never stops the reader
            self.events.message_refused("error", topic, exc)

    def _read(self, topic: str, payload: bytes) -> None:
        events = self.events
        assert events is not None
        rest = topic[len(self.prefix) + 1 :] if topic.startswith(self.prefix + "/") else ""
        device_id, _, kind = rest.rpartition("/")
        if kind not in ("status", "result") or not device_id or "/" in device_id:
            raise MessageRefused("bad_topic", "not a device's result or status topic")
        check_device_id(device_id)
        check_size(payload, self.settings.connector_max_message_bytes)
        if kind == "status":
            if payload:  # an empty retained message clears the status: nothing to read
                text = check_utf8(payload)
                check_depth(payload, self.settings.connector_max_nesting)
                events.device_presence(device_id, presence_from(text), None)
            return
        check_depth(payload, self.settings.connector_max_nesting)
        try:
            answer = events.device_parser(device_id).decode(payload)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            events.answer_invalid(device_id)
            raise MessageRefused("invalid", "not an answer the device's parser reads") from exc
        except CommandRejected as exc:
            raise MessageRefused("invalid", exc.message) from exc
        events.device_answered(device_id, answer)
