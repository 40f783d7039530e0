"""Webhooks against a real HTTP receiver: signatures, an outage, order, pause, allow-list."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from pusher_dev.embedded_kafka import free_port

from preservarium_pusher_api.config import Settings
from tests.conftest import LiveApi, SettingsFactory, command, serve
from tests.integration.api.test_event_stream import produce_far_behind
from tests.integration.api.test_status_api import emit, status_event

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SECRET = "a-receiver-secret-of-some-length"


def documented_verify() -> Callable[[str, str, bytes], bool]:
    """The README's verification snippet, run as a user would paste it."""
    readme = (ROOT / "README.md").read_text()
    (snippet,) = [
        block
        for block in re.findall(r"```python\n(.*?)```", readme, re.S)
        if "def verify_pusher_signature" in block
    ]
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    verify: Callable[[str, str, bytes], bool] = namespace["verify_pusher_signature"]
    return verify


class Receiver:
    """An HTTP server that records every delivery; it can be taken down and brought back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.deliveries.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.deliveries]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver(free_port())
    await server.up()
    try:
        yield server
    finally:
        await server.down()


def write_subscriptions(path: Path, *entries: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"subscriptions": list(entries)}))
    return path


def webhook_settings(make_settings: SettingsFactory, path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhooks_path": path,
        "webhook_allowed_hosts": "127.0.0.1",
        "webhook_group_id": f"webhooks-{uuid.uuid4().hex[:8]}",
        "webhook_max_backoff_seconds": 0.5,
        "webhook_reload_seconds": 0.2,
    }
    values.update(overrides)
    return make_settings(**values)


async def submit(api: LiveApi, device_id: str) -> str:
    response = await api.client.post("/api/v1/commands", json=command(device_id=device_id))
    assert response.status_code == 202, response.text
    return str(response.json()["request_id"])


def assert_lifecycles(bodies: list[dict[str, Any]], commands: list[str]) -> None:
    """Each command's deliveries are its whole lifecycle, in order."""
    for request_id in commands:
        statuses = [b["data"]["status"] for b in bodies if b["data"]["request_id"] == request_id]
        assert statuses == ["queued", "sent", "delivered", "succeeded"], request_id


async def until(check: Callable[[], bool], within: float, what: str) -> None:
    async with asyncio.timeout(within):
        while not check():
            await asyncio.sleep(0.1)


async def test_signed_deliveries_survive_a_receiver_outage_in_order_once(
    make_settings: SettingsFactory, receiver: Receiver, tmp_path: Path
) -> None:
    """Two API instances share the deliveries; the receiver is down for 10 s and then gets
    every event, in order per command, each once, each signed (the README's snippet)."""
    path = write_subscriptions(
        tmp_path / "webhooks.json",
        {"name": "lims", "url": f"http://127.0.0.1:{receiver.port}/hook", "secret": SECRET,
         "events": ["status"]},
    )  # fmt: skip
    settings = webhook_settings(make_settings, path)
    device = f"pico-{uuid.uuid4().hex[:6]}"
    async with serve(settings) as first, serve(settings) as second:
        # a new group starts at the end: warm up until it has joined and delivers
        async with asyncio.timeout(30):
            while not receiver.deliveries:
                await submit(first, f"warm-{device}")
                await asyncio.sleep(0.5)
        await asyncio.sleep(1)
        warm = await submit(first, device)
        await until(lambda: any(b["data"]["request_id"] == warm for b in receiver.bodies()),
                    30, "the first delivery")  # fmt: skip
        warmups = len(receiver.deliveries) - 1
        await receiver.down()
        commands = [warm, await submit(second, device), await submit(first, device)]
        for request_id in commands:
            for status in ("sent", "delivered", "succeeded"):
                await emit(settings, status_event(request_id, status, device_id=device))
        await asyncio.sleep(10)
        assert len(receiver.deliveries) == warmups + 1
        await receiver.up()
        await until(lambda: len(receiver.deliveries) >= warmups + 12, 30, "every delivery")
        await asyncio.sleep(1)  # anything sent twice would arrive by now
        states = [(await api.client.get("/api/v1/webhooks")).json() for api in (first, second)]
    verify = documented_verify()
    for headers, body in receiver.deliveries:
        assert verify(SECRET, headers["Pusher-Signature"], body)
        assert not verify("another-secret-of-some-length", headers["Pusher-Signature"], body)
        assert not verify(SECRET, headers["Pusher-Signature"], body + b" ")
        assert headers["Pusher-Event-Id"] == json.loads(body)["id"]
    every = receiver.bodies()
    assert len({b["id"] for b in every}) == len(every)  # none twice
    bodies = [b for b in every if b["data"]["device_id"] == device]
    assert len(bodies) == 12
    assert_lifecycles(bodies, commands)
    assert all(b["subscription"] == "lims" and b["event"] == "status" for b in bodies)
    retried = [int(h["Pusher-Delivery-Attempt"]) for h, _ in receiver.deliveries]
    assert max(retried) > 1
    counted = sum(s["subscriptions"][0]["delivered"] for s in states)
    assert counted == len(every)
    assert all(SECRET not in json.dumps(s) for s in states)


