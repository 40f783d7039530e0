"""Command lifecycle through the real stack: API → Kafka → (events) → tracker → store → API."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.contract import (
    CommandMessage,
    CommandStatus,
    StatusEvent,
    command_headers,
    utc_now,
)
from tests.api_helpers import wait_status
from tests.conftest import LiveApi, SettingsFactory, assert_error_shape, command, serve
from tests.kafka_helpers import count_records, headers_of, read_records, value_of

pytestmark = pytest.mark.integration


@pytest.fixture
async def tracked(make_settings: SettingsFactory) -> AsyncIterator[LiveApi]:
    """The API with its tracker running."""
    async with serve(make_settings(tracker_enabled=True)) as live:
        yield live


async def emit(settings: Settings, *events: StatusEvent) -> None:
    """Produce status events to the results topic, as a connector does."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for item in events:
            await producer.send_and_wait(
                settings.kafka_result_topic,
                key=item.request_id.encode(),
                value=item.model_dump_json().encode(),
            )
    finally:
        await producer.stop()


def status_event(request_id: str, status: str, **extra: Any) -> StatusEvent:
    return StatusEvent(
        request_id=request_id,
        device_id=extra.pop("device_id", "pico-w-lab-001"),
        status=CommandStatus(status),
        occurred_at=datetime.now(UTC),
        source=extra.pop("source", "connector-mqtt-test"),
        **extra,
    )


async def submit(api: LiveApi, **overrides: Any) -> str:
    response = await api.client.post("/api/v1/commands", json=command(**overrides))
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    assert response.headers["location"] == f"/api/v1/commands/{request_id}/status"
    return request_id


async def test_queued_at_once_then_events_move_it_forward(tracked: LiveApi) -> None:
    request_id = await submit(tracked)
    response = await tracked.client.get(f"/api/v1/commands/{request_id}/status")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "queued" and body["device_id"] == "pico-w-lab-001"
    assert (body["protocol"], body["command_type"]) == ("mqtt", "control_led")
    assert body["expires_at"] is not None and body["created_at"].endswith("Z")
    assert [h["status"] for h in body["history"]] == ["queued"]

    await emit(
        tracked.settings,
        status_event(request_id, "sent"),
        status_event(request_id, "sent"),  # duplicate
        status_event(request_id, "delivered"),
        status_event(request_id, "succeeded", result={"led": "on"}),
        status_event(request_id, "failed", detail="too late"),  # second terminal
    )
    final = await wait_status(tracked, request_id, "succeeded")
    assert final["result"] == {"led": "on"}
    assert [h["status"] for h in final["history"]] == ["queued", "sent", "delivered", "succeeded"]
    assert {h["source"] for h in final["history"][1:]} == {"connector-mqtt-test"}

    metrics = (await tracked.client.get("/api/v1/metrics")).text
    assert 'pusher_command_status_total{protocol="mqtt",status="succeeded"} 1.0' in metrics
    assert 'pusher_command_end_to_end_seconds_count{protocol="mqtt",status="succeeded"}' in (
        metrics
    )
    assert "pusher_tracker_lag_records" in metrics


async def test_long_poll_wakes_promptly_and_times_out(tracked: LiveApi) -> None:
    warm = await submit(tracked)
    await emit(tracked.settings, status_event(warm, "sent"))
    await wait_status(tracked, warm, "sent")  # the tracker is consuming now

    request_id = await submit(tracked)
    started = time.monotonic()
    response = await tracked.client.get(
        f"/api/v1/commands/{request_id}/status", params={"wait": 1.5}
    )
    elapsed = time.monotonic() - started
    assert response.json()["status"] == "queued"
    assert 1.4 <= elapsed < 4, elapsed

    async def later() -> None:
        await asyncio.sleep(0.5)
        await emit(tracked.settings, status_event(request_id, "delivered"))

    producer = asyncio.create_task(later())
    started = time.monotonic()
    response = await tracked.client.get(
        f"/api/v1/commands/{request_id}/status", params={"wait": 30}
    )
    elapsed = time.monotonic() - started
    await producer
    assert response.json()["status"] == "delivered"
    assert elapsed < 5, elapsed  # woken by the tracker, not by the 30 s timeout

    # A caller that already knows an older status gets the current one at once.
    started = time.monotonic()
    response = await tracked.client.get(
        f"/api/v1/commands/{request_id}/status", params={"wait": 30, "last_status": "queued"}
    )
    assert response.json()["status"] == "delivered" and time.monotonic() - started < 1


