"""Settings shared by every connector, plus each protocol's own.

Connectors read the shared core settings (``KAFKA_*``, ``LOG_*``) and add their own names,
never the API's; every setting has a default that works on a developer machine.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from preservarium_pusher_api.core.contract import DispatchPolicy, Protocol, check_identifier
from preservarium_pusher_api.core.settings import CoreSettings


class ConnectorSettings(CoreSettings):
    """Settings of the shared connector runtime."""

    kafka_client_id: str = "preservarium-pusher-connector"
    # A command's answer deadline when neither the command nor the registry gives one.
    default_timeout_seconds: float | None = Field(300.0, gt=0)

    device_registry_path: Path | None = None
    registry_reload_seconds: float = Field(1.0, gt=0, le=3600)
    # Default: pusher-connector-{protocol}; every instance of a protocol shares it.
    connector_group_id: str | None = None
    connector_metrics_port: int = Field(9102, ge=0, le=65535)
    connector_metrics_host: str = "0.0.0.0"
    # This instance's name: its MQTT session and the ``source`` of its status events.
    # Set it explicitly and keep it across restarts (e.g. ``mqtt-1``); unset, each start
    # takes a fresh random name (and a clean MQTT session: nothing to resume).
    connector_id: str = Field(default_factory=lambda: f"ephemeral-{secrets.token_hex(4)}")
    # Unset: the protocol's own default (on_ack for MQTT, on_result for HTTP).
    connector_default_dispatch: DispatchPolicy | None = None
    # Refuse devices missing from the registry even where the protocol could reach them.
    connector_require_registration: bool = False
    # Upper bound on deliveries running at once (across devices).
    connector_max_in_flight: int = Field(256, ge=1, le=100_000)
    # Records fetched but not finished, per partition, before fetching from it pauses.
    connector_max_pending_per_partition: int = Field(2000, ge=10)
    connector_commit_interval_seconds: float = Field(0.2, gt=0, le=60)
    # Retries when the device surely did not get the command (no connection).
    connector_retry_max_attempts: int = Field(8, ge=1, le=1000)
    connector_retry_max_backoff_seconds: float = Field(10.0, gt=0, le=600)
    connector_shutdown_grace_seconds: float = Field(10.0, ge=0, le=600)
    # request_ids handed to a device, per commands partition: journaled in Kafka
    # (``connectors.journal``) so a re-delivered record is never sent twice, by any replica.
    connector_dedupe_size: int = Field(100_000, ge=100)
    # Default: {KAFKA_COMMAND_TOPIC}.journal.{protocol}
    connector_journal_topic: str | None = None
    # Commands held this long for an offline device are parked (``connectors.parking``) so
    # the partition's commit moves on; empty: never parked.
    connector_park_after_seconds: float | None = Field(10.0, gt=0, le=86_400)
    # Default: {KAFKA_COMMAND_TOPIC}.parked.{protocol}
    connector_parking_topic: str | None = None
    # Replication of the journal topic when a connector creates it (as the API's topics).
    kafka_topic_replication_factor: int = Field(1, ge=1, le=10)
    # Status events wait this long to share a produce request with others (the event's
    # time is taken before; the command's own send never waits on it).
    connector_report_linger_ms: int = Field(5, ge=0, le=1000)
    # How far the clocks of API and connector hosts may disagree (journal read-back).
    connector_journal_skew_seconds: float = Field(300.0, ge=0, le=86_400)
    # What a device may send: larger or deeper messages are refused unread and counted in
    # pusher_connector_rejected_messages_total{reason}.
    connector_max_message_bytes: int = Field(262_144, ge=1024, le=64 * 1024 * 1024)
    connector_max_nesting: int = Field(64, ge=2, le=1000)
    # A device result larger than this (as JSON) is recorded as a truncation marker: the
    # command still ends, and the results topic never sees a record it would refuse.
    max_result_bytes: int = Field(65_536, ge=256, le=8 * 1024 * 1024)

    @field_validator("connector_id")
    @classmethod
    def _connector_id_is_a_name(cls, value: str) -> str:
        check_identifier(value)
        return value

    @property
    def connector_id_configured(self) -> bool:
        """False when CONNECTOR_ID was not set (a random name for this run only)."""
        return "connector_id" in self.model_fields_set

    @field_validator("default_timeout_seconds", "connector_park_after_seconds", mode="before")
    @classmethod
    def _blank_timeout_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def source_name(self, protocol: Protocol) -> str:
        """The ``source`` written into status events, e.g. ``connector-mqtt-host1``."""
        return f"connector-{protocol.value}-{self.connector_id}"


class MqttSettings(ConnectorSettings):
    """Settings of the MQTT connector (``MQTT_*``)."""

    mqtt_broker_url: str = "mqtt://127.0.0.1:1883"
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_tls_ca_file: Path | None = None
    mqtt_tls_cert_file: Path | None = None
    mqtt_tls_key_file: Path | None = None
    # Default: pusher-connector-mqtt-{CONNECTOR_ID}. The broker keeps this session
    # (subscriptions and device answers) while the connector restarts.
    mqtt_client_id: str | None = None
    # Default: a persistent session when CONNECTOR_ID is set, a clean one otherwise.
    mqtt_clean_session: bool | None = None
    mqtt_keepalive_seconds: int = Field(30, ge=5, le=3600)
    mqtt_topic_prefix: str = "lab"
    mqtt_max_inflight: int = Field(200, ge=1, le=65535)
    mqtt_reconnect_max_backoff_seconds: float = Field(10.0, gt=0, le=600)
    # A device whose retained status says offline gets nothing until it is back (or the
    # command expires): physical actions are not queued in the broker for later.
    mqtt_hold_while_offline: bool = True
    # Seconds between last_seen updates sent for a device that keeps answering.
    mqtt_presence_heartbeat_seconds: float = Field(30.0, gt=0)

    @field_validator("mqtt_topic_prefix")
    @classmethod
    def _prefix_has_no_wildcards(cls, value: str) -> str:
        parts = value.split("/")
        for part in parts:
            check_identifier(part)
        return value

    @property
    def mqtt_session_id(self) -> str:
        """The MQTT client id: MQTT_CLIENT_ID, else one derived from CONNECTOR_ID."""
        return self.mqtt_client_id or f"pusher-connector-mqtt-{self.connector_id}"[:64]

    @property
    def mqtt_persistent_session(self) -> bool:
        """Whether the broker keeps the session between connections."""
        if self.mqtt_clean_session is not None:
            return not self.mqtt_clean_session
        return self.connector_id_configured or self.mqtt_client_id is not None

    @field_validator("mqtt_client_id", "mqtt_clean_session", "mqtt_username", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


class HttpSettings(ConnectorSettings):
    """Settings of the HTTP connector (``HTTP_*``); addresses come from the registry."""

    # Connecting is cheap and safe to retry; the read timeout is the command's timeout.
    http_connect_timeout_seconds: float = Field(5.0, gt=0, le=300)
    http_max_connections: int = Field(100, ge=1, le=10_000)
    http_max_keepalive_connections: int = Field(20, ge=0, le=10_000)
    http_user_agent: str = "preservarium-pusher-connector"


class CoapSettings(ConnectorSettings):
    """Settings of the CoAP connector (``COAP_*``); addresses come from the registry."""

    # CoAP's own retransmission of CON messages (RFC 7252 defaults): no ACK after
    # ACK_TIMEOUT * (2**(MAX_RETRANSMIT+1) - 1) * 1.5 seconds → timed_out.
    coap_ack_timeout_seconds: float = Field(2.0, gt=0, le=60)
    coap_max_retransmit: int = Field(4, ge=0, le=20)
