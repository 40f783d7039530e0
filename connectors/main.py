"""Start a connector process: ``pusher connector PROTOCOL`` / ``python -m connectors.PROTOCOL``.

SIGTERM and SIGINT stop it gracefully: fetching stops, commands being sent finish (up to
``CONNECTOR_SHUTDOWN_GRACE_SECONDS``), finished offsets are committed, the rest is left
for the next owner of the partitions, and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from connectors.runtime import ConnectorRuntime
from connectors.settings import CoapSettings, ConnectorSettings, HttpSettings, MqttSettings
from connectors.transport import Transport
from preservarium_pusher_api.core.errors import ConfigurationError
from preservarium_pusher_api.core.logging import configure_logging, get_logger
from preservarium_pusher_api.core.supervision import TaskDied

log = get_logger(__name__)


def _mqtt(overrides: dict[str, Any]) -> tuple[ConnectorSettings, Transport]:
    from connectors.mqtt.transport import MqttTransport

    settings = MqttSettings(**overrides)
    return settings, MqttTransport(settings)


def _http(overrides: dict[str, Any]) -> tuple[ConnectorSettings, Transport]:
    from connectors.http.transport import HttpTransport

    settings = HttpSettings(**overrides)
    return settings, HttpTransport(settings)


def _coap(overrides: dict[str, Any]) -> tuple[ConnectorSettings, Transport]:
    from connectors.coap.transport import CoapTransport

    settings = CoapSettings(**overrides)
    return settings, CoapTransport(settings)


Builder = Callable[[dict[str, Any]], tuple[ConnectorSettings, Transport]]
BUILDERS: dict[str, Builder] = {"mqtt": _mqtt, "http": _http, "coap": _coap}


async def run(runtime: ConnectorRuntime) -> None:
    """Run ``runtime`` until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, runtime.stop)
    await runtime.run()


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``pusher connector``."""
    parser = argparse.ArgumentParser(prog="pusher connector", description=__doc__)
    parser.add_argument("protocol", choices=sorted(BUILDERS), help="which connector to run")
    parser.add_argument("--metrics-port", type=int, help="health/metrics port")
    parser.add_argument("--registry", help="device registry file (DEVICE_REGISTRY_PATH)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.metrics_port is not None:
        overrides["connector_metrics_port"] = args.metrics_port
    if args.registry:
        overrides["device_registry_path"] = args.registry
    try:
        settings, transport = BUILDERS[args.protocol](overrides)
    except (ValidationError, ValueError) as exc:
        print(f"pusher connector {args.protocol}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if os.environ.get("MQTT_SHARED_GROUP"):
        log.warning(
            "MQTT_SHARED_GROUP is no longer used: every replica reads every answer and the "
            "owner of the device's partition reports it"
        )
    runtime = ConnectorRuntime(settings, transport)
    try:
        asyncio.run(run(runtime))
    except ConfigurationError as exc:
        print(f"pusher connector {args.protocol}: {exc.message}", file=sys.stderr)
        return 2
    except TaskDied as exc:  # logged with its exception; a supervisor restarts the process
        print(f"pusher connector {args.protocol}: {exc}", file=sys.stderr)
        return 1
    return 0
