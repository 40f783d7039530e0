"""Rules of the live features without a broker: stream ids, filters, webhook subscriptions."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.contract import CommandStatus, StatusEvent
from preservarium_pusher_api.metrics import PusherMetrics
from preservarium_pusher_api.services.events import (
    EventFilter,
    EventPosition,
    InvalidEventId,
    LiveEvent,
)
from preservarium_pusher_api.services.webhook_config import (
    WebhookConfigError,
    allowed_hosts,
    host_allowed,
    load_subscriptions,
    sign,
)
from preservarium_pusher_api.services.webhooks import WebhookDispatcher

pytestmark = pytest.mark.unit


def test_a_position_survives_its_encoding() -> None:
    """An id decodes to the offsets and time it was written with."""
    position = EventPosition([[0, 12, 3], [7], []], 1764871234567)
    again = EventPosition.decode(position.encode())
    assert again.offsets == position.offsets and again.timestamp_ms == position.timestamp_ms


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x",
        "1.2.3",
        "1.2.3.4.5",
        "a.1.1.1",
        "1.1-b.1.1",
        "1.-1.0.0",
        "1." + "1-" * 5000 + "1.0.0",
    ],
)
def test_ids_this_service_did_not_write_are_refused(text: str) -> None:
    with pytest.raises(InvalidEventId):
        EventPosition.decode(text)


def status(device: str, request_id: str, state: str) -> LiveEvent:
    return LiveEvent("status", device, request_id, state, {}, 0)


def test_filters_pass_what_they_name_and_leave_presence_out_for_command_filters() -> None:
    presence = LiveEvent("presence", "pico-1", None, None, {}, 0)
    assert EventFilter().matches(presence) and EventFilter().matches(status("p", "r", "sent"))
    by_device = EventFilter(device_ids=frozenset({"pico-1"}))
    assert by_device.matches(presence) and by_device.matches(status("pico-1", "r", "sent"))
    assert not by_device.matches(status("pico-2", "r", "sent"))
    by_status = EventFilter(statuses=frozenset({"succeeded"}))
    assert not by_status.matches(presence)
    assert by_status.matches(status("p", "r", "succeeded"))
    assert not by_status.matches(status("p", "r", "sent"))
    by_request = EventFilter(request_ids=frozenset({"r1"}))
    assert by_request.matches(status("p", "r1", "sent")) and not by_request.matches(presence)
    only_presence = EventFilter(kinds=frozenset({"presence"}))
    assert only_presence.matches(presence) and not only_presence.matches(status("p", "r", "sent"))


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://lims.lab.example/hook", True),
        ("http://LIMS.lab.example:8080/hook", True),
        ("http://ci.lab.example:9000/x", True),  # host:port listed
        ("http://ci.lab.example:9001/x", False),
        ("https://evil.example/hook", False),
        ("https://lims.lab.example.evil.example/hook", False),
        ("https://user:pw@lims.lab.example/hook", False),
        ("ftp://lims.lab.example/hook", False),
        ("file:///etc/passwd", False),
        ("http://lims.lab.example:99999/", False),
    ],
)
def test_only_allowed_hosts_can_be_called(url: str, allowed: bool) -> None:
    hosts = allowed_hosts("lims.lab.example, ci.lab.example:9000")
    assert host_allowed(url, hosts) is allowed


def test_a_subscriptions_file_keeps_the_good_entries_and_says_why_others_are_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIMS_SECRET", "s" * 20)
    path = tmp_path / "hooks.yaml"
    path.write_text(
        """
subscriptions:
  - {name: lims, url: "https://lims.lab.example/h", secret_env: LIMS_SECRET,
     statuses: [succeeded], events: [status]}
  - {name: outside, url: "https://evil.example/h", secret: "0123456789abcdef"}
  - {name: weak, url: "https://lims.lab.example/h", secret: "short"}
  - {name: nosecret, url: "https://lims.lab.example/h"}
  - {name: typo, url: "https://lims.lab.example/h", secret: "0123456789abcdef", statuses: [done]}
  - {name: lims, url: "https://lims.lab.example/h2", secret: "0123456789abcdef"}
"""
    )
    loaded = load_subscriptions(path, allowed_hosts("lims.lab.example"))
    assert [s.name for s in loaded.subscriptions] == ["lims"]
    assert loaded.subscriptions[0].secret == b"s" * 20
    assert loaded.subscriptions[0].wanted.statuses == {"succeeded"}
    assert set(loaded.refused) == {"outside", "weak", "nosecret", "typo", "lims"}
    assert "WEBHOOK_ALLOWED_HOSTS" in loaded.refused["outside"]
    assert "0123456789abcdef" not in json.dumps(loaded.refused)


@pytest.mark.parametrize("text", ["subscriptions: [", "- just a list", "other: 1"])
def test_a_file_that_is_not_a_subscriptions_file_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "hooks.yaml"
    path.write_text(text)
    with pytest.raises(WebhookConfigError):
        load_subscriptions(path, frozenset())


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    header = sign(b"secret", 1764871234, b'{"a":1}')
    expected = hmac.new(b"secret", b'1764871234.{"a":1}', hashlib.sha256).hexdigest()
    assert header == f"t=1764871234,v1={expected}"


class _Consumer:
    """What the dispatcher's hand-over asks of its consumer: commits and seeks, noted."""

    def __init__(self) -> None:
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def commit(self, offsets: object = None) -> None:
        return None

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))


def _status_record(topic: str, partition: int, offset: int) -> ConsumerRecord[bytes, bytes]:
    event = StatusEvent(
        request_id=str(uuid.uuid4()),
        device_id="pico-1",
        status=CommandStatus.SENT,
        occurred_at=datetime.now(UTC),
        source="connector-mqtt-test",
    )
    value = event.model_dump_json().encode()
    return ConsumerRecord(topic, partition, offset, 0, 0, b"pico-1", value, None, 6, len(value), ())


async def test_a_hand_over_keeps_the_backlog_only_if_every_owned_partition_stays(
    tmp_path: Path,
) -> None:
    """A rebalance that gives back what this instance owned (plus a new topic's
    partitions) keeps the subscriptions' backlogs and reads on where it was; one that takes
    a partition away abandons them (the new owner reads from the committed offsets)."""
    path = tmp_path / "webhooks.json"
    path.write_text(json.dumps({"subscriptions": [
        {"name": "down", "url": "http://127.0.0.1:9/hook", "secret": "s" * 20},
    ]}))  # fmt: skip
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        webhooks_path=path,
        webhook_allowed_hosts="127.0.0.1",
        kafka_result_topic="results",
    )
    dispatcher = WebhookDispatcher(settings, PusherMetrics())
    consumer: Any = _Consumer()
    results = TopicPartition("results", 0)
    created = TopicPartition("presence", 0)
    try:
        dispatcher._reload()
        await dispatcher.revoked(consumer)  # nothing may be delivered meanwhile
        await dispatcher.assigned(consumer, {results})
        dispatcher._dispatch({results: [_status_record("results", 0, n) for n in (7, 8)]})

        def backlog() -> int:
            return int(dispatcher.describe()["subscriptions"][0]["backlog"])

        assert backlog() == 2
        await dispatcher.revoked(consumer)
        await dispatcher.assigned(consumer, {results, created})
        assert backlog() == 2 and consumer.seeks == [(results, 9)]
        await dispatcher.revoked(consumer)
        await dispatcher.assigned(consumer, {created})
        assert backlog() == 0 and consumer.seeks == [(results, 9)]
    finally:
        await dispatcher.stop()
