"""Hostile MQTT input: nothing a device sends stops delivery or sticks the status store.

Run on SQLite and on PostgreSQL (which enforces column lengths and refuses NUL in text).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from pusher_dev.mosquitto import PrivateMosquitto

from connectors.runtime import ConnectorRuntime
from connectors.settings import MqttSettings
from tests.api_helpers import wait_status
from tests.conftest import LiveApi, SettingsFactory, command, serve
from tests.mqtt_helpers import mqtt_settings, running_connector, simulators

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DEEP = b"[" * 50_000 + b"]" * 50_000


@dataclass
class Stack:
    api: LiveApi
    connector: ConnectorRuntime
    broker: PrivateMosquitto
    settings: MqttSettings

    @property
    def prefix(self) -> str:
        return self.settings.mqtt_topic_prefix

    def refused(self, reason: str) -> float:
        value = self.connector.metrics.registry.get_sample_value(
            "pusher_connector_rejected_messages_total", {"protocol": "mqtt", "reason": reason}
        )
        return value or 0.0

    async def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        async with aiomqtt.Client(self.broker.host, self.broker.port) as client:
            await client.publish(topic, payload, qos=1, retain=retain)

    async def post(self, **overrides: Any) -> str:
        response = await self.api.client.post("/api/v1/commands", json=command(**overrides))
        assert response.status_code == 202, response.text
        request_id: str = response.json()["request_id"]
        return request_id


@pytest.fixture
async def stack(
    make_settings: SettingsFactory,
    mosquitto: PrivateMosquitto,
    tmp_path: Path,
    store_url: str,
) -> AsyncIterator[Stack]:
    base = make_settings(tracker_enabled=True, status_store_url=store_url)
    settings = mqtt_settings(base, mosquitto)
    prefix = settings.mqtt_topic_prefix
    # Retained before the connector starts: it reads this on every (re)start.
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.publish(f"{prefix}/pico-retained/status", DEEP, qos=1, retain=True)
    try:
        async with serve(base) as api, running_connector(settings) as connector:
            yield Stack(api, connector, mosquitto, settings)
    finally:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
            await client.publish(f"{prefix}/pico-retained/status", b"", qos=1, retain=True)


async def wait_refused(stack: Stack, reason: str, at_least: float) -> None:
    async with asyncio.timeout(10):
        while stack.refused(reason) < at_least:
            await asyncio.sleep(0.05)


async def test_poison_messages_are_counted_and_delivery_goes_on(stack: Stack) -> None:
    prefix = stack.prefix
    await wait_refused(stack, "too_deep", 1)  # the retained status, read at connect
    await stack.publish(f"{prefix}/pico-x/result", DEEP)
    await stack.publish(f"{prefix}/pico-x/status", DEEP)
    await stack.publish(f"{prefix}/pico-x/status", b'{"status": "\xff\xfeonline"}')
    await stack.publish(f"{prefix}/{'d' * 300}/result", b'{"request_id": "r", "status": "success"}')
    await stack.publish(f"{prefix}/pico-x/result", b'{"pad": "' + b"x" * 2_000_000 + b'"}')
    await stack.publish(f"{prefix}/pico-x/result", b"not json at all")
    await wait_refused(stack, "too_deep", 3)
    await wait_refused(stack, "not_utf8", 1)
    await wait_refused(stack, "bad_device_id", 1)
    await wait_refused(stack, "too_large", 1)
    await wait_refused(stack, "invalid", 1)
    health = stack.connector.transport.health()
    assert health["connected"] and health["connections"] == 1  # the reader never died
    async with simulators(stack.broker, prefix, "pico-after", recent_requests=0) as (board,):
        request_id = await stack.post(device_id="pico-after")
        await wait_status(stack.api, request_id, "succeeded")
    assert board.executed[request_id] == 1


async def test_answers_with_nul_long_ids_and_huge_results_still_settle_commands(
    stack: Stack,
) -> None:
    """Answers are bounded before they reach Kafka and the store: NUL is removed, a result
    over MAX_RESULT_BYTES becomes a marker, an answer naming a request id no command could
    have is ignored — and every command still ends."""
    prefix = stack.prefix
    failing = await stack.post(device_id="pico-nul", timeout_seconds=60)
    big = await stack.post(device_id="pico-big", timeout_seconds=60)
    nul_result = await stack.post(device_id="pico-nul2", timeout_seconds=60)
    for request_id in (failing, big, nul_result):
        await wait_status(stack.api, request_id, "delivered")
    answers = {
        "pico-nul": {"request_id": failing, "status": "error", "error": "bad\u0000news " * 200},
        "pico-big": {"request_id": big, "status": "success", "result": {"blob": "y" * 200_000}},
        "pico-nul2": {
            "request_id": nul_result,
            "status": "success",
            "result": {"k\u0000": "v\u0000"},
        },
    }
    await stack.publish(
        f"{prefix}/pico-nul/result",
        json.dumps({"request_id": "r" * 300, "status": "success"}).encode(),
    )
    for device_id, answer in answers.items():
        await stack.publish(f"{prefix}/{device_id}/result", json.dumps(answer).encode())
    failed = await wait_status(stack.api, failing, "failed")
    assert "\x00" not in failed["detail"] and failed["detail"].startswith("badnews")
    assert len(failed["detail"]) <= 500
    truncated = await wait_status(stack.api, big, "succeeded")
    assert truncated["result"]["truncated"] is True
    cleaned = await wait_status(stack.api, nul_result, "succeeded")
    assert cleaned["result"] == {"k": "v"}
    # the store still takes new events
    async with simulators(stack.broker, prefix, "pico-after2", recent_requests=0):
        request_id = await stack.post(device_id="pico-after2")
        await wait_status(stack.api, request_id, "succeeded")