async def test_a_failing_subscription_is_paused_and_a_touch_resumes_it(
    make_settings: SettingsFactory, receiver: Receiver, tmp_path: Path
) -> None:
    """Failing longer than WEBHOOK_PAUSE_AFTER_SECONDS pauses (status route, metric); a
    host outside the allow-list is refused and never called; touching the file resumes."""
    closed = free_port()
    path = write_subscriptions(
        tmp_path / "webhooks.json",
        {
            "name": "down",
            "url": f"http://127.0.0.1:{closed}/hook?token=hidden-token",
            "secret": SECRET,
        },
        {"name": "elsewhere", "url": f"http://localhost:{receiver.port}/hook", "secret": SECRET},
        {"name": "short", "url": f"http://127.0.0.1:{receiver.port}/hook", "secret": "short"},
    )
    settings = webhook_settings(make_settings, path, webhook_pause_after_seconds=1.0)
    async with serve(settings) as api:

        async def state() -> dict[str, Any]:
            body: dict[str, Any] = (await api.client.get("/api/v1/webhooks")).json()
            return body

        first = await state()
        assert first["running"] is True
        assert "WEBHOOK_ALLOWED_HOSTS" in first["refused"]["elsewhere"]
        assert "secret" in first["refused"]["short"]
        assert [s["name"] for s in first["subscriptions"]] == ["down"]
        assert SECRET not in json.dumps(first) and "hidden-token" not in json.dumps(first)
        device = f"pico-{uuid.uuid4().hex[:6]}"
        async with asyncio.timeout(30):
            while (await state())["subscriptions"][0]["state"] != "paused":
                await submit(api, device)
                await asyncio.sleep(0.3)
        metrics = (await api.client.get("/api/v1/metrics")).text
        assert 'pusher_webhook_paused{subscription="down"} 1.0' in metrics
        assert re.search(r'pusher_webhook_deliveries_total\{outcome="failed",subscription="down"\}'
                         r" [1-9]", metrics)  # fmt: skip
        os.utime(path)
        async with asyncio.timeout(10):
            while (await state())["subscriptions"][0]["state"] == "paused":
                await asyncio.sleep(0.1)
        assert receiver.deliveries == []  # the host outside the allow-list was never called


