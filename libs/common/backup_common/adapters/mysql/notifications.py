"""``NotificationRepository`` on ``notification_deliveries``: one row per notification and webhook.

Its unique key (dedupe key, SHA-256 of the URL) makes recording a notification twice a no-op (a
redelivered event, two replicas noticing the same missing backup); the due scan takes rows FOR
UPDATE SKIP LOCKED, so of several replicas each row is attempted by one at a time.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from asyncmy.connection import Connection
from asyncmy.errors import IntegrityError

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.db import DUPLICATE_KEY, naive, utc
from backup_common.domain.notifications import MAX_ERROR_TEXT, Delivery, NotificationKind

_COLUMNS = (
    "id, webhook_url, event_kind, dedupe_key, payload, attempts, next_attempt_at, delivered_at, given_up_at,"
    " last_error, created_at"
)
_UNFINISHED = "delivered_at IS NULL AND given_up_at IS NULL"


def _delivery(row: dict[str, Any]) -> Delivery:
    payload = row["payload"]
    return Delivery(
        id=row["id"],
        url=row["webhook_url"],
        kind=NotificationKind(row["event_kind"]),
        dedupe_key=row["dedupe_key"],
        payload=json.loads(payload) if isinstance(payload, str | bytes) else payload,
        created_at=utc(row["created_at"]),
        next_attempt_at=utc(row["next_attempt_at"]),
        attempts=int(row["attempts"]),
        delivered_at=utc(row["delivered_at"]),
        given_up_at=utc(row["given_up_at"]),
        last_error=row["last_error"],
    )


class MysqlNotifications:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def add(self, delivery: Delivery) -> bool:
        try:
            # Waits for another transaction's uncommitted insert of the same row, then collides with it.
            await db.execute(
                self._conn,
                "INSERT INTO notification_deliveries (id, webhook_url, url_sha256, event_kind, dedupe_key, payload,"
                " attempts, next_attempt_at, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, 0, %s, %s, %s)",
                (
                    delivery.id,
                    delivery.url,
                    hashlib.sha256(delivery.url.encode()).hexdigest(),
                    delivery.kind.value,
                    delivery.dedupe_key,
                    json.dumps(delivery.payload),
                    naive(delivery.next_attempt_at),
                    naive(delivery.created_at),
                    naive(delivery.created_at),
                ),
            )
        except IntegrityError as exc:
            if exc.args[0] == DUPLICATE_KEY:
                return False
            raise
        return True

    async def due(self, now: datetime, limit: int) -> list[Delivery]:
        rows = await db.fetch_all(
            self._conn,
            f"SELECT {_COLUMNS} FROM notification_deliveries WHERE {_UNFINISHED} AND next_attempt_at <= %s"
            " ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED",
            (naive(now), limit),
        )
        return [_delivery(row) for row in rows]

    async def delivered(self, delivery_id: str, attempts: int, now: datetime) -> None:
        await db.execute(
            self._conn,
            "UPDATE notification_deliveries SET attempts = %s, delivered_at = %s, updated_at = %s WHERE id = %s",
            (attempts, naive(now), naive(now), delivery_id),
        )

    async def retry(self, delivery_id: str, attempts: int, error: str, next_attempt_at: datetime) -> None:
        await db.execute(
            self._conn,
            "UPDATE notification_deliveries SET attempts = %s, last_error = %s, next_attempt_at = %s,"
            " updated_at = NOW(6) WHERE id = %s",
            (attempts, error[:MAX_ERROR_TEXT], naive(next_attempt_at), delivery_id),
        )

    async def give_up(self, delivery_id: str, attempts: int, error: str, now: datetime) -> None:
        await db.execute(
            self._conn,
            "UPDATE notification_deliveries SET attempts = %s, last_error = %s, given_up_at = %s, updated_at = %s"
            " WHERE id = %s",
            (attempts, error[:MAX_ERROR_TEXT], naive(now), naive(now), delivery_id),
        )

    async def get(self, delivery_id: str) -> Delivery | None:
        row = await db.fetch_one(
            self._conn, f"SELECT {_COLUMNS} FROM notification_deliveries WHERE id = %s", (delivery_id,)
        )
        return _delivery(row) if row else None

    async def pending(self) -> int:
        row = await db.fetch_one(
            self._conn, f"SELECT COUNT(*) AS pending FROM notification_deliveries WHERE {_UNFINISHED}"
        )
        return int(row["pending"]) if row else 0
