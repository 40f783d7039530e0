"""What happens to an Idempotency-Key once a late produce outcome is known."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from preservarium_pusher_api.exceptions import (
    CommandRejectedError,
    KafkaUnavailableError,
    OutcomeUnknownError,
)
from preservarium_pusher_api.models import BatchCommandResponse, CommandResponse
from preservarium_pusher_api.services.idempotency import IdempotencyService

pytestmark = pytest.mark.unit


class Keys:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def complete(self, scope: str, key: str, status_code: int, response: Any) -> None:
        self.calls.append(("complete", status_code))

    async def release(self, scope: str, key: str) -> None:
        self.calls.append(("release", None))


def item(success: bool, error_type: str | None = None) -> CommandResponse:
    return CommandResponse(
        success=success,
        request_id="r",
        message="",
        timestamp=datetime.now(UTC),
        error_type=error_type,
    )


async def settle(outcome: Any) -> list[tuple[str, Any]]:
    keys = Keys()
    service = IdempotencyService(keys, 3600, 1.0)  # type: ignore[arg-type]
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
    await service._settle_later("-", "k", OutcomeUnknownError("late", future, retry_after=1))
    return keys.calls


async def test_a_late_acknowledgement_is_stored_for_the_retries() -> None:
    assert await settle(item(True)) == [("complete", 202)]


async def test_a_permanent_refusal_frees_the_key() -> None:
    assert await settle(CommandRejectedError("too large")) == [("release", None)]


async def test_no_answer_at_all_keeps_the_key_claimed() -> None:
    assert await settle(KafkaUnavailableError("timed out", retry_after=1)) == []
    unknown_item = BatchCommandResponse(
        total_commands=2,
        successful=1,
        failed=1,
        results=[item(True), item(False, "KafkaUnavailableError")],
    )
    assert await settle(unknown_item) == []
