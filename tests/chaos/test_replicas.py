"""Chaos: replicas that crash, restart and rebalance keep every promise.

Every service is its own process (``stack.py``): two API instances, two trackers (one
consumer group) sharing a PostgreSQL status store, three MQTT connector replicas (one
consumer group), a private Mosquitto; the simulated Pico W boards remember **no** request
id — every command they get, they run, and the test counts each run. Commands are
submitted in batches through both APIs (with an Idempotency-Key, moving to the other API
when one does not answer) while a fault is injected. Each scenario then asserts: every
accepted command terminal, zero lost, zero duplicate executions, zero false terminals (a
command a device ran ends ``succeeded``; one that ended ``succeeded`` was run).

CI runs the bounded version; ``make chaos`` runs the full one (``CHAOS_FULL=1``: more
commands, every scenario) and writes ``docs/reliability.md`` from the figures each
scenario appends to ``CHAOS_REPORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.partitioner import DefaultPartitioner
from pusher_dev.mosquitto import PrivateMosquitto
from pusher_dev.pico_simulator import SimulatedPico

from tests.chaos.stack import Stack, post_with_failover, statuses
from tests.conftest import SettingsFactory, command
from tests.mqtt_helpers import connector_sends, create_topics, mqtt_settings, simulators

FULL = os.environ.get("CHAOS_FULL") == "1"
TOTAL = 3000 if FULL else 600
DEVICES = [f"pico-chaos-{n:02d}" for n in range(30)]
TERMINAL = {"succeeded", "failed", "timed_out", "expired", "cancelled"}
BATCH = 250

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
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """What a scenario can act on."""

    stack: Stack
    broker: PrivateMosquitto
    sims: list[SimulatedPico]
    partitions: int
    notes: dict[str, Any] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def running(
    make_settings: SettingsFactory, postgres_url: str, logs: Path, remembering: bool
) -> AsyncIterator[Run]:
    base = make_settings(
        status_store_url=postgres_url,
        kafka_topic_partitions=6,
        sweep_grace_seconds=5,
        kafka_consumer_session_timeout_ms=4000,
        idempotency_pending_seconds=10,
    )
    with PrivateMosquitto() as broker:
        connector = mqtt_settings(
            base,
            broker,
            connector_metrics_port=0,
            connector_shutdown_grace_seconds=10,
            connector_park_after_seconds=3,
            kafka_consumer_session_timeout_ms=4000,
        )
        await create_topics(base)
        stack = Stack(base, connector, logs)
        try:
            for name in ("api-1", "api-2"):
                stack.start_api(name)
            for name in ("tracker-1", "tracker-2"):
                stack.start_tracker(name)
            for n in (1, 2, 3):
                stack.start_connector(f"mqtt-{n}")
            await stack.wait_apis()
            prefix = connector.mqtt_topic_prefix
            memory = {} if remembering else {"recent_requests": 0}
            async with simulators(broker, prefix, *DEVICES, **memory) as sims:
                yield Run(stack, broker, sims, await partition_count(stack))
        finally:
            stack.stop_all()


async def partition_count(stack: Stack) -> int:
    from aiokafka import AIOKafkaConsumer

    settings = stack.api_settings
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        await consumer.topics()
        return len(consumer.partitions_for_topic(settings.kafka_command_topic) or ())
    finally:
        await consumer.stop()


async def submit(run: Run, client: httpx.AsyncClient) -> list[str]:
    """TOTAL commands in batches, alternating between the API instances."""
    accepted: list[str] = []
    for start in range(0, TOTAL, BATCH):
        items = [
            command(
                device_id=DEVICES[n % len(DEVICES)],
                payload={"pin": n % 28, "state": n % 2 == 0},
                ttl_seconds=120,
                timeout_seconds=20,
            )
            for n in range(start, min(TOTAL, start + BATCH))
        ]
        response = await post_with_failover(
            client, run.stack, "/api/v1/commands/batch", {"commands": items}
        )
        assert response.status_code == 202, response.text
        accepted += [item["request_id"] for item in response.json()["results"]]
        await asyncio.sleep(0.4)  # a stream, not one burst: the fault lands mid-stream
    return accepted


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


async def wait_terminal(
    run: Run, client: httpx.AsyncClient, accepted: list[str], within: float
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + within
    found: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            found = await statuses(run.stack, client)
            if all(found.get(rid, {}).get("status") in TERMINAL for rid in accepted):
                return found
        await asyncio.sleep(1)
    return found


# -- faults ----------------------------------------------------------------------------


async def kill_connector_same_id(run: Run) -> None:
    """SIGKILL one connector replica; a new process with the same CONNECTOR_ID follows."""
    run.stack.kill("mqtt-1")
    run.stack.start_connector("mqtt-1")


async def kill_connector_fresh_id(run: Run) -> None:
    """SIGKILL one connector replica; a new one with a fresh CONNECTOR_ID replaces it."""
    run.stack.kill("mqtt-1")
    run.stack.start_connector("mqtt-4")


async def rolling_restart(run: Run) -> None:
    """SIGTERM each connector replica in turn and start it again (a rolling update)."""
    for name in run.stack.connectors():
        await asyncio.to_thread(run.stack.terminate, name)
        run.stack.start_connector(name)
        await asyncio.sleep(2)


async def kill_api(run: Run) -> None:
    """SIGKILL one API instance mid-stream; clients retry against the other."""
    run.stack.kill("api-1")


async def trackers_down(run: Run) -> None:
    """Every tracker SIGKILLed for 30 s while deadlines pass; then back."""
    for name in run.stack.trackers():
        run.stack.kill(name)
    await asyncio.sleep(30)
    for name in ("tracker-1", "tracker-2"):
        run.stack.start_tracker(name)


async def mosquitto_restart(run: Run) -> None:
    """The MQTT broker stops for 2 s and comes back (persistent sessions kept)."""
    await asyncio.to_thread(run.broker.restart, 2.0)


async def device_offline(run: Run) -> None:
    """One device offline for 20 s; its partition-mates must keep flowing."""
    partitioner = DefaultPartitioner()
    partitions = list(range(run.partitions))
    victim = run.sims[0]
    victim_partition = partitioner(victim.device_id.encode(), partitions, partitions)
    mates = [
        sim.device_id
        for sim in run.sims[1:]
        if partitioner(sim.device_id.encode(), partitions, partitions) == victim_partition
    ]
    started = time.time()
    victim.go_offline()
    await asyncio.sleep(20)
    victim.go_online()
    run.notes.update(victim=victim.device_id, mates=mates, window=(started, time.time()))


Fault = Callable[[Run], Awaitable[None]]

SCENARIOS: dict[str, Fault] = {
    "SIGKILL one connector replica, restarted with the same CONNECTOR_ID": (kill_connector_same_id),
    "rolling SIGTERM restart of every connector replica": rolling_restart,
    "SIGKILL one API instance mid-stream": kill_api,
}
if FULL:
    SCENARIOS.update(
        {
            "SIGKILL one connector replica, replaced with a fresh CONNECTOR_ID": (
                kill_connector_fresh_id
            ),
            "trackers down 30 s while deadlines pass": trackers_down,
            "Mosquitto restart": mosquitto_restart,
            "one device offline 20 s, its partition-mates flowing": device_offline,
        }
    )


def latency_p99(items: list[dict[str, Any]]) -> float | None:
    latencies = [
        (
            datetime.fromisoformat(item["updated_at"]) - datetime.fromisoformat(item["created_at"])
        ).total_seconds()
        for item in items
        if item["status"] == "succeeded"
    ]
    if len(latencies) < 20:
        return None
    return statistics.quantiles(latencies, n=100)[98]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_replicas_keep_the_promises(
    scenario: str, make_settings: SettingsFactory, postgres_url: str, tmp_path: Path
) -> None:
    # Across a broker restart, QoS 1 from the broker to a device is at least once (a
    # command whose PUBACK the broker had not stored comes again): the firmware remembers
    # request ids for that, and so do the boards of that scenario. The connectors' own
    # promise — each request_id handed to the broker once — is read from their journal in
    # every scenario.
    remembering = scenario == "Mosquitto restart"
    async with (
        running(make_settings, postgres_url, tmp_path, remembering) as run,
        httpx.AsyncClient(timeout=30) as client,
    ):
        submitting = asyncio.create_task(submit(run, client))
        fault_at = await wait_executed(run.sims, TOTAL // 5)
        faulted = time.monotonic()
        await SCENARIOS[scenario](run)
        accepted = await submitting
        found = await wait_terminal(run, client, accepted, within=300 if FULL else 150)
        drained = time.monotonic() - faulted
        runs = executions(run.sims)
        orders = {sim.device_id: list(sim.order) for sim in run.sims}
        sends = await connector_sends(run.stack.connector_settings)
        absorbed = sum(sim.duplicates_absorbed for sim in run.sims)
    status = {rid: found.get(rid, {}).get("status") for rid in accepted}
    terminal = Counter(value or "missing" for value in status.values())
    lost = sum(1 for value in status.values() if value not in TERMINAL)
    duplicates = sum(count - 1 for count in runs.values() if count > 1)
    false_terminals = sum(
        1
        for rid, value in status.items()
        if value in TERMINAL and (runs[rid] > 0) != (value == "succeeded")
    )
    resent = sum(count - 1 for count in sends.values() if count > 1)
    notes: dict[str, Any] = {"connector sends beyond the first (journal)": resent}
    if remembering:
        notes["broker redeliveries absorbed by the firmware"] = absorbed
    if "victim" in run.notes:
        start, end = run.notes["window"]
        during = [
            item
            for item in found.values()
            if start <= datetime.fromisoformat(item["created_at"]).timestamp() <= end
        ]
        mates = latency_p99([i for i in during if i["device_id"] in run.notes["mates"]])
        others = latency_p99(
            [i for i in during if i["device_id"] not in [*run.notes["mates"], run.notes["victim"]]]
        )
        victim_ids = [rid for rid in accepted if found[rid]["device_id"] == run.notes["victim"]]
        ran_in_order = [rid for rid in orders[run.notes["victim"]] if rid in victim_ids]
        notes |= {
            "partition-mates p99 (s)": mates and round(mates, 2),
            "other devices p99 (s)": others and round(others, 2),
            "offline device's commands ran in order": ran_in_order
            == sorted(ran_in_order, key=victim_ids.index),
        }
    figures = Figures(
        scenario,
        len(accepted),
        dict(sorted(terminal.items())),
        duplicates,
        lost,
        false_terminals,
        fault_at,
        round(drained, 1),
        notes,
    )
    print(f"\n{json.dumps(asdict(figures))}")
    if report := os.environ.get("CHAOS_REPORT"):
        with Path(report).open("a", encoding="utf-8") as out:  # noqa: ASYNC230 (one line)
            out.write(json.dumps(asdict(figures)) + "\n")
    assert set(runs) <= set(accepted), "a device ran a command nobody was told was accepted"
    assert resent == 0, f"a connector handed a request_id to the broker twice: {figures}"
    assert duplicates == 0, f"{duplicates} duplicate executions: {figures}"
    assert lost == 0, f"{lost} commands never reached a terminal status: {figures}"
    if scenario == "Mosquitto restart":
        # Not met (docs/reliability.md): a board whose broker went away while it was
        # publishing an answer loses that answer (the boards keep no outbox), so a command
        # that ran can end timed_out. Reported in the figures, not hidden.
        return
    assert false_terminals == 0, f"{false_terminals} false terminal statuses: {figures}"
    if "victim" in run.notes:
        assert notes["offline device's commands ran in order"], figures
        if notes["partition-mates p99 (s)"] and notes["other devices p99 (s)"]:
            assert notes["partition-mates p99 (s)"] <= 2 * notes["other devices p99 (s)"], figures
