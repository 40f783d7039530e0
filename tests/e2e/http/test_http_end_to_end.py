"""POST → Kafka → HTTP connector → OT-2 agent on opentrons.simulate → result → status."""

from __future__ import annotations

import asyncio
import http.server
import itertools
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from pusher_dev.embedded_kafka import free_port
from pusher_dev.ot2_agent import SimulatedOt2Agent

from connectors.http.transport import HttpTransport
from connectors.runtime import ConnectorRuntime
from connectors.settings import HttpSettings
from preservarium_pusher_api.config import Settings
from tests.api_helpers import poll_device, wait_healthy, wait_status
from tests.conftest import LiveApi, SettingsFactory, command, serve
from tests.mqtt_helpers import registry_settings, running_connector, settings_env

pytestmark = pytest.mark.integration

TOKEN_ENV = "PUSHER_TEST_OT2_TOKEN"
TOKEN = "lab-token-" + uuid.uuid4().hex
LAB_TASKS = str(Path(__file__).parents[2] / "ot2" / "lab_tasks.py")


@pytest.fixture(scope="module")
def agent() -> Iterator[SimulatedOt2Agent]:
    """One simulated OT-2 agent (built-in tasks and the test lab's), token required."""
    with SimulatedOt2Agent(tasks=["color_mixing", LAB_TASKS], token=TOKEN) as running:
        yield running


@dataclass
class Stack:
    api: LiveApi
    connector: ConnectorRuntime
    transport: HttpTransport
    agent: SimulatedOt2Agent
    agent_client: httpx.AsyncClient


def registry(agent: SimulatedOt2Agent) -> dict[str, Any]:
    closed_port = free_port()
    return {
        "devices": {
            "ot2-1": {
                "protocol": "http",
                "address": {"base_url": agent.base_url},
                "credentials": TOKEN_ENV,
                "timeout_seconds": 30,
            },
            "ot2-down": {
                "protocol": "http",
                "address": {"base_url": f"http://127.0.0.1:{closed_port}"},
                "credentials": TOKEN_ENV,
            },
            "ot2-wrong-token": {
                "protocol": "http",
                "address": {"base_url": agent.base_url},
                "credentials": "PUSHER_TEST_WRONG_TOKEN",
            },
        }
    }


def http_settings(
    make_settings: SettingsFactory, tmp_path: Path, devices: dict[str, Any], **overrides: Any
) -> tuple[Settings, HttpSettings]:
    """API settings (tracker on) and HTTP connector settings with ``devices`` registered."""
    base = make_settings(tracker_enabled=True)
    return base, registry_settings(HttpSettings, base, tmp_path, devices, **overrides)


@pytest.fixture
async def stack(
    make_settings: SettingsFactory,
    agent: SimulatedOt2Agent,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Stack]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv("PUSHER_TEST_WRONG_TOKEN", "not-the-token")
    base, settings = http_settings(
        make_settings,
        tmp_path,
        registry(agent)["devices"],
        connector_retry_max_attempts=3,
        connector_retry_max_backoff_seconds=0.3,
    )
    transport = HttpTransport(settings)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        serve(base) as api,
        running_connector(settings, transport) as connector,
        httpx.AsyncClient(base_url=agent.base_url, headers=headers, timeout=30) as agent_client,
    ):
        yield Stack(api, connector, transport, agent, agent_client)


async def post(stack: Stack, **overrides: Any) -> str:
    body = command(**{"protocol": "http", "device_id": "ot2-1", **overrides})
    response = await stack.api.client.post("/api/v1/commands", json=body)
    assert response.status_code == 202, response.text
    request_id: str = response.json()["request_id"]
    return request_id


async def run_log(stack: Stack, since: int = 0) -> tuple[list[str], int]:
    body = (await stack.agent_client.get("/run-log", params={"since": since})).json()
    return body["entries"], body["next"]


async def agent_health(stack: Stack) -> dict[str, Any]:
    body: dict[str, Any] = (await stack.agent_client.get("/health")).json()
    return body


