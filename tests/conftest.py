"""Shared fixtures: a Kafka to talk to, settings with unique topics, a live API server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pusher_dev.embedded_kafka import EmbeddedKafka, free_port

from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.main import create_app
from preservarium_pusher_api.server import uvicorn_options


@dataclass(frozen=True)
class KafkaTarget:
    """Where the tests' Kafka is and what it supports."""

    bootstrap_servers: str
    idempotence: bool
    kind: str


def _docker_engine_answers() -> bool:
    """True when a Docker engine answers ``GET /_ping`` on its socket (DOCKER_HOST or default)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = host.removeprefix("unix://")
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            netloc = host.split("://", 1)[-1]
            address = (netloc.rsplit(":", 1)[0], int(netloc.rsplit(":", 1)[1]))
        with sock:
            sock.settimeout(3)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(256)
    except (OSError, ValueError, IndexError):
        return False


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaTarget]:
    """KAFKA_BOOTSTRAP_SERVERS if set, else testcontainers Kafka, else the embedded broker."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield KafkaTarget(external, idempotence=True, kind="external")
        return
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield KafkaTarget(container.get_bootstrap_server(), idempotence=True, kind="docker")
        return
    broker = EmbeddedKafka().start()
    try:
        yield KafkaTarget(broker.bootstrap_servers, idempotence=False, kind="embedded")
    except BaseException:
        print(f"--- embedded broker log ({broker.log_path}) ---\n{broker.logs()[-4000:]}")
        raise
    finally:
        broker.stop()


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(kafka: KafkaTarget, tmp_path: Path) -> SettingsFactory:
    """Settings pointing at the test Kafka, with topics and a status store unique to the test."""
    suffix = uuid.uuid4().hex[:12]

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": kafka.bootstrap_servers,
            "kafka_enable_idempotence": kafka.idempotence,
            "kafka_command_topic": f"commands-{suffix}",
            "kafka_result_topic": f"results-{suffix}",
            "kafka_presence_topic": f"presence-{suffix}",
            "kafka_topic_partitions": 3,
            "kafka_producer_timeout": 5.0,
            "kafka_health_interval": 0.5,
            "rate_limit": None,
            "api_port": 0,
            "status_store_url": f"sqlite+aiosqlite:///{tmp_path}/status.db",
            "tracker_group_id": f"tracker-{suffix}",
            # Most tests exercise the command path; status tests turn the tracker on.
            "tracker_enabled": False,
            "sweep_interval_seconds": 0.2,
            "sweep_grace_seconds": 0.5,
            "kafka_consumer_session_timeout_ms": 6000,
            "kafka_consumer_heartbeat_interval_ms": 500,
            "kafka_consumer_rebalance_timeout_ms": 300,
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return factory


@dataclass
class LiveApi:
    """A running API: its settings, base URL and an HTTP client."""

    settings: Settings
    base_url: str
    client: httpx.AsyncClient
    app: Any


@contextlib.asynccontextmanager
async def serve(
    settings: Settings, wait_for_kafka: bool = True, port: int | None = None
) -> AsyncIterator[LiveApi]:
    """Run ``create_app(settings)`` under uvicorn on ``port`` (default: a free one) in this
    event loop."""
    port = port or free_port()
    app = create_app(settings)
    options = {**uvicorn_options(settings), "host": "127.0.0.1", "port": port}
    config = uvicorn.Config(app, **options)  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
            if wait_for_kafka:
                await app.state.kafka.wait_connected()
        base_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            yield LiveApi(settings, base_url, client, app)
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def api(make_settings: SettingsFactory) -> AsyncIterator[LiveApi]:
    """The API with default test settings, connected to Kafka."""
    async with serve(make_settings()) as live:
        yield live


def command(**overrides: Any) -> dict[str, Any]:
    """A valid command body, with overrides."""
    body: dict[str, Any] = {
        "device_id": "pico-w-lab-001",
        "command_type": "control_led",
        "payload": {"pin": 25, "state": True},
        "protocol": "mqtt",
    }
    body.update(overrides)
    return body


def assert_error_shape(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response has ``status`` and the one JSON error shape; returns the body."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "type", "details", "request_id"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["details"], list)
    assert body["request_id"] == response.headers["x-request-id"]
    return body


TEST_POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database on the ``TEST_POSTGRES_URL`` server.

    The database is created for the test and dropped after it. A server that does not
    answer fails the test (``.ci/run`` provides one); it is never skipped.
    """
    import asyncpg
    from sqlalchemy.engine import make_url

    server = make_url(TEST_POSTGRES_URL)
    name = f"pusher_test_{uuid.uuid4().hex[:12]}"
    admin_dsn = server.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A status store URL for each supported database: SQLite file and PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/status.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Any]:
    """A private Mosquitto on a free port for the whole session (never the shared 1883)."""
    from pusher_dev.mosquitto import PrivateMosquitto

    with PrivateMosquitto() as broker:
        yield broker


@dataclass
class LedStack:
    """API with tracker, an MQTT connector and one simulated Pico W (``pico-c1``)."""

    api: LiveApi
    prefix: str


@pytest.fixture
async def led_stack(
    make_settings: SettingsFactory, mosquitto: Any, tmp_path: Path
) -> AsyncIterator[LedStack]:
    from tests.mqtt_helpers import mqtt_settings, running_connector, simulators

    base = make_settings(tracker_enabled=True)
    settings = mqtt_settings(base, mosquitto)
    async with (
        serve(base) as api,
        running_connector(settings),
        simulators(mosquitto, settings.mqtt_topic_prefix, "pico-c1"),
    ):
        yield LedStack(api, settings.mqtt_topic_prefix)
