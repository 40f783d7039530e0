"""The event stream against the real broker: two API instances, resume, limits, wire format."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from preservarium_pusher_api.client import EventsGone, PusherAPIClient, PusherClient
from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.contract import (
    CommandMessage,
    CommandStatus,
    DevicePresence,
    Protocol,
    command_headers,
)
from preservarium_pusher_api.services.events import EventPosition
from tests.conftest import LiveApi, SettingsFactory, assert_error_shape, command, serve
from tests.integration.api.test_status_api import emit, status_event

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def raw_stream(
    api: LiveApi, params: Any = None, headers: dict[str, str] | None = None
) -> AsyncIterator[tuple[httpx.Response, AsyncIterator[str]]]:
    """The stream as it crosses the wire: the response and its lines."""
    async with api.client.stream(
        "GET", "/api/v1/events", params=params, headers=headers, timeout=20
    ) as response:
        yield response, response.aiter_lines()


async def next_blocks(lines: AsyncIterator[str], count: int, within: float = 15) -> list[dict]:
    """The next ``count`` dispatched messages (blocks with data), as field dicts."""
    blocks: list[dict[str, Any]] = []
    fields: dict[str, Any] = {}
    async with asyncio.timeout(within):
        while len(blocks) < count:
            line = await anext(lines)
            if line == "":
                if "data" in fields:
                    blocks.append(fields)
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
    return blocks


async def streams_open(api: LiveApi, count: int) -> None:
    """Wait until the instance serves ``count`` streams (positioned, reading)."""
    async with asyncio.timeout(10):
        while api.app.state.events.serving != count:
            await asyncio.sleep(0.02)


async def submit(api: LiveApi, **overrides: Any) -> str:
    response = await api.client.post("/api/v1/commands", json=command(**overrides))
    assert response.status_code == 202, response.text
    return str(response.json()["request_id"])


async def announce(settings: Settings, device_id: str, online: bool) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        presence = DevicePresence(
            device_id=device_id,
            protocol=Protocol.MQTT,
            online=online,
            last_seen=datetime.now(UTC),
            source="connector-mqtt-test",
        )
        await producer.send_and_wait(
            settings.kafka_presence_topic,
            key=device_id.encode(),
            value=presence.model_dump_json().encode(),
        )
    finally:
        await producer.stop()


@pytest.fixture
async def two_instances(make_settings: SettingsFactory) -> AsyncIterator[tuple[LiveApi, LiveApi]]:
    """Two API instances on the same Kafka topics."""
    settings = make_settings(events_heartbeat_seconds=0.3)
    async with serve(settings) as first, serve(settings) as second:
        yield first, second


async def test_a_stream_on_one_instance_shows_every_status_of_a_command_accepted_by_another(
    two_instances: tuple[LiveApi, LiveApi],
) -> None:
    """Instance A accepts; the stream on B shows queued → sent → delivered → succeeded in
    order, each with an id, plus the device's presence."""
    accepting, watching = two_instances
    device = f"pico-{uuid.uuid4().hex[:6]}"
    async with raw_stream(watching, params={"device_id": device}) as (response, lines):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        request_id = await submit(accepting, device_id=device)
        await submit(accepting, device_id="someone-else")  # filtered out
        settings = accepting.settings
        for status in ("sent", "delivered", "succeeded"):
            result = {"led": "on"} if status == "succeeded" else None
            await emit(settings, status_event(request_id, status, device_id=device, result=result))
        await announce(settings, device, online=False)
        blocks = await next_blocks(lines, 5)
    kinds = [block["event"] for block in blocks]
    assert kinds == ["status"] * 4 + ["presence"]
    bodies = [json.loads(block["data"]) for block in blocks]
    assert [body["status"] for body in bodies[:4]] == ["queued", "sent", "delivered", "succeeded"]
    assert {body["request_id"] for body in bodies[:4]} == {request_id}
    assert bodies[0]["command_type"] == "control_led" and bodies[0]["protocol"] == "mqtt"
    assert bodies[3]["command_type"] == "control_led"  # known from the queued record
    assert bodies[3]["result"] == {"led": "on"} and bodies[3]["source"] == "connector-mqtt-test"
    assert bodies[4] == {**bodies[4], "device_id": device, "online": False}
    ids = [block["id"] for block in blocks]
    assert len(set(ids)) == 5 and all(ids)


