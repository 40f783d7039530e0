"""Liveness and readiness probes; open without an API key and never rate limited."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from preservarium_pusher_api.api.dependencies import KafkaDep
from preservarium_pusher_api.models import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse, summary="Liveness")
async def health() -> HealthResponse:
    """The process answers; no I/O."""
    return HealthResponse(status="ok")


@router.get(
    "/health/ready",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "Kafka unreachable"}},
    summary="Readiness",
)
async def ready(kafka: KafkaDep) -> JSONResponse:
    """200 only when Kafka answered a metadata request within the last second, else 503."""
    reachable = await kafka.probe_ready()
    body = HealthResponse(status="ready" if reachable else "unavailable", kafka_connected=reachable)
    return JSONResponse(body.model_dump(), status_code=200 if reachable else 503)
