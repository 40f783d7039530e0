"""The chaos stack: every service a separate process that can be SIGKILLed.

Two API processes (``pusher api``, no tracker inside), two tracker processes (``pusher
tracker``, one consumer group), three MQTT connector processes (``python -m
connectors.mqtt``, one consumer group, each with its own CONNECTOR_ID), a private Mosquitto,
the test's Kafka and a PostgreSQL status store; the simulated boards run in the test.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from pusher_dev.embedded_kafka import free_port

from connectors.settings import CoapSettings, ConnectorSettings, HttpSettings, MqttSettings
from preservarium_pusher_api.config import Settings
from tests.mqtt_helpers import settings_env


class Child:
    """One service process, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, *args],
                env={**os.environ, **env, "LOG_FORMAT": "json"},
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no commit, no flush."""
        self.process.kill()
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait; the exit code."""
        self.process.terminate()
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class Stack:
    """Named service processes; start, kill, restart by name."""

    def __init__(self, api: Settings, connector: ConnectorSettings, logs: Path) -> None:
        self.api_settings = api
        self.connector_settings = connector
        self._logs = logs
        self.children: dict[str, Child] = {}
        self.api_urls: dict[str, str] = {}
        self._starts = 0

    def _log(self, name: str) -> Path:
        self._starts += 1
        return self._logs / f"{name}-{self._starts}.log"

    def start_api(self, name: str) -> None:
        port = free_port()
        env = settings_env(self.api_settings)
        env.update(API_HOST="127.0.0.1", API_PORT=str(port), TRACKER_ENABLED="false")
        self.children[name] = Child(["-m", "pusher_cli", "api"], env, self._log(name))
        self.api_urls[name] = f"http://127.0.0.1:{port}"

    def start_tracker(self, name: str) -> None:
        env = settings_env(self.api_settings)
        env.update(TRACKER_METRICS_PORT="0")
        self.children[name] = Child(["-m", "pusher_cli", "tracker"], env, self._log(name))

    def start_connector(self, connector_id: str) -> None:
        """A connector replica of the stack's protocol named ``connector_id``."""
        update: dict[str, Any] = {"connector_id": connector_id}
        if isinstance(self.connector_settings, MqttSettings):
            update["mqtt_client_id"] = None
            module = "connectors.mqtt"
        elif isinstance(self.connector_settings, CoapSettings):
            module = "connectors.coap"
        else:
            assert isinstance(self.connector_settings, HttpSettings)
            module = "connectors.http"
        env = settings_env(self.connector_settings.model_copy(update=update))
        self.children[connector_id] = Child(["-m", module], env, self._log(connector_id))

    def kill(self, name: str) -> None:
        self.children.pop(name).kill()
        self.api_urls.pop(name, None)

    def terminate(self, name: str) -> None:
        child = self.children.pop(name)
        code = child.terminate()
        assert code == 0, child.logs()[-3000:]

    def connectors(self) -> list[str]:
        return sorted(name for name in self.children if name.startswith(("mqtt-", "http-")))

    def trackers(self) -> list[str]:
        return sorted(name for name in self.children if name.startswith("tracker-"))

    def stop_all(self) -> None:
        for name in list(self.children):
            self.children.pop(name).stop()

    async def wait_apis(self, within: float = 30) -> None:
        """Every API answers /health with Kafka connected."""
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=2) as client:
            for name, url in self.api_urls.items():
                while True:
                    child = self.children[name]
                    assert child.process.poll() is None, child.logs()[-3000:]
                    try:
                        response = await client.get(f"{url}/health/ready")
                        if response.status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, f"{name} never healthy"
                    await asyncio.sleep(0.2)


async def statuses(stack: Stack, client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    """Every command as listed, page by page, from one API that answers."""
    found: dict[str, dict[str, Any]] = {}
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        url = next(iter(stack.api_urls.values()))
        body = (await client.get(f"{url}/api/v1/commands", params=params)).json()
        found.update({item["request_id"]: item for item in body["items"]})
        cursor = body.get("next_cursor")
        if not cursor:
            return found


async def post_with_failover(
    client: httpx.AsyncClient, stack: Stack, path: str, body: Any, within: float = 60
) -> httpx.Response:
    """POST with one Idempotency-Key, moving to another API instance when one does not
    answer (as a client of a load balancer would): the command is accepted once."""
    key = uuid.uuid4().hex
    deadline = time.monotonic() + within
    attempt = 0
    while True:
        urls = list(stack.api_urls.values())
        url = urls[attempt % len(urls)]
        attempt += 1
        try:
            response = await client.post(
                f"{url}{path}", json=body, headers={"Idempotency-Key": key}
            )
            if response.status_code < 500 and response.status_code != 409:
                return response
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"no API accepted {path}"
        await asyncio.sleep(0.3)
