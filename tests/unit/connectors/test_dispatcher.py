"""The dispatcher's delivery rules, one by one, on a scripted transport (no broker).

Every status the dispatcher reports goes through the real ``Reporter`` into an in-memory
producer and is read back from there; the transport records every hand-over, so "sent
twice" is visible as a repeated request_id.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from aiokafka.structs import TopicPartition

from connectors.dispatcher import Dispatcher
from connectors.errors import (
    CommandRejected,
    DeliveryTimedOut,
    DeliveryUncertain,
    DeviceBusy,
    TransportUnavailable,
)
from connectors.lanes import DeviceLane
from connectors.observability import ConnectorMetrics
from connectors.parsers import DeviceAnswer
from connectors.registry import DeviceRegistry
from connectors.reporter import Reporter
from connectors.settings import ConnectorSettings
from connectors.transport import Receipt
from connectors.work import Stage, Work
from preservarium_pusher_api.core.contract import (
    CommandMessage,
    DispatchPolicy,
    utc_now,
)
from tests.fakes import FakeTransport, InMemoryJournal, InMemoryProducer

pytestmark = pytest.mark.unit

RESULTS = "results"
PARTITION = TopicPartition("commands", 0)


@dataclass
class Bench:
    """A dispatcher wired to a fake transport and an in-memory results topic."""

    transport: FakeTransport
    dispatcher: Dispatcher
    producer: InMemoryProducer
    metrics: ConnectorMetrics
    journal: InMemoryJournal
    finished: list[Work] = field(default_factory=list)
    offsets: int = 0

    def work(self, **overrides: Any) -> Work:
        self.offsets += 1
        return Work(command(**overrides), PARTITION, self.offsets)

    def statuses(self, request_id: str | None = None) -> list[str]:
        """Statuses reported to the results topic, in order (of one command if given)."""
        events = [json.loads(record.value) for record in self.producer.on(RESULTS)]
        return [e["status"] for e in events if request_id in (None, e["request_id"])]

    def event(self, request_id: str, status: str) -> dict[str, Any]:
        for record in self.producer.on(RESULTS):
            event: dict[str, Any] = json.loads(record.value)
            if (event["request_id"], event["status"]) == (request_id, status):
                return event
        raise AssertionError(f"no {status} event for {request_id}: {self.statuses()}")

    async def settle(self, *works: Work, within: float = 2.0) -> None:
        """Wait until every work is finished (its reports acknowledged)."""
        async with asyncio.timeout(within):
            while any(work.stage is not Stage.DONE for work in works):
                await asyncio.sleep(0.005)


def command(**overrides: Any) -> CommandMessage:
    values: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "device_id": "pico-1",
        "command_type": "control_led",
        "payload": {"pin": 25, "state": True},
        "protocol": "mqtt",
        "created_at": utc_now(),
    }
    values.update(overrides)
    return CommandMessage.model_validate(values)


def bench(transport: FakeTransport | None = None, **settings: Any) -> Bench:
    values: dict[str, Any] = {
        "kafka_result_topic": RESULTS,
        "connector_retry_max_backoff_seconds": 0.01,
        "connector_retry_max_attempts": 3,
        "connector_id": "unit",
    }
    values.update(settings)
    config = ConnectorSettings(_env_file=None, **values)  # type: ignore[call-arg]
    transport = transport or FakeTransport()
    producer = InMemoryProducer()
    metrics = ConnectorMetrics(transport.protocol.value)
    journal = InMemoryJournal(config)
    journal.load(PARTITION.partition, 0)
    finished: list[Work] = []
    dispatcher = Dispatcher(
        config,
        transport,
        DeviceRegistry(None),
        Reporter(config, transport.protocol, producer),  # type: ignore[arg-type]
        metrics,
        journal,
        finished.append,
    )
    return Bench(transport, dispatcher, producer, metrics, journal, finished)


async def test_acknowledged_send_reports_sent_then_delivered_once() -> None:
    """One hand-over, then sent and delivered on the results topic; the work finishes."""
    b = bench()
    work = b.work()
    await b.dispatcher.process(work)
    await b.settle(work)
    assert b.transport.request_ids() == [work.command.request_id]
    assert b.statuses() == ["sent", "delivered"]
    assert b.finished == [work]


async def test_nothing_left_the_process_is_sent_again_after_backoff() -> None:
    """TransportUnavailable means the device surely lacks it: the next attempt succeeds."""
    b = bench(FakeTransport().then(TransportUnavailable("broker down")))
    work = b.work()
    await b.dispatcher.process(work)
    await b.settle(work)
    rid = work.command.request_id
    assert b.transport.request_ids() == [rid, rid]
    assert b.statuses()[-1] == "delivered"


async def test_unreachable_transport_fails_after_the_attempt_limit() -> None:
    """After CONNECTOR_RETRY_MAX_ATTEMPTS hand-overs that never left, the command fails."""
    down = [TransportUnavailable("no route") for _ in range(5)]
    b = bench(FakeTransport().then(*down), connector_retry_max_attempts=3)
    work = b.work()
    await b.dispatcher.process(work)
    await b.settle(work)
    assert len(b.transport.sent) == 3
    failed = b.event(work.command.request_id, "failed")
    assert "not delivered after 3 attempts" in failed["detail"]


async def test_uncertain_delivery_is_never_sent_again_and_times_out() -> None:
    """A send that may have arrived is not repeated; no answer by the deadline → timed_out."""
    b = bench(FakeTransport().then(DeliveryUncertain("ack lost")))
    work = b.work(timeout_seconds=0.05)
    await b.dispatcher.process(work)
    await b.settle(work)
    assert len(b.transport.sent) == 1
    assert b.statuses() == ["sent"]
    await asyncio.sleep(0.06)
    assert b.dispatcher.reap_deadlines() == 1
    await asyncio.sleep(0.01)
    assert b.statuses() == ["sent", "timed_out"]
    assert len(b.transport.sent) == 1


async def test_transport_timeout_is_timed_out_at_once_and_not_resent() -> None:
    """CoAP-style exhaustion of retransmissions ends the command as timed_out."""
    b = bench(FakeTransport().then(DeliveryTimedOut("no ACK after 4 retransmissions")))
    work = b.work()
    await b.dispatcher.process(work)
    await b.settle(work)
    await asyncio.sleep(0.01)
    assert len(b.transport.sent) == 1
    assert b.event(work.command.request_id, "timed_out")["detail"].startswith("no ACK")


async def test_busy_device_is_asked_again_without_counting_an_attempt() -> None:
    """Two busy refusals and one attempt allowed: still delivered on the third hand-over."""
    busy = [DeviceBusy("running a protocol", retry_after=0.01) for _ in range(2)]
    b = bench(FakeTransport().then(*busy), connector_retry_max_attempts=1)
    work = b.work()
    await b.dispatcher.process(work)
    await b.settle(work)
    assert len(b.transport.sent) == 3
    assert b.statuses()[-1] == "delivered"
    assert "failed" not in b.statuses()


async def test_device_busy_past_the_command_timeout_fails() -> None:
    """A device that stays busy longer than the command's timeout ends it as failed."""
    busy = [DeviceBusy("busy", retry_after=0.02) for _ in range(50)]
    b = bench(FakeTransport().then(*busy))
    work = b.work(timeout_seconds=0.05)
    await b.dispatcher.process(work)
    await b.settle(work)
    assert "stayed busy" in b.event(work.command.request_id, "failed")["detail"]
    assert 2 <= len(b.transport.sent) < 10