async def test_mix_color_succeeds_with_the_agents_result_and_the_robot_moved(stack: Stack) -> None:
    """mix_color runs on the simulated robot: result in the status, pipetting in the run log."""
    _, start = await run_log(stack)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    response = await stack.api.client.post(
        "/api/v1/commands",
        json=command(
            protocol="http",
            device_id="ot2-1",
            command_type="mix_color",
            payload={"R": 120, "Y": 80, "B": 40, "mix_well": "B3"},
        ),
        headers={"traceparent": traceparent},
    )
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    body = await wait_status(stack.api, request_id, "succeeded")
    assert body["result"] == {
        "mix_well": "B3",
        "volumes_ul": {"R": 120.0, "Y": 80.0, "B": 40.0},
        "total_ul": 240.0,
    }
    statuses = [entry["status"] for entry in body["history"]]
    assert statuses == ["queued", "sent", "delivered", "succeeded"], statuses
    entries, _ = await run_log(stack, start)
    moves = [e for e in entries if e.startswith(("Aspirating", "Dispensing"))]
    assert moves[:6] == [
        "Aspirating 120.0 uL from A1 of reservoir on slot 2 at 92.86 uL/sec",
        "Dispensing 120.0 uL into B3 of plate on slot 3 at 92.86 uL/sec",
        "Aspirating 80.0 uL from A2 of reservoir on slot 2 at 92.86 uL/sec",
        "Dispensing 80.0 uL into B3 of plate on slot 3 at 92.86 uL/sec",
        "Aspirating 40.0 uL from A3 of reservoir on slot 2 at 92.86 uL/sec",
        "Dispensing 40.0 uL into B3 of plate on slot 3 at 92.86 uL/sec",
    ]
    assert sum(e.startswith("Picking up tip") for e in entries) == 4  # three colours + mix
    assert (await poll_device(stack.api, "ot2-1", online=True))["last_seen"] is not None
    # The agent got the request_id: asking again with it replays instead of moving.
    replay = await stack.agent_client.post(
        "/execute/mix_color", headers={"X-Request-ID": request_id}, json={}
    )
    assert replay.headers.get("x-replayed") == "1"
    assert replay.json()["result"]["mix_well"] == "B3"
    assert (await run_log(stack, start))[1] == start + len(entries)


async def test_volumes_over_300_fail_with_the_agents_message_and_nothing_moves(
    stack: Stack,
) -> None:
    _, start = await run_log(stack)
    request_id = await post(
        stack, command_type="mix_color", payload={"R": 200, "Y": 80, "B": 40, "mix_well": "A1"}
    )
    body = await wait_status(stack.api, request_id, "failed")
    assert body["detail"] == "HTTP 422: R + Y + B = 320 µL exceeds the 300 µL a well takes"
    invalid_well = await post(
        stack, command_type="mix_color", payload={"R": 20, "Y": 20, "B": 20, "mix_well": "J1"}
    )
    body = await wait_status(stack.api, invalid_well, "failed")
    assert body["detail"] == "HTTP 422: plate has no well 'J1'"
    unknown_task = await post(stack, command_type="dance", payload={})
    body = await wait_status(stack.api, unknown_task, "failed")
    assert body["detail"].startswith("HTTP 404: unknown task 'dance'")
    assert (await run_log(stack, start))[0] == []


async def test_robot_fault_fails_with_500_and_is_not_repeated(stack: Stack) -> None:
    _, start = await run_log(stack)
    request_id = await post(stack, command_type="jam", payload={})
    body = await wait_status(stack.api, request_id, "failed")
    assert body["detail"] == "HTTP 500: robot fault: RuntimeError: gantry stalled"
    entries, _ = await run_log(stack, start)
    assert entries == ["jam started"]


async def test_unknown_device_fails_without_any_http_request(stack: Stack) -> None:
    before = stack.transport.requests
    executed = (await agent_health(stack))["executed"]
    request_id = await post(stack, device_id="ot2-not-registered", command_type="home")
    body = await wait_status(stack.api, request_id, "failed")
    assert body["detail"] == "unknown device 'ot2-not-registered': not in the registry"
    assert stack.transport.requests == before
    assert (await agent_health(stack))["executed"] == executed


