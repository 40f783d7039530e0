"""All routes of the API, assembled once: the ``/api/v1`` prefix, auth and rate limits.

Route modules declare paths relative to the prefix and never import each other; this is
the one place that decides which routes need an API key and which are rate limited.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from slowapi import Limiter

from preservarium_pusher_api.api.common import API_PREFIX, Endpoint, RateLimited
from preservarium_pusher_api.api.v1 import commands, devices, events, health, service, status


def rate_limiter(limiter: Limiter, rate_limit: str | None) -> RateLimited:
    """A decorator applying ``rate_limit`` through slowapi (identity when no limit is set)."""

    def limited(endpoint: Endpoint) -> Endpoint:
        return limiter.limit(rate_limit)(endpoint) if rate_limit else endpoint

    return limited


def build_api_router(
    limiter: Limiter, rate_limit: str | None, auth: Any, metrics_auth: bool = False
) -> APIRouter:
    """Every route: probes at the root, the rest under ``/api/v1``.

    Args:
        limiter: the app's slowapi limiter.
        rate_limit: e.g. ``"100/minute"`` for submissions and cancels; None for no limit.
        auth: the ``Depends(...)`` enforcing the API key; None when auth is off.
        metrics_auth: ``/api/v1/metrics`` needs the key too (METRICS_REQUIRE_AUTH).
    """
    limited = rate_limiter(limiter, rate_limit)
    secured = [auth] if auth is not None else []
    v1 = APIRouter(prefix=API_PREFIX)
    v1.include_router(commands.build_router(limited), dependencies=secured)
    v1.include_router(status.build_router(limited), dependencies=secured)
    v1.include_router(devices.build_router(), dependencies=secured)
    v1.include_router(events.build_router(), dependencies=secured)
    v1.include_router(service.service_router, dependencies=secured)
    # Scraped by Prometheus without a key unless METRICS_REQUIRE_AUTH asks for one.
    v1.include_router(service.metrics_router, dependencies=secured if metrics_auth else [])
    root = APIRouter()
    root.include_router(health.router)
    root.include_router(v1)
    return root


__all__ = ["API_PREFIX", "build_api_router", "rate_limiter"]
