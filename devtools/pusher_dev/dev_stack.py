"""``pusher dev``: the whole system on one machine, for local use.

Embedded Kafka-compatible broker, a private Mosquitto, the API with its tracker, the MQTT
, HTTP and CoAP connectors with a sample device registry, two simulated Pico W boards, an
OT-2 agent on ``opentrons.simulate`` and a CoAP sensor — stopped together with Ctrl-C.

Every log line starts with its component (``[api]``, ``[mqtt connector]``, ``[ot2-agent]``
…). A component that fails to start is named with the reason, everything already started
is stopped, and the command exits 1; one that dies later stops the stack the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog
import uvicorn

from connectors.runtime import ConnectorRuntime
from connectors.settings import ConnectorSettings
from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.logging import configure_logging
from preservarium_pusher_api.main import create_app
from preservarium_pusher_api.server import uvicorn_options
from pusher_dev.coap_simulator import SimulatedCoapSensor
from pusher_dev.embedded_kafka import EmbeddedKafka
from pusher_dev.mosquitto import PrivateMosquitto
from pusher_dev.ot2_agent import SimulatedOt2Agent, agent_available

SIMULATED_PICOS = ("pico-w-lab-001", "pico-w-lab-002")
SIMULATED_OT2 = "ot2-lab-001"
SIMULATED_SENSOR = "coap-sensor-001"
TOPIC_PREFIX = "lab"
ConnectorSettingsT = TypeVar("ConnectorSettingsT", bound=ConnectorSettings)

BANNER = """
Preservarium Pusher (dev)
  API          http://{api}
  Dashboard    http://{api}/ui/
  Events       http://{api}/api/v1/events  (or: pusher watch)
  OpenAPI      http://{api}/docs
  Metrics      http://{api}/api/v1/metrics
  Devices      http://{api}/api/v1/devices
  Kafka        {kafka}  (embedded, in-memory)
  MQTT         {mqtt}
  Connectors   mqtt (health/metrics http://{connector})
               http (health/metrics http://{http_connector})
               coap (health/metrics http://{coap_connector})
  Simulators   {sims}
  Registry     {registry}

  Try:  curl -s -X POST http://{api}/api/v1/commands -H 'Content-Type: application/json' \\
          -d '{{"device_id": "pico-w-lab-001", "command_type": "control_led", \\
               "payload": {{"pin": 25, "state": true}}, "protocol": "mqtt"}}'
        curl -s 'http://{api}/api/v1/commands/REQUEST_ID/status?wait=10'
        pusher send --url http://{api} --device ot2-lab-001 --protocol http \
          --type mix_color --payload '{{"R": 100, "Y": 50, "B": 30, "mix_well": "A1"}}' --wait 60
Ctrl-C stops everything.
"""


def write_registry(
    directory: Path, ot2_url: str | None = None, sensor_port: int | None = None
) -> Path:
    """The sample device registry of the dev stack."""
    path = directory / "devices.yaml"
    lines = ["devices:"]
    for device_id in SIMULATED_PICOS:
        lines += [f"  {device_id}:", "    protocol: mqtt", "    dispatch: on_ack"]
    if ot2_url:
        lines += [
            f"  {SIMULATED_OT2}:",
            "    protocol: http",
            f"    address: {{base_url: '{ot2_url}'}}",
            "    timeout_seconds: 120",
        ]
    if sensor_port:
        lines += [
            f"  {SIMULATED_SENSOR}:",
            "    protocol: coap",
            f"    address: {{host: 127.0.0.1, port: {sensor_port}}}",
            "    timeout_seconds: 30",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


class StartFailure(Exception):
    """A component of the dev stack did not start."""

    def __init__(self, component: str, reason: str) -> None:
        super().__init__(f"{component} failed at start: {reason}")
        self.component = component
        self.reason = reason


def _reason(task: asyncio.Task[Any]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    if exc is None:
        return "exited"
    message = getattr(exc, "message", None) or str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class Supervisor:
    """Starts components as tasks named in the logs; a component ending early stops all."""

    def __init__(self) -> None:
        self.stopping = False
        self.failures: list[str] = []
        self.failed = asyncio.Event()
        self._starting: list[tuple[str, asyncio.Task[Any], Callable[[], bool]]] = []

    def spawn(self, component: str, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as ``component``: its log lines (and its tasks') carry the name."""
        with structlog.contextvars.bound_contextvars(component=component):
            task = asyncio.create_task(coro, name=component)
        task.add_done_callback(lambda done: self._ended(component, done))
        return task

    def _ended(self, component: str, task: asyncio.Task[Any]) -> None:
        if self.stopping:
            return
        self.failures.append(f"{component} stopped unexpectedly: {_reason(task)}")
        self.failed.set()

    def expect(self, component: str, task: asyncio.Task[Any], check: Callable[[], bool]) -> None:
        """``component`` is started once ``check()`` is true (see ``all_started``)."""
        self._starting.append((component, task, check))

    async def all_started(self, within: float = 60.0) -> None:
        """Wait for every expected component; StartFailure names the first that ended or
        is still not ready after ``within`` seconds."""
        deadline = asyncio.get_running_loop().time() + within
        while self._starting:
            for component, task, check in list(self._starting):
                if check():
                    self._starting.remove((component, task, check))
                elif task.done():
                    raise StartFailure(component, _reason(task))
                elif asyncio.get_running_loop().time() > deadline:
                    raise StartFailure(component, f"not ready after {within:g} s")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def connector_running(
    supervisor: Supervisor, runtime: ConnectorRuntime, component: str
) -> AsyncIterator[None]:
    """A connector runtime in this loop (started: consuming); stopped gracefully."""
    task = supervisor.spawn(component, runtime.run())
    supervisor.expect(component, task, runtime.consuming.is_set)
    try:
        yield
    finally:
        runtime.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(task), 15)


