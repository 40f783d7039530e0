"""HTTP request and response models of the API (the Kafka records live in ``contract``)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictFloat,
    StrictStr,
    ValidationInfo,
    field_validator,
)

from preservarium_pusher_api.core.contract import (
    COMMAND_TOPIC_MAX_LENGTH,
    COMMAND_TOPIC_PATTERN,
    IDENTIFIER_MAX_LENGTH,
    IDENTIFIER_PATTERN,
    CommandStatus,
    DispatchPolicy,
    Identifier,
    Protocol,
    check_command_topic,
)

MAX_TTL_SECONDS = 7 * 24 * 3600
MAX_TIMEOUT_SECONDS = 24 * 3600

# A parser is named, never addressed by path: letters, digits, "_", "-", "." (no separators).
_PARSER_REF = re.compile(r"^(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

# metadata as the schema states it; the validators below enforce the same.
_METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": True,
    "properties": {
        "topic": {
            "type": "string",
            "minLength": 1,
            "maxLength": COMMAND_TOPIC_MAX_LENGTH,
            "pattern": COMMAND_TOPIC_PATTERN,
        },
        "dispatch": {"type": "string", "enum": [policy.value for policy in DispatchPolicy]},
    },
}


def _protocol_rules(schema: dict[str, Any]) -> None:
    """State in the schema what the validators enforce across fields: ``retain`` and
    ``metadata.topic`` are MQTT's, ``confirmable`` is CoAP's."""

    def unless(protocol: Protocol, rule: dict[str, Any]) -> dict[str, Any]:
        return {
            "if": {"properties": {"protocol": {"const": protocol.value}}, "required": ["protocol"]},
            "else": {"properties": rule},
        }

    schema["allOf"] = [
        unless(Protocol.MQTT, {"retain": {"type": "null"}}),
        unless(Protocol.MQTT, {"metadata": {"properties": {"topic": False}}}),
        unless(Protocol.COAP, {"confirmable": {"type": "null"}}),
    ]


def _command_schema_extra(schema: dict[str, Any]) -> None:
    schema["examples"] = _COMMAND_EXAMPLES
    _protocol_rules(schema)


_COMMAND_EXAMPLES: list[JsonValue] = [
    {
        "device_id": "pico-w-lab-001",
        "command_type": "control_led",
        "payload": {"pin": 25, "state": True},
        "protocol": "mqtt",
        "qos": 1,
    },
    {
        "device_id": "ot2-lab-01",
        "command_type": "mix_color",
        "payload": {"R": 100, "Y": 50, "B": 50, "mix_well": "A1"},
        "protocol": "http",
        "timeout_seconds": 300,
    },
    {
        "device_id": "efento_device_001",
        "command_type": "config_update",
        "payload": {"measurement_interval": 600},
        "protocol": "coap",
        "confirmable": True,
        "parser_script_ref": "sensor_config_parser",
        "ttl_seconds": 3600,
    },
]


class CommandRequest(BaseModel):
    """A command as lab code submits it; unknown fields are rejected, naming the field."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_command_schema_extra)

    device_id: Annotated[Identifier, StrictStr] = Field(
        description="Target device; 1-128 chars, no '/', '+', '#', whitespace or control chars.",
        min_length=1,
        max_length=IDENTIFIER_MAX_LENGTH,
        json_schema_extra={"pattern": IDENTIFIER_PATTERN},
    )
    command_type: Annotated[Identifier, StrictStr] = Field(
        description="What the device should do (the task name on the device); the same rules.",
        min_length=1,
        max_length=IDENTIFIER_MAX_LENGTH,
        json_schema_extra={"pattern": IDENTIFIER_PATTERN},
    )
    payload: dict[str, Any] = Field(default_factory=dict, description="Command parameters.")
    protocol: Protocol = Field(description="Transport that reaches the device.")
    parser_script_ref: StrictStr | None = Field(
        None,
        description="Name of a parser in the connectors' parser folder (not a path).",
        json_schema_extra={"pattern": _PARSER_REF.pattern},
    )
    metadata: dict[str, Any] | None = Field(
        None,
        description="Routing hints: `topic` (MQTT only; a topic the device registry lists "
        "for the device in `allowed_topics`), `dispatch` (`burst`, `on_ack`, `on_result`; "
        "can only make the registry's policy stricter); other keys are kept.",
        json_schema_extra={"anyOf": [_METADATA_SCHEMA, {"type": "null"}]},
    )
    qos: Literal[0, 1, 2] | None = Field(None, description="MQTT QoS; default 1.")
    retain: StrictBool | None = Field(None, description="MQTT retain flag (MQTT only).")
    confirmable: StrictBool | None = Field(None, description="CoAP CON vs NON (CoAP only).")
    ttl_seconds: int | None = Field(
        None, gt=0, le=MAX_TTL_SECONDS, description="Never deliver after this many seconds."
    )
    timeout_seconds: StrictFloat | None = Field(
        None, gt=0, le=MAX_TIMEOUT_SECONDS, description="Time the device has to answer."
    )

    @field_validator("ttl_seconds", mode="before")
    @classmethod
    def _ttl_is_a_whole_number(cls, value: object) -> object:
        # JSON Schema's "integer" includes 600.0; true, "600" and 600.5 are not integers.
        if value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("ttl_seconds must be an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError("ttl_seconds must be an integer")
            return int(value)
        return value

    @field_validator("qos", mode="before")
    @classmethod
    def _qos_is_an_integer(cls, value: object) -> object:
        # Literal[0, 1, 2] alone would accept True/1.0; QoS is an integer.
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError("qos must be the integer 0, 1 or 2")
        return value

    @field_validator("parser_script_ref")
    @classmethod
    def _parser_is_a_name(cls, value: str | None) -> str | None:
        if value is not None and (not _PARSER_REF.match(value) or ".." in value):
            raise ValueError("must be a parser name (letters, digits, '_', '-', '.'), not a path")
        return value

    @field_validator("retain")
    @classmethod
    def _retain_is_mqtt_only(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        _require_protocol(value, info, Protocol.MQTT)
        return value

    @field_validator("confirmable")
    @classmethod
    def _confirmable_is_coap_only(cls, value: bool | None, info: ValidationInfo) -> bool | None:
        _require_protocol(value, info, Protocol.COAP)
        return value

    @field_validator("metadata")
    @classmethod
    def _topic_override_is_mqtt(
        cls, value: dict[str, Any] | None, info: ValidationInfo
    ) -> dict[str, Any] | None:
        metadata = value or {}
        if "topic" in metadata:
            topic = metadata["topic"]
            _require_protocol(
                topic if topic is not None else "", info, Protocol.MQTT, "'metadata.topic'"
            )
            try:
                check_command_topic(topic)
            except ValueError as exc:
                raise ValueError(f"'metadata.topic' {exc}") from None
        if "dispatch" in metadata and metadata["dispatch"] not in {p.value for p in DispatchPolicy}:
            choices = ", ".join(policy.value for policy in DispatchPolicy)
            raise ValueError(f"'metadata.dispatch' must be one of {choices}")
        return value


def _require_protocol(
    value: object, info: ValidationInfo, protocol: Protocol, what: str | None = None
) -> None:
    # A missing protocol is reported on its own field; only check a valid one.
    given = info.data.get("protocol")
    if value is not None and given is not None and given is not protocol:
        raise ValueError(
            f"{what or repr(info.field_name)} applies to protocol {protocol.value!r} only"
        )


class BatchCommandRequest(BaseModel):
    """Several commands in one request; the size limit is checked against ``MAX_BATCH_SIZE``."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"commands": _COMMAND_EXAMPLES[1:]}]}
    )

    commands: list[CommandRequest] = Field(min_length=1)


class CommandResponse(BaseModel):
    """Outcome of submitting one command."""

    success: bool
    request_id: str
    message: str
    timestamp: datetime
    partition: int | None = None
    offset: int | None = None
    error_type: str | None = None


class BatchCommandResponse(BaseModel):
    """Outcome of a batch, one result per submitted command, in order."""

    total_commands: int
    successful: int
    failed: int
    results: list[CommandResponse]


class ServiceStatus(BaseModel):
    """Detailed service status for operators."""

    service: str
    version: str
    kafka_connected: bool
    uptime: str
    uptime_seconds: float
    commands_processed: int
    last_error: str | None = None


class HealthResponse(BaseModel):
    """Answer of the liveness and readiness probes."""

    status: Literal["ok", "ready", "unavailable"]
    kafka_connected: bool | None = None


class ErrorResponse(BaseModel):
    """The one JSON shape of every error answer."""

    error: str = Field(description="Human-readable summary.")
    type: str = Field(description="Machine-readable error name.")
    details: list[dict[str, Any]] = Field(default_factory=list)
    request_id: str | None = Field(None, description="The HTTP request's X-Request-ID.")


class HistoryItem(BaseModel):
    """One accepted status event of a command."""

    status: str
    at: datetime
    source: str
    detail: str | None = None


class CommandSummary(BaseModel):
    """A command's current state, as listed."""

    request_id: str
    device_id: str
    protocol: str | None = None
    command_type: str | None = None
    status: CommandStatus
    detail: str | None = None
    result: Any = None
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None


class CommandStatusResponse(CommandSummary):
    """A command's current state and its history, oldest first."""

    history: list[HistoryItem]


class CommandListResponse(BaseModel):
    """One page of commands, newest first; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[CommandSummary]
    next_cursor: str | None = None


class CancelResponse(BaseModel):
    """A cancel request was handed to the connectors."""

    request_id: str
    status: CommandStatus
    message: str


class DeviceResponse(BaseModel):
    """A device as the connectors last heard from it."""

    device_id: str
    protocol: str | None = Field(None, description="Protocol of the connector that saw it")
    online: bool | None = Field(
        None, description="Last presence the device announced; null when never heard"
    )
    last_seen: datetime | None = Field(None, description="Last message from the device")
    pending_commands: int = Field(description="Commands not yet in a terminal status")
    detail: str | None = None


class DeviceListResponse(BaseModel):
    """Devices heard from or with pending commands, by device_id."""

    items: list[DeviceResponse]