async def test_rejected_command_fails_with_the_reason() -> None:
    """A transport rejection is final and reported with its message."""
    b = bench(FakeTransport().then(CommandRejected("device refused: bad pin")))
    work = b.work()
    await b.dispatcher.process(work)
    await b.settle(work)
    assert b.event(work.command.request_id, "failed")["detail"] == "device refused: bad pin"
    assert len(b.transport.sent) == 1


async def test_unaddressable_device_fails_before_any_send() -> None:
    """No target for the device: failed, and the transport never saw it."""
    b = bench()
    work = b.work(device_id="unreachable-1")
    await b.dispatcher.process(work)
    assert b.statuses() == ["failed"]
    assert b.transport.sent == []


async def test_expired_command_is_reported_expired_and_never_sent() -> None:
    """A command past expires_at is not delivered."""
    b = bench()
    work = b.work(expires_at=utc_now() - timedelta(seconds=1))
    await b.dispatcher.process(work)
    assert b.statuses() == ["expired"]
    assert b.transport.sent == []


async def test_command_held_for_an_offline_device_expires_without_being_sent() -> None:
    """An offline device gets nothing; the held command expires at its deadline."""
    transport = FakeTransport(offline={"pico-1"})
    b = bench(transport)
    work = b.work(expires_at=utc_now() + timedelta(seconds=0.1))
    await asyncio.wait_for(b.dispatcher.process(work), 2)
    assert b.statuses() == ["expired"]
    assert transport.sent == []


