"""POST → Kafka → CoAP connector → (lossy relay) → aiocoap sensor simulator → status."""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocoap
import cbor2
import pytest
from pusher_dev.coap_simulator import LossyRelay, SimulatedCoapSensor
from pusher_dev.embedded_kafka import free_port

from connectors.coap.transport import CoapTransport
from connectors.parsers.sensor_config_parser import request_tag
from connectors.runtime import ConnectorRuntime
from connectors.settings import CoapSettings
from tests.api_helpers import poll_device, wait_status
from tests.conftest import LiveApi, SettingsFactory, command, serve
from tests.mqtt_helpers import registry_settings, running_connector

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TERMINAL = {"succeeded", "failed", "timed_out", "expired", "cancelled"}


@dataclass
class Stack:
    api: LiveApi
    connector: ConnectorRuntime
    transport: CoapTransport
    sensor: SimulatedCoapSensor

    async def post(self, **overrides: Any) -> str:
        body = command(**{"protocol": "coap", "device_id": "coap-1", "payload": {}, **overrides})
        response = await self.api.client.post("/api/v1/commands", json=body)
        assert response.status_code == 202, response.text
        request_id: str = response.json()["request_id"]
        return request_id

    async def status(self, request_id: str) -> dict[str, Any]:
        body: dict[str, Any] = (
            await self.api.client.get(f"/api/v1/commands/{request_id}/status")
        ).json()
        return body


StackFactory = Callable[..., contextlib.AbstractAsyncContextManager[Stack]]


@pytest.fixture
def coap_stack(make_settings: SettingsFactory, tmp_path: Path) -> StackFactory:
    """API with tracker, a CoAP connector and a sensor simulator; extra registry devices."""

    @contextlib.asynccontextmanager
    async def build(
        devices: dict[str, dict[str, Any]] | None = None,
        sensor: SimulatedCoapSensor | None = None,
        **overrides: Any,
    ) -> AsyncIterator[Stack]:
        sensor = sensor or SimulatedCoapSensor()
        registry = {
            "coap-1": {"protocol": "coap", "address": {"host": "127.0.0.1", "port": sensor.port}},
            **(devices or {}),
        }
        base = make_settings(tracker_enabled=True)
        options: dict[str, Any] = {
            "connector_retry_max_attempts": 3,
            "connector_retry_max_backoff_seconds": 0.3,
            "coap_ack_timeout_seconds": 0.2,
            "coap_max_retransmit": 4,
            **overrides,
        }
        settings = registry_settings(CoapSettings, base, tmp_path, registry, **options)
        transport = CoapTransport(settings)
        async with (
            sensor,
            serve(base) as api,
            running_connector(settings, transport) as connector,
        ):
            yield Stack(api, connector, transport, sensor)

    return build


def sensor_device(sensor: SimulatedCoapSensor, **extra: Any) -> dict[str, Any]:
    return {"protocol": "coap", "address": {"host": "127.0.0.1", "port": sensor.port}, **extra}


async def test_con_command_is_delivered_and_succeeds_with_code_and_payload(
    coap_stack: StackFactory,
) -> None:
    async with coap_stack() as stack:
        request_id = await stack.post(
            command_type="read_sensor", payload={"channel": 3}, confirmable=True
        )
        body = await wait_status(stack.api, request_id, "succeeded")
        assert body["result"] == {
            "code": "2.05 Content",
            "payload": {"channel": 3, "temperature": 24.5, "humidity": 40.0},
        }
        assert [h["status"] for h in body["history"]] == [
            "queued",
            "sent",
            "delivered",
            "succeeded",
        ]
        (received,) = stack.sensor.requests_to("read_sensor")
        assert received.payload == b'{"channel":3}'
        await poll_device(stack.api, "coap-1", online=True)
        assert received.confirmable and received.content_format == 50  # application/json


async def test_non_command_is_only_sent_until_the_answer(coap_stack: StackFactory) -> None:
    async with coap_stack() as stack:
        request_id = await stack.post(
            command_type="read_sensor", payload={"channel": 1}, confirmable=False
        )
        body = await wait_status(stack.api, request_id, "succeeded")
        assert [h["status"] for h in body["history"]] == ["queued", "sent", "succeeded"]
        (received,) = stack.sensor.requests_to("read_sensor")
        assert not received.confirmable


