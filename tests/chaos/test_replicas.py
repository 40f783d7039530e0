"""Chaos: replicas that crash, restart and rebalance keep every promise.

Two API instances (each with its tracker, one consumer group) share a PostgreSQL status
store; three MQTT connector processes share the commands topic; simulated Pico W boards
that remember **no** request id (every message they get, they run, and the test counts
each run). Commands are submitted through both APIs while a fault is injected. Each
scenario then asserts: every accepted command terminal, zero lost, zero duplicate
executions, and zero false terminals (a command a device ran ends ``succeeded``; one that
ended ``succeeded`` was run).

CI runs the bounded version; ``make chaos`` runs the full one (``CHAOS_FULL=1``: more
commands and scenarios) and writes ``docs/reliability.md`` from the figures each scenario
appends to ``CHAOS_REPORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from pusher_dev.mosquitto import PrivateMosquitto
from pusher_dev.pico_simulator import SimulatedPico

from connectors.settings import MqttSettings
from tests.conftest import LiveApi, SettingsFactory, command, serve
from tests.mqtt_helpers import ConnectorProcess, mqtt_settings, simulators

FULL = os.environ.get("CHAOS_FULL") == "1"
TOTAL = 3000 if FULL else 1500
DEVICES = [f"pico-chaos-{n:02d}" for n in range(30)]
TERMINAL = {"succeeded", "failed", "timed_out", "expired", "cancelled"}

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600 if FULL else 300)]


@dataclass
class Figures:
    """One scenario's counts, as docs/reliability.md shows them."""

    scenario: str
    accepted: int
    terminal: dict[str, int]
    duplicate_executions: int
    lost: int
    false_terminals: int
    fault_at_executed: int
    seconds_to_drain_after_fault: float


class Replicas:
    """The MQTT connector processes of one scenario, by CONNECTOR_ID."""

    def __init__(self, settings: MqttSettings, logs: Path) -> None:
        self._settings = settings
        self._logs = logs
        self.running: dict[str, ConnectorProcess] = {}
        self._starts = 0

    def start(self, connector_id: str) -> None:
        self._starts += 1
        settings = self._settings.model_copy(
            update={"connector_id": connector_id, "mqtt_client_id": None}
        )
        log = self._logs / f"{connector_id}-{self._starts}.log"
        self.running[connector_id] = ConnectorProcess(settings, log)

    def kill(self, connector_id: str) -> None:
        self.running.pop(connector_id).kill()

    def terminate(self, connector_id: str) -> None:
        process = self.running.pop(connector_id)
        code = process.terminate(timeout=60)
        assert code == 0, process.logs()[-3000:]

    def stop_all(self) -> None:
        for connector_id in list(self.running):
            process = self.running.pop(connector_id)
            if process.process.poll() is None:
                process.terminate(timeout=60)


@contextlib.asynccontextmanager
async def stack(
    make_settings: SettingsFactory, postgres_url: str, broker: PrivateMosquitto, logs: Path
) -> AsyncIterator[tuple[list[LiveApi], Replicas, list[SimulatedPico]]]:
    base = make_settings(
        tracker_enabled=True,
        status_store_url=postgres_url,
        kafka_topic_partitions=6,
        sweep_grace_seconds=5,
        kafka_consumer_session_timeout_ms=4000,
    )
    connector = mqtt_settings(
        base,
        broker,
        connector_metrics_port=0,
        connector_shutdown_grace_seconds=10,
        kafka_consumer_session_timeout_ms=4000,
    )
    async with (
        serve(base) as first,
        serve(base) as second,
        simulators(broker, connector.mqtt_topic_prefix, *DEVICES, recent_requests=0) as sims,
    ):
        replicas = Replicas(connector, logs)
        try:
            for n in (1, 2, 3):
                replicas.start(f"mqtt-{n}")
            yield [first, second], replicas, sims
        finally:
            replicas.stop_all()


async def submit(apis: list[LiveApi]) -> list[str]:
    """TOTAL commands in batches of 250, alternating between the API instances."""
    accepted: list[str] = []
    for batch, start in enumerate(range(0, TOTAL, 250)):
        items = [
            command(
                device_id=DEVICES[n % len(DEVICES)],
                payload={"pin": n % 28, "state": n % 2 == 0},
                ttl_seconds=120,
                timeout_seconds=30,
            )
            for n in range(start, min(TOTAL, start + 250))
        ]
        api = apis[batch % len(apis)]
        response = await api.client.post("/api/v1/commands/batch", json={"commands": items})
        assert response.status_code == 202, response.text
        accepted += [item["request_id"] for item in response.json()["results"]]
        await asyncio.sleep(0.2)  # a stream, not one burst: the fault lands mid-stream
    return accepted


