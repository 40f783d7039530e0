"""POST → Kafka → MQTT connector → Mosquitto → simulated Pico W → result → tracker → status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connectors.runtime import ConnectorRuntime
from preservarium_pusher_api.devtools.mosquitto import PrivateMosquitto
from tests.conftest import LiveApi, SettingsFactory, command, serve
from tests.mqtt_helpers import envelope, mqtt_listener, mqtt_settings, running_connector, simulators
from tests.test_status_api import wait_status

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    api: LiveApi
    connector: ConnectorRuntime
    broker: PrivateMosquitto
    prefix: str


@pytest.fixture
async def stack(
    make_settings: SettingsFactory, mosquitto: PrivateMosquitto, tmp_path: Path
) -> AsyncIterator[Stack]:
    """API with tracker and an MQTT connector on the test's topics and private broker."""
    base = make_settings(tracker_enabled=True)
    settings = mqtt_settings(base, mosquitto, tmp_path / "state")
    async with serve(base) as api, running_connector(settings) as connector:
        yield Stack(api, connector, mosquitto, settings.mqtt_topic_prefix)


async def post(api: LiveApi, **overrides: Any) -> str:
    response = await api.client.post("/api/v1/commands", json=command(**overrides))
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    return request_id


async def test_command_reaches_succeeded_with_the_device_result(stack: Stack) -> None:
    """A control_led command is published as the exact envelope and ends succeeded with the answer."""
    async with (
        simulators(stack.broker, stack.prefix, "pico-1"),
        mqtt_listener(stack.broker, f"{stack.prefix}/pico-1/command") as published,
    ):
        request_id = await post(
            stack.api, device_id="pico-1", payload={"pin": 25, "state": True}
        )
        body = await wait_status(stack.api, request_id, "succeeded")
    assert body["result"] == "LED on pin 25 ON"
    statuses = [entry["status"] for entry in body["history"]]
    assert statuses[:3] == ["queued", "sent", "delivered"], statuses
    assert len(published) == 1
    assert envelope(published[0][1]) == {
        "request_id": request_id,
        "task": "control_led",
        "parameters": {"pin": 25, "state": True},
    }