async def test_reconnecting_with_last_event_id_gets_the_missed_events_once(
    two_instances: tuple[LiveApi, LiveApi],
) -> None:
    """The client stops after one event; what happened meanwhile comes on reconnect (to the
    other instance), with no gap and no duplicate."""
    first, second = two_instances
    device = f"pico-{uuid.uuid4().hex[:6]}"
    async with PusherAPIClient(first.base_url) as client:
        stream = client.events(device_id=device)
        waiting = asyncio.ensure_future(anext(stream))
        await streams_open(first, 1)
        request_id = await submit(first, device_id=device)
        seen = [await asyncio.wait_for(waiting, 15)]
        await stream.aclose()
        assert seen[0].status == "queued"
        for status in ("sent", "delivered", "succeeded"):
            await emit(first.settings, status_event(request_id, status, device_id=device))
        later = await submit(first, device_id=device)
    async with PusherAPIClient(second.base_url) as client:
        resumed = client.events(device_id=device, last_event_id=seen[0].id)
        async with asyncio.timeout(15):
            seen += [await anext(resumed) for _ in range(4)]
        await resumed.aclose()
    # in order per command (commands of different partitions may interleave differently)
    assert [e.status for e in seen if e.request_id == request_id] == [
        "queued",
        "sent",
        "delivered",
        "succeeded",
    ]
    assert [(e.request_id, e.status) for e in seen if e.request_id != request_id] == [
        (later, "queued")
    ]
    assert len({e.id for e in seen}) == 5


async def test_an_id_from_the_opening_message_resumes_where_the_stream_began(
    make_settings: SettingsFactory,
) -> None:
    """A stream that saw no event yet resumes from its opening id: nothing is missed."""
    async with serve(make_settings()) as api:
        async with raw_stream(api) as (_, lines):
            opening: dict[str, str] = {}
            async with asyncio.timeout(10):
                while (line := await anext(lines)) != "":
                    name, _, value = line.partition(": ")
                    opening[name] = value
        assert opening["retry"] == str(api.settings.events_retry_ms)
        request_id = await submit(api)
        async with raw_stream(api, headers={"Last-Event-ID": opening["id"]}) as (_, lines):
            (block,) = await next_blocks(lines, 1)
        assert json.loads(block["data"])["request_id"] == request_id


async def test_heartbeats_keep_an_idle_stream_talking(make_settings: SettingsFactory) -> None:
    """With nothing happening, comment lines arrive every EVENTS_HEARTBEAT_SECONDS."""
    async with serve(make_settings(events_heartbeat_seconds=0.2)) as api:
        async with raw_stream(api) as (_, lines):
            comments = 0
            async with asyncio.timeout(10):
                while comments < 3:
                    comments += (await anext(lines)).startswith(":")


async def test_an_id_older_than_the_retention_window_is_told_to_resync(
    make_settings: SettingsFactory,
) -> None:
    """An old Last-Event-ID gets one error event (the JSON error shape) and the stream ends;
    the client raises EventsGone instead of reconnecting; a malformed id is a 422."""
    async with serve(make_settings(events_retention_seconds=60)) as api:
        async with raw_stream(api) as (_, lines):
            async with asyncio.timeout(10):
                opening = await anext(lines)
        fresh = opening.removeprefix("id: ")
        stale = str(int(time.time() * 1000) - 120_000) + fresh[fresh.index(".") :]
        async with raw_stream(api, headers={"Last-Event-ID": stale}) as (response, lines):
            assert response.status_code == 200
            (block,) = await next_blocks(lines, 1)
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(anext(lines), 5)
        assert block["event"] == "error"
        body = json.loads(block["data"])
        assert set(body) == {"error", "type", "details", "request_id"}
        assert body["type"] == "EventsGone" and body["details"][0]["status"] == 410
        async with PusherAPIClient(api.base_url) as client:
            with pytest.raises(EventsGone):
                await asyncio.wait_for(anext(client.events(last_event_id=stale)), 10)
        for bad in ("nonsense", "1.2.3", "1.a.b.c", "1.-1.0.0"):
            response = await api.client.get("/api/v1/events", headers={"Last-Event-ID": bad})
            assert_error_shape(response, 422)
        for params in ({"status": "exploded"}, {"request_id": "r" * 65},
                       {"device_id": "bad/device"}):  # fmt: skip
            response = await api.client.get("/api/v1/events", params=params)
            assert_error_shape(response, 422)


