"""The sent-command journal's rules, without a broker.

The same rules run against the embedded broker in
``tests/integration/connectors/test_journal_kafka.py`` and, with replicas and SIGKILL, in
``tests/chaos``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from connectors.journal import JournalUnavailable
from connectors.settings import ConnectorSettings
from tests.fakes import InMemoryJournal

pytestmark = pytest.mark.unit


def settings(**values: Any) -> ConnectorSettings:
    return ConnectorSettings(_env_file=None, connector_id="unit", **values)  # type: ignore[call-arg]


async def test_next_owner_knows_what_the_previous_one_sent() -> None:
    """What one owner wrote is known to the next after it reads the partition back;
    a forgotten entry (surely not sent) is not; other partitions are not mixed in."""
    shared: dict[int, list[tuple[str, str]]] = {}
    first = InMemoryJournal(settings(), shared)
    first.load(3, 0)
    await first.ready(3)
    await first.remember(3, "a")
    await first.remember(3, "b")
    await first.forget(3, "b")
    first.load(4, 0)
    await first.ready(4)
    await first.remember(4, "c")

    second = InMemoryJournal(settings(), shared)
    second.load(3, 0)
    assert not second.is_loaded(3)
    await second.ready(3)
    assert second.sent(3, "a")
    assert not second.sent(3, "b")
    assert not second.sent(3, "c")
    assert "c" not in second


async def test_refused_write_is_not_remembered() -> None:
    """A write the broker does not acknowledge raises and leaves nothing behind."""
    journal = InMemoryJournal(settings())
    journal.load(0, 0)
    await journal.ready(0)
    journal.failing = True
    with pytest.raises(JournalUnavailable):
        await journal.remember(0, "a")
    assert not journal.sent(0, "a")


async def test_dropped_partition_wakes_waiters_and_forgets() -> None:
    """A partition handed to another replica: what was known goes, and a lane waiting
    for the read-back wakes up to find the partition gone."""
    journal = InMemoryJournal(settings())
    journal.load(1, 0)
    await journal.ready(1)
    await journal.remember(1, "a")
    journal.drop([1])
    assert not journal.sent(1, "a") and not journal.is_loaded(1)

    slow = InMemoryJournal(settings())

    async def never(partition: int, start_ms: int) -> list[tuple[str, str]]:
        await asyncio.Event().wait()
        return []

    slow._read = never  # type: ignore[method-assign]
    slow.load(2, 0)
    waiter = asyncio.create_task(slow.ready(2))
    await asyncio.sleep(0.01)
    slow.drop([2])
    await asyncio.wait_for(waiter, 1)
    assert not slow.is_loaded(2)


async def test_each_partition_is_bounded() -> None:
    """Memory keeps the newest request_ids of a partition only."""
    journal = InMemoryJournal(settings(connector_dedupe_size=100))
    journal.load(0, 0)
    await journal.ready(0)
    for n in range(300):
        await journal.remember(0, f"id-{n}")
    assert len(journal) == 100 and journal.sent(0, "id-299") and not journal.sent(0, "id-0")


async def test_a_read_back_that_dies_unexpectedly_takes_the_connector_down() -> None:
    """Crash-only: a partition read-back that ends with an unexpected error is raised by
    check() (the runtime's loop calls it) instead of leaving the partition waiting."""
    from aiokafka.structs import TopicPartition

    from connectors.takeover import Takeover
    from preservarium_pusher_api.core.supervision import TaskDied

    class BrokenLot:
        async def read(self, partition: int) -> list[object]:
            raise RuntimeError("bug")

    async def committed(tp: TopicPartition) -> int | None:
        return None

    takeover = Takeover(
        settings(),
        InMemoryJournal(settings()),
        BrokenLot(),
        lambda w: None,
        lambda p, r: None,  # type: ignore[arg-type]
    )
    takeover.start(TopicPartition("commands", 0), committed)
    await asyncio.sleep(0.05)
    with pytest.raises(TaskDied):
        takeover.check()
