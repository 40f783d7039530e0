"""The MQTT connector as an operator runs it: its own process, registry file, health, SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pusher_dev.embedded_kafka import free_port
from pusher_dev.mosquitto import PrivateMosquitto

from tests.api_helpers import wait_healthy, wait_status
from tests.conftest import SettingsFactory, command, serve
from tests.mqtt_helpers import mqtt_settings, settings_env, simulators

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_pusher_connector_mqtt_process(
    make_settings: SettingsFactory, mosquitto: PrivateMosquitto, tmp_path: Path
) -> None:
    """`pusher connector mqtt`: health, metrics, registry enforced, exit 0 on SIGTERM."""
    registry = tmp_path / "devices.yaml"
    registry.write_text("devices:\n  pico-reg:\n    protocol: mqtt\n    dispatch: on_result\n")
    base = make_settings(tracker_enabled=True)
    port = free_port()
    settings = mqtt_settings(base, mosquitto, connector_require_registration=True)
    env = {**os.environ, **settings_env(settings), "LOG_FORMAT": "json"}
    argv = [
        sys.executable, "-m", "pusher_cli", "connector", "mqtt",
        "--metrics-port", str(port), "--registry", str(registry),
    ]  # fmt: skip
    log_path = tmp_path / "connector.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        async with (
            serve(base) as api,
            simulators(mosquitto, settings.mqtt_topic_prefix, "pico-reg"),
        ):
            health = await wait_healthy(port, process)
            assert health["transport"]["connected"] and health["devices_registered"] == 1
            known = await api.client.post("/api/v1/commands", json=command(device_id="pico-reg"))
            unknown = await api.client.post("/api/v1/commands", json=command(device_id="pico-nope"))
            await wait_status(api, known.json()["request_id"], "succeeded", within=30)
            failed = await wait_status(api, unknown.json()["request_id"], "failed", within=30)
            assert "unknown device" in failed["detail"]
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            for name in (
                "pusher_connector_deliveries_total",
                "pusher_connector_delivery_seconds_bucket",
                "pusher_connector_in_flight",
                "pusher_connector_reconnects_total",
            ):
                assert name in metrics, name
            assert 'pusher_connector_deliveries_total{outcome="succeeded",protocol="mqtt"} 1.0' in (
                metrics
            )
        process.terminate()
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    logs = log_path.read_text()
    assert "connector stopped" in logs
    assert '"payload"' not in logs and "pin" not in logs  # no payload values in logs
