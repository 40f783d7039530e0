"""Commands held for an offline device are parked: their partition keeps flowing.

Without parking, an offline device's held commands pin their partition's committed offset
and, past ``CONNECTOR_MAX_PENDING_PER_PARTITION`` records, pause the partition: every
other device hashed there stops. Here the limit is small (10), the offline device gets
more than that, and a device on the same partition must still be served. Then the
connector restarts while the commands are parked: the next one reads them back, a cancel
still applies, and when the device comes online it runs each parked command once, in
order.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import aiomqtt
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner
from pusher_dev.mosquitto import PrivateMosquitto

from preservarium_pusher_api.config import Settings
from tests.api_helpers import wait_status
from tests.conftest import SettingsFactory, command, serve
from tests.mqtt_helpers import mqtt_settings, running_connector, simulators

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def partition_count(settings: Settings) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        found = await consumer.topics()
        assert settings.kafka_command_topic in found
        return len(consumer.partitions_for_topic(settings.kafka_command_topic) or ())
    finally:
        await consumer.stop()


def same_partition_devices(count: int) -> tuple[str, str]:
    """Two device ids whose commands share a partition (the producer's murmur2 hash)."""
    partitioner = DefaultPartitioner()
    partitions = list(range(count))
    by_partition: dict[int, list[str]] = {}
    for n in range(100):
        device = f"pico-park-{n}"
        found = by_partition.setdefault(partitioner(device.encode(), partitions, partitions), [])
        found.append(device)
        if len(found) == 2:
            return found[0], found[1]
    raise AssertionError("no two devices share a partition")


async def test_offline_device_does_not_stall_its_partition_and_parked_commands_survive(
    make_settings: SettingsFactory, mosquitto: PrivateMosquitto, tmp_path: Path
) -> None:
    base = make_settings(tracker_enabled=True)
    settings = mqtt_settings(
        base,
        mosquitto,
        connector_max_pending_per_partition=10,
        connector_park_after_seconds=0.5,
    )
    prefix = settings.mqtt_topic_prefix
    async with serve(base) as api:
        offline, neighbour = same_partition_devices(await partition_count(base))
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as board:
            # the device said it is offline (as its last will does)
            status = f"{prefix}/{offline}/status"
            await board.publish(status, b'{"status": "offline"}', retain=True)
        async with running_connector(settings) as first:
            held = []
            for n in range(25):  # more than the partition's pending limit
                body = command(device_id=offline, payload={"pin": n % 28, "state": True})
                response = await api.client.post("/api/v1/commands", json=body)
                assert response.status_code == 202
                held.append(response.json()["request_id"])
            async with simulators(mosquitto, prefix, neighbour, recent_requests=0):
                flowing = []
                for n in range(30):
                    body = command(device_id=neighbour, payload={"pin": n % 28, "state": True})
                    response = await api.client.post("/api/v1/commands", json=body)
                    flowing.append(response.json()["request_id"])
                for request_id in flowing:
                    await wait_status(api, request_id, "succeeded", within=30)
            parked = first.metrics.parked.labels("mqtt")._value.get()
            assert parked >= 25, parked
            # nothing of the offline device's is pinning the partition any more
            assert first.offsets.total_pending() == 0
        # cancel one while parked and no connector runs, then a new connector takes over
        cancelled = held[3]
        response = await api.client.delete(f"/api/v1/commands/{cancelled}")
        assert response.status_code in (200, 202), response.text
        async with running_connector(settings.model_copy(update={"connector_id": "second"})):
            await wait_status(api, cancelled, "cancelled", within=30)
            async with simulators(mosquitto, prefix, offline, recent_requests=0) as (board_sim,):
                for request_id in held:
                    if request_id != cancelled:
                        await wait_status(api, request_id, "succeeded", within=30)
                await asyncio.sleep(0.5)
                runs = Counter(board_sim.executed)
                order = list(board_sim.order)
    expected = [request_id for request_id in held if request_id != cancelled]
    assert max(runs.values()) == 1, "a parked command ran twice"
    assert cancelled not in runs
    assert order == expected, "parked commands ran out of order"
