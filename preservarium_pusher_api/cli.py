"""The ``pusher`` command: ``pusher api`` serves the API, ``pusher dev`` runs a local stack,
``pusher connector PROTOCOL`` a connector, ``pusher send|status|list|cancel|devices`` talk to
a running API (see ``client_cli``)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from preservarium_pusher_api.client_cli import add_client_commands
from preservarium_pusher_api.core.config import Settings
from preservarium_pusher_api.core.exceptions import ConfigurationError
from preservarium_pusher_api.utils.logging import configure_logging

FACTORY = "preservarium_pusher_api.main:create_app"


def uvicorn_options(settings: Settings) -> dict[str, object]:
    """uvicorn settings shared by `pusher api`, `pusher dev` and the tests."""
    # Forwarded headers are handled by the app (TRUSTED_PROXIES), never trusted by default.
    return {
        "host": settings.api_host,
        "port": settings.api_port,
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,
        "server_header": False,
        "lifespan": "on",
    }


def run_api(args: argparse.Namespace) -> int:
    """Serve the API with uvicorn, configured from the environment and flags."""
    import uvicorn

    from preservarium_pusher_api.main import create_app

    overrides = {k: v for k, v in {"api_host": args.host, "api_port": args.port}.items() if v}
    settings = Settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    options = uvicorn_options(settings)
    if args.workers > 1:
        # Each worker builds its settings from the same environment.
        uvicorn.run(FACTORY, factory=True, workers=args.workers, **options)  # type: ignore[arg-type]
        return 0
    try:
        app = create_app(settings)
    except ConfigurationError as exc:
        print(f"pusher api: configuration error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, **options)  # type: ignore[arg-type]
    return 0


def run_tracker_command(args: argparse.Namespace) -> int:
    """The status tracker alone (results topic → status store, deadline sweeper)."""
    from preservarium_pusher_api.services.tracker import run_tracker

    overrides = {"tracker_metrics_port": args.metrics_port} if args.metrics_port else {}
    settings = Settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    loop = asyncio.new_event_loop()
    main_task = loop.create_task(run_tracker(settings))
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, main_task.cancel)
    try:
        loop.run_until_complete(main_task)
    except asyncio.CancelledError:
        return 0
    except ConfigurationError as exc:
        print(f"pusher tracker: configuration error: {exc}", file=sys.stderr)
        return 2
    finally:
        loop.close()
    return 0


def run_connector_command(args: argparse.Namespace) -> int:
    """A protocol connector (``pusher connector mqtt``); see ``connectors.main``."""
    from connectors.main import main as connector_main

    return connector_main(args.connector_args)


def run_dev(args: argparse.Namespace) -> int:
    """Embedded Kafka-compatible broker plus the API, stopped together on Ctrl-C."""
    from preservarium_pusher_api.devtools.dev_stack import run_dev_stack

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


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the ``pusher`` command."""
    parser = argparse.ArgumentParser(prog="pusher", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    api = commands.add_parser("api", help="serve the HTTP API (settings from env / .env)")
    api.add_argument("--host", help="bind address (default API_HOST)")
    api.add_argument("--port", type=int, help="port (default API_PORT)")
    api.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    api.set_defaults(handler=run_api)

    tracker = commands.add_parser(
        "tracker", help="status tracker alone (when the API runs with TRACKER_ENABLED=false)"
    )
    tracker.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics (default TRACKER_METRICS_PORT)"
    )
    tracker.set_defaults(handler=run_tracker_command)

    connector = commands.add_parser(
        "connector",
        help="a protocol connector: pusher connector mqtt [--metrics-port N] [--registry FILE]",
    )
    connector.add_argument("connector_args", nargs=argparse.REMAINDER, metavar="PROTOCOL ...")
    connector.set_defaults(handler=run_connector_command)

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