async def test_4xx_fails_without_retry_and_5xx_fails_with_the_code(
    coap_stack: StackFactory,
) -> None:
    sensor = SimulatedCoapSensor(
        errors={"config_read": (aiocoap.SERVICE_UNAVAILABLE, "warming up")}
    )
    async with coap_stack(sensor=sensor) as stack:
        bad = await stack.post(command_type="read_sensor", payload={"channel": 9})
        body = await wait_status(stack.api, bad, "failed")
        assert body["detail"] == "4.00 Bad Request: channel must be 0..7"
        unavailable = await stack.post(command_type="config_read")
        body = await wait_status(stack.api, unavailable, "failed")
        assert body["detail"] == "5.03 Service Unavailable: warming up"
        await asyncio.sleep(0.5)
        assert len(stack.sensor.requests_to("read_sensor")) == 1
        assert len(stack.sensor.requests_to("config_read")) == 1


async def test_binary_parser_frame_is_checked_on_the_device_side(coap_stack: StackFactory) -> None:
    sensor = SimulatedCoapSensor()
    devices = {"coap-bin": sensor_device(sensor, parser="sensor_config_parser")}
    async with coap_stack(devices=devices, sensor=sensor) as stack:
        payload = {
            "measurement_interval": 60,
            "transmission_interval": 600,
            "channels": [0, 2],
            "alarm_threshold": 25.5,
        }
        request_id = await stack.post(
            device_id="coap-bin", command_type="config_update", payload=payload
        )
        body = await wait_status(stack.api, request_id, "succeeded")
        (received,) = stack.sensor.requests_to("config_update")
        header = struct.pack(">BBBIB", 0xC5, 1, 0x01, request_tag(request_id), 0b1111)
        fields = struct.pack(">IIBh", 60, 600, 0b101, 255)
        crc = struct.pack(">H", binascii.crc_hqx(header + fields, 0xFFFF))  # CRC-16/CCITT-FALSE
        assert received.payload == header + fields + crc and len(received.payload) == 21
        assert received.content_format == 42  # application/octet-stream
        assert body["result"] == {
            "code": "2.04 Changed",
            "payload": {"status": "applied", "config": payload},
        }
        assert stack.sensor.config["measurement_interval"] == 60
        # a payload the parser refuses never leaves the connector
        before = stack.transport.requests
        refused = await stack.post(
            device_id="coap-bin",
            command_type="config_update",
            payload={"measurement_interval": 600, "transmission_interval": 60},
        )
        body = await wait_status(stack.api, refused, "failed")
        assert body["detail"] == (
            "parser could not encode the command: "
            "transmission_interval must not be shorter than measurement_interval"
        )
        assert stack.transport.requests == before


async def test_cbor_parser_round_trip(coap_stack: StackFactory) -> None:
    sensor = SimulatedCoapSensor()
    devices = {"coap-cbor": sensor_device(sensor, parser="cbor_parameters")}
    async with coap_stack(devices=devices, sensor=sensor) as stack:
        request_id = await stack.post(
            device_id="coap-cbor", command_type="read_sensor", payload={"channel": 1}
        )
        body = await wait_status(stack.api, request_id, "succeeded")
        (received,) = stack.sensor.requests_to("read_sensor")
        assert received.content_format == 60  # application/cbor
        assert cbor2.loads(received.payload) == {"channel": 1}
        assert body["result"]["payload"] == {"channel": 1, "temperature": 22.5, "humidity": 40.0}


async def test_unknown_device_fails_without_any_datagram(coap_stack: StackFactory) -> None:
    async with coap_stack() as stack:
        request_id = await stack.post(device_id="coap-nobody", command_type="read_sensor")
        body = await wait_status(stack.api, request_id, "failed")
        assert body["detail"] == "unknown device 'coap-nobody': not in the registry"
        assert stack.transport.requests == 0 and stack.sensor.received == []


