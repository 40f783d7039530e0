"""The shared scenarios over HTTP: a generic HTTP device that runs whatever it is sent."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.http.transport import HttpTransport
from connectors.settings import HttpSettings
from tests.conftest import LiveApi, SettingsFactory, command, serve
from tests.e2e.scenarios import Lab, Scenarios
from tests.mqtt_helpers import registry_settings, running_connector

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


class GenericDevice:
    """An HTTP device with no memory of request ids: every POST runs, and is logged."""

    def __init__(self) -> None:
        self.runs: list[str] = []
        self.latency = 0.0
        device = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                device.runs.append(self.headers.get("X-Request-ID", ""))
                time.sleep(device.latency)
                answer = json.dumps({"status": "success", "result": {"ran": True}}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the caller gave up waiting

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> GenericDevice:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class HttpLab(Lab):
    protocol = "http"
    device_id = "http-scenario"

    def __init__(self, api: LiveApi, device: GenericDevice) -> None:
        super().__init__(api)
        self.device = device

    def body(self) -> dict[str, Any]:
        return command(
            protocol="http", device_id=self.device_id, command_type="run", payload={"n": 1}
        )

    def executions(self) -> list[str]:
        return list(self.device.runs)

    def set_latency(self, seconds: float) -> None:
        self.device.latency = seconds


@pytest.fixture
def device() -> Iterator[GenericDevice]:
    with GenericDevice() as running:
        yield running


@pytest.fixture
async def lab(
    make_settings: SettingsFactory, tmp_path: Path, device: GenericDevice
) -> AsyncIterator[Lab]:
    base = make_settings(tracker_enabled=True)
    registry = {HttpLab.device_id: {"protocol": "http", "address": {"base_url": device.base_url}}}
    settings = registry_settings(
        HttpSettings, base, tmp_path, registry, connector_retry_max_backoff_seconds=0.3
    )
    async with serve(base) as api, running_connector(settings, HttpTransport(settings)):
        yield HttpLab(api, device)


class TestHttpScenarios(Scenarios):
    pass