async def test_the_standby_instance_takes_over_when_the_delivering_one_stops(
    make_settings: SettingsFactory, receiver: Receiver, tmp_path: Path
) -> None:
    """One of two instances delivers; when it stops, the other delivers what follows."""
    path = write_subscriptions(
        tmp_path / "webhooks.json",
        {"name": "lims", "url": f"http://127.0.0.1:{receiver.port}/hook", "secret": SECRET},
    )
    settings = webhook_settings(make_settings, path)
    device = f"pico-{uuid.uuid4().hex[:6]}"
    stacks = [contextlib.AsyncExitStack(), contextlib.AsyncExitStack()]
    try:
        instances = [await stack.enter_async_context(serve(settings)) for stack in stacks]
        async with asyncio.timeout(30):
            while not receiver.deliveries:
                await submit(instances[0], f"warm-{device}")
                await asyncio.sleep(0.5)
        steady = 0
        async with asyncio.timeout(30):  # both have joined: one owner, for a while
            while steady < 10:
                owners = [api.app.state.webhooks.delivering for api in instances]
                steady = steady + 1 if owners.count(True) == 1 else 0
                await asyncio.sleep(0.1)
        owner = owners.index(True)
        await stacks[owner].aclose()  # the delivering instance stops
        standby = instances[1 - owner]
        request_id = await submit(standby, device)
        await until(
            lambda: any(b["data"].get("request_id") == request_id for b in receiver.bodies()),
            30, "a delivery from the instance that stood by",
        )  # fmt: skip
        assert standby.app.state.webhooks.delivering
    finally:
        for stack in stacks:
            await stack.aclose()


async def test_a_failing_subscription_does_not_hold_back_the_others(
    make_settings: SettingsFactory, receiver: Receiver, tmp_path: Path
) -> None:
    """One receiver is down (not yet paused): the other subscription still gets every event
    at once; the failing one keeps its backlog and, once its receiver is up, gets all of it,
    in order per command, each event once."""
    late = Receiver(free_port())
    path = write_subscriptions(
        tmp_path / "webhooks.json",
        {"name": "lims", "url": f"http://127.0.0.1:{receiver.port}/hook", "secret": SECRET,
         "events": ["status"]},
        {"name": "archive", "url": f"http://127.0.0.1:{late.port}/hook", "secret": SECRET,
         "events": ["status"]},
    )  # fmt: skip
    settings = webhook_settings(make_settings, path, webhook_pause_after_seconds=120.0)
    device = f"pico-{uuid.uuid4().hex[:6]}"
    try:
        async with serve(settings) as api:
            async with asyncio.timeout(30):  # a new group starts at the end: wait until it reads
                while not receiver.deliveries:
                    await submit(api, f"warm-{device}")
                    await asyncio.sleep(0.5)
            commands = []
            for _ in range(4):  # several fetches: each command's events come separately
                request_id = await submit(api, device)
                commands.append(request_id)
                for status in ("sent", "delivered", "succeeded"):
                    await asyncio.sleep(0.1)
                    await emit(settings, status_event(request_id, status, device_id=device))

            def reached(server: Receiver) -> list[dict[str, Any]]:
                return [b for b in server.bodies() if b["data"]["device_id"] == device]

            await until(lambda: len(reached(receiver)) == 16, 20, "the healthy subscription")
            described = {
                s["name"]: s for s in (await api.client.get("/api/v1/webhooks")).json()[
                    "subscriptions"]
            }  # fmt: skip
            assert described["archive"]["state"] == "failing"
            assert described["archive"]["backlog"] >= 16
            assert described["lims"]["backlog"] == 0
            assert late.deliveries == []
            await late.up()
            await until(
                lambda: len(reached(late)) == 16, 30, "the backlog, once the receiver is up"
            )
            await asyncio.sleep(1)  # anything sent twice would arrive by now
        for server in (receiver, late):
            bodies = reached(server)
            assert len({b["id"] for b in bodies}) == len(bodies) == 16
            assert_lifecycles(bodies, commands)
    finally:
        await late.down()


