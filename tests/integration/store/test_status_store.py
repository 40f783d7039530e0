"""Status store rules against real databases: SQLite file and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from preservarium_pusher_api.core.contract import CommandStatus, StatusEvent
from preservarium_pusher_api.core.errors import ConfigurationError
from preservarium_pusher_api.store import (
    InvalidCursorError,
    QueuedCommand,
    StatusStore,
)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[StatusStore]:
    store = StatusStore(store_url)
    await store.start()
    try:
        yield store
    finally:
        await store.stop()


def queued(request_id: str, **overrides: Any) -> QueuedCommand:
    values: dict[str, Any] = {
        "request_id": request_id,
        "device_id": "pico-w-lab-001",
        "protocol": "mqtt",
        "command_type": "control_led",
        "created_at": T0.timestamp(),
        "expires_at": None,
        "timeout_seconds": None,
    }
    values.update(overrides)
    return QueuedCommand(**values)


def event(
    request_id: str, status: str, seconds: float, source: str = "connector-mqtt-1", **extra: Any
) -> StatusEvent:
    return StatusEvent(
        request_id=request_id,
        device_id="pico-w-lab-001",
        status=CommandStatus(status),
        occurred_at=T0 + timedelta(seconds=seconds),
        source=source,
        **extra,
    )


def new_id() -> str:
    return str(uuid.uuid4())


async def test_status_moves_forward_only_and_first_terminal_wins(store: StatusStore) -> None:
    rid = new_id()
    await store.record_queued([queued(rid)])
    moved = await store.apply_events(
        [
            event(rid, "delivered", 2),
            event(rid, "sent", 1),  # out of order: kept in history, status stays delivered
            event(rid, "delivered", 2),  # duplicate: ignored
            event(rid, "succeeded", 3, result={"led": "on"}),
            event(rid, "failed", 4, detail="late"),  # second terminal: dropped
            event(rid, "sent", 5, detail="redelivered"),  # late non-terminal: history only
        ]
    )
    assert [(t.status.value, t.protocol) for t in moved] == [
        ("delivered", "mqtt"),
        ("succeeded", "mqtt"),
    ]
    record = await store.get(rid)
    assert record is not None
    assert record.status == CommandStatus.SUCCEEDED and record.result == {"led": "on"}
    assert [(h.status, h.detail) for h in record.history] == [
        ("queued", None),
        ("sent", None),
        ("delivered", None),
        ("succeeded", None),
        ("sent", "redelivered"),
    ]
    # Applying the whole sequence again changes nothing (at-least-once delivery).
    assert await store.apply_events([event(rid, "delivered", 2), event(rid, "failed", 4)]) == []
    again = await store.get(rid)
    assert again is not None and len(again.history) == 5


async def test_event_before_queued_row_is_not_lost(store: StatusStore) -> None:
    rid = new_id()
    await store.apply_events([event(rid, "sent", 1)])
    await store.record_queued([queued(rid, created_at=T0.timestamp() - 1)])
    record = await store.get(rid)
    assert record is not None
    assert record.status == CommandStatus.SENT
    assert (record.protocol, record.command_type) == ("mqtt", "control_led")
    assert {h.status for h in record.history} == {"queued", "sent"}


async def test_sweeper_expires_and_times_out_once_across_sweepers(
    store: StatusStore, store_url: str
) -> None:
    now = time.time()
    stale, fresh, running, finished = new_id(), new_id(), new_id(), new_id()
    await store.record_queued(
        [
            queued(stale, created_at=now - 10, expires_at=now - 1),
            queued(fresh, created_at=now - 10, expires_at=now + 60),
            queued(running, created_at=now - 10, timeout_seconds=2.0),
            queued(finished, created_at=now - 10, expires_at=now - 1),
        ]
    )
    sent_at = datetime.fromtimestamp(now - 5, UTC)
    await store.apply_events(
        [
            StatusEvent(
                request_id=running,
                device_id="d",
                status=CommandStatus.SENT,
                occurred_at=sent_at,
                source="c",
            ),
            StatusEvent(
                request_id=finished,
                device_id="d",
                status=CommandStatus.SUCCEEDED,
                occurred_at=sent_at,
                source="c",
            ),
        ]
    )
    # A second store on the same database stands for a second tracker (or a restart).
    other = StatusStore(store_url)
    await other.start()
    try:
        first, second = await asyncio.gather(store.sweep(), other.sweep())
    finally:
        await other.stop()
    changes = sorted((t.request_id, t.status.value) for t in first + second)
    assert changes == sorted([(stale, "expired"), (running, "timed_out")])
    for rid, status in [(stale, "expired"), (running, "timed_out"), (fresh, "queued")]:
        record = await store.get(rid)
        assert record is not None and record.status.value == status
    expired = await store.get(stale)
    assert expired is not None and expired.detail == "not delivered before expires_at"
    assert [h.source for h in expired.history] == ["api", "sweeper"]
    assert await store.sweep() == []


async def test_listing_is_newest_first_with_keyset_pages(store: StatusStore) -> None:
    ids = [new_id() for _ in range(7)]
    await store.record_queued(
        [
            queued(rid, created_at=T0.timestamp() + i // 2, device_id=f"dev-{i % 2}")
            for i, rid in enumerate(ids)
        ]
    )
    await store.apply_events([event(ids[0], "succeeded", 10)])
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list(limit=3, cursor=cursor)
        seen += [item.request_id for item in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == 7 and set(seen) == set(ids)
    created = [(await store.get(rid)).created_at for rid in seen]  # type: ignore[union-attr]
    assert created == sorted(created, reverse=True)

    dev0 = await store.list(device_id="dev-0", limit=500)
    assert {item.request_id for item in dev0.items} == set(ids[0::2])
    done = await store.list(status=CommandStatus.SUCCEEDED)
    assert [item.request_id for item in done.items] == [ids[0]]
    recent = await store.list(since=T0.timestamp() + 3)
    assert {item.request_id for item in recent.items} == {ids[6]}
    with pytest.raises(InvalidCursorError):
        await store.list(cursor="not-a-cursor")


async def test_one_owner_among_concurrent_idempotency_claims(store: StatusStore) -> None:
    claims = await asyncio.gather(
        *(
            store.idempotency_keys.claim("-", "key-1", "hash-a", 86400, 60, str(uuid.uuid4()))
            for _ in range(8)
        )
    )
    assert sum(claim.owner for claim in claims) == 1
    await store.idempotency_keys.complete("-", "key-1", 202, {"request_id": "r"})
    replay = await store.idempotency_keys.claim(
        "-", "key-1", "hash-a", 86400, 60, str(uuid.uuid4())
    )
    assert (replay.owner, replay.state, replay.response) == (False, "done", {"request_id": "r"})
    other_scope = await store.idempotency_keys.claim(
        "other", "key-1", "hash-b", 86400, 60, "rid-other"
    )
    assert other_scope.owner


async def test_a_stale_claim_is_taken_over_with_the_request_id_bound_to_it(
    store: StatusStore,
) -> None:
    """The key's request id outlives its first owner: a retry after the owner vanished (or
    never heard back from Kafka) produces under the same id, never a new one."""
    first = await store.idempotency_keys.claim("-", "key-s", "hash-a", 86400, 60, "rid-first")
    assert (first.owner, first.request_id) == (True, "rid-first")
    waiting = await store.idempotency_keys.claim("-", "key-s", "hash-a", 86400, 60, "rid-2")
    assert (waiting.owner, waiting.request_id) == (False, "rid-first")
    await asyncio.sleep(0.05)
    taken = await store.idempotency_keys.claim("-", "key-s", "hash-a", 86400, 0.01, "rid-3")
    assert (taken.owner, taken.request_id) == (True, "rid-first")
    other_body = await store.idempotency_keys.claim("-", "key-s", "hash-b", 86400, 0.0, "rid-4")
    assert not other_body.owner and other_body.request_hash == "hash-a"


async def test_statuses_survive_a_restart_and_newer_schema_is_refused(
    store: StatusStore, store_url: str
) -> None:
    rid = new_id()
    await store.record_queued([queued(rid)])
    await store.apply_events([event(rid, "sent", 1), event(rid, "failed", 2, detail="jammed")])
    await store.stop()

    reopened = StatusStore(store_url)
    await reopened.start()
    try:
        record = await reopened.get(rid)
        assert record is not None
        assert (record.status, record.detail) == (CommandStatus.FAILED, "jammed")
        assert [h.status for h in record.history] == ["queued", "sent", "failed"]
        async with reopened.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        await reopened.stop()

    newer = StatusStore(store_url)
    try:
        with pytest.raises(ConfigurationError, match="newer"):
            await newer.start()
    finally:
        await newer.stop()


async def test_concurrent_writers_agree_on_one_first_terminal(store_url: str) -> None:
    """Two trackers (and the sweeper) applying conflicting terminals to the same commands at
    once: each command gets exactly one terminal status, reported once, and its history
    holds only that one."""
    first, second = StatusStore(store_url), StatusStore(store_url)
    await first.start()
    await second.start()
    try:
        ids = sorted(new_id() for _ in range(300))
        await first.record_queued([queued(rid, timeout_seconds=1) for rid in ids])
        await first.apply_events([event(rid, "sent", 1) for rid in ids])
        won = await asyncio.gather(
            first.apply_events([event(rid, "succeeded", 2) for rid in ids]),
            second.apply_events(
                [event(rid, "failed", 3, "connector-mqtt-2") for rid in reversed(ids)]
            ),
            second.sweep(now=T0.timestamp() + 60),
        )
        reported = sorted(t.request_id for transitions in won for t in transitions)
        assert reported == ids
        for rid in ids:
            record = await first.get(rid)
            assert record is not None and record.status.is_terminal
            final = [h.status for h in record.history if CommandStatus(h.status).is_terminal]
            assert final == [record.status.value], (rid, record.history)
    finally:
        await first.stop()
        await second.stop()


async def test_a_large_mixed_batch_is_applied_like_one_event_at_a_time(store: StatusStore) -> None:
    """One batch of many commands, each with its events in order, some rows absent (events
    before queued), some already final: the same result as applying them one by one."""
    ids = [new_id() for _ in range(400)]
    await store.record_queued([queued(rid) for rid in ids[:300]])
    await store.apply_events([event(rid, "failed", 0.5) for rid in ids[:50]])  # final already
    batch = [e for rid in ids for e in (event(rid, "sent", 1), event(rid, "succeeded", 2))]
    moved = await store.apply_events(batch)
    assert len(moved) == 2 * 350
    for rid in ids[:50]:
        record = await store.get(rid)
        assert record is not None and record.status == CommandStatus.FAILED
        assert [h.status for h in record.history] == ["queued", "failed", "sent"]
    for rid in ids[50:]:
        record = await store.get(rid)
        assert record is not None and record.status == CommandStatus.SUCCEEDED
        assert record.sent_at == (T0 + timedelta(seconds=1)).timestamp()
        expected = ["queued", "sent", "succeeded"] if rid in ids[:300] else ["sent", "succeeded"]
        assert [h.status for h in record.history] == expected