async def test_statuses_survive_an_api_restart(make_settings: SettingsFactory) -> None:
    settings = make_settings(tracker_enabled=True)
    async with serve(settings) as first:
        request_id = await submit(first)
        await emit(settings, status_event(request_id, "sent"), status_event(request_id, "failed"))
        before = await wait_status(first, request_id, "failed")
    async with serve(settings) as second:
        response = await second.client.get(f"/api/v1/commands/{request_id}/status")
        assert response.status_code == 200
        assert response.json() == before


async def test_cancel_a_queued_command(tracked: LiveApi) -> None:
    request_id = await submit(tracked, device_id="ot2-lab-7", protocol="http")
    response = await tracked.client.delete(f"/api/v1/commands/{request_id}")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"

    command_record, cancel_record = await read_records(
        tracked.settings.kafka_bootstrap_servers, tracked.settings.kafka_command_topic, 2
    )
    assert cancel_record.key == command_record.key == b"ot2-lab-7"
    assert cancel_record.partition == command_record.partition
    assert cancel_record.offset > command_record.offset
    assert headers_of(cancel_record)["kind"] == "cancel"
    assert headers_of(cancel_record)["protocol"] == "http"
    assert value_of(cancel_record) == {
        "schema_version": 1,
        "kind": "cancel",
        "request_id": request_id,
        "device_id": "ot2-lab-7",
    }

    await emit(
        tracked.settings,
        status_event(request_id, "cancelled", device_id="ot2-lab-7", detail="dropped"),
    )
    body = await wait_status(tracked, request_id, "cancelled")
    assert [(h["status"], h["detail"]) for h in body["history"]] == [
        ("queued", None),
        ("queued", "cancel requested"),
        ("cancelled", "dropped"),
    ]
    again = await tracked.client.delete(f"/api/v1/commands/{request_id}")
    error = assert_error_shape(again, 409)
    assert error["details"][0]["status"] == "cancelled"


async def test_cancel_after_sent_is_409_and_unknown_is_404(tracked: LiveApi) -> None:
    request_id = await submit(tracked)
    await emit(tracked.settings, status_event(request_id, "sent"))
    await wait_status(tracked, request_id, "sent")
    error = assert_error_shape(await tracked.client.delete(f"/api/v1/commands/{request_id}"), 409)
    assert error["type"] == "CommandNotCancellableError" and error["details"][0]["status"] == "sent"
    assert_error_shape(await tracked.client.delete(f"/api/v1/commands/{uuid.uuid4()}"), 404)
    # Nothing but the command itself went to Kafka.
    assert (
        await count_records(
            tracked.settings.kafka_bootstrap_servers, tracked.settings.kafka_command_topic
        )
        == 1
    )


async def test_deadlines_expire_queued_commands(tracked: LiveApi) -> None:
    request_id = await submit(tracked, ttl_seconds=1)
    body = await wait_status(tracked, request_id, "expired")
    assert body["detail"] == "not delivered before expires_at"
    assert body["history"][-1]["source"] == "sweeper"


async def test_listing_and_device_alias(api: LiveApi) -> None:
    ids = [await submit(api, device_id=f"dev-{i % 2}") for i in range(5)]
    first = await api.client.get("/api/v1/commands", params={"limit": 2})
    assert first.status_code == 200
    page = first.json()
    assert [item["request_id"] for item in page["items"]] == ids[::-1][:2]
    rest = await api.client.get(
        "/api/v1/commands", params={"limit": 500, "cursor": page["next_cursor"]}
    )
    assert [item["request_id"] for item in rest.json()["items"]] == ids[::-1][2:]
    assert rest.json()["next_cursor"] is None

    device = await api.client.get("/api/v1/devices/dev-1/commands")
    assert [item["request_id"] for item in device.json()["items"]] == [ids[3], ids[1]]
    filtered = await api.client.get(
        "/api/v1/commands", params={"device_id": "dev-0", "status": "queued"}
    )
    assert {item["request_id"] for item in filtered.json()["items"]} == set(ids[0::2])


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/api/v1/commands/not-a-uuid/status", {}, 422),
        (f"/api/v1/commands/{uuid.UUID(int=7)}/status", {}, 404),
        (f"/api/v1/commands/{uuid.UUID(int=7)}/status", {"wait": 61}, 422),
        (f"/api/v1/commands/{uuid.UUID(int=7)}/status", {"wait": -1}, 422),
        (f"/api/v1/commands/{uuid.UUID(int=7)}/status", {"last_status": "done"}, 422),
        ("/api/v1/commands", {"limit": 0}, 422),
        ("/api/v1/commands", {"limit": 501}, 422),
        ("/api/v1/commands", {"cursor": "bogus"}, 422),
        ("/api/v1/commands", {"status": "nope"}, 422),
        ("/api/v1/commands", {"since": "yesterday"}, 422),
        ("/api/v1/commands", {"device_id": "a/b"}, 422),
    ],
)
async def test_bad_status_queries_use_the_error_shape(
    api: LiveApi, path: str, params: dict[str, Any], status: int
) -> None:
    assert_error_shape(await api.client.get(path, params=params), status)


