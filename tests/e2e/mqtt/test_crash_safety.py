"""Crash safety: a SIGKILLed connector or a restarted Mosquitto in the middle of 1,000 commands.

Every accepted command must reach a terminal status and the device must run each
request_id at most once. The numbers (duplicates absorbed by the connector's journal and
by the device) are printed for the record.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from pusher_dev.embedded_kafka import free_port
from pusher_dev.mosquitto import PrivateMosquitto
from pusher_dev.pico_simulator import SimulatedPico

from tests.conftest import LiveApi, SettingsFactory, command, serve
from tests.mqtt_helpers import (
    ConnectorProcess,
    connector_sends,
    journal_entries,
    mqtt_settings,
    running_connector,
    simulators,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

TOTAL = 1000
DEVICES = [f"pico-crash-{n}" for n in range(8)]
TERMINAL = ("succeeded", "failed", "timed_out", "expired", "cancelled")


async def submit_all(api: LiveApi) -> list[str]:
    """1,000 commands spread over the devices, in batches of 500."""
    accepted: list[str] = []
    for start in range(0, TOTAL, 500):
        items = [
            command(
                device_id=DEVICES[n % len(DEVICES)],
                payload={"pin": n % 28, "state": True},
                ttl_seconds=60,
                timeout_seconds=10,
            )
            for n in range(start, start + 500)
        ]
        response = await api.client.post("/api/v1/commands/batch", json={"commands": items})
        assert response.status_code in (200, 202, 207), response.text
        accepted += [item["request_id"] for item in response.json()["results"]]
    assert len(accepted) == TOTAL
    return accepted


async def count_by_status(api: LiveApi) -> Counter[str]:
    """Every command's status, read page by page from the list API."""
    counts: Counter[str] = Counter()
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        body = (await api.client.get("/api/v1/commands", params=params)).json()
        counts.update(item["status"] for item in body["items"])
        cursor = body.get("next_cursor")
        if not cursor:
            return counts


async def wait_all_terminal(api: LiveApi, within: float = 120) -> Counter[str]:
    deadline = time.monotonic() + within
    counts: Counter[str] = Counter()
    while time.monotonic() < deadline:
        counts = await count_by_status(api)
        if sum(counts[status] for status in TERMINAL) == TOTAL:
            return counts
        await asyncio.sleep(1)
    raise AssertionError(f"not every command is terminal: {dict(counts)}")


async def wait_executed(sims: Sequence[SimulatedPico], at_least: int, within: float = 60) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        done = sum(len(sim.executed) for sim in sims)
        if done >= at_least:
            return done
        await asyncio.sleep(0.01)
    raise AssertionError(f"devices ran fewer than {at_least} commands")


def scrape(port: int, name: str, **labels: str) -> float:
    """One sample from a connector's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(part in line for part in wanted.split(",")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_sigkill_connector_mid_stream(
    make_settings: SettingsFactory, mosquitto: PrivateMosquitto, tmp_path: Path
) -> None:
    """SIGKILL during 1,000 commands, restart: all terminal, each request_id run at most once."""
    base = make_settings(tracker_enabled=True, sweep_grace_seconds=5)
    settings = mqtt_settings(base, mosquitto, connector_metrics_port=free_port())
    prefix = settings.mqtt_topic_prefix
    async with (
        serve(base) as api,
        simulators(mosquitto, prefix, *DEVICES, recent_requests=0) as sims,
    ):
        first = ConnectorProcess(
            settings.model_copy(update={"connector_id": "first"}), tmp_path / "connector-1.log"
        )
        try:
            accepted = await submit_all(api)
            at_kill = await wait_executed(sims, 300)
            first.kill()
        finally:
            if first.process.poll() is None:
                first.kill()
        assert at_kill < TOTAL, "the connector finished before it could be killed"
        second = ConnectorProcess(
            settings.model_copy(update={"connector_id": "second"}), tmp_path / "connector-2.log"
        )
        try:
            counts = await wait_all_terminal(api)
            journal_skips = scrape(
                settings.connector_metrics_port,
                "pusher_connector_deliveries_total",
                outcome="duplicate",
            )
            assert second.terminate() == 0, second.logs()[-3000:]
        finally:
            if second.process.poll() is None:
                second.kill()
        executed: Counter[str] = Counter()
        for sim in sims:
            executed.update(sim.executed)
        twice = {request_id for request_id, runs in executed.items() if runs > 1}
        if twice:
            print("\n".join(await journal_entries(settings, twice)))
    assert not twice, f"request_ids ran twice on the devices: {sorted(twice)}"
    assert set(executed) <= set(accepted)
    device_dupes = sum(sim.duplicates_absorbed for sim in sims)
    print(
        f"\ncrash test: killed after {at_kill} run; statuses {dict(counts)}; "
        f"journal skipped {journal_skips:.0f} re-delivered commands; "
        f"device absorbed {device_dupes} duplicates; ran {len(executed)} of {TOTAL}"
    )


async def test_mosquitto_restart_mid_stream(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """Mosquitto restarted during 1,000 commands: all terminal; the connector hands each
    request_id to the broker once, and each runs once on the boards.

    Across a broker restart, MQTT QoS 1 between the broker and a device is at least once:
    a command whose PUBACK the broker had not stored is delivered again (DUP) to the
    device's persistent session. No connector can prevent that; the firmware remembers
    recent request ids for it, so these boards do (as the real ones). What the connector
    promises is read from its journal: never handed to the broker twice."""
    with PrivateMosquitto() as broker:
        base = make_settings(tracker_enabled=True, sweep_grace_seconds=5)
        settings = mqtt_settings(base, broker)
        prefix = settings.mqtt_topic_prefix
        async with (
            serve(base) as api,
            running_connector(settings) as connector,
            simulators(broker, prefix, *DEVICES) as sims,
        ):
            await submit_all(api)
            at_restart = await wait_executed(sims, 300)
            await asyncio.to_thread(broker.restart, 1.0)
            counts = await wait_all_terminal(api)
            reconnects = connector.metrics.reconnects.labels("mqtt")._value.get()
            sends = await connector_sends(settings)
        executed: Counter[str] = Counter()
        for sim in sims:
            executed.update(sim.executed)
        assert at_restart < TOTAL, "the stream finished before the restart"
        assert max(sends.values()) == 1, "the connector handed a request_id to the broker twice"
        assert max(executed.values()) == 1, "a request_id ran twice on the device"
        assert reconnects >= 1
        print(
            f"\nbroker restart: restarted after {at_restart} run; statuses {dict(counts)}; "
            f"connector reconnects {reconnects:.0f}; "
            f"device absorbed {sum(s.duplicates_absorbed for s in sims)} duplicates"
        )
