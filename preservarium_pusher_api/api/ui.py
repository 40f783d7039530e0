"""The dashboard's routes: its static files under ``/ui`` and the little it must know."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from preservarium_pusher_api.ui import STATIC_DIR

router = APIRouter(include_in_schema=False)


@router.get("/ui")
async def dashboard_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/config.json")
async def dashboard_config(request: Request) -> dict[str, Any]:
    """Which header carries the key and whether one is needed (no secret in it)."""
    settings = request.app.state.settings
    return {
        "api_key_header": settings.api_key_header,
        "auth": settings.enable_auth,
        "retry_ms": settings.events_retry_ms,
    }


def install_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/ui/`` (``index.html``, its stylesheet and modules)."""
    app.include_router(router)
    app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="ui")
