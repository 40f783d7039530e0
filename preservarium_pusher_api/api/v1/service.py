"""The service's own state for operators, and metrics for Prometheus.

"Service status" here is the process's state (version, Kafka, uptime); a command's status
is served by ``status.py``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from preservarium_pusher_api.api.common import error_docs
from preservarium_pusher_api.api.dependencies import CommandsDep, MetricsDep
from preservarium_pusher_api.models import ServiceStatus

service_router = APIRouter(tags=["monitoring"])
metrics_router = APIRouter(tags=["monitoring"])


@service_router.get(
    "/status", response_model=ServiceStatus, responses=error_docs(401), summary="Service status"
)
async def service_status(commands: CommandsDep) -> ServiceStatus:
    """Version, Kafka connectivity, uptime, commands processed, last error (API key needed)."""
    return commands.service_status()


@service_router.get(
    "/webhooks", responses=error_docs(401), summary="Webhook subscriptions and their state"
)
async def webhooks(request: Request) -> dict[str, Any]:
    """Each subscription's state (active, failing, paused) and counts, and what the
    subscriptions file refused; secrets are never shown. ``running`` is false when this
    instance does not deliver (no ``WEBHOOKS_PATH``, or ``pusher webhooks`` does)."""
    dispatcher = request.app.state.webhooks
    if dispatcher is None:
        return {"running": False, "subscriptions": [], "refused": {}}
    return {"running": True, **dispatcher.describe()}


@metrics_router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}, "application/json": {}}}},
)
async def metrics(registry: MetricsDep, accept: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus text exposition; a JSON digest when the client accepts only JSON."""
    if accept and "application/json" in accept and "text/plain" not in accept:
        return JSONResponse(registry.summary())
    return Response(registry.exposition(), media_type=CONTENT_TYPE_LATEST)
