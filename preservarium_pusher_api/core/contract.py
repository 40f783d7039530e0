"""Kafka wire contract shared by the API, the tracker and every connector.

This module is the single definition of what crosses Kafka. It imports pydantic only
(never FastAPI or aiokafka) so that connectors and tools can depend on it alone.

Commands topic (``device_commands``): key = ``device_id`` (UTF-8), value = ``CommandMessage``
or ``CancelMessage`` JSON, headers ``kind``, ``protocol``, ``request_id``, ``content-type``
and ``traceparent`` when known. Results topic (``device_command_results``): key =
``request_id``, value = ``StatusEvent`` JSON. Presence topic (``device_presence``): key =
``device_id``, value = ``DevicePresence`` JSON, written by connectors when a device comes
online, goes offline or is heard from.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
)

SCHEMA_VERSION: Final = 1

DEFAULT_COMMAND_TOPIC: Final = "device_commands"
DEFAULT_RESULT_TOPIC: Final = "device_command_results"
DEFAULT_PRESENCE_TOPIC: Final = "device_presence"
DLQ_SUFFIX: Final = ".dlq"

CONTENT_TYPE_JSON: Final = "application/json"

# Header names on command records.
HEADER_KIND: Final = "kind"
HEADER_PROTOCOL: Final = "protocol"
HEADER_REQUEST_ID: Final = "request_id"
HEADER_CONTENT_TYPE: Final = "content-type"
HEADER_TRACEPARENT: Final = "traceparent"
HEADER_DLQ_REASON: Final = "dlq-reason"

# Identifiers end up in MQTT topics and Kafka keys: no MQTT separators or wildcards
# ("/", "+", "#"), no whitespace, no control characters.
IDENTIFIER_MAX_LENGTH: Final = 128
# Spelled out rather than "\s", so that every regex engine (Python, ECMAScript in the
# OpenAPI document, the generators that read it) agrees on exactly which are refused.
_FORBIDDEN_CLASS = r"/+#\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_FORBIDDEN_IDENTIFIER_CHARS = re.compile(f"[{_FORBIDDEN_CLASS}]")
# The identifier rules as a JSON Schema pattern (with minLength 1, maxLength 128).
IDENTIFIER_PATTERN: Final = f"^[^{_FORBIDDEN_CLASS}]+$"
# Bounds of the other fields that reach the status store; they match its columns, so a
# record that validates here is one the store (SQLite or PostgreSQL) accepts.
REQUEST_ID_MAX_LENGTH: Final = 64
SOURCE_MAX_LENGTH: Final = 128
DETAIL_MAX_CHARS: Final = 500
# Control characters other than tab and newline; PostgreSQL refuses NUL in text outright.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def dlq_topic(command_topic: str) -> str:
    """Return the dead-letter topic that belongs to a commands topic."""
    return command_topic + DLQ_SUFFIX


class Protocol(StrEnum):
    """Transport a connector uses to reach the device."""

    MQTT = "mqtt"
    COAP = "coap"
    HTTP = "http"


class MessageKind(StrEnum):
    """What a record on the commands topic is; also sent as the ``kind`` header."""

    COMMAND = "command"
    CANCEL = "cancel"


class CommandStatus(StrEnum):
    """Lifecycle of a command; statuses only move forward."""

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for the statuses after which nothing changes."""
        return self in TERMINAL_STATUSES

    @property
    def rank(self) -> int:
        """Position in the lifecycle; every terminal status shares the last rank."""
        return _STATUS_RANK[self]


TERMINAL_STATUSES: Final = frozenset(
    {
        CommandStatus.SUCCEEDED,
        CommandStatus.FAILED,
        CommandStatus.TIMED_OUT,
        CommandStatus.EXPIRED,
        CommandStatus.CANCELLED,
    }
)
_STATUS_RANK: Final = {
    CommandStatus.QUEUED: 0,
    CommandStatus.SENT: 1,
    CommandStatus.DELIVERED: 2,
    **{status: 3 for status in TERMINAL_STATUSES},
}


