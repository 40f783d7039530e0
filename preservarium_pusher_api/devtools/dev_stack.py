"""``pusher dev``: the whole system on one machine, for local use.

Embedded Kafka-compatible broker, a private Mosquitto, the API with its tracker, the MQTT
, HTTP and CoAP connectors with a sample device registry, two simulated Pico W boards, an
OT-2 agent on ``opentrons.simulate`` and a CoAP sensor — stopped together with Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import uvicorn

from connectors.runtime import ConnectorRuntime
from connectors.settings import ConnectorSettings
from preservarium_pusher_api.cli import uvicorn_options
from preservarium_pusher_api.core.config import Settings
from preservarium_pusher_api.devtools.coap_simulator import SimulatedCoapSensor
from preservarium_pusher_api.devtools.embedded_kafka import EmbeddedKafka
from preservarium_pusher_api.devtools.mosquitto import PrivateMosquitto
from preservarium_pusher_api.devtools.ot2_agent import SimulatedOt2Agent, agent_available
from preservarium_pusher_api.main import create_app
from preservarium_pusher_api.utils.logging import configure_logging

SIMULATED_PICOS = ("pico-w-lab-001", "pico-w-lab-002")
SIMULATED_OT2 = "ot2-lab-001"
SIMULATED_SENSOR = "coap-sensor-001"
TOPIC_PREFIX = "lab"
ConnectorSettingsT = TypeVar("ConnectorSettingsT", bound=ConnectorSettings)

BANNER = """
Preservarium Pusher (dev)
  API          http://{api}
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
        curl -s -X POST http://{api}/api/v1/commands -H 'Content-Type: application/json' \
          -d '{{"device_id": "ot2-lab-001", "command_type": "mix_color", "protocol": "http", \
               "payload": {{"R": 100, "Y": 50, "B": 30, "mix_well": "A1"}}}}'
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


@contextlib.asynccontextmanager
async def connector_running(runtime: ConnectorRuntime, name: str) -> AsyncIterator[None]:
    """A connector runtime in this loop, stopped gracefully on exit."""
    task = asyncio.create_task(runtime.run(), name=name)
    try:
        yield
    finally:
        runtime.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)


def connector_settings(
    settings_class: type[ConnectorSettingsT],
    base: Settings,
    work_dir: Path,
    port: int,
    **extra: Any,
) -> ConnectorSettingsT:
    """Settings of a dev connector: the stack's Kafka, the sample registry, its own state."""
    values: dict[str, Any] = {
        **base.model_dump(),
        "device_registry_path": work_dir / "devices.yaml",
        "connector_metrics_port": port,
        "connector_metrics_host": "127.0.0.1",
        **extra,
    }
    values["connector_state_dir"] = work_dir / f"state-{settings_class.__name__.lower()}"
    return settings_class(**values)


@contextlib.asynccontextmanager
async def mqtt_side(
    settings: Settings, mosquitto: PrivateMosquitto, work_dir: Path, sims: bool, port: int
) -> AsyncIterator[None]:
    """The MQTT connector (and simulated Pico W boards) in this loop."""
    from connectors.mqtt.transport import MqttTransport
    from connectors.settings import MqttSettings
    from preservarium_pusher_api.devtools.pico_simulator import SimulatedPico

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
        asyncio.create_task(
            SimulatedPico(device_id, mosquitto.host, mosquitto.port, TOPIC_PREFIX).run(),
            name=f"sim-{device_id}",
        )
        for device_id in (SIMULATED_PICOS if sims else ())
    ]
    try:
        async with connector_running(ConnectorRuntime(mqtt, MqttTransport(mqtt)), "mqtt"):
            yield
    finally:
        for task in sim_tasks:
            task.cancel()
        await asyncio.gather(*sim_tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def http_side(settings: Settings, work_dir: Path, port: int) -> AsyncIterator[None]:
    """The HTTP connector in this loop."""
    from connectors.http.transport import HttpTransport
    from connectors.settings import HttpSettings

    http = connector_settings(HttpSettings, settings, work_dir, port)
    async with connector_running(ConnectorRuntime(http, HttpTransport(http)), "http"):
        yield


@contextlib.asynccontextmanager
async def coap_side(
    settings: Settings, work_dir: Path, port: int, sensor: SimulatedCoapSensor | None
) -> AsyncIterator[None]:
    """The CoAP connector (and the simulated sensor) in this loop."""
    from connectors.coap.transport import CoapTransport
    from connectors.settings import CoapSettings

    coap = connector_settings(CoapSettings, settings, work_dir, port)
    async with contextlib.AsyncExitStack() as stack:
        if sensor is not None:
            await stack.enter_async_context(sensor)
        async with connector_running(ConnectorRuntime(coap, CoapTransport(coap)), "coap"):
            yield


async def start_ot2_agent(port: int | None) -> SimulatedOt2Agent | None:
    """The simulated OT-2 agent, or None (with the reason printed) when it cannot run."""
    if (reason := agent_available()) is not None:
        print(f"pusher dev: no simulated OT-2 ({reason})", file=sys.stderr)
        return None
    agent = SimulatedOt2Agent(port=port)
    try:
        await asyncio.to_thread(agent.start)
    except RuntimeError as exc:
        print(f"pusher dev: simulated OT-2 agent failed: {exc}", file=sys.stderr)
        agent.close()
        return None
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
        print(f"pusher dev: embedded Kafka broker failed: {exc}", file=sys.stderr)
        return 1
    try:
        try:
            mosquitto.start()
        except RuntimeError as exc:
            print(f"pusher dev: MQTT broker failed: {exc}", file=sys.stderr)
            return 1
        if sims:
            agent = await start_ot2_agent(ot2_port)
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
        app = create_app(settings)
        server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options(settings)))  # type: ignore[arg-type]
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
                simulated.append(
                    f"{SIMULATED_SENSOR} (CoAP sensor, coap://127.0.0.1:{sensor.port})"
                )
            async with (
                mqtt_side(settings, mosquitto, work_dir, sims, connector_port),
                http_side(settings, work_dir, http_connector_port),
                coap_side(settings, work_dir, coap_connector_port, sensor),
            ):
                print(
                    BANNER.format(
                        api=f"{api_host}:{api_port}",
                        kafka=broker.bootstrap_servers,
                        mqtt=mosquitto.url + "  (private mosquitto)",
                        connector=f"127.0.0.1:{connector_port}",
                        http_connector=f"127.0.0.1:{http_connector_port}",
                        coap_connector=f"127.0.0.1:{coap_connector_port}",
                        sims="\n               ".join(simulated) or "none",
                        registry=registry,
                    ),
                    flush=True,
                )
                await server.serve()
        return 0 if server.started else 1
    finally:
        if agent is not None:
            agent.close()
        mosquitto.close()
        broker.stop()