async def test_streams_per_key_are_capped_and_freed_when_a_stream_ends(
    make_settings: SettingsFactory,
) -> None:
    """Beyond EVENTS_MAX_STREAMS_PER_KEY, 429 with Retry-After; a closed stream frees its
    place; without the key, 401."""
    settings = make_settings(
        events_max_streams_per_key=1, enable_auth=True, api_keys="key-one,key-two"
    )
    async with serve(settings) as api:
        one = {"X-API-Key": "key-one"}
        response = await api.client.get("/api/v1/events")
        assert_error_shape(response, 401)
        async with raw_stream(api, headers=one) as (response, _):
            assert response.status_code == 200
            refused = await api.client.get("/api/v1/events", headers=one)
            assert_error_shape(refused, 429)
            assert int(refused.headers["retry-after"]) >= 1
            async with raw_stream(api, headers={"X-API-Key": "key-two"}) as (other, _):
                assert other.status_code == 200
        for _ in range(50):  # the server notices the closed connection
            async with raw_stream(api, headers=one) as (response, _):
                if response.status_code == 200:
                    break
            await asyncio.sleep(0.1)
        assert response.status_code == 200


async def test_status_filter_leaves_presence_out(make_settings: SettingsFactory) -> None:
    """?status=succeeded passes only succeeded status events."""
    async with serve(make_settings()) as api:
        device = f"pico-{uuid.uuid4().hex[:6]}"
        async with raw_stream(api, params=[("status", "succeeded"), ("status", "failed")]) as (
            _,
            lines,
        ):
            request_id = await submit(api, device_id=device)
            await announce(api.settings, device, online=True)
            for status in ("sent", "succeeded"):
                await emit(api.settings, status_event(request_id, status, device_id=device))
            (block,) = await next_blocks(lines, 1)
        assert json.loads(block["data"])["status"] == CommandStatus.SUCCEEDED.value


async def test_a_deadline_the_sweeper_decides_is_on_the_stream(
    make_settings: SettingsFactory,
) -> None:
    """No connector delivers it: the sweeper's ``expired`` reaches the stream from the
    results topic, like a connector's status."""
    async with serve(make_settings(tracker_enabled=True)) as api:
        device = f"pico-{uuid.uuid4().hex[:6]}"
        async with raw_stream(api, params={"device_id": device}) as (_, lines):
            await streams_open(api, 1)
            request_id = await submit(api, device_id=device, ttl_seconds=1)
            blocks = await next_blocks(lines, 2, within=20)
    bodies = [json.loads(block["data"]) for block in blocks]
    assert [(b["request_id"], b["status"]) for b in bodies] == [
        (request_id, "queued"),
        (request_id, "expired"),
    ]
    assert bodies[1]["source"] == "sweeper" and bodies[1]["device_id"] == device


@pytest.mark.timeout(150)
async def test_a_client_that_stops_reading_is_disconnected(make_settings: SettingsFactory) -> None:
    """A stream whose client reads nothing is closed after EVENTS_SEND_TIMEOUT_SECONDS once
    the socket buffers are full, instead of the server buffering without bound.

    How many events fill the buffers depends on the machine's TCP autotuning, so events are
    produced in rounds until the server lets the stream go (or a bound is reached)."""
    async with serve(make_settings(events_send_timeout_seconds=1.0)) as api:
        port = int(api.base_url.rsplit(":", 1)[1])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(
            sock, b"GET /api/v1/events HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n"
        )
        try:
            await streams_open(api, 1)
            producer = AIOKafkaProducer(
                bootstrap_servers=api.settings.kafka_bootstrap_servers,
                max_batch_size=1 << 20,
                linger_ms=5,
            )
            await producer.start()
            try:
                presence = DevicePresence(
                    device_id="pico-chatty", protocol=Protocol.MQTT, online=True,
                    last_seen=datetime.now(UTC), source="connector-mqtt-test", detail="x" * 500,
                ).model_dump_json().encode()  # fmt: skip
                async with asyncio.timeout(120):
                    while api.app.state.events.serving:
                        sent = [
                            await producer.send(
                                api.settings.kafka_presence_topic, presence, b"pico"
                            )
                            for _ in range(5_000)
                        ]
                        await asyncio.gather(*sent)
                        # the stream drains what it can; a blocked send gives up after 1 s
                        for _ in range(30):
                            if not api.app.state.events.serving:
                                break
                            await asyncio.sleep(0.1)
            finally:
                await producer.stop()
        finally:
            sock.close()
        # the stream's place is free again
        async with raw_stream(api) as (response, _):
            assert response.status_code == 200


