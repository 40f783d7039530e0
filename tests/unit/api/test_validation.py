"""Bad input gets a 4xx in the one error shape and nothing reaches Kafka (no broker)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import assert_error_shape, command
from tests.unit.api.conftest import ApiFactory, InProcessApi

pytestmark = pytest.mark.unit

MAX_PAYLOAD = 1024
MAX_BODY = 16 * 1024
MAX_BATCH = 3


@pytest.fixture
async def strict_api(make_api: ApiFactory) -> AsyncIterator[InProcessApi]:
    """Small limits, so every limit is reached with small requests."""
    async with make_api(
        max_payload_bytes=MAX_PAYLOAD, max_body_bytes=MAX_BODY, max_batch_size=MAX_BATCH
    ) as api:
        yield api


def assert_nothing_produced(api: InProcessApi) -> None:
    """No record was handed to the producer."""
    assert api.kafka.records == [], "a rejected request reached Kafka"


def _loc_names(body: dict[str, Any]) -> set[str]:
    return {str(part) for detail in body["details"] for part in detail.get("loc", [])}


INVALID_COMMANDS: list[tuple[str, dict[str, Any], str]] = [
    ("missing fields", {}, "device_id"),
    ("unknown field (typo)", {**command(), "device_Id": "x"}, "device_Id"),
    ("device_id wrong type", command(device_id=5), "device_id"),
    ("payload not an object", command(payload=[1, 2]), "payload"),
    ("qos as string", command(qos="1"), "qos"),
    ("qos out of range", command(qos=3), "qos"),
    ("qos as bool", command(qos=True), "qos"),
    ("retain as string", command(retain="true"), "retain"),
    ("empty device_id", command(device_id=""), "device_id"),
    ("device_id too long", command(device_id="d" * 129), "device_id"),
    ("device_id with slash", command(device_id="lab/1"), "device_id"),
    ("device_id with plus", command(device_id="lab+1"), "device_id"),
    ("device_id with hash", command(device_id="lab#1"), "device_id"),
    ("device_id with space", command(device_id="lab 1"), "device_id"),
    ("device_id with tab", command(device_id="lab\t1"), "device_id"),
    ("device_id with control char", command(device_id="lab\u00011"), "device_id"),
    ("command_type with wildcard", command(command_type="led/#"), "command_type"),
    ("command_type empty", command(command_type=""), "command_type"),
    ("retain on coap", command(protocol="coap", retain=True), "retain"),
    ("retain on http", command(protocol="http", retain=False), "retain"),
    ("confirmable on mqtt", command(confirmable=True), "confirmable"),
    ("parser given as a path", command(parser_script_ref="../../etc/passwd"), "parser_script_ref"),
    ("topic override with wildcard", command(metadata={"topic": "lab/+/cmd"}), "metadata"),
    ("topic is a result topic", command(metadata={"topic": "lab/pico-2/result"}), "metadata"),
    ("topic is a status topic", command(metadata={"topic": "lab/pico-2/status"}), "metadata"),
    ("topic is a system topic", command(metadata={"topic": "$SYS/broker"}), "metadata"),
    ("topic with a NUL", command(metadata={"topic": "lab/a\u0000b"}), "metadata"),
    ("topic too long", command(metadata={"topic": "t/" * 200}), "metadata"),
    ("dispatch not a policy", command(metadata={"dispatch": "whenever"}), "metadata"),
    ("ttl not positive", command(ttl_seconds=0), "ttl_seconds"),
]


@pytest.mark.parametrize(
    ("body", "field"),
    [(b, f) for _, b, f in INVALID_COMMANDS],
    ids=[i for i, _, _ in INVALID_COMMANDS],
)
async def test_invalid_command_is_422_naming_the_field(
    strict_api: InProcessApi, body: dict[str, Any], field: str
) -> None:
    """Each invalid command answers 422, names the offending field and produces nothing."""
    response = await strict_api.client.post("/api/v1/commands", json=body)
    error = assert_error_shape(response, 422)
    assert error["type"] == "ValidationError"
    assert field in _loc_names(error), error
    assert field in error["error"] or field == "device_id"
    assert_nothing_produced(strict_api)


async def test_unknown_protocol_lists_allowed_values(strict_api: InProcessApi) -> None:
    """An unknown protocol answers 422 and lists mqtt, coap and http."""
    response = await strict_api.client.post("/api/v1/commands", json=command(protocol="zigbee"))
    error = assert_error_shape(response, 422)
    [detail] = error["details"]
    assert detail["loc"] == ["body", "protocol"]
    assert all(name in detail["msg"] for name in ("'mqtt'", "'coap'", "'http'"))
    assert_nothing_produced(strict_api)


@pytest.mark.parametrize("raw", [b"{bad json", b"[1, 2]", b"", b'"text"'])
async def test_malformed_or_non_object_json_is_422(strict_api: InProcessApi, raw: bytes) -> None:
    """Malformed JSON or a body that is not an object answers 422."""
    response = await strict_api.client.post(
        "/api/v1/commands", content=raw, headers={"Content-Type": "application/json"}
    )
    assert_error_shape(response, 422)
    assert_nothing_produced(strict_api)


async def test_validation_errors_do_not_echo_payload_values(strict_api: InProcessApi) -> None:
    """Error details name fields, never the submitted values."""
    secret = "s3cr3t-value-123"
    response = await strict_api.client.post(
        "/api/v1/commands", json=command(device_id=f"bad/{secret}", qos=secret)
    )
    assert_error_shape(response, 422)
    assert secret not in response.text


async def test_payload_over_limit_is_413(strict_api: InProcessApi) -> None:
    """A serialized payload over MAX_PAYLOAD_BYTES answers 413 with its size."""
    big = command(payload={"data": "x" * MAX_PAYLOAD})
    error = assert_error_shape(await strict_api.client.post("/api/v1/commands", json=big), 413)
    assert error["type"] == "PayloadTooLargeError"
    assert error["details"][0]["limit_bytes"] == MAX_PAYLOAD
    assert_nothing_produced(strict_api)


async def test_payload_exactly_at_limit_is_accepted(strict_api: InProcessApi) -> None:
    """A payload of exactly MAX_PAYLOAD_BYTES serialized bytes is accepted."""
    filler = MAX_PAYLOAD - len(json.dumps({"d": ""}, separators=(",", ":")))
    body = command(device_id="sentinel", payload={"d": "y" * filler})
    response = await strict_api.client.post("/api/v1/commands", json=body)
    assert response.status_code == 202, response.text
    [record] = strict_api.kafka.records
    assert len(json.loads(record.value)["payload"]["d"]) == filler


async def test_body_over_limit_with_content_length_is_413(strict_api: InProcessApi) -> None:
    """A declared Content-Length over MAX_BODY_BYTES is refused before reading the body."""
    raw = json.dumps(command(payload={"pad": "p" * MAX_BODY})).encode()
    response = await strict_api.client.post(
        "/api/v1/commands", content=raw, headers={"Content-Type": "application/json"}
    )
    error = assert_error_shape(response, 413)
    assert error["type"] == "RequestBodyTooLargeError"
    assert_nothing_produced(strict_api)


async def test_chunked_body_over_limit_is_413(strict_api: InProcessApi) -> None:
    """A chunked body (no Content-Length) is counted as it streams and refused past the limit."""
    chunks_sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        yield b'{"device_id": "x", "command_type": "y", "protocol": "mqtt", "payload": {"p": "'
        for _ in range(200):  # 200 x 1 KiB, far over the 16 KiB limit
            chunks_sent += 1
            yield b"z" * 1024
        yield b'"}}'

    response = await strict_api.client.post(
        "/api/v1/commands", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    error = assert_error_shape(response, 413)
    assert error["type"] == "RequestBodyTooLargeError"
    assert_nothing_produced(strict_api)


async def test_empty_batch_is_422(strict_api: InProcessApi) -> None:
    """A batch without commands answers 422."""
    response = await strict_api.client.post("/api/v1/commands/batch", json={"commands": []})
    assert_error_shape(response, 422)
    assert_nothing_produced(strict_api)


async def test_batch_over_max_size_is_422(strict_api: InProcessApi) -> None:
    """A batch over MAX_BATCH_SIZE answers 422 and produces none of its commands."""
    items = [command(device_id=f"d{i}") for i in range(MAX_BATCH + 1)]
    response = await strict_api.client.post("/api/v1/commands/batch", json={"commands": items})
    error = assert_error_shape(response, 422)
    assert error["type"] == "BatchTooLargeError"
    assert_nothing_produced(strict_api)


async def test_batch_with_one_invalid_item_produces_nothing(strict_api: InProcessApi) -> None:
    """One invalid item rejects the whole batch (422 naming its index); no item is produced."""
    items = [command(), command(device_id="bad/id"), command()]
    response = await strict_api.client.post("/api/v1/commands/batch", json={"commands": items})
    error = assert_error_shape(response, 422)
    assert error["details"][0]["loc"][:4] == ["body", "commands", 1, "device_id"]
    assert_nothing_produced(strict_api)


async def test_batch_with_one_oversized_payload_is_413_and_produces_nothing(
    strict_api: InProcessApi,
) -> None:
    """An oversized payload anywhere in a batch answers 413 naming its index; nothing produced."""
    items = [command(), command(payload={"d": "x" * MAX_PAYLOAD})]
    response = await strict_api.client.post("/api/v1/commands/batch", json={"commands": items})
    error = assert_error_shape(response, 413)
    assert [d["index"] for d in error["details"]] == [1]
    assert_nothing_produced(strict_api)


async def test_unknown_route_uses_error_shape(strict_api: InProcessApi) -> None:
    """Unknown routes and wrong methods also answer in the error shape."""
    assert_error_shape(await strict_api.client.get("/api/v1/nope"), 404)
    assert_error_shape(await strict_api.client.put("/api/v1/commands"), 405)