async def test_idempotency_key_replays_and_conflicts(api: LiveApi) -> None:
    headers = {"Idempotency-Key": "plate-42-run-1"}
    first = await api.client.post("/api/v1/commands", json=command(), headers=headers)
    again = await api.client.post("/api/v1/commands", json=command(), headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["request_id"] == again.json()["request_id"]
    assert (first.headers["idempotent-replayed"], again.headers["idempotent-replayed"]) == (
        "false",
        "true",
    )
    assert again.headers["location"] == first.headers["location"]
    conflict = await api.client.post(
        "/api/v1/commands", json=command(payload={"pin": 2}), headers=headers
    )
    assert assert_error_shape(conflict, 409)["type"] == "IdempotencyKeyConflictError"

    batch = {"commands": [command(device_id=f"b-{i}") for i in range(3)]}
    b1 = await api.client.post(
        "/api/v1/commands/batch", json=batch, headers={"Idempotency-Key": "b"}
    )
    b2 = await api.client.post(
        "/api/v1/commands/batch", json=batch, headers={"Idempotency-Key": "b"}
    )
    assert b1.json() == b2.json() and b1.json()["successful"] == 3

    bad = await api.client.post(
        "/api/v1/commands", json=command(), headers={"Idempotency-Key": "has space"}
    )
    assert_error_shape(bad, 422)
    assert (
        await count_records(api.settings.kafka_bootstrap_servers, api.settings.kafka_command_topic)
        == 4
    )


async def test_concurrent_duplicates_produce_exactly_one_record(api: LiveApi) -> None:
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    responses = await asyncio.gather(
        *(api.client.post("/api/v1/commands", json=command(), headers=headers) for _ in range(6))
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["request_id"] for r in responses}) == 1
    assert sorted(r.headers["idempotent-replayed"] for r in responses) == ["false"] + ["true"] * 5
    assert (
        await count_records(api.settings.kafka_bootstrap_servers, api.settings.kafka_command_topic)
        == 1
    )


async def test_idempotency_keys_are_scoped_per_api_key(make_settings: SettingsFactory) -> None:
    settings = make_settings(enable_auth=True, api_keys="key-aaaaaaaaaaaaaaaa,key-bbbbbbbbbbbbbbbb")
    async with serve(settings) as live:
        answers = [
            await live.client.post(
                "/api/v1/commands",
                json=command(),
                headers={"X-API-Key": key, "Idempotency-Key": "same"},
            )
            for key in ("key-aaaaaaaaaaaaaaaa", "key-bbbbbbbbbbbbbbbb")
        ]
        assert [a.headers["idempotent-replayed"] for a in answers] == ["false", "false"]
        assert answers[0].json()["request_id"] != answers[1].json()["request_id"]
        unauth = await live.client.get(f"/api/v1/commands/{answers[0].json()['request_id']}/status")
        assert_error_shape(unauth, 401)


async def test_two_api_instances_on_one_postgres_see_every_status(
    make_settings: SettingsFactory, postgres_url: str
) -> None:
    settings = make_settings(tracker_enabled=True, status_store_url=postgres_url)
    # One tracker (in a) writes for both; b reads what a's tracker applied. (Two trackers in
    # one group rebalance; on the embedded broker a rebalance takes seconds.)
    others = settings.model_copy(update={"tracker_enabled": False})
    async with serve(settings) as a, serve(others) as b:
        ids = [await submit(a), await submit(b), await submit(a, device_id="dev-x")]
        await emit(
            settings,
            *(status_event(rid, "succeeded", result={"n": n}) for n, rid in enumerate(ids)),
        )
        for live in (a, b):
            for n, rid in enumerate(ids):
                body = await wait_status(live, rid, "succeeded", within=30)
                assert body["result"] == {"n": n}
        listing = (await b.client.get("/api/v1/commands")).json()
        assert {item["request_id"] for item in listing["items"]} == set(ids)


