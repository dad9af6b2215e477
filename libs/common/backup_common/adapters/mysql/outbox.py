"""Transactional outbox: events are written in the same transaction as the state they announce,
and a relay publishes them once the broker confirms, so no event is lost when RabbitMQ is down."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from asyncmy.connection import Connection

from backup_common.adapters.mysql import db
from backup_common.domain.events import Event, parse_event
from backup_common.domain.ports import Publisher

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 15.0


async def add_to_outbox(conn: Connection, event: Event) -> None:
    """Queues an event inside the caller's transaction; it is published only if that commits."""
    await db.execute(
        conn,
        "INSERT INTO outbox (event_id, event_type, routing_key, correlation_id, payload, created_at)"
        " VALUES (%s, %s, %s, %s, %s, NOW(6))",
        (
            str(event.event_id),
            type(event).__name__,
            event.routing_key,
            str(event.correlation_id),
            event.to_json(),
        ),
    )


@dataclass(frozen=True)
class RelayResult:
    sent: int
    failed: int


class OutboxRelay:
    """Publishes unsent outbox rows in order of writing and marks each sent after its confirm.

    Several relays (one per replica) may run at once: rows are taken with SKIP LOCKED, so each row
    is published by one of them at a time. A crash between the confirm and the commit republishes a
    row; consumers are idempotent on the event id, which is the message id.
    """

    def __init__(self, pool: db.Pool, *, poll_seconds: float = 1.0, batch_size: int = 100) -> None:
        self._pool = pool
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """Asks the relay to look at the outbox now rather than at its next poll."""
        self._wakeup.set()

    async def relay_once(self, publisher: Publisher) -> RelayResult:
        # The rows stay locked until the broker confirms them. At READ COMMITTED only those rows are:
        # new events are written meanwhile instead of waiting for the broker.
        async with db.transaction(self._pool, read_committed=True) as conn:
            rows = await db.fetch_all(
                conn,
                "SELECT id, payload FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                (self._batch_size,),
            )
            if not rows:
                return RelayResult(0, 0)
            outcomes = await asyncio.gather(
                *(self._publish(publisher, row["payload"]) for row in rows), return_exceptions=True
            )
            sent = [row["id"] for row, outcome in zip(rows, outcomes, strict=True) if outcome is None]
            if sent:
                await db.execute(
                    conn,
                    f"UPDATE outbox SET sent_at = NOW(6), attempts = attempts + 1, last_error = NULL"
                    f" WHERE id IN ({', '.join(['%s'] * len(sent))})",
                    sent,
                )
            failed = 0
            for row, outcome in zip(rows, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    failed += 1
                    await db.execute(
                        conn,
                        "UPDATE outbox SET attempts = attempts + 1, last_error = %s WHERE id = %s",
                        (f"{type(outcome).__name__}: {outcome}"[:2000], row["id"]),
                    )
        if failed:
            log.warning("outbox: %d of %d events not confirmed by the broker; will retry", failed, len(rows))
        return RelayResult(len(sent), failed)

    @staticmethod
    async def _publish(publisher: Publisher, payload: bytes) -> None:
        # Bounded, so a broker that stops answering cannot hold the rows' locks indefinitely.
        await asyncio.wait_for(publisher.publish(parse_event(payload)), timeout=PUBLISH_TIMEOUT_SECONDS)

    async def run(self, publisher: Publisher) -> None:
        """Relays until cancelled, backing off while the broker or the catalog is failing."""
        backoff = self._poll_seconds
        while True:
            try:
                result = await self.relay_once(publisher)
            except Exception:
                log.exception("outbox relay pass failed")
                result = RelayResult(0, 1)
            if result.failed:
                backoff = min(backoff * 2, 30.0)
                await asyncio.sleep(backoff)
                continue
            backoff = self._poll_seconds
            if result.sent == self._batch_size:
                continue  # more rows are probably waiting
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._poll_seconds)

    async def pending_count(self) -> int:
        async with self._pool.acquire() as conn:
            row = await db.fetch_one(conn, "SELECT COUNT(*) AS n FROM outbox WHERE sent_at IS NULL")
            await conn.rollback()
        return int(row["n"]) if row else 0
