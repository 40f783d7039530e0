"""``pusher dev``: the embedded broker and the API in one command, for local use."""

from __future__ import annotations

import sys

import uvicorn

from preservarium_pusher_api.cli import uvicorn_options
from preservarium_pusher_api.core.config import Settings
from preservarium_pusher_api.devtools.embedded_kafka import EmbeddedKafka
from preservarium_pusher_api.main import create_app
from preservarium_pusher_api.utils.logging import configure_logging

BANNER = """
Preservarium Pusher (dev)
  API          http://{api}
  OpenAPI      http://{api}/docs
  Metrics      http://{api}/api/v1/metrics
  Kafka        {kafka}  (embedded, in-memory)

  Try:  curl -s -X POST http://{api}/api/v1/commands -H 'Content-Type: application/json' \\
          -d '{{"device_id": "pico-w-lab-001", "command_type": "control_led", \\
               "payload": {{"pin": 25, "state": true}}, "protocol": "mqtt"}}'
Ctrl-C stops everything.
"""


async def run_dev_stack(api_host: str, api_port: int, kafka_port: int | None) -> int:
    """Start the broker, serve the API until interrupted, then stop both."""
    broker = EmbeddedKafka(port=kafka_port)
    try:
        broker.start()
    except RuntimeError as exc:
        print(f"pusher dev: embedded Kafka broker failed: {exc}", file=sys.stderr)
        return 1
    try:
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
        print(BANNER.format(api=f"{api_host}:{api_port}", kafka=broker.bootstrap_servers))
        await server.serve()
        return 0 if server.started else 1
    finally:
        broker.stop()
