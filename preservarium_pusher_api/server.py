"""Serving the API with uvicorn: ``pusher api`` and ``python -m preservarium_pusher_api``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.errors import ConfigurationError
from preservarium_pusher_api.core.logging import configure_logging
from preservarium_pusher_api.core.supervision import TaskDied

# What each uvicorn worker process calls to build its app (``--workers N``).
FACTORY = "preservarium_pusher_api.server:worker_app"


def uvicorn_options(settings: Settings) -> dict[str, object]:
    """uvicorn settings shared by ``pusher api``, ``pusher dev`` and the tests."""
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


def serve_api(settings: Settings, workers: int = 1) -> int:
    """Serve the API until interrupted; returns the process exit code."""
    import uvicorn

    from preservarium_pusher_api.main import create_app

    configure_logging(settings.log_level, settings.log_format)
    options = uvicorn_options(settings)
    if workers > 1:
        if settings.status_store_enabled:
            # Migrate once here, not in every worker at the same time.
            try:
                asyncio.run(_migrate(settings))
            except ConfigurationError as exc:
                print(f"pusher api: configuration error: {exc}", file=sys.stderr)
                return 2
        # Each worker builds its settings from the same environment.
        uvicorn.run(FACTORY, factory=True, workers=workers, **options)  # type: ignore[arg-type]
        return 0
    try:
        app = create_app(settings)
    except ConfigurationError as exc:
        print(f"pusher api: configuration error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, **options)  # type: ignore[arg-type]
    died = getattr(app.state, "died", None)
    if died is not None:  # a background task ended: stopped on purpose, restart wanted
        print(f"pusher api: {died}", file=sys.stderr)
        return 1
    return 0


def worker_app() -> Any:
    """The app of one worker process: settings from the same environment as the parent,
    and the same logging (format and level) before anything logs."""
    from preservarium_pusher_api.main import create_app

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


async def _migrate(settings: Settings) -> None:
    from preservarium_pusher_api.store import StatusStore

    store = StatusStore(settings.status_store_url)
    try:
        await store.start()
    finally:
        await store.stop()


def serve_tracker(settings: Settings) -> int:
    """The status tracker alone (results topic → status store, deadline sweeper)."""
    from preservarium_pusher_api.services.tracker import run_tracker

    return _serve_alone("tracker", settings, run_tracker)


def serve_webhooks(settings: Settings) -> int:
    """The webhook dispatcher alone (``pusher webhooks``)."""
    from preservarium_pusher_api.services.webhooks import run_webhooks

    if settings.webhooks_path is None:
        print("pusher webhooks: WEBHOOKS_PATH is not set", file=sys.stderr)
        return 2
    return _serve_alone("webhooks", settings, run_webhooks)


def _serve_alone(
    name: str, settings: Settings, run: Callable[[Settings], Coroutine[Any, Any, None]]
) -> int:
    configure_logging(settings.log_level, settings.log_format)
    loop = asyncio.new_event_loop()
    main_task = loop.create_task(run(settings))
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, main_task.cancel)
    try:
        loop.run_until_complete(main_task)
    except asyncio.CancelledError:
        return 0
    except ConfigurationError as exc:
        print(f"pusher {name}: configuration error: {exc}", file=sys.stderr)
        return 2
    except TaskDied as exc:  # logged with its exception; a supervisor restarts the process
        print(f"pusher {name}: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0


def upgrade_database(settings: Settings, revision: str = "head") -> str | None:
    """Migrate the status store at ``STATUS_STORE_URL``; returns the revision reached.

    Raises:
        ConfigurationError: the URL is not usable, or the store is newer than this service.
    """
    from preservarium_pusher_api.store import StatusStore
    from preservarium_pusher_api.store.migrate import upgrade

    async def run() -> str | None:
        store = StatusStore(settings.status_store_url)
        try:
            return await upgrade(store.engine, revision)
        finally:
            await store.stop()

    return asyncio.run(run())


def add_api_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``pusher api`` (and ``python -m preservarium_pusher_api``)."""
    parser.add_argument("--host", help="bind address (default API_HOST)")
    parser.add_argument("--port", type=int, help="port (default API_PORT)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")


def run_api(args: argparse.Namespace) -> int:
    """Serve the API with settings from the environment and the flags."""
    overrides = {k: v for k, v in {"api_host": args.host, "api_port": args.port}.items() if v}
    return serve_api(Settings(**overrides), args.workers)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m preservarium_pusher_api [--host H] [--port P] [--workers N]``."""
    parser = argparse.ArgumentParser(prog="python -m preservarium_pusher_api")
    add_api_arguments(parser)
    return run_api(parser.parse_args(argv))
