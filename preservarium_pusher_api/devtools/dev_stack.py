"""``pusher dev``: the whole system on one machine, for local use.

Embedded Kafka-compatible broker, a private Mosquitto, the API with its tracker, the MQTT
connector with a sample device registry, and two simulated Pico W boards — one process,
stopped together with Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn

from preservarium_pusher_api.cli import uvicorn_options
from preservarium_pusher_api.core.config import Settings
from preservarium_pusher_api.devtools.embedded_kafka import EmbeddedKafka
from preservarium_pusher_api.devtools.mosquitto import PrivateMosquitto
from preservarium_pusher_api.main import create_app
from preservarium_pusher_api.utils.logging import configure_logging

SIMULATED_PICOS = ("pico-w-lab-001", "pico-w-lab-002")
TOPIC_PREFIX = "lab"

BANNER = """
Preservarium Pusher (dev)
  API          http://{api}
  OpenAPI      http://{api}/docs
  Metrics      http://{api}/api/v1/metrics
  Devices      http://{api}/api/v1/devices
  Kafka        {kafka}  (embedded, in-memory)
  MQTT         {mqtt}
  Connector    mqtt (health/metrics http://{connector})
  Simulators   {sims}
  Registry     {registry}

  Try:  curl -s -X POST http://{api}/api/v1/commands -H 'Content-Type: application/json' \\
          -d '{{"device_id": "pico-w-lab-001", "command_type": "control_led", \\
               "payload": {{"pin": 25, "state": true}}, "protocol": "mqtt"}}'
        curl -s 'http://{api}/api/v1/commands/REQUEST_ID/status?wait=10'
Ctrl-C stops everything.
"""


def write_registry(directory: Path) -> Path:
    """The sample device registry of the dev stack."""
    path = directory / "devices.yaml"
    lines = ["devices:"]
    for device_id in SIMULATED_PICOS:
        lines += [f"  {device_id}:", "    protocol: mqtt", "    dispatch: on_ack"]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.asynccontextmanager
async def mqtt_side(
    settings: Settings, mosquitto: PrivateMosquitto, work_dir: Path, sims: bool, port: int
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """The MQTT connector (and simulators) in this loop, stopped gracefully on exit."""
    from connectors.mqtt.transport import MqttTransport
    from connectors.runtime import ConnectorRuntime
    from connectors.settings import MqttSettings
    from preservarium_pusher_api.devtools.pico_simulator import SimulatedPico

    connector_settings = MqttSettings(
        **{
            **settings.model_dump(),
            "mqtt_broker_url": mosquitto.url,
            "mqtt_topic_prefix": TOPIC_PREFIX,
            "mqtt_client_id": "pusher-dev-connector-mqtt",
            "device_registry_path": write_registry(work_dir),
            "connector_state_dir": work_dir / "connector-state",
            "connector_metrics_port": port,
            "connector_metrics_host": "127.0.0.1",
        }
    )
    runtime = ConnectorRuntime(connector_settings, MqttTransport(connector_settings))
    tasks = [asyncio.create_task(runtime.run(), name="connector-mqtt")]
    if sims:
        tasks += [
            asyncio.create_task(
                SimulatedPico(device_id, mosquitto.host, mosquitto.port, TOPIC_PREFIX).run(),
                name=f"sim-{device_id}",
            )
            for device_id in SIMULATED_PICOS
        ]
    try:
        yield tasks
    finally:
        runtime.stop()
        for task in tasks[1:]:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(tasks[0], 15)
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_dev_stack(
    api_host: str,
    api_port: int,
    kafka_port: int | None,
    mqtt_port: int | None = None,
    connector_port: int = 9102,
    sims: bool = True,
) -> int:
    """Start every component, serve until interrupted, then stop them all."""
    broker = EmbeddedKafka(port=kafka_port)
    mosquitto = PrivateMosquitto(port=mqtt_port)
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
            async with mqtt_side(settings, mosquitto, Path(work), sims, connector_port):
                print(
                    BANNER.format(
                        api=f"{api_host}:{api_port}",
                        kafka=broker.bootstrap_servers,
                        mqtt=mosquitto.url + "  (private mosquitto)",
                        connector=f"127.0.0.1:{connector_port}",
                        sims=", ".join(SIMULATED_PICOS) + " (Pico W)" if sims else "none",
                        registry=Path(work) / "devices.yaml",
                    ),
                    flush=True,
                )
                await server.serve()
        return 0 if server.started else 1
    finally:
        mosquitto.close()
        broker.stop()
