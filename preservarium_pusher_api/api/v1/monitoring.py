"""Service status for operators and metrics for Prometheus."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from preservarium_pusher_api.api.dependencies import MetricsDep, PusherDep
from preservarium_pusher_api.core.models import ServiceStatus

status_router = APIRouter(tags=["monitoring"])
metrics_router = APIRouter(tags=["monitoring"])


@status_router.get("/api/v1/status", response_model=ServiceStatus, summary="Service status")
async def service_status(pusher: PusherDep) -> ServiceStatus:
    """Version, Kafka connectivity, uptime, commands processed, last error (API key needed)."""
    return pusher.status()


@metrics_router.get(
    "/api/v1/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}, "application/json": {}}}},
)
async def metrics(registry: MetricsDep, accept: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus text exposition; a JSON digest when the client accepts only JSON."""
    if accept and "application/json" in accept and "text/plain" not in accept:
        return JSONResponse(registry.summary())
    return Response(registry.exposition(), media_type=CONTENT_TYPE_LATEST)