async def test_held_command_goes_out_when_the_device_comes_online() -> None:
    """The head command waits while offline and is sent once the device is ready."""
    transport = FakeTransport(offline={"pico-1"})
    b = bench(transport)
    work = b.work()
    processing = asyncio.create_task(b.dispatcher.process(work))
    await asyncio.sleep(0.05)
    assert transport.sent == []
    transport.offline.clear()
    work.wake.set()
    await asyncio.wait_for(processing, 2)
    await b.settle(work)
    assert b.statuses() == ["sent", "delivered"]


async def test_cancelled_command_is_dropped_before_sending() -> None:
    """A cancel that arrived first means the command never reaches the device."""
    b = bench()
    work = b.work()
    work.cancelled = True
    await b.dispatcher.process(work)
    assert work.stage is Stage.DONE
    assert b.transport.sent == []


async def test_request_id_already_handed_over_is_not_sent_again() -> None:
    """A redelivered record whose request_id is in the journal is skipped."""
    b = bench()
    first = b.work()
    await b.journal.remember(PARTITION.partition, first.command.request_id)
    await b.dispatcher.process(first)
    assert b.transport.sent == []
    assert first.stage is Stage.DONE
    # reported sent (forward-only, so harmless if it was): its answer or deadline ends it
    assert b.statuses() == ["sent"]
    assert "not sent again" in b.event(first.command.request_id, "sent")["detail"]


async def test_invalid_dispatch_metadata_fails_the_command() -> None:
    """metadata.dispatch must name a policy."""
    b = bench()
    work = b.work(metadata={"dispatch": "whenever"})
    await b.dispatcher.process(work)
    assert "metadata.dispatch" in b.event(work.command.request_id, "failed")["detail"]


async def test_unregistered_device_is_refused_when_registration_is_required() -> None:
    """CONNECTOR_REQUIRE_REGISTRATION: devices missing from the registry are failed."""
    b = bench(connector_require_registration=True)
    work = b.work()
    await b.dispatcher.process(work)
    assert "not in the registry" in b.event(work.command.request_id, "failed")["detail"]
    assert b.transport.sent == []


async def test_on_result_waits_for_the_answer_before_the_next_command() -> None:
    """The second command leaves only after the device answered the first."""
    b = bench(FakeTransport(default_dispatch=DispatchPolicy.ON_RESULT))
    lane = DeviceLane("pico-1", b.dispatcher, lambda _device: None)
    first, second = b.work(), b.work()
    lane.add(first)
    lane.add(second)
    await asyncio.sleep(0.05)
    assert b.transport.request_ids() == [first.command.request_id]
    b.dispatcher.device_answered(
        "pico-1", DeviceAnswer(first.command.request_id, True, {"ok": 1}, None)
    )
    await b.settle(first, second)
    assert b.transport.request_ids() == [first.command.request_id, second.command.request_id]
    assert b.statuses(first.command.request_id)[-1] == "succeeded"


async def test_on_result_lane_moves_on_after_the_answer_deadline() -> None:
    """No answer: timed_out at the deadline, and the next command goes out."""
    b = bench(FakeTransport(default_dispatch=DispatchPolicy.ON_RESULT))
    lane = DeviceLane("pico-1", b.dispatcher, lambda _device: None)
    first, second = b.work(timeout_seconds=0.05), b.work()
    lane.add(first)
    lane.add(second)
    await asyncio.sleep(0.08)
    b.dispatcher.reap_deadlines()
    await b.settle(first, second)
    assert b.statuses(first.command.request_id)[-1] == "timed_out"
    assert len(b.transport.sent) == 2


async def test_on_ack_sends_the_next_command_after_the_acknowledgement() -> None:
    """ON_ACK does not wait for answers: both commands go out in order."""
    b = bench()
    lane = DeviceLane("pico-1", b.dispatcher, lambda _device: None)
    works = [b.work() for _ in range(3)]
    for work in works:
        lane.add(work)
    await b.settle(*works)
    assert b.transport.request_ids() == [work.command.request_id for work in works]


