"""Chaos over request/response protocols: two HTTP (or CoAP) connector replicas, one
SIGKILLed mid-stream and started again.

The devices remember no request id — generic HTTP devices that run every POST, CoAP
sensors whose echo resource runs every request (``tests/e2e``'s scenario devices) — so only
the connectors' sent-command journal keeps a command from running twice. These protocols
carry the answer in the response: a command whose request was in flight on the killed
replica ran, but its answer died with that replica; it ends ``timed_out`` (what the
service can know), is counted apart, and never runs again.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pusher_dev.coap_simulator import SimulatedCoapSensor

from connectors.settings import CoapSettings, ConnectorSettings, HttpSettings
from tests.chaos.stack import Stack, post_with_failover, statuses
from tests.chaos.test_replicas import TERMINAL
from tests.conftest import SettingsFactory, command
from tests.e2e.http.test_scenarios import GenericDevice
from tests.mqtt_helpers import connector_sends, create_topics, registry_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FULL = os.environ.get("CHAOS_FULL") == "1"
TOTAL = 3000 if FULL else 300
DEVICE_COUNT = 30 if FULL else 10


class HttpDevices:
    """Generic HTTP devices: every POST runs, logged by its X-Request-ID."""

    protocol = "http"
    settings_class: type[ConnectorSettings] = HttpSettings

    def __init__(self, stack: AsyncExitStack) -> None:
        self.devices = {
            f"http-chaos-{n:02d}": stack.enter_context(GenericDevice()) for n in range(DEVICE_COUNT)
        }

    def registry(self) -> dict[str, Any]:
        return {
            name: {"protocol": "http", "address": {"base_url": device.base_url}}
            for name, device in self.devices.items()
        }

    def body(self, device_id: str, n: int) -> dict[str, Any]:
        return command(protocol="http", device_id=device_id, command_type="run", payload={"n": n})

    def accepted(self, body: dict[str, Any], request_id: str) -> None:
        pass

    def runs(self) -> Counter[str]:
        found: Counter[str] = Counter()
        for device in self.devices.values():
            found.update(device.runs)
        return found


class CoapDevices:
    """CoAP sensors: the echo resource runs every request, recognised by a tag."""

    protocol = "coap"
    settings_class: type[ConnectorSettings] = CoapSettings

    def __init__(self, sensors: dict[str, SimulatedCoapSensor]) -> None:
        self.devices = sensors
        self.tags: dict[str, str] = {}

    def registry(self) -> dict[str, Any]:
        return {
            name: {"protocol": "coap", "address": {"host": "127.0.0.1", "port": sensor.port}}
            for name, sensor in self.devices.items()
        }

    def body(self, device_id: str, n: int) -> dict[str, Any]:
        tag = uuid.uuid4().hex
        return command(
            protocol="coap", device_id=device_id, command_type="echo", payload={"tag": tag}
        )

    def accepted(self, body: dict[str, Any], request_id: str) -> None:
        self.tags[body["payload"]["tag"]] = request_id

    def runs(self) -> Counter[str]:
        found: Counter[str] = Counter()
        for sensor in self.devices.values():
            found.update(
                self.tags.get(json.loads(r.payload)["tag"], "unknown")
                for r in sensor.requests_to("echo")
            )
        return found


@asynccontextmanager
async def devices_of(protocol: str) -> AsyncIterator[HttpDevices | CoapDevices]:
    async with AsyncExitStack() as stack:
        if protocol == "http":
            yield HttpDevices(stack)
            return
        sensors = {}
        for n in range(DEVICE_COUNT):
            sensor = SimulatedCoapSensor()
            sensors[f"coap-chaos-{n:02d}"] = await stack.enter_async_context(sensor)
        yield CoapDevices(sensors)


@pytest.mark.parametrize("protocol", ["http", "coap"])
async def test_replica_sigkill_never_runs_a_command_twice(
    protocol: str, make_settings: SettingsFactory, postgres_url: str, tmp_path: Path
) -> None:
    base = make_settings(
        status_store_url=postgres_url,
        kafka_topic_partitions=6,
        sweep_grace_seconds=2,
        kafka_consumer_session_timeout_ms=4000,
    )
    async with devices_of(protocol) as devices:
        names = list(devices.devices)
        settings = registry_settings(
            devices.settings_class,
            base,
            tmp_path,
            devices.registry(),
            connector_retry_max_backoff_seconds=0.3,
            kafka_consumer_session_timeout_ms=4000,
        )
        await create_topics(base)
        stack = Stack(base, settings, tmp_path)
        try:
            stack.start_api("api-1")
            stack.start_tracker("tracker-1")
            stack.start_connector(f"{protocol}-1")
            stack.start_connector(f"{protocol}-2")
            await stack.wait_apis()
            async with httpx.AsyncClient(timeout=30) as client:
                accepted: list[str] = []

                async def submit() -> None:
                    for start in range(0, TOTAL, 100):
                        items = []
                        for n in range(start, min(TOTAL, start + 100)):
                            body = devices.body(names[n % len(names)], n)
                            body.update(timeout_seconds=10, ttl_seconds=120)
                            items.append(body)
                        response = await post_with_failover(
                            client, stack, "/api/v1/commands/batch", {"commands": items}
                        )
                        assert response.status_code == 202, response.text
                        for body, result in zip(items, response.json()["results"], strict=True):
                            devices.accepted(body, result["request_id"])
                            accepted.append(result["request_id"])
                        await asyncio.sleep(0.3)

                submitting = asyncio.create_task(submit())
                async with asyncio.timeout(120):
                    while (killed_at := sum(devices.runs().values())) < TOTAL // 5:
                        await asyncio.sleep(0.02)
                stack.kill(f"{protocol}-1")
                stack.start_connector(f"{protocol}-1")
                await submitting
                faulted = time.monotonic()
                deadline = time.monotonic() + 150
                found: dict[str, dict[str, Any]] = {}
                while time.monotonic() < deadline:
                    found = await statuses(stack, client)
                    if all(found.get(rid, {}).get("status") in TERMINAL for rid in accepted):
                        break
                    await asyncio.sleep(1)
                drained = time.monotonic() - faulted
        finally:
            stack.stop_all()
        runs = devices.runs()
        sends = await connector_sends(settings, protocol)
    status = {rid: found.get(rid, {}).get("status") for rid in accepted}
    duplicates = sum(count - 1 for count in runs.values() if count > 1)
    resent = sum(count - 1 for count in sends.values() if count > 1)
    lost = sum(1 for value in status.values() if value not in TERMINAL)
    answer_lost = sum(1 for rid, value in status.items() if runs[rid] and value == "timed_out")
    false_terminals = sum(
        1
        for rid, value in status.items()
        if value in TERMINAL
        and (runs[rid] > 0) != (value == "succeeded")
        and not (runs[rid] and value == "timed_out")
    )
    figures = {
        "scenario": f"{protocol.upper()}: SIGKILL one of two connector replicas, restarted",
        "accepted": len(accepted),
        "terminal": dict(sorted(Counter(v or "missing" for v in status.values()).items())),
        "duplicate_executions": duplicates,
        "lost": lost,
        "false_terminals": false_terminals,
        "fault_at_executed": killed_at,
        "seconds_to_drain_after_fault": round(drained, 1),
        "notes": {
            "ran, answer lost with the killed replica (timed_out)": answer_lost,
            "connector sends beyond the first (journal)": resent,
        },
    }
    print(f"\n{json.dumps(figures)}")
    if report := os.environ.get("CHAOS_REPORT"):
        with Path(report).open("a", encoding="utf-8") as out:  # noqa: ASYNC230 (one line)
            out.write(json.dumps(figures) + "\n")
    assert killed_at < len(accepted), "the stream ended before the kill"
    assert set(runs) <= set(accepted)
    assert resent == 0, figures
    assert duplicates == 0, figures
    assert lost == 0, figures
    assert false_terminals == 0, figures
    # on_result: at most one request in flight per device can lose its answer
    assert answer_lost <= DEVICE_COUNT, figures
