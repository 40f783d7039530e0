"""Rejected requests reach no broker: read back from a real one (the rules are unit-tested)."""

from __future__ import annotations

import pytest

from tests.conftest import SettingsFactory, assert_error_shape, command, serve
from tests.kafka_helpers import headers_of, read_records

pytestmark = pytest.mark.integration


async def test_rejected_requests_leave_the_commands_topic_empty(
    make_settings: SettingsFactory,
) -> None:
    """A 422, a 413 and a refused batch produce nothing; the next good command is offset 0."""
    settings = make_settings(kafka_topic_partitions=1, max_payload_bytes=1024, max_batch_size=2)
    async with serve(settings) as api:
        bad = await api.client.post("/api/v1/commands", json=command(device_id="lab/1"))
        assert_error_shape(bad, 422)
        big = await api.client.post("/api/v1/commands", json=command(payload={"d": "x" * 2048}))
        assert_error_shape(big, 413)
        batch = {"commands": [command(), command(device_id="bad/id")]}
        assert_error_shape(await api.client.post("/api/v1/commands/batch", json=batch), 422)

        sentinel = await api.client.post("/api/v1/commands", json=command(device_id="sentinel"))
        assert sentinel.status_code == 202
        [record] = await read_records(
            settings.kafka_bootstrap_servers, settings.kafka_command_topic, 1
        )
        assert record.offset == 0, "a rejected request reached Kafka"
        assert headers_of(record)["request_id"] == sentinel.json()["request_id"]
