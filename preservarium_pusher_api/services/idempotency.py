"""``Idempotency-Key`` handling for command submissions.

The first request with a key claims it in the status store (one row per scope and key,
inserted with ON CONFLICT DO NOTHING, so of several concurrent requests exactly one wins),
produces, and stores its answer. A later request with the same key and the same body gets
that answer back without producing anything; a different body is a conflict. A request
that arrives while the owner is still producing waits for the owner's answer.

The claim binds a request id to the key before anything is produced, and every attempt
under the key produces with it. When Kafka does not acknowledge in time the outcome is
unknown (the record may still land): the claim stays pending — retries are told the
request is in progress — until the acknowledgement settles it (the answer is stored) or a
refusal releases it. An owner that dies meanwhile leaves a stale claim; the next attempt
takes it over with the same request id, so at worst a record is repeated under one id,
which connectors and devices deduplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from preservarium_pusher_api.core.logging import get_logger
from preservarium_pusher_api.exceptions import (
    CommandRejectedError,
    IdempotencyKeyConflictError,
    IdempotencyKeyInProgressError,
    KafkaUnavailableError,
    OutcomeUnknownError,
    PusherError,
)
from preservarium_pusher_api.models import BatchCommandResponse
from preservarium_pusher_api.store import STORE_ERRORS, IdempotencyKeys

log = get_logger(__name__)

# Printable ASCII without spaces, as an HTTP header value that is safe to store and log.
IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")


def request_fingerprint(route: str, body: Any) -> str:
    """SHA-256 of the route and the validated body (key order and spacing do not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{route}\n{canonical}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    """The answer sent for a key: status code and JSON body."""

    status_code: int
    body: Any
    replayed: bool


class IdempotencyService:
    """Runs a submission at most once per (scope, key)."""

    def __init__(
        self,
        keys: IdempotencyKeys,
        ttl_seconds: float,
        producer_timeout: float,
        request_timeout: float | None = None,
    ) -> None:
        self._keys = keys
        self._ttl = ttl_seconds
        # A pending claim older than this has lost its owner (crash, or an acknowledgement
        # that never came within the Kafka client's own request timeout): taken over.
        self._stale = max(30.0, producer_timeout * 3, (request_timeout or 0) + 5.0)
        self._wait = producer_timeout + 5.0
        self._settling: set[asyncio.Task[None]] = set()

    async def run(
        self,
        scope: str,
        key: str,
        fingerprint: str,
        submit: Callable[[str], Awaitable[tuple[int, Any]]],
    ) -> StoredAnswer:
        """Answer with ``submit(request_id)``'s result, or with the stored one for a
        repeated key. ``request_id`` is the one bound to the key.

        Raises:
            IdempotencyKeyConflictError: the key was used with a different request.
            IdempotencyKeyInProgressError: the first request is still running after waiting.
            PusherError: whatever ``submit`` raised (the claim is released for a retry).
        """
        deadline = time.monotonic() + self._wait
        delay = 0.02
        while True:
            claim = await self._keys.claim(
                scope, key, fingerprint, self._ttl, self._stale, str(uuid.uuid4())
            )
            if claim.owner:
                return await self._submit(scope, key, claim.request_id or str(uuid.uuid4()), submit)
            if claim.request_hash != fingerprint:
                raise IdempotencyKeyConflictError(
                    "Idempotency-Key was already used with a different request",
                    details=[{"loc": ["header", "Idempotency-Key"]}],
                )
            if claim.state == "done" and claim.status_code is not None:
                log.info("idempotent replay", status_code=claim.status_code)
                return StoredAnswer(claim.status_code, claim.response, replayed=True)
            if time.monotonic() >= deadline:
                raise IdempotencyKeyInProgressError(
                    "a request with this Idempotency-Key is still being processed",
                    retry_after=1,
                )
            # Another request owns the key and is producing: wait for its answer.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _submit(
        self,
        scope: str,
        key: str,
        request_id: str,
        submit: Callable[[str], Awaitable[tuple[int, Any]]],
    ) -> StoredAnswer:
        try:
            status_code, body = await submit(request_id)
        except OutcomeUnknownError as exc:
            # The record may land: keep the claim until Kafka decides.
            task = asyncio.create_task(self._settle_later(scope, key, exc))
            self._settling.add(task)
            task.add_done_callback(self._settling.discard)
            raise
        except BaseException as exc:
            # Nothing was accepted: let a retry with the same key try again.
            await asyncio.shield(self._keys.release(scope, key))
            if not isinstance(exc, PusherError | asyncio.CancelledError):
                log.error("submission with Idempotency-Key failed", error=type(exc).__name__)
            raise
        try:
            await asyncio.shield(self._keys.complete(scope, key, status_code, body))
        except STORE_ERRORS as exc:
            # The command is accepted: answer it. The pending claim makes a retry wait and,
            # once stale, run again; that is logged here so it can be traced.
            log.error(
                "accepted, but the Idempotency-Key answer was not stored",
                error_type=type(exc).__name__,
            )
        return StoredAnswer(status_code, body, replayed=False)

    async def _settle_later(self, scope: str, key: str, unknown: OutcomeUnknownError) -> None:
        """Store the answer a late acknowledgement gives, or release the key when Kafka
        refused the record for good. If Kafka never answered, whether the record landed is
        still unknown: the claim stays pending until it is stale, and the next attempt
        produces under the same request id (a repeat that connectors deduplicate)."""
        try:
            answer = await unknown.outcome
        except CommandRejectedError as exc:  # refused for good: nothing was written
            log.warning("Idempotency-Key released: not accepted", error=type(exc).__name__)
            with contextlib.suppress(*STORE_ERRORS):
                await self._keys.release(scope, key)
            return
        except Exception as exc:
            log.warning("Idempotency-Key outcome still unknown", error=type(exc).__name__)
            return
        if isinstance(answer, BatchCommandResponse) and any(
            item.error_type == KafkaUnavailableError.__name__ for item in answer.results
        ):
            log.warning("Idempotency-Key outcome still unknown for some batch items")
            return
        try:
            await self._keys.complete(scope, key, 202, answer.model_dump(mode="json"))
        except STORE_ERRORS as exc:
            log.error(
                "accepted late, but the Idempotency-Key answer was not stored",
                error_type=type(exc).__name__,
            )

    async def stop(self) -> None:
        """Wait briefly for answers still being settled."""
        if self._settling:
            await asyncio.wait(self._settling, timeout=5)
