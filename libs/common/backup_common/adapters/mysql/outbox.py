"""Transactional outbox: events are written in the same transaction as the state they announce,
and a relay publishes them once the broker confirms, so no event is lost when RabbitMQ is down.

An event the broker refuses (no queue bound to a request's routing key, a nack) is retried with
growing delays and, after a bounded number of attempts, parked with its reason; meanwhile newer
events go out at once. While the broker is unreachable nothing is parked: every event waits for it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from asyncmy.connection import Connection

from backup_common.adapters.mysql import db
from backup_common.adapters.waiting import wait_event
from backup_common.domain.events import Event, parse_event
from backup_common.domain.ports import EventRefused, Publisher

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 15.0
MAX_ERROR_TEXT = 2000


async def add_to_outbox(conn: Connection, event: Event) -> None:
    """Queues an event inside the caller's transaction; it is published only if that commits."""
    await db.execute(
        conn,
        "INSERT INTO outbox (event_id, event_type, routing_key, correlation_id, payload, created_at, next_attempt_at)"
        " VALUES (%s, %s, %s, %s, %s, NOW(6), NOW(6))",
        (
            str(event.event_id),
            type(event).__name__,
            event.routing_key,
            str(event.correlation_id),
            event.to_json(),
        ),
    )


@dataclass(frozen=True)
class RetryPolicy:
    """How the relay treats an event the broker refused: retried after ``first_delay`` seconds,
    doubling up to ``max_delay``, and parked once it has been tried ``max_attempts`` times."""

    max_attempts: int = 12
    first_delay: float = 1.0
    max_delay: float = 300.0

    def delay(self, attempts: int) -> float:
        """Seconds before the next try of an event tried ``attempts`` times."""
        return float(min(self.first_delay * 2 ** max(attempts - 1, 0), self.max_delay))


@dataclass(frozen=True)
class RelayResult:
    sent: int
    refused: int = 0  # retried later, or parked
    parked: int = 0
    unavailable: int = 0  # the broker did not answer: tried again on the next pass
    batch_full: bool = False


@dataclass(frozen=True)
class ParkedEvent:
    id: int
    event_id: str
    event_type: str
    routing_key: str
    attempts: int
    last_error: str | None
    created_at: Any
    parked_at: Any


class OutboxRelay:
    """Publishes due outbox rows and marks each sent after its confirm.

    Several relays (one per replica) may run at once: rows are taken with SKIP LOCKED, so each row
    is published by one of them at a time. A crash between the confirm and the commit republishes a
    row; consumers are idempotent on the event id, which is the message id.
    """

    def __init__(
        self,
        pool: db.Pool,
        *,
        poll_seconds: float = 1.0,
        batch_size: int = 100,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._pool = pool
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._retry = retry or RetryPolicy()
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
                "SELECT id, event_id, event_type, payload, attempts FROM outbox"
                " WHERE sent_at IS NULL AND parked_at IS NULL AND next_attempt_at <= NOW(6)"
                " ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
                (self._batch_size,),
            )
            if not rows:
                return RelayResult(0)
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
            refused = parked = unavailable = 0
            for row, outcome in zip(rows, outcomes, strict=True):
                if not isinstance(outcome, BaseException):
                    continue
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                error = f"{type(outcome).__name__}: {outcome}"[:MAX_ERROR_TEXT]
                attempts = int(row["attempts"]) + 1
                if not isinstance(outcome, EventRefused):
                    unavailable += 1
                    await db.execute(
                        conn,
                        "UPDATE outbox SET attempts = %s, last_error = %s WHERE id = %s",
                        (attempts, error, row["id"]),
                    )
                    continue
                refused += 1
                if attempts >= self._retry.max_attempts:
                    parked += 1
                    log.error(
                        "outbox: parking %s %s after %d attempts; `backupctl outbox retry` sends it again: %s",
                        row["event_type"], row["event_id"], attempts, error,
                    )  # fmt: skip
                    await db.execute(
                        conn,
                        "UPDATE outbox SET attempts = %s, last_error = %s, parked_at = NOW(6) WHERE id = %s",
                        (attempts, error, row["id"]),
                    )
                else:
                    await db.execute(
                        conn,
                        "UPDATE outbox SET attempts = %s, last_error = %s,"
                        " next_attempt_at = NOW(6) + INTERVAL %s MICROSECOND WHERE id = %s",
                        (attempts, error, round(self._retry.delay(attempts) * 1_000_000), row["id"]),
                    )
        if refused - parked:
            log.warning("outbox: the broker refused %d events; each is retried later", refused - parked)
        if unavailable:
            log.warning("outbox: %d of %d events not confirmed by the broker; will retry", unavailable, len(rows))
        return RelayResult(len(sent), refused, parked, unavailable, len(rows) == self._batch_size)

    @staticmethod
    async def _publish(publisher: Publisher, payload: bytes) -> None:
        # Bounded, so a broker that stops answering cannot hold the rows' locks indefinitely.
        async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
            await publisher.publish(parse_event(payload))

    async def run(self, publisher: Publisher) -> None:
        """Relays until cancelled. Backs off while the broker or the catalog is unavailable; an event
        the broker refused waits on its own, so it never holds back the others."""
        backoff = self._poll_seconds
        while True:
            try:
                result = await self.relay_once(publisher)
            except Exception:
                log.exception("outbox relay pass failed")
                result = RelayResult(0, unavailable=1)
            if result.unavailable:
                await self._wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = self._poll_seconds
            if result.batch_full:
                continue  # more rows are probably due
            await self._wait(self._poll_seconds)

    async def _wait(self, seconds: float) -> None:
        """Sleeps ``seconds``, or less if woken."""
        self._wakeup.clear()
        await wait_event(self._wakeup, seconds)

    async def counts(self) -> tuple[int, int]:
        """Events waiting to be sent, and events parked."""
        async with db.transaction(self._pool, read_committed=True) as conn:
            row = await db.fetch_one(
                conn,
                "SELECT COALESCE(SUM(parked_at IS NULL), 0) AS pending,"
                " COALESCE(SUM(parked_at IS NOT NULL), 0) AS parked FROM outbox WHERE sent_at IS NULL",
            )
        return (int(row["pending"]), int(row["parked"])) if row else (0, 0)


async def parked_events(pool: db.Pool, limit: int = 100) -> list[ParkedEvent]:
    async with db.transaction(pool, read_committed=True) as conn:
        rows = await db.fetch_all(
            conn,
            "SELECT id, event_id, event_type, routing_key, attempts, last_error, created_at, parked_at FROM outbox"
            " WHERE sent_at IS NULL AND parked_at IS NOT NULL ORDER BY id LIMIT %s",
            (limit,),
        )
    return [ParkedEvent(**row) for row in rows]


async def retry_parked(pool: db.Pool) -> int:
    """Makes every parked event due again with a fresh count of attempts; returns how many."""
    async with db.transaction(pool, read_committed=True) as conn:
        return await db.execute(
            conn,
            "UPDATE outbox SET parked_at = NULL, attempts = 0, next_attempt_at = NOW(6)"
            " WHERE sent_at IS NULL AND parked_at IS NOT NULL",
        )