async def test_agent_down_is_retried_then_failed(stack: Stack) -> None:
    request_id = await post(stack, device_id="ot2-down", command_type="home")
    body = await wait_status(stack.api, request_id, "failed")
    assert body["detail"].startswith("not delivered after 3 attempts: device not reachable")
    down = await poll_device(stack.api, "ot2-down", online=False)
    assert down["protocol"] == "http" and down["detail"] == "not reachable"
    assert sample(stack, "pusher_connector_retries_total") == 2


def sample(stack: Stack, name: str) -> float:
    value = stack.connector.metrics.registry.get_sample_value(name, {"protocol": "http"})
    return value or 0.0


async def test_wrong_token_fails_with_401(stack: Stack) -> None:
    request_id = await post(stack, device_id="ot2-wrong-token", command_type="home")
    body = await wait_status(stack.api, request_id, "failed")
    assert body["detail"] == "HTTP 401: unauthorized: a valid bearer token is required"


async def test_agent_slower_than_the_timeout_times_out_and_runs_once(stack: Stack) -> None:
    """No answer within the timeout → timed_out, never sent again; the robot ran it once."""
    label = uuid.uuid4().hex[:8]
    _, start = await run_log(stack)
    request_id = await post(
        stack,
        command_type="slow_step",
        payload={"seconds": 2.5, "label": label},
        timeout_seconds=1,
    )
    body = await wait_status(stack.api, request_id, "timed_out")
    assert "succeeded" not in [entry["status"] for entry in body["history"]]
    for _ in range(100):  # the robot finishes its action on its own
        if not (await agent_health(stack))["busy"]:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.5)  # time for a retry, if there were one
    entries, _ = await run_log(stack, start)
    assert entries.count(f"slow step {label}") == 1
    stored = await stack.agent_client.post(
        "/execute/slow_step", headers={"X-Request-ID": request_id}, json={}
    )
    assert stored.headers.get("x-replayed") == "1"
    final = (await stack.api.client.get(f"/api/v1/commands/{request_id}/status")).json()
    assert final["status"] == "timed_out"


async def test_three_commands_to_one_ot2_run_in_order_one_at_a_time(stack: Stack) -> None:
    _, start = await run_log(stack)
    refusals = (await agent_health(stack))["busy_refusals"]
    wells = ["C1", "C2", "C3"]
    request_ids = [
        await post(
            stack,
            command_type="mix_color",
            payload={"R": 30, "Y": 30, "B": 30, "mix_well": well},
        )
        for well in wells
    ]
    bodies = [await wait_status(stack.api, rid, "succeeded") for rid in request_ids]
    entries, _ = await run_log(stack, start)
    dispensed = [e.split(" into ")[1].split(" of ")[0] for e in entries if e.startswith("Dispens")]
    # three colours and three mixing strokes per well, one well after the other
    assert dispensed == ["C1"] * 6 + ["C2"] * 6 + ["C3"] * 6
    # each command was sent only after the one before it had its answer
    for earlier, later in itertools.pairwise(bodies):
        answered = at(earlier, "succeeded")
        assert at(later, "sent") >= answered, (earlier["history"], later["history"])
    assert (await agent_health(stack))["busy_refusals"] == refusals


def at(body: dict[str, Any], status: str) -> datetime:
    stamp = next(e["at"] for e in body["history"] if e["status"] == status)
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


