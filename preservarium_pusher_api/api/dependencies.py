"""FastAPI dependencies, defined once and used by the routes through ``Annotated`` aliases.

They are ``async`` on purpose: FastAPI runs plain ``def`` dependencies in a thread pool.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.exceptions import (
    AuthenticationError,
    StatusStoreUnavailableError,
)
from preservarium_pusher_api.metrics import PusherMetrics
from preservarium_pusher_api.services.commands import CommandService
from preservarium_pusher_api.services.kafka_service import KafkaService
from preservarium_pusher_api.services.status_service import StatusComponents


async def get_settings(request: Request) -> Settings:
    """Settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_commands(request: Request) -> CommandService:
    """The command service of this app."""
    commands: CommandService = request.app.state.commands
    return commands


async def get_kafka(request: Request) -> KafkaService:
    """The Kafka producer service of this app."""
    kafka: KafkaService = request.app.state.kafka
    return kafka


async def get_metrics(request: Request) -> PusherMetrics:
    """The metrics registry of this app."""
    metrics: PusherMetrics = request.app.state.metrics
    return metrics


async def get_status(request: Request) -> StatusComponents:
    """The status store and its helpers; 503 when the store is switched off."""
    status: StatusComponents | None = request.app.state.status
    if status is None:
        raise StatusStoreUnavailableError(
            "the status store is switched off (STATUS_STORE_ENABLED=false)"
        )
    return status


def caller_scope(request: Request, settings: Settings) -> str:
    """Who is asking, for per-caller budgets and Idempotency-Keys: a fingerprint of the API
    key when auth is on (keys of others never collide), else ``-`` (everyone)."""
    if settings.enable_auth:
        presented = request.headers.get(settings.api_key_header)
        if presented:
            return key_fingerprint(presented)
    return "-"


SettingsDep = Annotated[Settings, Depends(get_settings)]
StatusDep = Annotated[StatusComponents, Depends(get_status)]
CommandsDep = Annotated[CommandService, Depends(get_commands)]
KafkaDep = Annotated[KafkaService, Depends(get_kafka)]
MetricsDep = Annotated[PusherMetrics, Depends(get_metrics)]


class ApiKeyChecker:
    """Constant-time check of the API key header against every configured key."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    def accepts(self, presented: str | None) -> bool:
        """True if ``presented`` equals one of the keys; compares against all of them."""
        if not presented:
            return False
        candidate = presented.encode()
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        return matched


def key_fingerprint(api_key: str) -> str:
    """A short, non-reversible name for a key (rate-limit buckets, never the key itself)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def build_auth_dependency(
    settings: Settings, checker: ApiKeyChecker
) -> Callable[..., Awaitable[None]] | None:
    """A dependency that enforces the API key when ``ENABLE_AUTH`` is on (None when off:
    no dependency at all, so an open API pays nothing per request for it).

    Built in the app factory because the header name is a setting; declared with
    ``APIKeyHeader`` so the OpenAPI document shows the scheme.
    """
    if not settings.enable_auth:
        return None

    header = APIKeyHeader(name=settings.api_key_header, auto_error=False)

    async def require_api_key(api_key: str | None = Security(header)) -> None:
        if not checker.accepts(api_key):
            raise AuthenticationError("missing or invalid API key")

    return require_api_key
