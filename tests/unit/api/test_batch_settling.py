"""How a batch settles item by item, on an in-memory Kafka that refuses or never answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError, NotLeaderForPartitionError

from tests.unit.api.conftest import ApiFactory

pytestmark = pytest.mark.unit


def item(device_id: str, n: int = 0) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "command_type": "control_led",
        "payload": {"pin": n, "state": True},
        "protocol": "mqtt",
    }


async def test_refused_items_fail_alone_and_the_rest_are_produced_in_order(
    make_api: ApiFactory,
) -> None:
    async with make_api() as api:
        api.kafka.refuse["pico-big"] = MessageSizeTooLargeError()
        commands = [item("pico-a", 1), item("pico-big", 2), item("pico-a", 3), item("pico-b", 4)]
        response = await api.client.post("/api/v1/commands/batch", json={"commands": commands})
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["total_commands"], body["successful"], body["failed"]) == (4, 3, 1)
    outcomes = [result["success"] for result in body["results"]]
    assert outcomes == [True, False, True, True]
    failed = body["results"][1]
    assert failed["error_type"] and failed["request_id"]
    produced = [json.loads(record.value) for record in api.kafka.records]
    assert [m["payload"]["pin"] for m in produced] == [1, 3, 4]
    assert [m["request_id"] for m in produced] == [
        r["request_id"] for r in body["results"] if r["success"]
    ]


async def test_no_acknowledgement_within_the_producer_timeout_is_a_503(
    make_api: ApiFactory,
) -> None:
    async with make_api(kafka_producer_timeout=0.2) as api:
        api.kafka.hold = True
        commands = [item("pico-a", n) for n in range(3)]
        response = await api.client.post("/api/v1/commands/batch", json={"commands": commands})
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"]
    assert response.json()["type"] == "KafkaUnavailableError"


async def test_every_item_refused_as_retriable_is_a_503_with_retry_after(
    make_api: ApiFactory,
) -> None:
    async with make_api() as api:
        api.kafka.refuse["pico-a"] = NotLeaderForPartitionError()
        commands = [item("pico-a", n) for n in range(2)]
        response = await api.client.post("/api/v1/commands/batch", json={"commands": commands})
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"]
    assert api.kafka.records == []


async def test_known_outage_produces_nothing_and_answers_503(make_api: ApiFactory) -> None:
    async with make_api() as api:
        api.kafka.connected = False
        response = await api.client.post(
            "/api/v1/commands/batch", json={"commands": [item("pico-a"), item("pico-b")]}
        )
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"]
        assert api.kafka.records == []
