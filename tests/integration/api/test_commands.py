"""Commands go through the real API into Kafka; read back the records and check the contract."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest

from preservarium_pusher_api.core.contract import CommandMessage
from tests.conftest import LiveApi, SettingsFactory, assert_error_shape, command, serve
from tests.kafka_helpers import count_records, headers_of, read_records, value_of

pytestmark = pytest.mark.integration

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_single_command_is_acknowledged_and_on_the_wire(api: LiveApi) -> None:
    """A 202 carries the Kafka position; the record has key=device_id, contract headers and JSON."""
    response = await api.client.post(
        "/api/v1/commands",
        json=command(qos=2, retain=True, ttl_seconds=60, timeout_seconds=5, metadata={"x": 1}),
        headers={"traceparent": TRACEPARENT, "X-Request-ID": "lab-run-42"},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    request_id = body["request_id"]
    assert body["success"] is True
    assert uuid.UUID(request_id)
    assert response.headers["location"] == f"/api/v1/commands/{request_id}/status"
    assert response.headers["x-request-id"] == "lab-run-42"

    [record] = await read_records(
        api.settings.kafka_bootstrap_servers, api.settings.kafka_command_topic, 1
    )
    assert (record.partition, record.offset) == (body["partition"], body["offset"])
    assert record.key == b"pico-w-lab-001"
    assert headers_of(record) == {
        "kind": "command",
        "protocol": "mqtt",
        "request_id": request_id,
        "content-type": "application/json",
        "traceparent": TRACEPARENT,
    }
    value = value_of(record)
    message = CommandMessage.model_validate(value)
    assert value["schema_version"] == 1 and value["kind"] == "command"
    assert value["payload"] == {"pin": 25, "state": True}
    assert (message.qos, message.retain, message.timeout_seconds) == (2, True, 5)
    assert message.metadata == {"x": 1}
    assert message.expires_at is not None
    assert message.expires_at - message.created_at == timedelta(seconds=60)
    assert value["created_at"].endswith("Z")


async def test_defaults_and_malformed_traceparent(api: LiveApi) -> None:
    """Defaults: qos 1, TTL and timeout from settings; a malformed traceparent or
    X-Request-ID is not passed on."""
    response = await api.client.post(
        "/api/v1/commands",
        json=command(protocol="coap", confirmable=True),
        headers={"traceparent": "not-a-trace", "X-Request-ID": "bad id with spaces"},
    )
    assert response.status_code == 202
    assert response.headers["x-request-id"] != "bad id with spaces"
    [record] = await read_records(
        api.settings.kafka_bootstrap_servers, api.settings.kafka_command_topic, 1
    )
    assert "traceparent" not in headers_of(record)
    value = value_of(record)
    assert (value["qos"], value["retain"]) == (1, False)
    created = datetime.fromisoformat(value["created_at"])
    expires = datetime.fromisoformat(value["expires_at"])
    assert (expires - created).total_seconds() == api.settings.default_ttl_seconds == 600
    assert value["timeout_seconds"] == api.settings.default_timeout_seconds == 300
    assert value["confirmable"] is True and value["protocol"] == "coap"


async def test_batch_answers_in_order_and_every_record_is_in_kafka(api: LiveApi) -> None:
    """Each batch item gets its own request_id, in order, and its own record keyed by device."""
    items = [command(device_id=f"dev-{i}", payload={"i": i}) for i in range(25)]
    response = await api.client.post("/api/v1/commands/batch", json={"commands": items})
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["total_commands"], body["successful"], body["failed"]) == (25, 25, 0)
    request_ids = [result["request_id"] for result in body["results"]]
    assert len(set(request_ids)) == 25

    records = await read_records(
        api.settings.kafka_bootstrap_servers, api.settings.kafka_command_topic, 25
    )
    by_request = {headers_of(r)["request_id"]: r for r in records}
    for index, request_id in enumerate(request_ids):
        record = by_request[request_id]
        assert record.key == f"dev-{index}".encode()
        assert value_of(record)["payload"] == {"i": index}
        assert (record.partition, record.offset) == (
            body["results"][index]["partition"],
            body["results"][index]["offset"],
        )


async def test_same_device_keeps_order_in_one_partition(api: LiveApi) -> None:
    """Commands for one device land in one partition in submission order."""
    items = [command(payload={"step": i}) for i in range(10)]
    response = await api.client.post("/api/v1/commands/batch", json={"commands": items})
    assert response.status_code == 202
    records = await read_records(
        api.settings.kafka_bootstrap_servers, api.settings.kafka_command_topic, 10
    )
    assert len({r.partition for r in records}) == 1
    assert [
        value_of(r)["payload"]["step"] for r in sorted(records, key=lambda r: r.offset)
    ] == list(range(10))


async def test_batch_partial_failure_marks_only_refused_items(
    make_settings: SettingsFactory,
) -> None:
    """An item Kafka's producer refuses (over its max request size) fails; the rest are written."""
    settings = make_settings(kafka_max_request_size=4096)
    async with serve(settings) as api:
        items = [
            command(device_id="small-1"),
            command(device_id="huge", payload={"blob": "x" * 8000}),
            command(device_id="small-2"),
        ]
        response = await api.client.post("/api/v1/commands/batch", json={"commands": items})
        assert response.status_code == 202, response.text
        body = response.json()
        assert (body["successful"], body["failed"]) == (2, 1)
        ok_1, failed, ok_2 = body["results"]
        assert ok_1["success"] and ok_2["success"]
        assert failed["success"] is False
        assert failed["error_type"] == "CommandRejectedError"
        assert "MessageSizeTooLarge" in failed["message"]

        records = await read_records(
            settings.kafka_bootstrap_servers, settings.kafka_command_topic, 2
        )
        assert sorted(r.key for r in records) == [b"small-1", b"small-2"]
        assert (
            await count_records(settings.kafka_bootstrap_servers, settings.kafka_command_topic) == 2
        )

        single = await api.client.post(
            "/api/v1/commands", json=command(payload={"blob": "x" * 8000})
        )
        assert_error_shape(single, 502)


