"""Idempotency-Key claims: one row per (scope, key), claimed with ON CONFLICT DO NOTHING.

Of several concurrent claimants exactly one becomes the owner; the others read what the
owner left (pending, or done with its answer). The rules for using a claim (wait, replay,
conflict) are the command service's (``services.idempotency``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from preservarium_pusher_api.store.records import Claim
from preservarium_pusher_api.store.schema import idempotency


class IdempotencyKeys:
    """Claims of Idempotency-Keys on the status store's engine."""

    def __init__(self, engine: AsyncEngine, insert: Callable[..., Any]) -> None:
        self._engine = engine
        self._insert = insert

    async def claim(
        self,
        scope: str,
        key: str,
        request_hash: str,
        ttl_seconds: float,
        stale_seconds: float,
        request_id: str,
    ) -> Claim:
        """Claim ``key`` for a new request bound to ``request_id``, or return what an
        earlier request left.

        Exactly one of several concurrent claimants becomes the owner. A claim older than
        ``ttl_seconds`` is forgotten. A pending claim older than ``stale_seconds`` (its owner
        died, or never learnt whether its record landed) is taken over with the request id
        it was bound to, so producing again can only repeat that same request id.
        """
        now = time.time()
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(idempotency)
                .where(idempotency.c.scope == scope, idempotency.c.key == key)
                .where(idempotency.c.created_at < now - ttl_seconds)
            )
            taken_over = await conn.execute(
                update(idempotency)
                .where(
                    idempotency.c.scope == scope,
                    idempotency.c.key == key,
                    idempotency.c.state == "pending",
                    idempotency.c.request_hash == request_hash,
                    idempotency.c.created_at < now - stale_seconds,
                )
                .values(created_at=now)
                .returning(idempotency.c.request_id)
            )
            stale = taken_over.first()
            if stale is not None:
                return Claim(
                    owner=True,
                    request_hash=request_hash,
                    state="pending",
                    request_id=stale.request_id or request_id,
                )
            inserted = await conn.execute(
                self._insert(idempotency)
                .values(
                    scope=scope,
                    key=key,
                    request_hash=request_hash,
                    state="pending",
                    created_at=now,
                    request_id=request_id,
                )
                .on_conflict_do_nothing()
            )
            if inserted.rowcount:
                return Claim(
                    owner=True, request_hash=request_hash, state="pending", request_id=request_id
                )
            row = (
                await conn.execute(
                    select(idempotency).where(
                        idempotency.c.scope == scope, idempotency.c.key == key
                    )
                )
            ).first()
        if row is None:  # removed between our insert and read; let the caller retry
            return Claim(owner=False, request_hash=request_hash, state="pending")
        return Claim(
            owner=False,
            request_hash=row.request_hash,
            state=row.state,
            status_code=row.status_code,
            response=row.response,
            request_id=row.request_id,
        )

    async def complete(self, scope: str, key: str, status_code: int, response: Any) -> None:
        """Store the response the key's owner sent."""
        async with self._engine.begin() as conn:
            await conn.execute(
                update(idempotency)
                .where(idempotency.c.scope == scope, idempotency.c.key == key)
                .values(state="done", status_code=status_code, response=response)
            )

    async def release(self, scope: str, key: str) -> None:
        """Forget a pending claim whose request failed, so a retry can proceed."""
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(idempotency).where(
                    idempotency.c.scope == scope,
                    idempotency.c.key == key,
                    idempotency.c.state == "pending",
                )
            )

    async def purge(self, older_than: float) -> int:
        """Delete keys created before ``older_than`` (epoch seconds)."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(idempotency).where(idempotency.c.created_at < older_than)
            )
        return int(result.rowcount or 0)