async def test_store_switched_off_answers_503_on_status_routes(
    make_settings: SettingsFactory,
) -> None:
    async with serve(make_settings(status_store_enabled=False)) as live:
        accepted = await live.client.post("/api/v1/commands", json=command())
        assert accepted.status_code == 202
        off = await live.client.get(f"/api/v1/commands/{accepted.json()['request_id']}/status")
        assert assert_error_shape(off, 503)["type"] == "StatusStoreUnavailableError"
        keyed = await live.client.post(
            "/api/v1/commands", json=command(), headers={"Idempotency-Key": "k"}
        )
        assert_error_shape(keyed, 503)


def test_status_event_json_matches_the_contract() -> None:
    item = status_event(str(uuid.UUID(int=1)), "succeeded", result={"ok": True})
    body = json.loads(item.model_dump_json())
    assert set(body) == {
        "schema_version",
        "request_id",
        "device_id",
        "status",
        "occurred_at",
        "source",
        "detail",
        "result",
    }
    assert body["occurred_at"].endswith("Z")


async def test_store_outage_is_503_and_commands_still_flow(
    make_settings: SettingsFactory, postgres_url: str
) -> None:
    """The database goes away: status reads and keyed submits are 503 in the error shape
    (nothing produced for them); commands without a key are still accepted and produced."""
    import asyncpg
    from sqlalchemy.engine import make_url

    settings = make_settings(status_store_url=postgres_url)
    async with serve(settings) as live:
        known = await submit(live)
        url = make_url(postgres_url)
        admin = await asyncpg.connect(
            url.set(drivername="postgresql", database="postgres").render_as_string(False)
        )
        try:
            await admin.execute(f'DROP DATABASE "{url.database}" WITH (FORCE)')
        finally:
            await admin.close()

        status = await live.client.get(f"/api/v1/commands/{known}/status")
        error = assert_error_shape(status, 503)
        assert error["type"] == "StatusStoreUnavailableError"
        assert status.headers["retry-after"] == "1"
        keyed = await live.client.post(
            "/api/v1/commands", json=command(device_id="keyed"), headers={"Idempotency-Key": "x"}
        )
        assert_error_shape(keyed, 503)
        plain = await live.client.post("/api/v1/commands", json=command(device_id="plain"))
        assert plain.status_code == 202

    records = await read_records(settings.kafka_bootstrap_servers, settings.kafka_command_topic, 2)
    assert sorted(r.key for r in records) == [b"pico-w-lab-001", b"plain"]
    assert await count_records(settings.kafka_bootstrap_servers, settings.kafka_command_topic) == 2


async def test_devices_api_pending_commands_and_bad_queries(tracked: LiveApi) -> None:
    """A device known only from its commands is listed with its pending count; bad queries
    get 422 in the error shape and an unknown device 404."""
    first = await submit(tracked, device_id="pico-pending")
    await submit(tracked, device_id="pico-pending")
    await wait_status(tracked, first, "queued")
    body = (await tracked.client.get("/api/v1/devices/pico-pending")).json()
    assert body == {
        "device_id": "pico-pending",
        "protocol": "mqtt",
        "online": None,
        "last_seen": None,
        "pending_commands": 2,
        "detail": None,
    }
    await emit(tracked.settings, status_event(first, "succeeded", device_id="pico-pending"))
    listing = None
    for _ in range(50):
        listing = (await tracked.client.get("/api/v1/devices")).json()
        counts = {item["device_id"]: item["pending_commands"] for item in listing["items"]}
        if counts.get("pico-pending") == 1:
            break
        await asyncio.sleep(0.1)
    assert counts["pico-pending"] == 1, listing
    assert_error_shape(await tracked.client.get("/api/v1/devices", params={"limit": 0}), 422)
    assert_error_shape(await tracked.client.get("/api/v1/devices/" + "x" * 129), 422)
    missing = assert_error_shape(await tracked.client.get("/api/v1/devices/nobody"), 404)
    assert missing["type"] == "DeviceNotFoundError"


