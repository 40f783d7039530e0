"""The API in process, on an in-memory Kafka: no broker, no server, no status store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.main import create_app
from tests.fakes import InMemoryKafka


@dataclass
class InProcessApi:
    """An app on an in-memory Kafka and an HTTP client talking to it through ASGI."""

    settings: Settings
    kafka: InMemoryKafka
    client: httpx.AsyncClient
    app: Any


def unit_settings(**overrides: Any) -> Settings:
    """Settings for an app that needs nothing outside the process."""
    values: dict[str, Any] = {
        "status_store_enabled": False,
        "tracker_enabled": False,
        "rate_limit": None,
        "kafka_command_topic": "commands-unit",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def in_process(settings: Settings) -> AsyncIterator[InProcessApi]:
    """Run the app's lifespan and yield a client bound to it."""
    kafka = InMemoryKafka()
    app = create_app(settings, kafka=kafka)  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pusher.test") as client:
            yield InProcessApi(settings, kafka, client, app)


ApiFactory = Callable[..., contextlib.AbstractAsyncContextManager[InProcessApi]]


@pytest.fixture
def make_api() -> ApiFactory:
    """``async with make_api(max_batch_size=3) as api:`` — an in-process app with overrides."""

    def factory(**overrides: Any) -> contextlib.AbstractAsyncContextManager[InProcessApi]:
        return in_process(unit_settings(**overrides))

    return factory