async def test_the_sync_client_reads_the_stream_and_resumes_across_a_server_restart(
    make_settings: SettingsFactory,
) -> None:
    """``PusherClient.events`` yields events; when the API goes away and comes back, it
    reconnects with Last-Event-ID and gets what happened meanwhile."""
    settings = make_settings(events_retry_ms=200)
    device = f"pico-{uuid.uuid4().hex[:6]}"
    seen: list[Any] = []
    async with serve(settings) as api:
        client = PusherClient(api.base_url)
        stream = client.events(device_id=device)
        first = asyncio.ensure_future(asyncio.to_thread(next, stream))
        await streams_open(api, 1)
        request_id = await submit(api, device_id=device)
        seen.append(await asyncio.wait_for(first, 15))
        port = int(api.base_url.rsplit(":", 1)[1])
    # the API is gone; an event happens meanwhile; the API comes back on the same port
    await emit(settings, status_event(request_id, "sent", device_id=device))
    async with serve(settings, port=port) as api:
        seen.append(await asyncio.wait_for(asyncio.to_thread(next, stream), 30))
    stream.close()
    client.close()
    assert [(e.request_id, e.status) for e in seen] == [
        (request_id, "queued"),
        (request_id, "sent"),
    ]


async def test_heartbeats_keep_an_idle_clients_resume_point_within_the_retention(
    make_settings: SettingsFactory,
) -> None:
    """A stream that matched nothing for longer than EVENTS_RETENTION_SECONDS still resumes
    from the id of its last heartbeat, and gets what happened after it."""
    settings = make_settings(events_retention_seconds=2, events_heartbeat_seconds=0.3)
    device = f"pico-{uuid.uuid4().hex[:6]}"
    async with serve(settings) as api:
        last_id = ""
        async with raw_stream(api, params={"device_id": device}) as (_, lines):
            async with asyncio.timeout(10):
                started = time.monotonic()
                while time.monotonic() - started < 3:
                    line = await anext(lines)
                    if line.startswith("id: "):
                        last_id = line.removeprefix("id: ")
            await submit(api, device_id="someone-else")  # filtered out meanwhile
        request_id = await submit(api, device_id=device)
        async with raw_stream(api, params={"device_id": device},
                              headers={"Last-Event-ID": last_id}) as (_, lines):  # fmt: skip
            (block,) = await next_blocks(lines, 1)
    assert block["event"] == "status"
    assert json.loads(block["data"])["request_id"] == request_id


async def produce_far_behind(settings: Settings, device: str, total: int) -> list[str]:
    """``total`` commands for ``device`` (4 KB payloads: more than one fetch holds), then a
    ``sent`` event for each on the results topic; their request ids, in order."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, max_batch_size=1 << 20, linger_ms=5
    )
    await producer.start()
    try:
        ids = [str(uuid.uuid4()) for _ in range(total)]
        now = datetime.now(UTC)
        pending = []
        for request_id in ids:
            message = CommandMessage(
                request_id=request_id, device_id=device, command_type="control_led",
                payload={"pattern": "x" * 4000}, protocol=Protocol.MQTT, created_at=now,
            )  # fmt: skip
            pending.append(
                await producer.send(
                    settings.kafka_command_topic,
                    message.model_dump_json().encode(),
                    device.encode(),
                    headers=command_headers(message),
                )
            )
        for request_id in ids:
            event = status_event(request_id, "sent", device_id=device)
            pending.append(
                await producer.send(
                    settings.kafka_result_topic,
                    event.model_dump_json().encode(),
                    request_id.encode(),
                )
            )
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return ids


async def test_a_long_replay_shows_each_commands_queued_before_its_statuses(
    make_settings: SettingsFactory,
) -> None:
    """Resuming far behind: more commands than one fetch holds, each followed by a status on
    the results topic. Every command's ``queued`` comes before its ``sent`` on the stream,
    whichever topic's records the broker hands over first."""
    settings = make_settings()
    device = f"pico-{uuid.uuid4().hex[:6]}"
    total = 600
    ids = await produce_far_behind(settings, device, total)
    partitions = settings.kafka_topic_partitions
    start = EventPosition([[0] * partitions] * 3, int(time.time() * 1000)).encode()
    async with serve(settings) as api:
        async with raw_stream(api, {"device_id": device}, {"Last-Event-ID": start}) as (
            response,
            lines,
        ):
            assert response.status_code == 200
            blocks = await next_blocks(lines, 2 * total, within=60)
    seen = [(json.loads(b["data"])["request_id"], json.loads(b["data"])["status"]) for b in blocks]
    assert len(set(seen)) == 2 * total
    position = {item: index for index, item in enumerate(seen)}
    late = [rid for rid in ids if position[(rid, "sent")] < position[(rid, "queued")]]
    assert late == []