async def test_a_full_backlog_pauses_fetching_until_the_slow_subscription_catches_up(
    make_settings: SettingsFactory, receiver: Receiver, tmp_path: Path
) -> None:
    """Memory stays bounded: once a failing subscription holds WEBHOOK_BACKLOG_EVENTS, no
    more is fetched (the healthy one waits too); when it recovers, both get everything."""
    late = Receiver(free_port())
    device = f"pico-{uuid.uuid4().hex[:6]}"
    path = write_subscriptions(
        tmp_path / "webhooks.json",
        {"name": "lims", "url": f"http://127.0.0.1:{receiver.port}/hook", "secret": SECRET,
         "events": ["status"]},
        {"name": "archive", "url": f"http://127.0.0.1:{late.port}/hook", "secret": SECRET,
         "events": ["status"], "device_ids": [device]},
    )  # fmt: skip
    settings = webhook_settings(
        make_settings, path, webhook_pause_after_seconds=120.0, webhook_backlog_events=3
    )

    def reached(server: Receiver) -> list[dict[str, Any]]:
        return [b for b in server.bodies() if b["data"]["device_id"] == device]

    try:
        async with serve(settings) as api:
            async with asyncio.timeout(30):
                while not receiver.deliveries:
                    await submit(api, f"warm-{device}")
                    await asyncio.sleep(0.5)
            commands = []
            for _ in range(6):
                request_id = await submit(api, device)
                commands.append(request_id)
                for status in ("sent", "delivered", "succeeded"):
                    await asyncio.sleep(0.1)
                    await emit(settings, status_event(request_id, status, device_id=device))
            await asyncio.sleep(3)
            held = len(reached(receiver))
            backlog = {
                s["name"]: s["backlog"]
                for s in (await api.client.get("/api/v1/webhooks")).json()["subscriptions"]
            }
            metrics = (await api.client.get("/api/v1/metrics")).text
            assert 'pusher_webhook_backlog{subscription="archive"}' in metrics
            assert 3 <= backlog["archive"] < 24
            assert held < 24  # the rest was not fetched
            await late.up()
            await until(lambda: len(reached(late)) == 24, 30, "the archive's events")
            await until(lambda: len(reached(receiver)) == 24, 30, "the rest for the healthy one")
        for server in (receiver, late):
            assert_lifecycles(reached(server), commands)
    finally:
        await late.down()


async def test_catching_up_from_far_behind_sends_each_commands_queued_first(
    make_settings: SettingsFactory, receiver: Receiver, tmp_path: Path
) -> None:
    """The group resumes far behind (its offsets at the start of every topic): more commands
    than one fetch holds, each with a status on the results topic. Every command's
    ``queued`` is delivered before its ``sent``."""
    path = write_subscriptions(
        tmp_path / "webhooks.json",
        {"name": "lims", "url": f"http://127.0.0.1:{receiver.port}/hook", "secret": SECRET,
         "events": ["status"]},
    )  # fmt: skip
    settings = webhook_settings(make_settings, path, webhook_concurrency=64)
    device = f"pico-{uuid.uuid4().hex[:6]}"
    ids = await produce_far_behind(settings, device, 600)
    # the group's offsets: the start of every partition
    group = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.webhook_group_id,
        enable_auto_commit=False,
    )
    await group.start()
    try:
        await group.topics()
        partitions = [
            TopicPartition(topic, number)
            for topic in (settings.kafka_command_topic, settings.kafka_result_topic)
            for number in group.partitions_for_topic(topic) or ()
        ]
        group.assign(partitions)
        await group.commit({partition: 0 for partition in partitions})
    finally:
        await group.stop()
    async with serve(settings):
        await until(lambda: len(receiver.deliveries) >= 1200, 40, "every delivery")
    bodies = [b["data"] for b in receiver.bodies() if b["data"]["device_id"] == device]
    position = {(b["request_id"], b["status"]): index for index, b in enumerate(bodies)}
    assert len(position) == 1200
    late = [rid for rid in ids if position[(rid, "sent")] < position[(rid, "queued")]]
    assert late == []
