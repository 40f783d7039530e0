"""Settings of the API process, read from environment variables and ``.env``.

They extend the shared ``CoreSettings`` (Kafka, logging) with what only the API and its
tracker use. Every setting has a default that works for local use; production sets the
Kafka address, ``ENABLE_AUTH`` with ``API_KEYS``/``API_KEYS_FILE`` and
``KAFKA_ENABLE_IDEMPOTENCE=true``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from preservarium_pusher_api import __version__
from preservarium_pusher_api.core.errors import ConfigurationError
from preservarium_pusher_api.core.settings import CoreSettings, split_csv

__all__ = ["Settings", "split_csv"]


class Settings(CoreSettings):
    """All settings of the API process; field names map to upper-case env vars."""

    # Kafka producer and topics
    kafka_linger_ms: int = Field(0, ge=0, le=1000)
    kafka_max_request_size: int = Field(1_048_576, ge=1024)
    kafka_compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    kafka_create_topics: bool = True
    kafka_topic_partitions: int = Field(6, ge=1)
    kafka_topic_replication_factor: int = Field(1, ge=1)
    kafka_health_interval: float = Field(2.0, gt=0)

    # Status store, tracker and deadlines
    status_store_enabled: bool = True
    status_store_url: str = "sqlite+aiosqlite:///./pusher-status.db"
    status_store_pool_size: int = Field(5, ge=1, le=100)
    # Commands accepted by this instance that it answers for until the tracker stored them.
    recent_commands_capacity: int = Field(10_000, ge=0, le=1_000_000)
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
    # The longest a long-poll is held (a `wait` above it is cut to it): below the idle
    # timeout of the proxies in front of the API.
    long_poll_max_seconds: float = Field(60.0, gt=0, le=60)
    # Long-polls (?wait=) open at once per API key (all callers share one budget with auth
    # off); beyond it 429 with Retry-After.
    max_long_polls_per_key: int = Field(100, ge=1, le=100_000)
    idempotency_ttl_seconds: int = Field(24 * 3600, ge=60)

    # Event stream (GET /api/v1/events)
    # A Last-Event-ID older than this is answered with a "gone" error event (resync).
    events_retention_seconds: int = Field(3600, ge=1)
    # A comment line this often keeps proxies from closing an idle stream.
    events_heartbeat_seconds: float = Field(15.0, gt=0, le=300)
    # The reconnect delay the stream tells clients (SSE "retry:").
    events_retry_ms: int = Field(3000, ge=100, le=600_000)
    # Streams open at once per API key (per client address with auth off); beyond it 429.
    events_max_streams_per_key: int = Field(10, ge=1, le=10_000)
    # A client that has not taken an event within this long is disconnected.
    events_send_timeout_seconds: float = Field(10.0, gt=0, le=600)

    # Webhooks
    # The subscriptions file (YAML/JSON); unset: no webhooks.
    webhooks_path: Path | None = None
    # Deliver from inside the API process (off: run `pusher webhooks` alone).
    webhooks_in_api: bool = True
    # Hosts (or host:port) webhook URLs may point to; nothing else is ever called.
    webhook_allowed_hosts: str = ""
    webhook_group_id: str = "pusher-webhooks"
    webhook_timeout_seconds: float = Field(5.0, gt=0, le=120)
    webhook_max_backoff_seconds: float = Field(30.0, gt=0, le=3600)
    # A subscription failing this long is paused (its events dropped, counted).
    webhook_pause_after_seconds: float = Field(600.0, gt=0)
    # Commands delivered in parallel per subscription (each command's events in order).
    webhook_concurrency: int = Field(8, ge=1, le=256)
    # Events one subscription may hold undelivered; when the slowest active one is this far
    # behind, no more is fetched until it catches up (the others wait too).
    webhook_backlog_events: int = Field(10_000, ge=1)
    webhook_reload_seconds: float = Field(2.0, gt=0, le=3600)
    webhook_metrics_port: int = Field(0, ge=0, le=65535)

    # HTTP server
    api_title: str = "Preservarium Pusher API"
    api_version: str = __version__
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=0, le=65535)
    cors_origins: str = ""
    trusted_proxies: str = ""

    # Tracing
    # FastAPI's built-in OpenTelemetry spans/metrics; needs an OpenTelemetry SDK configured.
    otel_enabled: bool = False

    # Security and limits
    enable_auth: bool = False
    # /api/v1/metrics needs an API key too (off: Prometheus scrapes without one).
    metrics_require_auth: bool = False
    api_key_header: str = "X-API-Key"
    api_keys: SecretStr = SecretStr("")
    api_keys_file: Path | None = None
    rate_limit: str | None = None
    rate_limit_storage_uri: str = "memory://"
    max_batch_size: int = Field(1000, ge=1, le=100_000)
    max_payload_bytes: int = Field(64 * 1024, ge=16)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)

    @field_validator(
        "rate_limit",
        "kafka_compression_type",
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