async def test_status_counts_accepted_commands(api: LiveApi) -> None:
    """GET /api/v1/status reports Kafka connectivity and the number of accepted commands."""
    for _ in range(3):
        assert (await api.client.post("/api/v1/commands", json=command())).status_code == 202
    status = (await api.client.get("/api/v1/status")).json()
    assert status["service"] == "preservarium-pusher-api"
    assert status["kafka_connected"] is True
    assert status["commands_processed"] == 3
    assert status["last_error"] is None
    assert status["uptime_seconds"] >= 0


async def test_response_timestamp_is_the_record_creation_time(api: LiveApi) -> None:
    """The answer's timestamp equals created_at of the record, in UTC."""
    body = (await api.client.post("/api/v1/commands", json=command())).json()
    [record] = await read_records(
        api.settings.kafka_bootstrap_servers, api.settings.kafka_command_topic, 1
    )
    answered = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    created = datetime.fromisoformat(value_of(record)["created_at"].replace("Z", "+00:00"))
    assert abs((answered - created).total_seconds()) < 0.001


async def test_batches_and_single_commands_share_each_devices_partition_and_order(
    api: LiveApi,
) -> None:
    """Batches are produced in bulk (a record batch per partition), singles one by one; a
    device's commands still land in one partition, in submission order, whichever way they
    came, and each answer names the record's real partition and offset."""
    devices = [f"bulk-{n}" for n in range(12)]
    sent: list[tuple[str, int]] = []  # (device, step)
    answers: dict[str, tuple[int, int]] = {}
    step = 0
    for round_ in range(3):
        one = await api.client.post(
            "/api/v1/commands", json=command(device_id=devices[round_], payload={"step": step})
        )
        assert one.status_code == 202
        answers[one.json()["request_id"]] = (one.json()["partition"], one.json()["offset"])
        sent.append((devices[round_], step))
        step += 1
        items = []
        for n in range(120):
            items.append(command(device_id=devices[n % len(devices)], payload={"step": step}))
            sent.append((devices[n % len(devices)], step))
            step += 1
        response = await api.client.post("/api/v1/commands/batch", json={"commands": items})
        assert response.status_code == 202 and response.json()["failed"] == 0
        for result in response.json()["results"]:
            answers[result["request_id"]] = (result["partition"], result["offset"])

    records = await read_records(
        api.settings.kafka_bootstrap_servers, api.settings.kafka_command_topic, len(sent)
    )
    assert len(records) == len(sent)
    for record in records:
        assert answers[headers_of(record)["request_id"]] == (record.partition, record.offset)
    for device in devices:
        mine = [r for r in records if r.key == device.encode()]
        assert len({r.partition for r in mine}) == 1
        steps = [value_of(r)["payload"]["step"] for r in sorted(mine, key=lambda r: r.offset)]
        assert steps == [s for d, s in sent if d == device]