async def test_a_command_on_the_topic_is_queued_even_if_its_api_never_wrote_it(
    tracked: LiveApi,
) -> None:
    """An API killed right after its 202 leaves the record in Kafka but no row: the tracker
    reads the commands topic and the command is known (queued), never a 404."""
    request_id = str(uuid.uuid4())
    message = CommandMessage(
        request_id=request_id,
        device_id="pico-orphan",
        command_type="control_led",
        payload={"pin": 1, "state": True},
        protocol="mqtt",
        created_at=utc_now(),
    )
    settings = tracked.settings
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.kafka_command_topic,
            key=b"pico-orphan",
            value=message.model_dump_json().encode(),
            headers=command_headers(message),
        )
    finally:
        await producer.stop()
    async with asyncio.timeout(20):
        while (
            found := await tracked.client.get(f"/api/v1/commands/{request_id}/status")
        ).status_code == 404:
            await asyncio.sleep(0.1)
    body = found.json()
    assert found.status_code == 200 and body["status"] == "queued", body
    assert body["device_id"] == "pico-orphan" and body["command_type"] == "control_led"


async def test_a_tracker_back_from_downtime_applies_unread_events_before_deadlines(
    make_settings: SettingsFactory,
) -> None:
    """The tracker is down while a command's deadline passes and its success waits unread
    in Kafka: once back, the command ends succeeded (what happened), never timed_out —
    and a command that truly got no answer still times out after the tracker caught up."""
    settings = make_settings(tracker_enabled=True, sweep_grace_seconds=0.5)
    async with serve(settings) as first:
        await wait_status(first, await submit(first), "queued")  # the tracker is reading
        answered = await submit(first, timeout_seconds=8)
        silent = await submit(first, timeout_seconds=8)
        sent_at = time.time()
        await emit(settings, status_event(answered, "sent"), status_event(silent, "sent"))
        await wait_status(first, answered, "sent")
        await wait_status(first, silent, "sent")
    # the device answered in time; nobody reads the results topic until the deadline passed
    await emit(settings, status_event(answered, "succeeded"))
    await asyncio.sleep(max(0.0, sent_at + 8 + 0.5 + 1 - time.time()))
    async with serve(settings) as second:
        body = await wait_status(second, answered, "succeeded")
        assert [entry["status"] for entry in body["history"]][-1] == "succeeded"
        late = await wait_status(second, silent, "timed_out")
        assert late["history"][-1]["source"] == "sweeper"


async def test_the_request_path_leaves_the_store_to_the_tracker(
    make_settings: SettingsFactory,
) -> None:
    """The API writes nothing to the store when it accepts a command; it answers for the
    commands it accepted (status, listing, cancel) until the tracker has recorded them."""
    settings = make_settings(tracker_enabled=False)
    async with serve(settings) as live:
        status = live.app.state.status
        ids = [await submit(live, device_id="pico-ryw") for _ in range(5)]
        assert await status.store.existing(ids) == set()  # nothing written on the path

        one = await live.client.get(f"/api/v1/commands/{ids[0]}/status")
        assert one.status_code == 200 and one.json()["status"] == "queued"
        pages: list[str] = []
        cursor: str | None = None
        while True:
            params = {"device_id": "pico-ryw", "limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await live.client.get("/api/v1/commands", params=params)).json()
            pages += [item["request_id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages == list(reversed(ids))  # newest first, each once, across pages
        listed = await live.client.get("/api/v1/commands", params={"status": "succeeded"})
        assert listed.json()["items"] == []

    # A tracker records them from the commands topic; the same instance then answers from
    # the store, and its memory of them is dropped.
    async with serve(settings.model_copy(update={"tracker_enabled": True})) as tracked:
        store = tracked.app.state.status.store
        async with asyncio.timeout(20):
            while await store.existing(ids) != set(ids):
                await asyncio.sleep(0.1)
        # mixed: stored rows and a command only this instance may know yet, in one listing
        fresh = await submit(tracked, device_id="pico-ryw")
        page = (
            await tracked.client.get("/api/v1/commands", params={"device_id": "pico-ryw"})
        ).json()
        assert [item["request_id"] for item in page["items"]] == [fresh, *reversed(ids)]
        assert len(tracked.app.state.status.recent) <= 1
