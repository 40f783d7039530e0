"""Prometheus metrics and the health endpoint of a connector (``CONNECTOR_METRICS_PORT``).

``GET /metrics`` is the Prometheus text format; ``GET /health`` answers 200 when the
connector consumes from Kafka and its transport is connected, 503 (with the reason) when
not, so an orchestrator can restart or route around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import uvicorn
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from preservarium_pusher_api.core.errors import ConfigurationError

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ConnectorMetrics:
    """Every metric a connector exports, on its own registry."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "pusher_connector_deliveries",
            "Commands by outcome: delivered, succeeded, failed, timed_out, expired, "
            "cancelled, duplicate (already sent, not sent again), uncertain, dlq",
            ["protocol", "outcome"],
            registry=self.registry,
        )
        self.retries = Counter(
            "pusher_connector_retries",
            "Delivery attempts repeated because the transport was not connected",
            ["protocol"],
            registry=self.registry,
        )
        self.busy_retries = Counter(
            "pusher_connector_busy_retries",
            "Commands offered again because the device answered that it was busy",
            ["protocol"],
            registry=self.registry,
        )
        self.delivery_latency = Histogram(
            "pusher_connector_delivery_seconds",
            "From taking the record off Kafka to the transport's acknowledgement",
            ["protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.answer_latency = Histogram(
            "pusher_connector_answer_seconds",
            "From handing a command to the transport to the device's answer",
            ["protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "pusher_connector_in_flight",
            "Records taken from Kafka and not finished",
            ["protocol"],
            registry=self.registry,
        )
        self.partition_lag = Gauge(
            "pusher_connector_partition_lag",
            "Records in the partition not yet fetched by this connector",
            ["protocol", "partition"],
            registry=self.registry,
        )
        self.reconnects = Counter(
            "pusher_connector_reconnects",
            "Connections to the transport (broker or device) re-established",
            ["protocol"],
            registry=self.registry,
        )
        self.transport_connected = Gauge(
            "pusher_connector_transport_connected",
            "1 while the transport is connected",
            ["protocol"],
            registry=self.registry,
        )
        self.device_answers = Counter(
            "pusher_connector_device_answers",
            "Answers read from devices: success, error (to a command this replica sent), "
            "unclaimed (sent by another replica or before a restart; reported all the same), "
            "invalid (could not be decoded)",
            ["protocol", "outcome"],
            registry=self.registry,
        )
        self.parked = Counter(
            "pusher_connector_parked_commands",
            "Commands parked while their device was offline (out of the partition's "
            "uncommitted window)",
            ["protocol"],
            registry=self.registry,
        )
        self.rejected_messages = Counter(
            "pusher_connector_rejected_messages",
            "Device messages dropped unread: too_large, too_deep, not_utf8, bad_device_id, "
            "bad_topic, invalid, error",
            ["protocol", "reason"],
            registry=self.registry,
        )
        # Every series exists from the start (at 0), so dashboards and alerts see it.
        for outcome in ("delivered", "succeeded", "failed", "timed_out", "expired"):
            self.deliveries.labels(protocol, outcome)
        for metric in (
            self.retries,
            self.busy_retries,
            self.delivery_latency,
            self.answer_latency,
            self.in_flight,
            self.reconnects,
            self.transport_connected,
        ):
            metric.labels(protocol)

    def outcome(self, outcome: str) -> None:
        """Count one command outcome."""
        self.deliveries.labels(self.protocol, outcome).inc()


def health_app(metrics: ConnectorMetrics, check: Callable[[], dict[str, Any]]) -> Starlette:
    """The metrics/health ASGI app; ``check()`` returns ``{"ok": bool, ...}``."""

    async def health(_: Request) -> JSONResponse:
        state = check()
        return JSONResponse(state, status_code=200 if state.get("ok") else 503)

    async def prometheus(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/health", health), Route("/metrics", prometheus)])


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside the connector's loop: signals belong to the connector, not to it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve_health(
    app: Starlette, host: str, port: int
) -> AsyncIterator[uvicorn.Server | None]:
    """Serve ``app`` on ``host:port`` while the context is open (port 0: not served).

    Raises:
        ConfigurationError: the port cannot be bound (in use, not allowed), before anything
            else starts.
    """
    if not port:
        yield None
        return
    try:
        # Bound here, so that a taken port is a clear error instead of uvicorn's exit.
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve health/metrics on {host}:{port}: {exc.strerror or exc}"
        ) from exc
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="off"
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="connector-health")
    try:
        yield server
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
