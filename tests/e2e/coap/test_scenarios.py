"""The shared scenarios over CoAP: the sensor simulator's echo resource, which runs every
request it is given (aiocoap only drops retransmissions of one message)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pusher_dev.coap_simulator import SimulatedCoapSensor

from connectors.coap.transport import CoapTransport
from connectors.settings import CoapSettings
from tests.conftest import LiveApi, SettingsFactory, command, serve
from tests.e2e.scenarios import Lab, Scenarios
from tests.mqtt_helpers import registry_settings, running_connector

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


class CoapLab(Lab):
    protocol = "coap"
    device_id = "coap-scenario"

    def __init__(self, api: LiveApi, sensor: SimulatedCoapSensor) -> None:
        super().__init__(api)
        self.sensor = sensor
        self.request_ids: dict[str, str] = {}  # tag in the payload → request id

    def body(self) -> dict[str, Any]:
        tag = uuid.uuid4().hex
        return command(
            protocol="coap", device_id=self.device_id, command_type="echo", payload={"tag": tag}
        )

    def accepted(self, body: dict[str, Any], request_id: str) -> None:
        self.request_ids[body["payload"]["tag"]] = request_id

    def executions(self) -> list[str]:
        tags = [json.loads(r.payload)["tag"] for r in self.sensor.requests_to("echo")]
        return [self.request_ids.get(tag, tag) for tag in tags]

    def set_latency(self, seconds: float) -> None:
        self.sensor.delay = seconds


@pytest.fixture
async def lab(make_settings: SettingsFactory, tmp_path: Path) -> AsyncIterator[Lab]:
    base = make_settings(tracker_enabled=True)
    sensor = SimulatedCoapSensor()
    registry = {
        CoapLab.device_id: {
            "protocol": "coap",
            "address": {"host": "127.0.0.1", "port": sensor.port},
        }
    }
    settings = registry_settings(
        CoapSettings,
        base,
        tmp_path,
        registry,
        connector_retry_max_backoff_seconds=0.3,
        coap_ack_timeout_seconds=0.2,
    )
    async with sensor, serve(base) as api, running_connector(settings, CoapTransport(settings)):
        yield CoapLab(api, sensor)


class TestCoapScenarios(Scenarios):
    pass