async def test_burst_does_not_wait_for_a_slow_acknowledgement() -> None:
    """BURST hands the next command over while the previous one is still unacknowledged."""
    release = asyncio.Event()

    async def slow(_delivery: Any) -> Receipt:
        await release.wait()
        return Receipt(acknowledged=True)

    b = bench(FakeTransport(default_dispatch=DispatchPolicy.BURST).then(slow, slow))
    lane = DeviceLane("pico-1", b.dispatcher, lambda _device: None)
    first, second = b.work(), b.work()
    lane.add(first)
    lane.add(second)
    await asyncio.sleep(0.05)
    assert len(b.transport.sent) == 2  # both handed over before any acknowledgement
    release.set()
    await b.settle(first, second)


@pytest.mark.parametrize("policy", [DispatchPolicy.BURST, DispatchPolicy.ON_RESULT])
async def test_a_delivery_that_raises_ends_failed_and_frees_its_offset(
    policy: DispatchPolicy,
) -> None:
    """An unexpected error in a delivery (a bug, not a transport outcome) ends the command
    failed with the reason, frees its offset, and the device's next command still goes."""
    b = bench(FakeTransport(default_dispatch=policy).then(RuntimeError("bug")))
    lane = DeviceLane("pico-1", b.dispatcher, lambda _device: None)
    broken, after = b.work(), b.work(timeout_seconds=0.2)
    lane.add(broken)
    lane.add(after)
    await b.settle(broken)
    assert b.event(broken.command.request_id, "failed")["detail"] == "connector error: RuntimeError"
    assert broken in b.finished
    await b.settle(after, within=3)
    assert b.transport.request_ids() == [broken.command.request_id, after.command.request_id]


async def test_answer_from_another_device_does_not_settle_the_command() -> None:
    """A device cannot answer for another device's pending command."""
    b = bench(FakeTransport().then(DeliveryUncertain("no ack")))
    work = b.work()
    await b.dispatcher.process(work)
    await b.settle(work)
    rid = work.command.request_id
    b.dispatcher.device_answered("pico-2", DeviceAnswer(rid, True, {"forged": True}, None))
    await asyncio.sleep(0.01)
    assert "succeeded" not in b.statuses(rid)
    b.dispatcher.device_answered("pico-1", DeviceAnswer(rid, False, None, "jammed"))
    await asyncio.sleep(0.01)
    assert b.event(rid, "failed")["detail"] == "jammed"


async def test_stopping_dispatcher_leaves_waiting_commands_for_the_next_owner() -> None:
    """On shutdown a command not yet sent is abandoned (uncommitted), never reported."""
    b = bench()
    b.dispatcher.stopping = True
    work = b.work()
    await b.dispatcher.process(work)
    assert work.abandoned and work.stage is Stage.WAITING
    assert b.transport.sent == [] and b.statuses() == []


async def test_command_is_not_sent_before_the_journal_has_it() -> None:
    """While the journal refuses writes nothing reaches the device; once it takes them
    the command is sent, once."""
    b = bench(connector_retry_max_attempts=50)
    b.journal.failing = True
    work = b.work()
    processing = asyncio.create_task(b.dispatcher.process(work))
    await asyncio.sleep(0.1)
    assert b.transport.sent == []
    b.journal.failing = False
    await asyncio.wait_for(processing, 5)
    await b.settle(work)
    assert [d.command.request_id for d in b.transport.sent] == [work.command.request_id]
    assert b.journal.entries[PARTITION.partition] == [(work.command.request_id, "sent")]


async def test_next_owner_skips_what_the_previous_owner_sent() -> None:
    """A record redelivered to another replica after a crash is not sent again: the
    journal entry written before the first send is read back first."""
    first = bench()
    work = first.work()
    await first.dispatcher.process(work)
    await first.settle(work)
    second = bench()
    second.journal.entries.update(first.journal.entries)
    second.journal.drop([PARTITION.partition])
    second.journal.load(PARTITION.partition, 0)
    again = Work(work.command, PARTITION, work.offset)
    await second.dispatcher.process(again)
    assert second.transport.sent == []
    assert again.stage is Stage.DONE