async def test_large_payload_goes_block_wise(coap_stack: StackFactory) -> None:
    sensor = SimulatedCoapSensor()
    relay = LossyRelay(("127.0.0.1", sensor.port), loss=0.0)
    devices = {
        "coap-relayed": {"protocol": "coap", "address": {"host": "127.0.0.1", "port": relay.port}}
    }
    async with relay, coap_stack(devices=devices, sensor=sensor) as stack:
        table = [round(i * 0.01, 2) for i in range(600)]
        request_id = await stack.post(
            device_id="coap-relayed", command_type="echo", payload={"calibration": table}
        )
        body = await wait_status(stack.api, request_id, "succeeded")
        (received,) = stack.sensor.requests_to("echo")
        assert json.loads(received.payload) == {"calibration": table}
        assert len(received.payload) > 2048  # three blocks of 1024
        assert relay.forwarded >= 2 * (len(received.payload) // 1024 + 1)  # blocks and their ACKs
        assert body["result"]["payload"] == {"calibration": table}


async def test_con_commands_survive_20_percent_loss_and_run_once(coap_stack: StackFactory) -> None:
    sensor = SimulatedCoapSensor()
    relay = LossyRelay(("127.0.0.1", sensor.port), loss=0.2, seed=7)
    devices = {
        "coap-lossy": {"protocol": "coap", "address": {"host": "127.0.0.1", "port": relay.port}}
    }
    async with (
        relay,
        coap_stack(
            devices=devices, sensor=sensor, coap_ack_timeout_seconds=0.1, coap_max_retransmit=8
        ) as stack,
    ):
        request_ids = [
            await stack.post(
                device_id="coap-lossy",
                command_type="read_sensor",
                payload={"channel": i % 8},
                confirmable=True,
                timeout_seconds=120,
            )
            for i in range(20)
        ]
        bodies = [await wait_status(stack.api, rid, "succeeded", within=90) for rid in request_ids]
        assert [b["result"]["payload"]["channel"] for b in bodies] == [i % 8 for i in range(20)]
        assert relay.dropped > 0
        # retransmitted requests were answered from the device's message-layer cache
        assert len(stack.sensor.requests_to("read_sensor")) == 20
        print(f"\n20% loss, CON: {relay.dropped} datagrams dropped, {relay.forwarded} forwarded")


async def test_non_commands_under_loss_end_succeeded_or_timed_out(coap_stack: StackFactory) -> None:
    sensor = SimulatedCoapSensor()
    relay = LossyRelay(("127.0.0.1", sensor.port), loss=0.2, seed=11)
    devices = {
        "coap-lossy": {"protocol": "coap", "address": {"host": "127.0.0.1", "port": relay.port}}
    }
    async with relay, coap_stack(devices=devices, sensor=sensor) as stack:
        request_ids = [
            await stack.post(
                device_id="coap-lossy",
                command_type="read_sensor",
                confirmable=False,
                timeout_seconds=1,
            )
            for _ in range(20)
        ]
        outcomes: list[str] = []
        for request_id in request_ids:
            body = await wait_status_in(stack, request_id, TERMINAL)
            outcomes.append(body["status"])
        assert set(outcomes) <= {"succeeded", "timed_out"}, outcomes
        assert "succeeded" in outcomes and relay.dropped > 0
        assert len(stack.sensor.requests_to("read_sensor")) <= 20
        print(
            f"\n20% loss, NON: {outcomes.count('succeeded')} succeeded, "
            f"{outcomes.count('timed_out')} timed_out"
        )


async def wait_status_in(
    stack: Stack, request_id: str, statuses: set[str], within: float = 30
) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    body: dict[str, Any] = {}
    while asyncio.get_running_loop().time() < deadline:
        body = await stack.status(request_id)
        if body["status"] in statuses:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{request_id} stuck at {body.get('status')}")


async def test_no_acknowledgement_after_retransmissions_times_out(coap_stack: StackFactory) -> None:
    sensor = SimulatedCoapSensor()
    black_hole = LossyRelay(("127.0.0.1", sensor.port), loss=1.0)
    devices = {
        "coap-dead": {"protocol": "coap", "address": {"host": "127.0.0.1", "port": black_hole.port}}
    }
    async with (
        black_hole,
        coap_stack(devices=devices, sensor=sensor, coap_max_retransmit=2) as stack,
    ):
        request_id = await stack.post(
            device_id="coap-dead", command_type="read_sensor", timeout_seconds=60
        )
        body = await wait_status(stack.api, request_id, "timed_out", within=20)
        assert body["detail"] == "no acknowledgement after 2 retransmissions"
        assert (await poll_device(stack.api, "coap-dead", online=False))["protocol"] == "coap"
        assert black_hole.dropped == 3 and stack.sensor.received == []


async def test_closed_port_is_retried_then_failed(coap_stack: StackFactory) -> None:
    devices = {
        "coap-closed": {"protocol": "coap", "address": {"host": "127.0.0.1", "port": free_port()}}
    }
    async with coap_stack(devices=devices) as stack:
        request_id = await stack.post(device_id="coap-closed", command_type="read_sensor")
        body = await wait_status(stack.api, request_id, "failed")
        assert body["detail"].startswith("not delivered after 3 attempts: device port closed")


async def test_a_slow_sensor_does_not_hold_up_another(coap_stack: StackFactory) -> None:
    slow = SimulatedCoapSensor(delay=3.0)
    async with slow:
        devices = {"coap-slow": sensor_device(slow)}
        async with coap_stack(devices=devices) as stack:
            slow_id = await stack.post(device_id="coap-slow", command_type="read_sensor")
            fast_id = await stack.post(command_type="read_sensor")
            await wait_status(stack.api, fast_id, "succeeded")
            assert (await stack.status(slow_id))["status"] not in TERMINAL
            await wait_status(stack.api, slow_id, "succeeded")
