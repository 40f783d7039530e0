"""An Idempotency-Key retried while Kafka's acknowledgement is late: one record, one id.

A proxy in front of a private broker (advertised at the proxy) holds the broker's answers
past KAFKA_PRODUCER_TIMEOUT, then lets them through: the record landed the first time,
the client only heard about it late.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from pusher_dev.embedded_kafka import EmbeddedKafka, free_port

from tests.conftest import LiveApi, SettingsFactory, command, serve
from tests.kafka_helpers import count_records, headers_of, read_records, value_of
from tests.stall_proxy import StallingProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def proxied_broker() -> Iterator[EmbeddedKafka]:
    proxy_port = free_port()
    with EmbeddedKafka(advertised_port=proxy_port) as broker:
        yield broker


@pytest.fixture
async def stalled(
    proxied_broker: EmbeddedKafka, make_settings: SettingsFactory
) -> AsyncIterator[tuple[LiveApi, StallingProxy]]:
    async with StallingProxy(proxied_broker.port, proxied_broker.advertised_port) as proxy:
        settings = make_settings(
            kafka_bootstrap_servers=f"127.0.0.1:{proxy.port}",
            kafka_enable_idempotence=False,
            kafka_producer_timeout=1.0,
            kafka_request_timeout=30.0,
        )
        async with serve(settings) as api:
            yield api, proxy


async def post(api: LiveApi, key: str, body: dict[str, object]) -> tuple[int, dict]:
    response = await api.client.post(
        "/api/v1/commands", json=body, headers={"Idempotency-Key": key}, timeout=30
    )
    return response.status_code, response.json()


async def test_retries_after_a_late_acknowledgement_give_one_record_and_one_request_id(
    stalled: tuple[LiveApi, StallingProxy],
) -> None:
    api, proxy = stalled
    warm = await post(api, "warm-up", command(device_id="pico-warm"))
    assert warm[0] == 202, warm
    body = command(device_id="pico-stall", payload={"pin": 7, "state": True})

    proxy.stall()
    status, first = await post(api, "key-stall", body)
    assert status == 503, first
    assert first["type"] == "KafkaUnavailableError"
    status, during = await post(api, "key-stall", body)  # the outcome is still unknown
    assert status == 409 and during["type"] == "IdempotencyKeyInProgressError", during
    proxy.release()

    answers = []
    for _ in range(40):  # the client keeps retrying with its key
        status, answer = await post(api, "key-stall", body)
        answers.append((status, answer))
        if status == 202:
            break
        await asyncio.sleep(0.25)
    status, accepted = answers[-1]
    assert status == 202, answers
    status, again = await post(api, "key-stall", body)
    assert status == 202 and again["request_id"] == accepted["request_id"]

    bootstrap, topic = api.settings.kafka_bootstrap_servers, api.settings.kafka_command_topic
    records = await read_records(bootstrap, topic, 2)
    assert await count_records(bootstrap, topic, idle=2.0) == 2  # warm-up and one more
    stall_records = [r for r in records if value_of(r)["device_id"] == "pico-stall"]
    assert len(stall_records) == 1, [headers_of(r) for r in stall_records]
    assert headers_of(stall_records[0])["request_id"] == accepted["request_id"]
    status_body = await api.client.get(f"/api/v1/commands/{accepted['request_id']}/status")
    assert status_body.status_code == 200


async def test_a_batch_under_a_key_is_never_reported_failed_while_it_may_still_land(
    stalled: tuple[LiveApi, StallingProxy],
) -> None:
    """A batch whose acknowledgements are late: 503, then after the retries exactly one
    record per item, with the request ids the replayed answer names."""
    api, proxy = stalled
    assert (await post(api, "warm-up", command(device_id="pico-warm")))[0] == 202
    items = [command(device_id=f"pico-b{n}", payload={"pin": n, "state": True}) for n in range(3)]
    batch = {"commands": items}

    async def post_batch() -> tuple[int, dict]:
        response = await api.client.post(
            "/api/v1/commands/batch", json=batch, headers={"Idempotency-Key": "batch-key"}
        )
        return response.status_code, response.json()

    proxy.stall()
    status, first = await post_batch()
    assert status == 503 and first["type"] == "KafkaUnavailableError", first
    proxy.release()
    for _ in range(40):
        status, answer = await post_batch()
        if status == 202:
            break
        await asyncio.sleep(0.25)
    assert status == 202 and answer["successful"] == 3, answer
    bootstrap, topic = api.settings.kafka_bootstrap_servers, api.settings.kafka_command_topic
    records = await read_records(bootstrap, topic, 4)
    assert await count_records(bootstrap, topic, idle=2.0) == 4  # warm-up and three items
    produced = {
        headers_of(r)["request_id"] for r in records if value_of(r)["device_id"] != "pico-warm"
    }
    assert produced == {item["request_id"] for item in answer["results"]}