async def statuses(api: LiveApi) -> dict[str, str]:
    """Every command's status, read page by page from the list API."""
    found: dict[str, str] = {}
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        body = (await api.client.get("/api/v1/commands", params=params)).json()
        found.update({item["request_id"]: item["status"] for item in body["items"]})
        cursor = body.get("next_cursor")
        if not cursor:
            return found


def executions(sims: list[SimulatedPico]) -> Counter[str]:
    runs: Counter[str] = Counter()
    for sim in sims:
        runs.update(sim.executed)
    return runs


async def wait_executed(sims: list[SimulatedPico], at_least: int) -> int:
    async with asyncio.timeout(120):
        while (done := sum(executions(sims).values())) < at_least:
            await asyncio.sleep(0.05)
    return done


async def wait_terminal(api: LiveApi, accepted: list[str], within: float) -> dict[str, str]:
    deadline = time.monotonic() + within
    found: dict[str, str] = {}
    while time.monotonic() < deadline:
        found = await statuses(api)
        if all(found.get(request_id) in TERMINAL for request_id in accepted):
            return found
        await asyncio.sleep(1)
    return found


Fault = Callable[[Replicas], Awaitable[None]]


async def kill_same_id(replicas: Replicas) -> None:
    """SIGKILL one replica; a new container with the same CONNECTOR_ID takes its place."""
    replicas.kill("mqtt-1")
    replicas.start("mqtt-1")


async def kill_fresh_id(replicas: Replicas) -> None:
    """SIGKILL one replica; a new one with a fresh CONNECTOR_ID takes its place."""
    replicas.kill("mqtt-1")
    replicas.start("mqtt-4")


async def rolling_restart(replicas: Replicas) -> None:
    """SIGTERM each replica in turn and start it again (a rolling update)."""
    for connector_id in sorted(replicas.running):
        await asyncio.to_thread(replicas.terminate, connector_id)
        replicas.start(connector_id)
        await asyncio.sleep(2)


SCENARIOS: dict[str, Fault] = {
    "SIGKILL one connector replica, restarted with the same CONNECTOR_ID": kill_same_id,
    "rolling SIGTERM restart of every connector replica": rolling_restart,
}
if FULL:
    SCENARIOS["SIGKILL one connector replica, replaced with a fresh CONNECTOR_ID"] = kill_fresh_id


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_replicas_keep_the_promises(
    scenario: str,
    make_settings: SettingsFactory,
    postgres_url: str,
    mosquitto: PrivateMosquitto,
    tmp_path: Path,
) -> None:
    async with stack(make_settings, postgres_url, mosquitto, tmp_path) as (apis, replicas, sims):
        submitting = asyncio.create_task(submit(apis))
        fault_at = await wait_executed(sims, TOTAL // 5)
        faulted = time.monotonic()
        await SCENARIOS[scenario](replicas)
        accepted = await submitting
        found = await wait_terminal(apis[1], accepted, within=240 if FULL else 150)
        drained = time.monotonic() - faulted
        runs = executions(sims)
    terminal = Counter(found.get(request_id, "missing") for request_id in accepted)
    lost = sum(1 for request_id in accepted if found.get(request_id) not in TERMINAL)
    duplicates = sum(count - 1 for count in runs.values() if count > 1)
    false_terminals = sum(
        1
        for request_id in accepted
        if (runs[request_id] > 0) != (found.get(request_id) == "succeeded")
        and found.get(request_id) in TERMINAL
    )
    figures = Figures(
        scenario,
        len(accepted),
        dict(sorted(terminal.items())),
        duplicates,
        lost,
        false_terminals,
        fault_at,
        round(drained, 1),
    )
    print(f"\n{json.dumps(asdict(figures))}")
    if report := os.environ.get("CHAOS_REPORT"):
        with Path(report).open("a", encoding="utf-8") as out:  # noqa: ASYNC230 (one line)
            out.write(json.dumps(asdict(figures)) + "\n")
    assert set(runs) <= set(accepted), "a device ran a command nobody sent"
    assert duplicates == 0, f"{duplicates} duplicate executions: {figures}"
    assert lost == 0, f"{lost} commands never reached a terminal status: {figures}"
    assert false_terminals == 0, f"{false_terminals} false terminal statuses: {figures}"
