"""The reporter retries what Kafka may take later and never what it refuses for good."""

from __future__ import annotations

import json

import pytest
from aiokafka.errors import (
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    TopicAuthorizationFailedError,
)

from connectors.reporter import Reporter, bounded_result
from connectors.settings import ConnectorSettings
from preservarium_pusher_api.core.contract import CommandStatus, Protocol
from tests.fakes import InMemoryProducer

pytestmark = pytest.mark.unit


def reporter(producer: InMemoryProducer, **settings: object) -> Reporter:
    config = ConnectorSettings(
        _env_file=None,  # type: ignore[call-arg]
        kafka_result_topic="results",
        connector_id="unit",
        **settings,
    )
    return Reporter(config, Protocol.MQTT, producer)  # type: ignore[arg-type]


async def test_a_result_kafka_refuses_for_good_is_replaced_and_the_command_still_ends() -> None:
    producer = InMemoryProducer()
    producer.failures.append(MessageSizeTooLargeError())
    report = reporter(producer)
    event = report.status_event("req-1", "pico-1", CommandStatus.SUCCEEDED, result={"x": 1})
    await report.emit(event)
    [record] = producer.on("results")
    written = json.loads(record.value)
    assert written["status"] == "succeeded"
    assert written["result"]["truncated"] is True
    assert "MessageSizeTooLargeError" in written["result"]["reason"]


async def test_retriable_errors_are_retried_and_permanent_ones_are_not() -> None:
    producer = InMemoryProducer()
    producer.failures.extend([NotLeaderForPartitionError(), NotLeaderForPartitionError()])
    report = reporter(producer)
    await report.emit(report.status_event("req-2", "pico-1", CommandStatus.SENT))
    assert len(producer.on("results")) == 1 and not producer.failures
    producer.failures.append(TopicAuthorizationFailedError())
    await report.emit(report.status_event("req-3", "pico-1", CommandStatus.DELIVERED))
    assert len(producer.on("results")) == 1  # dropped (logged), not retried forever


def test_results_over_the_limit_become_a_marker() -> None:
    assert bounded_result({"a": "b"}, 256) == {"a": "b"}
    marker = bounded_result({"blob": "y" * 1000}, 256)
    assert marker["truncated"] is True and "limit 256" in marker["reason"]
    assert bounded_result(None, 256) is None
    assert bounded_result({"raw": object()}, 256)["truncated"] is True
