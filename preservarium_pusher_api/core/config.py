"""Service settings, read from environment variables and ``.env``.

Every setting has a default that works for local use; production sets the Kafka address,
``ENABLE_AUTH`` with ``API_KEYS``/``API_KEYS_FILE`` and ``KAFKA_ENABLE_IDEMPOTENCE=true``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from preservarium_pusher_api import __version__
from preservarium_pusher_api.contract import (
    DEFAULT_COMMAND_TOPIC,
    DEFAULT_PRESENCE_TOPIC,
    DEFAULT_RESULT_TOPIC,
)
from preservarium_pusher_api.core.exceptions import ConfigurationError


def split_csv(value: str) -> list[str]:
    """Split a comma-separated setting into its non-empty, stripped items."""
    return [item.strip() for item in value.split(",") if item.strip()]


class Settings(BaseSettings):
    """All settings of the API process; field names map to upper-case env vars."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # Kafka
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_command_topic: str = DEFAULT_COMMAND_TOPIC
    kafka_result_topic: str = DEFAULT_RESULT_TOPIC
    kafka_presence_topic: str = DEFAULT_PRESENCE_TOPIC
    kafka_producer_timeout: float = Field(10.0, gt=0, le=300)
    kafka_enable_idempotence: bool = True
    kafka_linger_ms: int = Field(0, ge=0, le=1000)
    kafka_max_request_size: int = Field(1_048_576, ge=1024)
    kafka_compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    kafka_client_id: str = "preservarium-pusher-api"
    kafka_create_topics: bool = True
    kafka_topic_partitions: int = Field(6, ge=1)
    kafka_topic_replication_factor: int = Field(1, ge=1)
    kafka_health_interval: float = Field(2.0, gt=0)
    kafka_consumer_session_timeout_ms: int = Field(10_000, ge=1000)
    kafka_consumer_heartbeat_interval_ms: int = Field(3_000, ge=100)
    # How long a group join waits for the other members; short values speed up start-up.
    kafka_consumer_rebalance_timeout_ms: int = Field(5_000, ge=100)
    # Longest a fetch waits at the broker for new records. Apache Kafka answers as soon as
    # a record arrives; brokers that hold the fetch for the whole wait (the embedded one)
    # add up to this much latency per hop, so it is kept short.
    kafka_consumer_fetch_max_wait_ms: int = Field(50, ge=1, le=10_000)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None

    # Status store, tracker and deadlines
    status_store_enabled: bool = True
    status_store_url: str = "sqlite+aiosqlite:///./pusher-status.db"
    status_store_pool_size: int = Field(5, ge=1, le=100)
    tracker_enabled: bool = True
    tracker_group_id: str = "pusher-status-tracker"
    tracker_metrics_port: int = Field(0, ge=0, le=65535)
    default_ttl_seconds: int | None = Field(600, gt=0)
    default_timeout_seconds: float | None = Field(300.0, gt=0)
    sweep_interval_seconds: float = Field(1.0, gt=0, le=3600)
    # Deadlines are swept this long after they pass: the connector holding a command
    # reports expired/timed_out itself, and its in-flight events win over the sweeper.
    sweep_grace_seconds: float = Field(5.0, ge=0, le=3600)
    long_poll_recheck_seconds: float = Field(1.0, gt=0, le=60)
    idempotency_ttl_seconds: int = Field(24 * 3600, ge=60)

    # HTTP server
    api_title: str = "Preservarium Pusher API"
    api_version: str = __version__
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=0, le=65535)
    cors_origins: str = ""
    trusted_proxies: str = ""

    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    # FastAPI's built-in OpenTelemetry spans/metrics; needs an OpenTelemetry SDK configured.
    otel_enabled: bool = False

    # Security and limits
    enable_auth: bool = False
    api_key_header: str = "X-API-Key"
    api_keys: SecretStr = SecretStr("")
    api_keys_file: Path | None = None
    rate_limit: str | None = None
    rate_limit_storage_uri: str = "memory://"
    max_batch_size: int = Field(1000, ge=1, le=100_000)
    max_payload_bytes: int = Field(64 * 1024, ge=16)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "rate_limit",
        "kafka_compression_type",
        "kafka_sasl_mechanism",
        "default_ttl_seconds",
        "default_timeout_seconds",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def load_api_keys(self) -> list[str]:
        """Return the accepted API keys from ``API_KEYS`` and ``API_KEYS_FILE`` (one per line).

        Raises:
            ConfigurationError: auth is enabled but no key is configured, or the file is unreadable.
        """
        keys = split_csv(self.api_keys.get_secret_value())
        if self.api_keys_file is not None:
            try:
                lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigurationError(f"cannot read API_KEYS_FILE: {exc.strerror}") from exc
            keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if self.enable_auth and not keys:
            raise ConfigurationError("ENABLE_AUTH is true but no API key is configured")
        return keys