def connector_settings(
    settings_class: type[ConnectorSettingsT],
    base: Settings,
    work_dir: Path,
    port: int,
    **extra: Any,
) -> ConnectorSettingsT:
    """Settings of a dev connector: the stack's Kafka, the sample registry, its name."""
    values: dict[str, Any] = {
        **base.model_dump(),
        "connector_id": "dev",
        "device_registry_path": work_dir / "devices.yaml",
        "connector_metrics_port": port,
        "connector_metrics_host": "127.0.0.1",
        **extra,
    }
    return settings_class(**values)


@contextlib.asynccontextmanager
async def mqtt_side(
    supervisor: Supervisor,
    settings: Settings,
    mosquitto: PrivateMosquitto,
    work_dir: Path,
    sims: bool,
    port: int,
) -> AsyncIterator[None]:
    """The MQTT connector (and simulated Pico W boards) in this loop."""
    from connectors.mqtt.transport import MqttTransport
    from connectors.settings import MqttSettings
    from pusher_dev.pico_simulator import SimulatedPico

    mqtt = connector_settings(
        MqttSettings,
        settings,
        work_dir,
        port,
        mqtt_broker_url=mosquitto.url,
        mqtt_topic_prefix=TOPIC_PREFIX,
        mqtt_client_id="pusher-dev-connector-mqtt",
    )
    sim_tasks = [
        supervisor.spawn(
            device_id,
            SimulatedPico(device_id, mosquitto.host, mosquitto.port, TOPIC_PREFIX).run(),
        )
        for device_id in (SIMULATED_PICOS if sims else ())
    ]
    runtime = ConnectorRuntime(mqtt, MqttTransport(mqtt))
    try:
        async with connector_running(supervisor, runtime, "mqtt connector"):
            yield
    finally:
        for task in sim_tasks:
            task.cancel()
        await asyncio.gather(*sim_tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def http_side(
    supervisor: Supervisor, settings: Settings, work_dir: Path, port: int
) -> AsyncIterator[None]:
    """The HTTP connector in this loop."""
    from connectors.http.transport import HttpTransport
    from connectors.settings import HttpSettings

    http = connector_settings(HttpSettings, settings, work_dir, port)
    runtime = ConnectorRuntime(http, HttpTransport(http))
    async with connector_running(supervisor, runtime, "http connector"):
        yield


@contextlib.asynccontextmanager
async def coap_side(
    supervisor: Supervisor,
    settings: Settings,
    work_dir: Path,
    port: int,
    sensor: SimulatedCoapSensor | None,
) -> AsyncIterator[None]:
    """The CoAP connector (and the simulated sensor) in this loop."""
    from connectors.coap.transport import CoapTransport
    from connectors.settings import CoapSettings

    coap = connector_settings(CoapSettings, settings, work_dir, port)
    async with contextlib.AsyncExitStack() as stack:
        if sensor is not None:
            try:
                await stack.enter_async_context(sensor)
            except OSError as exc:
                raise StartFailure("coap sensor", str(exc)) from exc
        runtime = ConnectorRuntime(coap, CoapTransport(coap))
        async with connector_running(supervisor, runtime, "coap connector"):
            yield


async def start_ot2_agent(port: int | None) -> SimulatedOt2Agent | None:
    """The simulated OT-2 agent, or None (with the reason printed) when it cannot run."""
    if (reason := agent_available()) is not None:
        print(f"pusher dev: no simulated OT-2 ({reason})", file=sys.stderr)
        return None
    agent = SimulatedOt2Agent(
        port=port, echo=lambda line: print(f"[ot2-agent] {line}", flush=True), log_level="info"
    )
    try:
        await asyncio.to_thread(agent.start)
    except RuntimeError as exc:
        agent.close()
        raise StartFailure("ot2-agent", str(exc)) from exc
    return agent


async def run_dev_stack(
    api_host: str,
    api_port: int,
    kafka_port: int | None,
    mqtt_port: int | None = None,
    connector_port: int = 9102,
    sims: bool = True,
    http_connector_port: int = 9103,
    ot2_port: int | None = None,
    coap_connector_port: int = 9104,
    coap_port: int | None = None,
) -> int:
    """Start every component, serve until interrupted, then stop them all."""
    broker = EmbeddedKafka(port=kafka_port)
    mosquitto = PrivateMosquitto(port=mqtt_port)
    agent: SimulatedOt2Agent | None = None
    try:
        broker.start()
    except RuntimeError as exc:
        print(f"pusher dev: kafka (embedded broker) failed at start: {exc}", file=sys.stderr)
        return 1
    try:
        try:
            mosquitto.start()
        except RuntimeError as exc:
            print(f"pusher dev: mosquitto failed at start: {exc}", file=sys.stderr)
            return 1
        settings = Settings(
            kafka_bootstrap_servers=broker.bootstrap_servers,
            kafka_enable_idempotence=False,
            kafka_consumer_rebalance_timeout_ms=500,
            api_host=api_host,
            api_port=api_port,
            log_format="console",
            rate_limit=None,
        )
        configure_logging(settings.log_level, settings.log_format)
        supervisor = Supervisor()
        try:
            if sims:
                agent = await start_ot2_agent(ot2_port)
            return await _serve(
                supervisor, settings, broker, mosquitto, agent, sims,
                (connector_port, http_connector_port, coap_connector_port), coap_port,
            )  # fmt: skip
        except StartFailure as exc:
            print(f"pusher dev: {exc}", file=sys.stderr, flush=True)
            return 1
    finally:
        if agent is not None:
            agent.close()
        mosquitto.close()
        broker.stop()


async def _serve(
    supervisor: Supervisor,
    settings: Settings,
    broker: EmbeddedKafka,
    mosquitto: PrivateMosquitto,
    agent: SimulatedOt2Agent | None,
    sims: bool,
    connector_ports: tuple[int, int, int],
    coap_port: int | None,
) -> int:
    """The API and the connectors, until Ctrl-C or a component failing."""
    mqtt_port, http_port, coap_connector_port = connector_ports
    try:
        # Bound here, so that a taken port is named instead of ending in uvicorn's exit.
        api_socket = socket.create_server((settings.api_host, settings.api_port))
    except OSError as exc:
        raise StartFailure("api", f"port {settings.api_port}: {exc.strerror or exc}") from exc
    server = uvicorn.Server(uvicorn.Config(create_app(settings), **uvicorn_options(settings)))  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory(prefix="pusher-dev-") as work:
        work_dir = Path(work)
        sensor = SimulatedCoapSensor(SIMULATED_SENSOR, port=coap_port) if sims else None
        registry = write_registry(
            work_dir, agent.base_url if agent else None, sensor.port if sensor else None
        )
        simulated = [f"{', '.join(SIMULATED_PICOS)} (Pico W)"] if sims else []
        if agent is not None:
            simulated.append(f"{SIMULATED_OT2} (OT-2 agent, simulate, {agent.base_url})")
        if sensor is not None:
            simulated.append(f"{SIMULATED_SENSOR} (CoAP sensor, coap://127.0.0.1:{sensor.port})")
        async with (
            mqtt_side(supervisor, settings, mosquitto, work_dir, sims, mqtt_port),
            http_side(supervisor, settings, work_dir, http_port),
            coap_side(supervisor, settings, work_dir, coap_connector_port, sensor),
        ):
            api = supervisor.spawn("api", server.serve(sockets=[api_socket]))
            supervisor.expect("api", api, lambda: server.started)
            try:
                await supervisor.all_started()
                print(
                    BANNER.format(
                        api=f"{settings.api_host}:{settings.api_port}",
                        kafka=broker.bootstrap_servers,
                        mqtt=mosquitto.url + "  (private mosquitto)",
                        connector=f"127.0.0.1:{mqtt_port}",
                        http_connector=f"127.0.0.1:{http_port}",
                        coap_connector=f"127.0.0.1:{coap_connector_port}",
                        sims="\n               ".join(simulated) or "none",
                        registry=registry,
                    ),
                    flush=True,
                )
                failed = asyncio.create_task(supervisor.failed.wait())
                await asyncio.wait({api, failed}, return_when=asyncio.FIRST_COMPLETED)
                failed.cancel()
            finally:
                supervisor.stopping = True
                server.should_exit = True
                with contextlib.suppress(Exception):
                    await api
                api_socket.close()
    for failure in supervisor.failures:
        print(f"pusher dev: {failure}", file=sys.stderr, flush=True)
    return 1 if supervisor.failures else 0
