"""The API lives through Kafka outages: fast 503s with Retry-After, then recovery by itself."""

from __future__ import annotations

import asyncio
import time

import pytest
from pusher_dev.embedded_kafka import EmbeddedKafka, free_port

from tests.conftest import LiveApi, SettingsFactory, assert_error_shape, command, serve
from tests.kafka_helpers import read_records

pytestmark = pytest.mark.integration

PRODUCER_TIMEOUT = 2.0


async def assert_unavailable(api: LiveApi) -> None:
    """Command routes answer 503 with Retry-After within the producer timeout; probes agree."""
    assert (await api.client.get("/health")).status_code == 200
    ready = await api.client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "kafka_connected": False}
    for path, body in (
        ("/api/v1/commands", command()),
        ("/api/v1/commands/batch", {"commands": [command(), command()]}),
    ):
        started = time.monotonic()
        response = await api.client.post(path, json=body)
        assert time.monotonic() - started < PRODUCER_TIMEOUT + 1.0
        error = assert_error_shape(response, 503)
        assert error["type"] == "KafkaUnavailableError"
        assert int(response.headers["retry-after"]) >= 1


async def test_starts_without_kafka_and_recovers_when_it_appears(
    make_settings: SettingsFactory,
) -> None:
    """Kafka down at startup: /health 200, /health/ready 503, commands 503; then it recovers."""
    port = free_port()
    settings = make_settings(
        kafka_bootstrap_servers=f"127.0.0.1:{port}",
        kafka_enable_idempotence=False,
        kafka_producer_timeout=PRODUCER_TIMEOUT,
    )
    async with serve(settings, wait_for_kafka=False) as api:
        await assert_unavailable(api)
        status = (await api.client.get("/api/v1/status")).json()
        assert status["kafka_connected"] is False and status["last_error"]
        assert "pusher_kafka_connected 0.0" in (await api.client.get("/api/v1/metrics")).text

        broker = EmbeddedKafka(port=port)
        await asyncio.to_thread(broker.start)
        try:
            async with asyncio.timeout(20):
                await api.app.state.kafka.wait_connected()
            assert (await api.client.get("/health/ready")).status_code == 200
            response = await api.client.post("/api/v1/commands", json=command())
            assert response.status_code == 202, response.text
            [record] = await read_records(broker.bootstrap_servers, settings.kafka_command_topic, 1)
            assert record.key == b"pico-w-lab-001"
        finally:
            broker.stop()


async def test_broker_loss_gives_bounded_503_then_recovers(make_settings: SettingsFactory) -> None:
    """Kafka lost while running: no request hangs past the timeout; after restart it recovers."""
    broker = EmbeddedKafka()
    await asyncio.to_thread(broker.start)
    settings = make_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_enable_idempotence=False,
        kafka_producer_timeout=PRODUCER_TIMEOUT,
    )
    try:
        async with serve(settings) as api:
            assert (await api.client.post("/api/v1/commands", json=command())).status_code == 202

            broker.stop()
            # The first request after the loss may wait for the ack; it is cut at the timeout.
            started = time.monotonic()
            response = await api.client.post("/api/v1/commands", json=command())
            assert time.monotonic() - started < PRODUCER_TIMEOUT + 1.0
            assert_error_shape(response, 503)
            await assert_unavailable(api)

            await asyncio.to_thread(broker.start)
            async with asyncio.timeout(20):
                while (await api.client.get("/health/ready")).status_code != 200:
                    await asyncio.sleep(0.2)
            async with asyncio.timeout(20):
                while (
                    response := await api.client.post("/api/v1/commands", json=command())
                ).status_code != 202:
                    await asyncio.sleep(0.2)
            [record] = await read_records(broker.bootstrap_servers, settings.kafka_command_topic, 1)
            assert record.key == b"pico-w-lab-001"
            assert response.json()["request_id"] == dict(record.headers)["request_id"].decode()
    finally:
        broker.stop()
