"""The shared scenarios over MQTT: a Pico W (its firmware, no memory of request ids)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pusher_dev.mosquitto import PrivateMosquitto
from pusher_dev.pico_simulator import SimulatedPico

from tests.conftest import LiveApi, SettingsFactory, command, serve
from tests.e2e.scenarios import Lab, Scenarios
from tests.mqtt_helpers import mqtt_settings, running_connector, simulators

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


class MqttLab(Lab):
    protocol = "mqtt"
    device_id = "pico-scenario"

    def __init__(self, api: LiveApi, board: SimulatedPico) -> None:
        super().__init__(api)
        self.board = board

    def body(self) -> dict[str, Any]:
        # on_result: the next command goes out once the board has answered the one before
        return command(device_id=self.device_id, metadata={"dispatch": "on_result"})

    def executions(self) -> list[str]:
        return list(self.board.order)

    def set_latency(self, seconds: float) -> None:
        self.board.latency = seconds


@pytest.fixture
async def lab(
    make_settings: SettingsFactory, mosquitto: PrivateMosquitto, tmp_path: Path
) -> AsyncIterator[Lab]:
    base = make_settings(tracker_enabled=True)
    settings = mqtt_settings(base, mosquitto)
    async with (
        serve(base) as api,
        running_connector(settings),
        simulators(mosquitto, settings.mqtt_topic_prefix, MqttLab.device_id, recent_requests=0) as (
            board,
        ),
    ):
        yield MqttLab(api, board)


class TestMqttScenarios(Scenarios):
    pass
