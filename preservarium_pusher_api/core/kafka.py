"""aiokafka options built from the core settings, shared by every producer and consumer."""

from __future__ import annotations

import ssl
from typing import Any

from preservarium_pusher_api.core.settings import CoreSettings


def connection_options(settings: CoreSettings) -> dict[str, Any]:
    """aiokafka connection keyword arguments shared by producers, consumers and admin."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": settings.kafka_client_id,
        "request_timeout_ms": int(
            max(settings.kafka_request_timeout, settings.kafka_producer_timeout) * 1000
        ),
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        options["ssl_context"] = ssl.create_default_context(cafile=cafile)
    if settings.kafka_sasl_mechanism:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        options["sasl_plain_password"] = password.get_secret_value() if password else None
    return options


def consumer_options(settings: CoreSettings, group_id: str) -> dict[str, Any]:
    """aiokafka consumer keyword arguments: connection, group and manual commits."""
    return {
        **connection_options(settings),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": settings.kafka_consumer_session_timeout_ms,
        "heartbeat_interval_ms": settings.kafka_consumer_heartbeat_interval_ms,
        "rebalance_timeout_ms": settings.kafka_consumer_rebalance_timeout_ms,
        "fetch_max_wait_ms": settings.kafka_consumer_fetch_max_wait_ms,
        "retry_backoff_ms": 50,
    }
