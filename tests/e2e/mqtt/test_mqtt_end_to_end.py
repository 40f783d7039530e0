"""POST → Kafka → MQTT connector → Mosquitto → simulated Pico W → result → tracker → status."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from pusher_dev.mosquitto import PrivateMosquitto

from connectors.runtime import ConnectorRuntime
from preservarium_pusher_api.core.contract import CommandMessage, utc_now
from tests.api_helpers import poll_device, wait_status
from tests.conftest import LiveApi, SettingsFactory, command, serve
from tests.kafka_helpers import headers_of, read_records
from tests.mqtt_helpers import envelope, mqtt_listener, mqtt_settings, running_connector, simulators

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
    settings = mqtt_settings(base, mosquitto)
    async with serve(base) as api, running_connector(settings) as connector:
        yield Stack(api, connector, mosquitto, settings.mqtt_topic_prefix)


async def post(api: LiveApi, **overrides: Any) -> str:
    response = await api.client.post("/api/v1/commands", json=command(**overrides))
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    return request_id


async def test_command_reaches_succeeded_with_the_device_result(stack: Stack) -> None:
    """control_led goes out as the exact envelope and ends succeeded with the answer."""
    async with (
        simulators(stack.broker, stack.prefix, "pico-1"),
        mqtt_listener(stack.broker, f"{stack.prefix}/pico-1/command") as published,
    ):
        request_id = await post(stack.api, device_id="pico-1", payload={"pin": 25, "state": True})
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


async def test_device_presence_is_served_by_the_devices_api(stack: Stack) -> None:
    """A simulator's retained online status, then its last will, show in GET /devices."""
    async with simulators(stack.broker, stack.prefix, "pico-presence") as (sim,):
        body = await poll_device(stack.api, "pico-presence", online=True)
        assert body["protocol"] == "mqtt" and body["last_seen"] is not None
        listing = (await stack.api.client.get("/api/v1/devices")).json()
        assert "pico-presence" in [item["device_id"] for item in listing["items"]]
        sim.go_offline()
        await poll_device(stack.api, "pico-presence", online=False)
    missing = await stack.api.client.get("/api/v1/devices/never-seen")
    assert missing.status_code == 404 and missing.json()["type"] == "DeviceNotFoundError"


async def test_task_error_and_unknown_task_end_failed_with_the_device_error(stack: Stack) -> None:
    """A task that raises and a task the board does not have both end failed with its message."""
    async with simulators(stack.broker, stack.prefix, "pico-err"):
        bad_angle = await post(
            stack.api,
            device_id="pico-err",
            command_type="move_servo",
            payload={"pin": 15, "angle": 300},
        )
        unknown = await post(stack.api, device_id="pico-err", command_type="dance", payload={})
        failed = await wait_status(stack.api, bad_angle, "failed")
        assert failed["detail"] == "angle must be between 0 and 180"
        missing = await wait_status(stack.api, unknown, "failed")
        assert missing["detail"] == "Task 'dance' not found"


async def test_offline_device_gets_nothing_and_the_command_expires(stack: Stack) -> None:
    """While a device says offline, its command is held (not published) and expires at its TTL."""
    async with simulators(stack.broker, stack.prefix, "pico-off") as (sim,):
        sim.go_offline()
        await poll_device(stack.api, "pico-off", online=False)
        async with mqtt_listener(stack.broker, f"{stack.prefix}/pico-off/command") as published:
            request_id = await post(stack.api, device_id="pico-off", ttl_seconds=2)
            body = await wait_status(stack.api, request_id, "expired")
            await asyncio.sleep(0.3)
        assert published == []
        assert sim.executed[request_id] == 0
        sources = {entry["status"]: entry["source"] for entry in body["history"]}
        assert "sent" not in sources


async def test_device_that_never_answers_times_out(stack: Stack) -> None:
    """A command acknowledged by the broker but never answered ends timed_out at its timeout."""
    request_id = await post(stack.api, device_id="pico-silent", timeout_seconds=1.5)
    body = await wait_status(stack.api, request_id, "timed_out")
    statuses = [entry["status"] for entry in body["history"]]
    assert "delivered" in statuses


async def test_cancel_while_queued_behind_an_on_result_device(stack: Stack) -> None:
    """A command waiting behind a slow on_result command is cancelled and never published."""
    async with (
        simulators(stack.broker, stack.prefix, "pico-slow", latency=1.5) as (sim,),
        mqtt_listener(stack.broker, f"{stack.prefix}/pico-slow/command") as published,
    ):
        first = await post(stack.api, device_id="pico-slow", metadata={"dispatch": "on_result"})
        await wait_status(stack.api, first, "delivered")
        second = await post(stack.api, device_id="pico-slow", metadata={"dispatch": "on_result"})
        cancel = await stack.api.client.delete(f"/api/v1/commands/{second}")
        assert cancel.status_code == 202, cancel.text
        await wait_status(stack.api, second, "cancelled")
        await wait_status(stack.api, first, "succeeded")
        await asyncio.sleep(0.3)
    ids = [envelope(payload)["request_id"] for _, payload, _ in published]
    assert ids == [first]
    assert sim.executed[second] == 0


