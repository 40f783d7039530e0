"""Settings every process shares: where Kafka is, how to reach it, how to log.

The API's ``Settings`` and each connector's settings extend ``CoreSettings`` with their own
names, so a connector never carries API keys or CORS origins and the API never carries a
connector's MQTT password. Values come from environment variables and ``.env``; every
setting has a default that works on a developer machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from preservarium_pusher_api.core.contract import (
    DEFAULT_COMMAND_TOPIC,
    DEFAULT_PRESENCE_TOPIC,
    DEFAULT_RESULT_TOPIC,
)


def split_csv(value: str) -> list[str]:
    """Split a comma-separated setting into its non-empty, stripped items."""
    return [item.strip() for item in value.split(",") if item.strip()]


class CoreSettings(BaseSettings):
    """Kafka and logging; field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # Kafka: where, which topics, how long to wait for an acknowledgement
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_command_topic: str = DEFAULT_COMMAND_TOPIC
    kafka_result_topic: str = DEFAULT_RESULT_TOPIC
    kafka_presence_topic: str = DEFAULT_PRESENCE_TOPIC
    kafka_producer_timeout: float = Field(10.0, gt=0, le=300)
    # How long the Kafka client itself waits for a broker's response before giving up on a
    # request. Longer than KAFKA_PRODUCER_TIMEOUT (never shorter: the larger one is used),
    # so a record whose acknowledgement is late still settles instead of being sent again.
    kafka_request_timeout: float = Field(30.0, gt=0, le=600)
    kafka_enable_idempotence: bool = True
    kafka_client_id: str = "preservarium-pusher-api"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None

    # Kafka consumer groups (tracker, connectors)
    kafka_consumer_session_timeout_ms: int = Field(10_000, ge=1000)
    kafka_consumer_heartbeat_interval_ms: int = Field(3_000, ge=100)
    # How long a group join waits for the other members; short values speed up start-up.
    kafka_consumer_rebalance_timeout_ms: int = Field(5_000, ge=100)
    # Longest a fetch waits at the broker for new records. Apache Kafka answers as soon as
    # a record arrives; brokers that hold the fetch for the whole wait (the embedded one)
    # add up to this much latency per hop, so it is kept short.
    kafka_consumer_fetch_max_wait_ms: int = Field(50, ge=1, le=10_000)

    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("kafka_sasl_mechanism", mode="before")
    @classmethod
    def _blank_mechanism_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value
