"""The command service: submit, batch, idempotency and cancel.

Routes hand it validated requests and translate what it returns or raises into HTTP; it
turns requests into Kafka command records, waits for the broker's acknowledgement, runs a
submission at most once per Idempotency-Key, remembers accepted commands for read-your-writes,
and owns the cancel sequence (check the status, produce the cancel record, note it).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from preservarium_pusher_api.config import Settings
from preservarium_pusher_api.core.contract import (
    CommandStatus,
)
from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.exceptions import (
    BatchTooLargeError,
    CommandNotCancellableError,
    CommandNotFoundError,
    InvalidQueryError,
    StatusStoreUnavailableError,
    TooManyLongPollsError,
)
from preservarium_pusher_api.metrics import PusherMetrics
from preservarium_pusher_api.models import (
    BatchCommandRequest,
    BatchCommandResponse,
    CancelResponse,
    CommandRequest,
    CommandResponse,
    ServiceStatus,
)
from preservarium_pusher_api.services.idempotency import StoredAnswer, request_fingerprint
from preservarium_pusher_api.services.kafka_service import (
    KafkaService,
)
from preservarium_pusher_api.services.producer import CommandProducer
from preservarium_pusher_api.services.status_service import StatusComponents
from preservarium_pusher_api.store import (
    CommandRecord,
    InvalidCursorError,
    Page,
)

log = get_logger(__name__)

SERVICE_NAME = "preservarium-pusher-api"

# Operation names hashed into each Idempotency-Key's fingerprint. They are the paths the
# keys have always been recorded under, so keys stored by earlier versions still replay.
SUBMIT_OPERATION = "/api/v1/commands"
BATCH_OPERATION = "/api/v1/commands/batch"


def item_request_ids(bound: str, count: int) -> list[str]:
    """Request ids of a batch's items, derived from the id bound to its Idempotency-Key:
    the same on every attempt, distinct per item."""
    try:
        base = uuid.UUID(bound)
    except ValueError:
        base = uuid.uuid5(uuid.NAMESPACE_URL, bound)
    return [str(uuid.uuid5(base, str(index))) for index in range(count)]


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """An Idempotency-Key and the scope it belongs to (the caller's API key, or ``-``)."""

    scope: str
    key: str


class CommandService:
    """Submits, batches and cancels commands; keeps the counters of the service status."""

    def __init__(
        self,
        settings: Settings,
        kafka: KafkaService,
        metrics: PusherMetrics,
        status: StatusComponents | None = None,
    ) -> None:
        self._settings = settings
        self._kafka = kafka
        self._status = status
        self.producer = CommandProducer(
            settings, kafka, metrics, status.recent if status is not None else None
        )
        self._started = time.monotonic()
        self._long_polls: dict[str, int] = {}  # open long-polls per caller scope

    # -- what routes call -------------------------------------------------------------

    async def submit(
        self,
        request: CommandRequest,
        traceparent: str | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> CommandResponse | StoredAnswer:
        """Produce one command; with an Idempotency-Key, at most once per key.

        Returns the answer, or with a key the stored answer (``replayed`` when it was an
        earlier request's).

        Raises:
            PayloadTooLargeError, KafkaUnavailableError, CommandRejectedError,
            IdempotencyKeyConflictError, IdempotencyKeyInProgressError,
            StatusStoreUnavailableError (a key was given but the store is off).
        """
        if idempotency is None:
            return await self.producer.push_command(request, traceparent)

        async def produce(request_id: str) -> tuple[int, Any]:
            accepted = await self.producer.push_command(request, traceparent, request_id)
            return 202, accepted.model_dump(mode="json")

        return await self._once(
            idempotency, SUBMIT_OPERATION, request.model_dump(mode="json"), produce
        )

    async def submit_batch(
        self,
        batch: BatchCommandRequest,
        traceparent: str | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> BatchCommandResponse | StoredAnswer:
        """Produce every command of a batch; failures are per item (see ``push_commands_batch``).

        Raises:
            BatchTooLargeError: more than ``MAX_BATCH_SIZE`` commands; nothing is produced.
            and what :meth:`submit` raises.
        """
        limit = self._settings.max_batch_size
        if len(batch.commands) > limit:
            raise BatchTooLargeError(
                f"batch holds {len(batch.commands)} commands; MAX_BATCH_SIZE is {limit}",
                details=[{"loc": ["body", "commands"], "max_items": limit}],
            )
        if idempotency is None:
            return await self.producer.push_commands_batch(batch.commands, traceparent)

        async def produce(request_id: str) -> tuple[int, Any]:
            ids = item_request_ids(request_id, len(batch.commands))
            answer = await self.producer.push_commands_batch(batch.commands, traceparent, ids)
            return 202, answer.model_dump(mode="json")

        return await self._once(
            idempotency, BATCH_OPERATION, batch.model_dump(mode="json"), produce
        )

    async def cancel(self, request_id: str) -> CancelResponse:
        """Ask the command's connector to drop it; only a queued command can be cancelled.

        Raises:
            CommandNotFoundError, CommandNotCancellableError, StatusStoreUnavailableError,
            KafkaUnavailableError, CommandRejectedError.
        """
        status = self._require_status()
        record = await status.read(request_id)
        if record is None:
            raise CommandNotFoundError(f"no command with request_id {request_id}")
        if record.status != CommandStatus.QUEUED:
            raise CommandNotCancellableError(
                f"command is {record.status.value}; only queued commands can be cancelled",
                details=[{"request_id": request_id, "status": record.status.value}],
            )
        await self.producer.push_cancel(request_id, record.device_id, record.protocol)
        await status.store.add_note(request_id, CommandStatus.QUEUED, "cancel requested")
        status.notifier.notify([request_id])
        return CancelResponse(
            request_id=request_id,
            status=record.status,
            message="Cancel requested; the status becomes cancelled when the connector drops "
            "the command, or the history records that it came too late.",
        )

    async def read(
        self,
        request_id: str,
        wait: float = 0,
        last_status: CommandStatus | None = None,
        scope: str = "-",
    ) -> CommandRecord:
        """The command's status and history; with ``wait``, a long-poll.

        A long-poll answers as soon as the status differs from ``last_status`` (default:
        the current one) or is terminal, at the latest after ``wait`` seconds.

        Raises:
            CommandNotFoundError, StatusStoreUnavailableError.
            TooManyLongPollsError: ``scope`` (the caller) holds MAX_LONG_POLLS_PER_KEY already.
        """
        status = self._require_status()
        record = await status.read(request_id)
        if record is None:
            raise CommandNotFoundError(f"no command with request_id {request_id}")
        seen = last_status or record.status
        wait = min(wait, self._settings.long_poll_max_seconds)
        if wait > 0 and record.status == seen and not record.status.is_terminal:
            held = self._long_polls.get(scope, 0)
            if held >= self._settings.max_long_polls_per_key:
                raise TooManyLongPollsError(
                    f"{held} long-polls already open for this API key "
                    f"(MAX_LONG_POLLS_PER_KEY); retry later or poll without wait",
                    retry_after=1,
                )
            self._long_polls[scope] = held + 1
            try:
                latest = await status.notifier.wait_for_change(
                    status.read, request_id, seen, wait, self._settings.long_poll_recheck_seconds
                )
            finally:
                remaining = self._long_polls[scope] - 1
                if remaining:
                    self._long_polls[scope] = remaining
                else:
                    del self._long_polls[scope]
            record = latest or record
        return record

    async def list(
        self,
        *,
        device_id: str | None = None,
        state: CommandStatus | None = None,
        since: float | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Commands, newest first, keyset-paginated; this instance's latest ones included.

        Raises:
            InvalidQueryError: ``cursor`` was not issued by a listing.
            StatusStoreUnavailableError.
        """
        status = self._require_status()
        try:
            return await status.list(
                device_id=device_id, status=state, since=since, limit=limit, cursor=cursor
            )
        except InvalidCursorError as exc:
            raise InvalidQueryError(
                "cursor is not valid; pass next_cursor from a previous page",
                details=[{"loc": ["query", "cursor"]}],
            ) from exc

    async def _once(
        self,
        idempotency: IdempotencyKey,
        operation: str,
        body: Any,
        produce: Callable[[str], Awaitable[tuple[int, Any]]],
    ) -> StoredAnswer:
        claims = self._require_status().idempotency
        fingerprint = request_fingerprint(operation, body)
        return await claims.run(idempotency.scope, idempotency.key, fingerprint, produce)

    def _require_status(self) -> StatusComponents:
        if self._status is None:
            raise StatusStoreUnavailableError(
                "the status store is switched off (STATUS_STORE_ENABLED=false)"
            )
        return self._status

    def service_status(self) -> ServiceStatus:
        """The service's own state for ``GET /api/v1/status`` (not a command's status)."""
        uptime = time.monotonic() - self._started
        return ServiceStatus(
            service=SERVICE_NAME,
            version=self._settings.api_version,
            kafka_connected=self._kafka.connected,
            uptime=str(timedelta(seconds=int(uptime))),
            uptime_seconds=round(uptime, 3),
            commands_processed=self.producer.commands_processed,
            last_error=self._kafka.last_error,
        )
