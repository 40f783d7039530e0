"""Baseline for the benchmark: validates the same CommandRequest and answers 202, no Kafka."""

from __future__ import annotations

import uuid

from fastapi import FastAPI

from preservarium_pusher_api.core.contract import utc_now
from preservarium_pusher_api.models import CommandRequest, CommandResponse

app = FastAPI()


@app.post("/api/v1/commands", status_code=202, response_model=CommandResponse)
async def create_command(command: CommandRequest) -> CommandResponse:
    """Validate and answer, as the real route does minus producing."""
    return CommandResponse(
        success=True, request_id=str(uuid.uuid4()), message="Command accepted", timestamp=utc_now()
    )
