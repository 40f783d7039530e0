"""API keys, rate limits per key / per client address, and what never reaches the logs."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
import structlog

from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.errors import ConfigurationError
from preservarium_pusher_api.core.logging import configure_logging
from preservarium_pusher_api.main import create_app
from tests.conftest import SettingsFactory, assert_error_shape, command, serve
from tests.kafka_helpers import read_records

pytestmark = pytest.mark.integration

KEY_A = "lab-key-a-0123456789"
KEY_B = "lab-key-b-9876543210"


async def test_auth_on_refuses_missing_and_wrong_keys(make_settings: SettingsFactory) -> None:
    """With ENABLE_AUTH every command route answers 401 without or with a wrong key."""
    settings = make_settings(enable_auth=True, api_keys=f"{KEY_A}, {KEY_B}")
    async with serve(settings) as api:
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY_A + "x"}, {"X-API-Key": ""}):
            single = await api.client.post("/api/v1/commands", json=command(), headers=headers)
            assert assert_error_shape(single, 401)["type"] == "AuthenticationError"
            batch = await api.client.post(
                "/api/v1/commands/batch", json={"commands": [command()]}, headers=headers
            )
            assert_error_shape(batch, 401)
            assert_error_shape(await api.client.get("/api/v1/status", headers=headers), 401)

        for key in (KEY_A, KEY_B):
            ok = await api.client.post(
                "/api/v1/commands", json=command(), headers={"X-API-Key": key}
            )
            assert ok.status_code == 202
        records = await read_records(
            settings.kafka_bootstrap_servers, settings.kafka_command_topic, 2
        )
        assert len(records) == 2

        for open_path in ("/health", "/health/ready", "/docs", "/openapi.json", "/api/v1/metrics"):
            assert (await api.client.get(open_path)).status_code == 200, open_path


async def test_custom_header_and_key_file(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """Keys can come from API_KEYS_FILE and the header name from API_KEY_HEADER."""
    key_file = tmp_path / "keys"
    key_file.write_text(f"# lab keys\n{KEY_B}\n\n")
    settings = make_settings(enable_auth=True, api_keys_file=key_file, api_key_header="X-Lab-Key")
    async with serve(settings) as api:
        refused = await api.client.post(
            "/api/v1/commands", json=command(), headers={"X-API-Key": KEY_B}
        )
        assert_error_shape(refused, 401)
        accepted = await api.client.post(
            "/api/v1/commands", json=command(), headers={"X-Lab-Key": KEY_B}
        )
        assert accepted.status_code == 202


def test_auth_without_any_key_does_not_start() -> None:
    """ENABLE_AUTH without API_KEYS or API_KEYS_FILE is a configuration error at startup."""
    with pytest.raises(ConfigurationError, match="no API key"):
        create_app(Settings(_env_file=None, enable_auth=True))  # type: ignore[call-arg]


async def test_rate_limit_is_per_api_key(make_settings: SettingsFactory) -> None:
    """Past RATE_LIMIT a key gets 429 with Retry-After; another key still has its own budget."""
    settings = make_settings(enable_auth=True, api_keys=f"{KEY_A},{KEY_B}", rate_limit="3/minute")
    async with serve(settings) as api:
        for _ in range(3):
            ok = await api.client.post(
                "/api/v1/commands", json=command(), headers={"X-API-Key": KEY_A}
            )
            assert ok.status_code == 202
        limited = await api.client.post(
            "/api/v1/commands", json=command(), headers={"X-API-Key": KEY_A}
        )
        error = assert_error_shape(limited, 429)
        assert error["type"] == "RateLimitExceeded"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        other = await api.client.post(
            "/api/v1/commands", json=command(), headers={"X-API-Key": KEY_B}
        )
        assert other.status_code == 202
        # Health and metrics are never limited.
        for _ in range(5):
            assert (await api.client.get("/health")).status_code == 200
        records = await read_records(
            settings.kafka_bootstrap_servers, settings.kafka_command_topic, 4
        )
        assert len(records) == 4


async def test_rate_limit_by_client_address_ignores_forwarded_for(
    make_settings: SettingsFactory,
) -> None:
    """With auth off the limit is per client address; X-Forwarded-For is not trusted by default."""
    async with serve(make_settings(rate_limit="2/minute")) as api:
        statuses = [
            (
                await api.client.post(
                    "/api/v1/commands/batch",
                    json={"commands": [command()]},
                    headers={"X-Forwarded-For": f"10.0.0.{i}"},
                )
            ).status_code
            for i in range(3)
        ]
        assert statuses == [202, 202, 429]


async def test_forwarded_for_is_used_behind_a_trusted_proxy(make_settings: SettingsFactory) -> None:
    """With TRUSTED_PROXIES naming the peer, each forwarded client has its own budget."""
    async with serve(make_settings(rate_limit="1/minute", trusted_proxies="127.0.0.1")) as api:
        first = [
            (
                await api.client.post(
                    "/api/v1/commands", json=command(), headers={"X-Forwarded-For": f"10.0.0.{i}"}
                )
            ).status_code
            for i in range(3)
        ]
        again = await api.client.post(
            "/api/v1/commands", json=command(), headers={"X-Forwarded-For": "10.0.0.0"}
        )
        assert first == [202, 202, 202]
        assert again.status_code == 429


async def test_logs_carry_ids_but_never_keys_or_payload_values(
    make_settings: SettingsFactory,
) -> None:
    """JSON log lines name request and device, never the API key or payload values."""
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    secret_value = "payload-secret-4242"
    settings = make_settings(enable_auth=True, api_keys=KEY_A)
    try:
        async with serve(settings) as api:
            accepted = await api.client.post(
                "/api/v1/commands",
                json=command(payload={"token": secret_value}),
                headers={"X-API-Key": KEY_A, "X-Request-ID": "trace-77"},
            )
            refused = await api.client.post(
                "/api/v1/commands", json=command(), headers={"X-API-Key": KEY_B}
            )
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    assert accepted.status_code == 202 and refused.status_code == 401
    output = stream.getvalue()
    assert KEY_A not in output and KEY_B not in output
    assert secret_value not in output
    assert '"http_request_id": "trace-77"' in output
    assert f'"request_id": "{accepted.json()["request_id"]}"' in output
    assert '"device_id": "pico-w-lab-001"' in output