def check_identifier(value: str) -> str:
    """Validate a device id or command type so it is safe in MQTT topics and Kafka keys.

    Raises:
        ValueError: empty, too long, or containing ``/ + #``, whitespace or control characters.
    """
    if not value:
        raise ValueError("must not be empty")
    if len(value) > IDENTIFIER_MAX_LENGTH:
        raise ValueError(f"must be at most {IDENTIFIER_MAX_LENGTH} characters")
    if _FORBIDDEN_IDENTIFIER_CHARS.search(value):
        raise ValueError("must not contain '/', '+', '#', whitespace or control characters")
    return value


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _rfc3339(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_request_id(value: str) -> str:
    """A request id: 1 to 64 characters, no whitespace or control characters.

    Raises:
        ValueError: the value breaks these rules.
    """
    if not value or len(value) > REQUEST_ID_MAX_LENGTH:
        raise ValueError(f"must be 1 to {REQUEST_ID_MAX_LENGTH} characters")
    if _FORBIDDEN_IDENTIFIER_CHARS.search(value):
        raise ValueError("must not contain '/', '+', '#', whitespace or control characters")
    return value


COMMAND_TOPIC_MAX_LENGTH: Final = 256
# check_command_topic as a JSON Schema pattern (with maxLength 256).
COMMAND_TOPIC_PATTERN: Final = r"^(?!\$)(?!(?:.*/)?(?:result|status)$)[^+#\x00-\x1f\x7f-\x9f]+$"
# Last topic levels on which devices speak: a command is never published to them.
DEVICE_TOPIC_KINDS: Final = frozenset({"result", "status"})


def check_command_topic(topic: object) -> str:
    """An MQTT topic a command may name in ``metadata.topic``.

    Only what can be told without the device registry: a topic, not a filter or a system
    topic, and never a topic devices answer on. Which topics a device accepts is the
    registry's ``allowed_topics``, checked by the MQTT connector.

    Raises:
        ValueError: the topic breaks these rules.
    """
    if not isinstance(topic, str) or not topic:
        raise ValueError("must be a non-empty string")
    if len(topic) > COMMAND_TOPIC_MAX_LENGTH:
        raise ValueError(f"must be at most {COMMAND_TOPIC_MAX_LENGTH} characters")
    if "+" in topic or "#" in topic:
        raise ValueError("must not contain MQTT wildcards (+ or #)")
    if topic.startswith("$") or _CONTROL_CHARS.search(topic) or "\t" in topic or "\n" in topic:
        raise ValueError("must not start with '$' or contain control characters")
    if topic.rsplit("/", 1)[-1] in DEVICE_TOPIC_KINDS:
        raise ValueError("must not be a device's result or status topic")
    return topic


def clean_text(value: object, limit: int = DETAIL_MAX_CHARS) -> object:
    """Text as the store keeps it: control characters (NUL included) removed, at most
    ``limit`` characters. Anything that is not a string is left to the field's type."""
    if isinstance(value, str):
        return _CONTROL_CHARS.sub("", value)[:limit]
    return value


def _clean_source(value: object) -> object:
    return clean_text(value, SOURCE_MAX_LENGTH)


def clean_json(value: Any) -> Any:
    """A JSON value with NUL removed from every string and key (iteratively: the depth of
    the value never matters)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if not isinstance(value, dict | list):
        return value
    root: list[Any] = [value]
    stack: list[tuple[Any, Any, Any]] = [(root, 0, value)]
    while stack:
        parent, slot, node = stack.pop()
        if isinstance(node, dict):
            copy: dict[Any, Any] = {}
            for key, item in node.items():
                clean_key = key.replace("\x00", "") if isinstance(key, str) else key
                copy[clean_key] = item
                stack.append((copy, clean_key, item))
            parent[slot] = copy
        elif isinstance(node, list):
            items = list(node)
            parent[slot] = items
            stack.extend((items, index, item) for index, item in enumerate(items))
        elif isinstance(node, str):
            parent[slot] = node.replace("\x00", "")
    return root[0]


Identifier = Annotated[str, AfterValidator(check_identifier)]
RequestId = Annotated[str, AfterValidator(check_request_id)]
Detail = Annotated[str, BeforeValidator(clean_text)]
Source = Annotated[str, BeforeValidator(_clean_source), Field(min_length=1)]
JsonResult = Annotated[Any, AfterValidator(clean_json)]
UtcDateTime = Annotated[
    datetime, AfterValidator(_as_utc), PlainSerializer(_rfc3339, return_type=str, when_used="json")
]


def utc_now() -> datetime:
    """Current time, timezone-aware UTC."""
    return datetime.now(UTC)


class _WireModel(BaseModel):
    # Readers ignore fields they do not know, so a newer producer does not break older consumers.
    model_config = ConfigDict(extra="ignore", frozen=True)


class CommandMessage(_WireModel):
    """A command on the commands topic (``kind = "command"``)."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal[MessageKind.COMMAND] = MessageKind.COMMAND
    request_id: RequestId
    device_id: Identifier
    command_type: Identifier
    payload: dict[str, Any] = Field(default_factory=dict)
    protocol: Protocol
    parser_script_ref: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    confirmable: bool | None = None
    timeout_seconds: float | None = None
    created_at: UtcDateTime
    expires_at: UtcDateTime | None = None


class CancelMessage(_WireModel):
    """A cancel control record, keyed like the command it cancels (``kind = "cancel"``)."""

    schema_version: int = SCHEMA_VERSION
    kind: Literal[MessageKind.CANCEL] = MessageKind.CANCEL
    request_id: RequestId
    device_id: Identifier


class StatusEvent(_WireModel):
    """A status change on the results topic, keyed by ``request_id``."""

    schema_version: int = SCHEMA_VERSION
    request_id: RequestId
    device_id: Identifier
    status: CommandStatus
    occurred_at: UtcDateTime
    source: Source
    detail: Detail | None = None
    result: JsonResult = None


class DispatchPolicy(StrEnum):
    """When a connector hands a device its next command."""

    BURST = "burst"  # no waiting
    ON_ACK = "on_ack"  # after the transport acknowledged the previous one
    ON_RESULT = "on_result"  # after the device answered the previous one (or it timed out)


class DevicePresence(_WireModel):
    """What a connector knows about a device being reachable, keyed by ``device_id``."""

    schema_version: int = SCHEMA_VERSION
    device_id: Identifier
    protocol: Protocol
    online: bool | None = None
    last_seen: UtcDateTime
    source: Source
    detail: Detail | None = None


def command_headers(
    message: CommandMessage, traceparent: str | None = None
) -> list[tuple[str, bytes]]:
    """Kafka headers for a command record, as the contract lists them."""
    headers = [
        (HEADER_KIND, message.kind.value.encode()),
        (HEADER_PROTOCOL, message.protocol.value.encode()),
        (HEADER_REQUEST_ID, message.request_id.encode()),
        (HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON.encode()),
    ]
    if traceparent:
        headers.append((HEADER_TRACEPARENT, traceparent.encode()))
    return headers


def cancel_headers(message: CancelMessage, protocol: str | None) -> list[tuple[str, bytes]]:
    """Kafka headers for a cancel control record.

    ``protocol`` is the cancelled command's, so only its connector reads the record; when
    it is not known the header is left out and every connector looks at the record.
    """
    headers = [
        (HEADER_KIND, message.kind.value.encode()),
        (HEADER_REQUEST_ID, message.request_id.encode()),
        (HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON.encode()),
    ]
    if protocol:
        headers.insert(1, (HEADER_PROTOCOL, protocol.encode()))
    return headers