async def test_busy_agent_is_retried_without_running_twice(stack: Stack) -> None:
    """While someone else's action runs, 409 busy: offered again later, run once."""
    label = uuid.uuid4().hex[:8]
    _, start = await run_log(stack)
    other = asyncio.create_task(
        stack.agent_client.post(
            "/execute/slow_step",
            headers={"X-Request-ID": f"bench-script-{label}"},
            # long enough that the command meets the busy agent on a loaded machine
            json={"seconds": 5, "label": f"other-{label}"},
        )
    )
    for _ in range(100):
        if (await agent_health(stack))["busy"]:
            break
        await asyncio.sleep(0.05)
    refusals = (await agent_health(stack))["busy_refusals"]
    request_id = await post(stack, command_type="slow_step", payload={"seconds": 0, "label": label})
    # the command is refused while the other action still runs ...
    while (await agent_health(stack))["busy_refusals"] == refusals:
        assert not other.done(), "the command never met the busy agent"
        await asyncio.sleep(0.05)
    # ... and runs once the agent is free
    body = await wait_status(stack.api, request_id, "succeeded")
    assert body["result"] == {"slept": 0.0, "label": label}
    assert (await other).status_code == 200
    entries, _ = await run_log(stack, start)
    assert entries == [f"slow step other-{label}", f"slow step {label}"]
    assert sample(stack, "pusher_connector_busy_retries_total") >= 1
    assert sample(stack, "pusher_connector_retries_total") == 0


@pytest.mark.timeout(120)
async def test_pusher_connector_http_process(
    make_settings: SettingsFactory,
    agent: SimulatedOt2Agent,
    tmp_path: Path,
) -> None:
    """`python -m connectors.http` as its own process: health, a command, exit 0 on SIGTERM."""
    base, settings = http_settings(make_settings, tmp_path, registry(agent)["devices"])
    port = free_port()
    env = {**os.environ, **settings_env(settings), TOKEN_ENV: TOKEN, "LOG_FORMAT": "json"}
    argv = [sys.executable, "-m", "connectors.http", "--metrics-port", str(port)]
    with (tmp_path / "connector.log").open("wb") as log_file:
        process = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        async with serve(base) as api:
            health = await wait_healthy(port, process)
            assert health["devices_registered"] == 3 and health["transport"]["connected"]
            response = await api.client.post(
                "/api/v1/commands",
                json=command(protocol="http", device_id="ot2-1", command_type="home", payload={}),
            )
            body = await wait_status(api, response.json()["request_id"], "succeeded", within=30)
            assert body["result"] == {"homed": True}
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            assert 'pusher_connector_deliveries_total{outcome="succeeded",protocol="http"} 1.0' in (
                metrics
            )
    finally:
        process.terminate()
        code = process.wait(timeout=30)
    output = (tmp_path / "connector.log").read_text()
    assert code == 0, output
    assert TOKEN not in output  # the credential never reaches the logs


class _Capture(http.server.BaseHTTPRequestHandler):
    """An HTTP device that records what reached it and answers success."""

    seen: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append((self.path, dict(self.headers), body))
        answer = json.dumps({"status": "success", "result": {"ok": True}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


async def test_request_id_traceparent_and_token_cross_the_wire(
    make_settings: SettingsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the device receives: the path from the registry, the payload as the body,
    X-Request-ID, the caller's traceparent and the registry's bearer token."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    device = {
        "protocol": "http",
        "address": {"base_url": f"http://127.0.0.1:{server.server_port}/lab/"},
        "credentials": TOKEN_ENV,
    }
    base, settings = http_settings(make_settings, tmp_path, {"capture-1": device})
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    try:
        async with serve(base) as api, running_connector(settings, HttpTransport(settings)):
            response = await api.client.post(
                "/api/v1/commands",
                json=command(
                    protocol="http", device_id="capture-1", command_type="calibrate",
                    payload={"offset": 1.5},
                ),
                headers={"traceparent": traceparent},
            )  # fmt: skip
            request_id = response.json()["request_id"]
            body = await wait_status(api, request_id, "succeeded")
    finally:
        server.shutdown()
        server.server_close()
    assert body["result"] == {"ok": True}
    ((path, headers, sent),) = [s for s in _Capture.seen if s[1].get("X-Request-ID") == request_id]
    assert path == "/lab/execute/calibrate"
    assert json.loads(sent) == {"offset": 1.5}
    assert headers["traceparent"] == traceparent
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Content-Type"] == "application/json"
