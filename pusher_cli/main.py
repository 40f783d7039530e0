"""The ``pusher`` command: ``pusher api`` serves the API, ``pusher tracker`` the tracker alone,
``pusher webhooks`` the webhook deliveries alone, ``pusher connector PROTOCOL`` a connector,
``pusher db upgrade`` migrates the status store, ``pusher dev`` runs a local stack from a
checkout, ``pusher send|status|list|cancel|devices|watch`` talk to a running API (see
``client_commands``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.errors import ConfigurationError
from preservarium_pusher_api.core.logging import configure_logging
from preservarium_pusher_api.server import (
    add_api_arguments,
    run_api,
    serve_tracker,
    serve_webhooks,
)
from pusher_cli.client_commands import add_client_commands


def run_tracker_command(args: argparse.Namespace) -> int:
    """The status tracker alone (results topic → status store, deadline sweeper)."""
    overrides = {"tracker_metrics_port": args.metrics_port} if args.metrics_port else {}
    return serve_tracker(Settings(**overrides))


def run_webhooks_command(args: argparse.Namespace) -> int:
    """The webhook dispatcher alone (the API then runs with WEBHOOKS_IN_API=false)."""
    overrides = {"webhook_metrics_port": args.metrics_port} if args.metrics_port else {}
    return serve_webhooks(Settings(**overrides))


def run_connector_command(args: argparse.Namespace) -> int:
    """A protocol connector (``pusher connector mqtt``); see ``connectors.main``."""
    from connectors.main import main as connector_main

    return connector_main(args.connector_args)


def run_db_upgrade(args: argparse.Namespace) -> int:
    """Migrate the status store at ``STATUS_STORE_URL`` to this version's schema."""
    from preservarium_pusher_api.server import upgrade_database

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        revision = upgrade_database(settings, args.revision)
    except ConfigurationError as exc:
        print(f"pusher db upgrade: {exc.message}", file=sys.stderr)
        return 2
    print(f"status store at revision {revision}")
    return 0


def run_dev(args: argparse.Namespace) -> int:
    """Embedded Kafka-compatible broker, Mosquitto, API, connectors and simulated devices."""
    try:
        from pusher_dev.dev_stack import run_dev_stack
    except ImportError:
        print(
            "pusher dev runs from a checkout with the dev tools installed: "
            "make dev (or pip install -e ./devtools)",
            file=sys.stderr,
        )
        return 2
    return asyncio.run(
        run_dev_stack(
            api_host=args.host,
            api_port=args.api_port,
            kafka_port=args.kafka_port,
            mqtt_port=args.mqtt_port,
            connector_port=args.connector_port,
            sims=not args.no_sims,
            http_connector_port=args.http_connector_port,
            ot2_port=args.ot2_port,
            coap_connector_port=args.coap_connector_port,
            coap_port=args.coap_port,
        )
    )


def run_mqtt_acl(args: argparse.Namespace) -> int:
    """``pusher mqtt-acl``: print (or write) the ACL file for Mosquitto's ``acl_file``."""
    from connectors.mqtt.acl import DEFAULT_CONNECTOR_USER, render_acl
    from connectors.registry import parse_registry

    registry = args.registry or os.environ.get("DEVICE_REGISTRY_PATH")
    if not registry:
        print("pusher mqtt-acl: give --registry or set DEVICE_REGISTRY_PATH", file=sys.stderr)
        return 2
    path = Path(registry)
    try:
        devices = parse_registry(path.read_text(encoding="utf-8"), path.suffix)
        text = render_acl(
            devices,
            args.prefix or os.environ.get("MQTT_TOPIC_PREFIX") or "lab",
            args.connector_user or os.environ.get("MQTT_USERNAME") or DEFAULT_CONNECTOR_USER,
        )
    except (OSError, ValueError) as exc:
        print(f"pusher mqtt-acl: {exc}", file=sys.stderr)
        return 2
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the ``pusher`` command."""
    parser = argparse.ArgumentParser(prog="pusher", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    api = commands.add_parser("api", help="serve the HTTP API (settings from env / .env)")
    add_api_arguments(api)
    api.set_defaults(handler=run_api)

    tracker = commands.add_parser(
        "tracker", help="status tracker alone (when the API runs with TRACKER_ENABLED=false)"
    )
    tracker.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics (default TRACKER_METRICS_PORT)"
    )
    tracker.set_defaults(handler=run_tracker_command)

    webhooks = commands.add_parser(
        "webhooks", help="webhook deliveries alone (when the API runs with WEBHOOKS_IN_API=false)"
    )
    webhooks.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics (default WEBHOOK_METRICS_PORT)"
    )
    webhooks.set_defaults(handler=run_webhooks_command)

    connector = commands.add_parser(
        "connector",
        help="a protocol connector: pusher connector mqtt [--metrics-port N] [--registry FILE]",
    )
    connector.add_argument("connector_args", nargs=argparse.REMAINDER, metavar="PROTOCOL ...")
    connector.set_defaults(handler=run_connector_command)

    acl = commands.add_parser(
        "mqtt-acl", help="Mosquitto ACL file from the device registry (each device its own topics)"
    )
    acl.add_argument(
        "--registry", type=Path, default=None, help="registry file (default DEVICE_REGISTRY_PATH)"
    )
    acl.add_argument("--prefix", default=None, help="topic prefix (default MQTT_TOPIC_PREFIX)")
    acl.add_argument(
        "--connector-user", default=None, help="the connector's MQTT user (default MQTT_USERNAME)"
    )
    acl.add_argument("-o", "--output", type=Path, default=None, help="write here, not stdout")
    acl.set_defaults(handler=run_mqtt_acl)

    database = commands.add_parser("db", help="status store schema (Alembic)")
    db_commands = database.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser(
        "upgrade", help="migrate STATUS_STORE_URL to this version's schema (before deploying)"
    )
    upgrade.add_argument("revision", nargs="?", default="head", help="target (default head)")
    upgrade.set_defaults(handler=run_db_upgrade)

    dev = commands.add_parser(
        "dev", help="embedded Kafka-compatible broker, Mosquitto, API, connectors, simulators"
    )
    dev.add_argument("--host", default="127.0.0.1", help="API bind address")
    dev.add_argument("--api-port", type=int, default=8000, help="API port (default 8000)")
    dev.add_argument("--kafka-port", type=int, default=None, help="broker port (default: free)")
    dev.add_argument("--mqtt-port", type=int, default=None, help="Mosquitto port (default: free)")
    dev.add_argument(
        "--connector-port", type=int, default=9102, help="MQTT connector health/metrics port"
    )
    dev.add_argument(
        "--http-connector-port", type=int, default=9103, help="HTTP connector health/metrics port"
    )
    dev.add_argument("--ot2-port", type=int, default=None, help="simulated OT-2 agent port")
    dev.add_argument(
        "--coap-connector-port", type=int, default=9104, help="CoAP connector health/metrics port"
    )
    dev.add_argument(
        "--coap-port", type=int, default=None, help="simulated CoAP sensor UDP port (default: free)"
    )
    dev.add_argument("--no-sims", action="store_true", help="no simulated devices")
    dev.set_defaults(handler=run_dev)
    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pusher`` console script."""
    args = build_parser().parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
