"""Every connector replica of a group knows every device's presence, retained ones included."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest
from pusher_dev.mosquitto import PrivateMosquitto

from tests.conftest import SettingsFactory
from tests.mqtt_helpers import create_topics, mqtt_settings, running_connector

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


async def test_each_replica_sees_retained_and_live_presence(
    make_settings: SettingsFactory, mosquitto: PrivateMosquitto, tmp_path: Path
) -> None:
    base = make_settings()
    await create_topics(base)
    first = mqtt_settings(base, mosquitto)
    prefix = first.mqtt_topic_prefix
    second = mqtt_settings(base, mosquitto, prefix=prefix)
    second = second.model_copy(update={"connector_group_id": first.connector_group_id})
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as device:
        # retained before either replica starts: both must read it at subscribe
        await device.publish(f"{prefix}/pico-r/status", b'{"status": "online"}', qos=1, retain=True)
        async with running_connector(first) as one, running_connector(second) as two:
            async with asyncio.timeout(10):
                while not (one.device_online("pico-r") and two.device_online("pico-r")):
                    await asyncio.sleep(0.05)
            for n in range(6):  # live changes reach both, not one of them
                await device.publish(f"{prefix}/pico-{n}/status", b"offline", qos=1)
            async with asyncio.timeout(10):
                while not all(
                    r.device_online(f"pico-{n}") is False for r in (one, two) for n in range(6)
                ):
                    await asyncio.sleep(0.05)
        await device.publish(f"{prefix}/pico-r/status", b"", qos=1, retain=True)