async def test_two_hundred_commands_arrive_in_order(stack: Stack) -> None:
    """200 commands to one device are run by the device in the order they were accepted."""
    async with simulators(stack.broker, stack.prefix, "pico-order") as (sim,):
        items = [
            command(device_id="pico-order", payload={"pin": n, "state": True}) for n in range(200)
        ]
        response = await stack.api.client.post("/api/v1/commands/batch", json={"commands": items})
        assert response.status_code in (200, 202, 207), response.text
        accepted = [item["request_id"] for item in response.json()["results"]]
        assert len(accepted) == 200
        await wait_status(stack.api, accepted[-1], "succeeded", within=30)
        async with asyncio.timeout(10):
            while len(sim.order) < 200:
                await asyncio.sleep(0.05)
    assert sim.order == accepted
    assert max(sim.executed.values()) == 1


def same_partition_device(device_id: str, partitions: int) -> str:
    """Another device id whose Kafka key lands in the same partition as ``device_id``."""
    target = (murmur2(device_id.encode()) & 0x7FFFFFFF) % partitions
    for n in range(10_000):
        candidate = f"pico-fast-{n}"
        if (murmur2(candidate.encode()) & 0x7FFFFFFF) % partitions == target:
            return candidate
    raise AssertionError("no device id found")


async def test_slow_device_does_not_delay_another_device(stack: Stack) -> None:
    """With a 2 s-per-command device busy, a device on the same partition still finishes fast."""
    fast_id = same_partition_device("pico-2s", stack.api.settings.kafka_topic_partitions)
    async with simulators(stack.broker, stack.prefix, "pico-2s", latency=2.0):
        async with simulators(stack.broker, stack.prefix, fast_id):
            slow = [
                await post(stack.api, device_id="pico-2s", metadata={"dispatch": "on_result"})
                for _ in range(3)
            ]
            await wait_status(stack.api, slow[0], "delivered")
            started = time.monotonic()
            fast = await post(stack.api, device_id=fast_id)
            await wait_status(stack.api, fast, "succeeded")
            fast_seconds = time.monotonic() - started
            slow_status = (
                await stack.api.client.get(f"/api/v1/commands/{slow[-1]}/status")
            ).json()["status"]
    assert fast_seconds < 1.5, fast_seconds
    assert slow_status in ("queued",), slow_status


async def produce_raw(
    stack: Stack, value: bytes, key: bytes, headers: list[tuple[str, bytes]]
) -> None:
    settings = stack.api.settings
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(settings.kafka_command_topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


async def test_undecodable_record_goes_to_the_dlq_and_the_connector_goes_on(stack: Stack) -> None:
    """A record that is not a command lands in the DLQ with a reason; later commands still run."""
    await produce_raw(
        stack, b"{not json", b"pico-dlq", [("kind", b"command"), ("protocol", b"mqtt")]
    )
    settings = stack.api.settings
    (dead,) = await read_records(
        settings.kafka_bootstrap_servers, settings.kafka_command_topic + ".dlq", 1
    )
    assert dead.value == b"{not json" and dead.key == b"pico-dlq"
    assert "ValidationError" in headers_of(dead)["dlq-reason"]
    async with simulators(stack.broker, stack.prefix, "pico-dlq"):
        await wait_status(stack.api, await post(stack.api, device_id="pico-dlq"), "succeeded")


@pytest.mark.parametrize("ref", ["../../etc/passwd", "os", "json_envelope.pyc", "_private"])
async def test_parser_outside_the_allow_list_fails_the_command(stack: Stack, ref: str) -> None:
    """A parser reference that is a path or not a parser module fails with a clear reason."""
    request_id = str(uuid.uuid4())
    message = CommandMessage(
        request_id=request_id,
        device_id="pico-parser",
        command_type="control_led",
        protocol="mqtt",
        parser_script_ref=ref,
        created_at=utc_now(),
        expires_at=utc_now() + timedelta(minutes=1),
    )
    await produce_raw(
        stack,
        message.model_dump_json().encode(),
        b"pico-parser",
        [("kind", b"command"), ("protocol", b"mqtt"), ("request_id", request_id.encode())],
    )
    settings = stack.api.settings
    records = await read_records(settings.kafka_bootstrap_servers, settings.kafka_result_topic, 1)
    event = records[0].value or b""
    assert b'"failed"' in event and b"parser" in event, event


async def test_a_stream_on_another_api_instance_follows_a_command_to_its_end(
    make_settings: SettingsFactory, mosquitto: PrivateMosquitto
) -> None:
    """Two API instances share Kafka; a command accepted by A runs through the real MQTT
    connector and a simulated board; the event stream on B shows every status, in order."""
    from preservarium_pusher_api.client import PusherAPIClient

    base = make_settings(tracker_enabled=True)
    settings = mqtt_settings(base, mosquitto)
    async with (
        serve(base) as accepting,
        serve(base.model_copy(update={"tracker_enabled": False})) as watching,
        running_connector(settings),
        simulators(mosquitto, settings.mqtt_topic_prefix, "pico-streamed"),
        PusherAPIClient(watching.base_url) as client,
    ):
        stream = client.events(device_id="pico-streamed")
        first = asyncio.ensure_future(anext(stream))
        async with asyncio.timeout(10):
            while watching.app.state.events.serving == 0:
                await asyncio.sleep(0.02)
        request_id = await post(
            accepting, device_id="pico-streamed", payload={"pin": 25, "state": True}
        )
        events = [await asyncio.wait_for(first, 20)]
        async with asyncio.timeout(20):
            while events[-1].status != "succeeded":
                events.append(await anext(stream))
        await stream.aclose()
    mine = [e for e in events if e.request_id == request_id]
    assert [e.status for e in mine] == ["queued", "sent", "delivered", "succeeded"]
    assert mine[-1].data["result"] == "LED on pin 25 ON"
    assert all(e.data["command_type"] == "control_led" for e in mine)
