"""The OT-2 agent on its own: HTTP contract, task schemas, stored answers, no pusher imports."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pusher_dev.ot2_agent import AGENT_DIR, SimulatedOt2Agent

sys.path.insert(0, str(AGENT_DIR))
import ot2_agent

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def agent() -> Iterator[SimulatedOt2Agent]:
    """The agent as deployed, in its own process on opentrons.simulate, token "t0ken"."""
    with SimulatedOt2Agent(token="t0ken") as running:
        yield running


@pytest.fixture
async def client(agent: SimulatedOt2Agent) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": "Bearer t0ken"}
    async with httpx.AsyncClient(base_url=agent.base_url, headers=headers) as http:
        yield http


async def run_log_since(client: httpx.AsyncClient, start: int) -> list[str]:
    entries: list[str] = (await client.get("/run-log", params={"since": start})).json()["entries"]
    return entries


async def log_position(client: httpx.AsyncClient) -> int:
    position: int = (await client.get("/run-log")).json()["next"]
    return position


async def test_tasks_are_listed_with_their_parameter_schemas(client: httpx.AsyncClient) -> None:
    tasks = {t["name"]: t for t in (await client.get("/tasks")).json()["tasks"]}
    assert {"mix_color", "move_sensor_to_measurement_position", "move_sensor_back", "home"} <= set(
        tasks
    )
    schema = tasks["mix_color"]["parameters"]
    assert schema["required"] == ["R", "Y", "B", "mix_well"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["R"]["type"] == "number"
    assert tasks["home"]["parameters"]["properties"] == {}


async def test_bad_requests_get_4xx_in_one_error_shape(client: httpx.AsyncClient) -> None:
    start = await log_position(client)

    def error(response: httpx.Response, code: int) -> str:
        assert response.status_code == code, response.text
        body: dict[str, Any] = response.json()
        assert set(body) == {"status", "error"} and body["status"] == "error"
        return str(body["error"])

    not_object = await client.post("/execute/home", content=b"[1, 2]")
    assert error(not_object, 400) == "the body must be a JSON object of parameters"
    extra = await client.post("/execute/home", json={"speed": 5})
    assert error(extra, 422) == "invalid parameters: speed: Extra inputs are not permitted"
    missing = await client.post("/execute/mix_color", json={"R": 10})
    assert "Y: Field required" in error(missing, 422)
    negative = await client.post(
        "/execute/mix_color", json={"R": -1, "Y": 0, "B": 30, "mix_well": "A1"}
    )
    assert "R: Input should be greater than or equal to 0" in error(negative, 422)
    too_little = await client.post(
        "/execute/mix_color", json={"R": 5, "Y": 0, "B": 30, "mix_well": "A1"}
    )
    assert error(too_little, 422) == "R = 5 µL is below the pipette's 20 µL"
    unknown = await client.post("/execute/fly", json={})
    assert error(unknown, 404).startswith("unknown task 'fly'; available: ")
    no_token = await client.post("/execute/home", json={}, headers={"Authorization": ""})
    assert error(no_token, 401) == "unauthorized: a valid bearer token is required"
    wrong = await client.get("/tasks", headers={"Authorization": "Bearer nope"})
    assert error(wrong, 401)
    health = await client.get("/health", headers={"Authorization": ""})
    assert health.status_code == 200 and health.json()["mode"] == "simulate"
    assert await run_log_since(client, start) == []  # nothing moved


async def test_sensor_moves_and_home_are_in_the_run_log(client: httpx.AsyncClient) -> None:
    start = await log_position(client)
    measure = await client.post(
        "/execute/move_sensor_to_measurement_position", json={"mix_well": "D4"}
    )
    assert measure.json() == {
        "status": "success",
        "result": {"position": "D4", "height_above_well_mm": 1.0},
    }
    back = await client.post("/execute/move_sensor_back", json={})
    assert back.json()["result"] == {"parked": True, "slot": 11}
    assert (await client.post("/execute/home", json={})).json()["result"] == {"homed": True}
    log = await run_log_since(client, start)
    assert log == ["Moving to D4 of plate on slot 3", "Moving to 11"]  # homing is not logged


async def test_a_request_id_runs_once(client: httpx.AsyncClient) -> None:
    start = await log_position(client)
    executed = (await client.get("/health")).json()["executed"]
    headers = {"X-Request-ID": "req-once"}
    first = await client.post("/execute/move_sensor_back", json={}, headers=headers)
    again = await client.post("/execute/move_sensor_back", json={}, headers=headers)
    assert (
        first.json()
        == again.json()
        == {"status": "success", "result": {"parked": True, "slot": 11}}
    )
    assert "x-replayed" not in first.headers and again.headers["x-replayed"] == "1"
    assert await run_log_since(client, start) == ["Moving to 11"]
    assert (await client.get("/health")).json()["executed"] == executed + 1


def test_answers_survive_a_restart_and_an_interrupted_run_is_not_repeated(
    tmp_path: Path,
) -> None:
    book = ot2_agent.AnswerBook(tmp_path)
    book.started("done-1")
    book.finished("done-1", 200, {"status": "success", "result": 1})
    book.started("running-when-killed")
    book.close()
    reopened = ot2_agent.AnswerBook(tmp_path)
    assert reopened.get("done-1") == (200, {"status": "success", "result": 1})
    code, body = reopened.get("running-when-killed") or (0, {})
    assert code == 500 and body["error"].startswith("interrupted: the agent stopped")
    assert reopened.get("never-seen") is None
    reopened.close()


def test_the_agent_runs_without_the_pusher_installed() -> None:
    """Importing the agent and its tasks loads nothing of the pusher (deployed alone)."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import ot2_agent, color_mixing; "
        "print(sorted({m.split('.')[0] for m in sys.modules} "
        "& {'preservarium_pusher_api', 'connectors', 'aiokafka'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(AGENT_DIR)],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    assert out.stdout.strip() == "[]"


def test_systemd_unit_starts_the_agent_with_options_it_accepts() -> None:
    import configparser
    import shlex

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string((AGENT_DIR / "ot2-agent.service").read_text())
    command = shlex.split(unit["Service"]["ExecStart"])
    assert command[1].endswith("/ot2_agent.py")
    args = ot2_agent.build_parser().parse_args(command[2:])
    assert args.simulate is False and args.port == ot2_agent.DEFAULT_PORT
    assert args.token_file is not None and unit["Service"]["KillSignal"] == "SIGTERM"


def test_the_agent_refuses_the_robot_without_a_token_and_binds_loopback_by_default(
    tmp_path: Path,
) -> None:
    """On a robot a missing token is a refusal to start (exit 2, saying why); the default
    address is loopback; the simulator may run open."""
    config = tmp_path / "config.json"
    config.write_text("{}")
    env = {k: v for k, v in os.environ.items() if k != "OT2_AGENT_TOKEN"}
    refused = subprocess.run(
        [sys.executable, str(AGENT_DIR / "ot2_agent.py"), "--robot", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert "without a token" in refused.stderr
    defaults = ot2_agent.build_parser().parse_args([])
    assert defaults.host == "127.0.0.1"
