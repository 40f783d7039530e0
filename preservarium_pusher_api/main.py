"""Application factory: ``create_app(settings)`` wires services, routes and middleware."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.telemetry import TelemetryConfig
from slowapi import Limiter
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from preservarium_pusher_api.api.dependencies import (
    ApiKeyChecker,
    build_auth_dependency,
    key_fingerprint,
)
from preservarium_pusher_api.api.errors import install_error_handlers
from preservarium_pusher_api.api.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from preservarium_pusher_api.api.router import build_api_router
from preservarium_pusher_api.api.ui import install_dashboard
from preservarium_pusher_api.config import Settings, split_csv
from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.core.supervision import TaskDied, check_alive
from preservarium_pusher_api.metrics import PusherMetrics
from preservarium_pusher_api.services.commands import CommandService
from preservarium_pusher_api.services.events import EventStreams
from preservarium_pusher_api.services.idempotency import IdempotencyService
from preservarium_pusher_api.services.kafka_service import KafkaService
from preservarium_pusher_api.services.status_service import (
    RecentCommands,
    StatusComponents,
    StatusNotifier,
)
from preservarium_pusher_api.services.tracker import StatusTracker
from preservarium_pusher_api.services.webhooks import WebhookDispatcher
from preservarium_pusher_api.store import StatusStore

log = get_logger(__name__)

DESCRIPTION = """
Send commands to lab devices (Opentrons OT-2, Pico W over MQTT, CoAP sensors) over HTTP.
Each accepted command is produced to Kafka (key = `device_id`) and delivered by a protocol
connector. Errors always use one JSON shape: `{error, type, details, request_id}`.
"""


def build_limiter(settings: Settings, checker: ApiKeyChecker) -> Limiter:
    """slowapi limiter keyed by API key when auth is on, else by client address.

    The client address is the socket peer, or the forwarded one only when the peer is a
    trusted proxy (``TRUSTED_PROXIES``, applied by the proxy-headers middleware).
    """

    def rate_limit_key(request: Request) -> str:
        if settings.enable_auth:
            presented = request.headers.get(settings.api_key_header)
            if presented and checker.accepts(presented):
                return "key:" + key_fingerprint(presented)
        return "ip:" + (request.client.host if request.client else "unknown")

    return Limiter(
        key_func=rate_limit_key,
        storage_uri=settings.rate_limit_storage_uri,
        enabled=settings.rate_limit is not None,
        headers_enabled=False,
        in_memory_fallback_enabled=True,
        key_prefix="pusher",
    )


TELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def build_status(settings: Settings) -> StatusComponents:
    """Status store and its helpers for one app."""
    store = StatusStore(settings.status_store_url, pool_size=settings.status_store_pool_size)
    return StatusComponents(
        store=store,
        recent=RecentCommands(settings.recent_commands_capacity),
        notifier=StatusNotifier(),
        idempotency=IdempotencyService(
            store.idempotency_keys,
            settings.idempotency_ttl_seconds,
            settings.kafka_producer_timeout,
            max(settings.kafka_request_timeout, settings.kafka_producer_timeout),
        ),
    )


async def watch_background(app: FastAPI, tasks: list[asyncio.Task[None]]) -> None:
    """Crash-only: when a background task of the API ends, it is logged with its exception
    and the process is stopped (SIGTERM to itself, graceful), ``pusher api`` exiting 1."""
    if not tasks:
        return
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    try:
        check_alive(tasks)
    except TaskDied as exc:
        app.state.died = exc
        signal.raise_signal(signal.SIGTERM)


def create_app(settings: Settings | None = None, *, kafka: KafkaService | None = None) -> FastAPI:
    """Build the API; services start and stop with the app's lifespan.

    Args:
        settings: injected settings; read from the environment when omitted.
        kafka: the producer service to use (tests pass an in-memory stand-in); a
            ``KafkaService`` on the settings' brokers when omitted.

    Raises:
        ConfigurationError: e.g. ``ENABLE_AUTH`` without any API key.
    """
    settings = settings or Settings()
    checker = ApiKeyChecker(settings.load_api_keys())
    metrics = PusherMetrics()
    kafka = kafka or KafkaService(settings, metrics)
    status = build_status(settings) if settings.status_store_enabled else None
    commands = CommandService(settings, kafka, metrics, status)
    tracker = (
        StatusTracker(
            settings, status.store, metrics, status.notifier.notify, kafka.publish_statuses
        )
        if status is not None and settings.tracker_enabled
        else None
    )

    webhooks = (
        WebhookDispatcher(settings, metrics)
        if settings.webhooks_path is not None and settings.webhooks_in_api
        else None
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if status is not None:
                await status.store.start()
                stack.push_async_callback(status.store.stop)
                stack.push_async_callback(status.idempotency.stop)
                log.info("status store ready", url=status.store.describe())
            await kafka.start()
            stack.push_async_callback(kafka.stop)
            if tracker is not None:
                await tracker.start()
                stack.push_async_callback(tracker.stop)
            if webhooks is not None:
                await webhooks.start()
                stack.push_async_callback(webhooks.stop)
            background = [
                *kafka.tasks(),
                *(tracker.tasks() if tracker else []),
                *(webhooks.tasks() if webhooks else []),
            ]
            # Registered last, so it is cancelled first: stopping the services is no death.
            watchdog = asyncio.create_task(watch_background(app, background), name="watchdog")
            stack.callback(watchdog.cancel)
            yield

    app = FastAPI(
        title=settings.api_title,
        version=settings.api_version,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Off unless asked for: the check for a configured provider costs on every request.
        telemetry=None if settings.otel_enabled else TELEMETRY_OFF,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.kafka = kafka
    app.state.commands = commands
    app.state.status = status
    app.state.tracker = tracker
    app.state.events = EventStreams(settings, metrics)
    app.state.webhooks = webhooks
    install_error_handlers(app)

    limiter = build_limiter(settings, checker)
    app.state.limiter = limiter
    require_key = build_auth_dependency(settings, checker)
    auth = Depends(require_key) if require_key is not None else None
    app.include_router(
        build_api_router(limiter, settings.rate_limit, auth, settings.metrics_require_auth)
    )
    install_dashboard(app)

    _add_middleware(app, settings, metrics)
    return app


def _add_middleware(app: FastAPI, settings: Settings, metrics: PusherMetrics) -> None:
    # Added innermost first: a request passes RequestContext -> proxy headers -> body
    # limit -> CORS -> routes (rate limits are applied on the command routes themselves).
    origins = split_csv(settings.cors_origins)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Content-Type", settings.api_key_header, "X-Request-ID", "traceparent"],
            expose_headers=["Location", "X-Request-ID", "Retry-After"],
        )
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    trusted = split_csv(settings.trusted_proxies)
    if trusted:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=trusted)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
