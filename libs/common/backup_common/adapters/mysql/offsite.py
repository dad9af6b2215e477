"""``OffsiteRepository`` on the catalog's ``offsite_copies`` table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from asyncmy.connection import Connection

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.db import naive, placeholders, utc
from backup_common.domain.offsite import OffsiteCopy, OffsiteStatus

_COLUMNS = (
    "backup_id, status, attempts, bytes_copied, location, error, next_attempt_at, copied_at, retain_until,"
    " local_removed_at"
)


def offsite_copy_of(row: dict[str, Any]) -> OffsiteCopy:
    return OffsiteCopy(
        backup_id=row["backup_id"],
        status=OffsiteStatus(row["status"]),
        attempts=int(row["attempts"]),
        bytes_copied=int(row["bytes_copied"]),
        location=row["location"],
        error=row["error"],
        next_attempt_at=utc(row["next_attempt_at"]),
        copied_at=utc(row["copied_at"]),
        retain_until=utc(row["retain_until"]),
        local_removed_at=utc(row["local_removed_at"]),
    )


async def offsite_copies_of(conn: Connection, backup_ids: Sequence[str]) -> dict[str, OffsiteCopy]:
    """The off-site copy of each of these backups the copier has taken up."""
    if not backup_ids:
        return {}
    rows = await db.fetch_all(
        conn,
        f"SELECT {_COLUMNS} FROM offsite_copies WHERE backup_id IN ({placeholders(backup_ids)})",
        list(backup_ids),
    )
    return {row["backup_id"]: offsite_copy_of(row) for row in rows}


class MysqlOffsiteCopies:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def get(self, backup_id: str, *, for_update: bool = False) -> OffsiteCopy | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await db.fetch_one(
            self._conn, f"SELECT {_COLUMNS} FROM offsite_copies WHERE backup_id = %s{lock}", (backup_id,)
        )
        return offsite_copy_of(row) if row else None

    async def save(self, copy: OffsiteCopy) -> None:
        await db.execute(
            self._conn,
            f"INSERT INTO offsite_copies ({_COLUMNS}, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NOW(6))"
            " ON DUPLICATE KEY UPDATE status = VALUES(status), attempts = VALUES(attempts),"
            " bytes_copied = VALUES(bytes_copied), location = VALUES(location), error = VALUES(error),"
            " next_attempt_at = VALUES(next_attempt_at), copied_at = VALUES(copied_at),"
            " retain_until = VALUES(retain_until), local_removed_at = VALUES(local_removed_at), updated_at = NOW(6)",
            (
                copy.backup_id,
                copy.status.value,
                copy.attempts,
                copy.bytes_copied,
                copy.location,
                copy.error,
                naive(copy.next_attempt_at),
                naive(copy.copied_at),
                naive(copy.retain_until),
                naive(copy.local_removed_at),
            ),
        )

    async def due(self, now: datetime, limit: int) -> list[str]:
        """Completed backups to copy now, oldest first: never taken up, or failed and due again."""
        rows = await db.fetch_all(
            self._conn,
            "SELECT b.id FROM backups b LEFT JOIN offsite_copies o ON o.backup_id = b.id"
            " WHERE b.status = 'completed' AND (o.backup_id IS NULL OR o.status = 'pending'"
            "  OR (o.status = 'failed' AND o.next_attempt_at <= %s))"
            " ORDER BY b.created_at, b.id LIMIT %s",
            (naive(now), limit),
        )
        return [row["id"] for row in rows]

    async def locked_due(self, now: datetime, limit: int) -> list[str]:
        """Deleted backups whose off-site objects Object Lock kept, now due to be removed again."""
        rows = await db.fetch_all(
            self._conn,
            "SELECT backup_id FROM offsite_copies WHERE status = 'locked' AND next_attempt_at <= %s"
            " ORDER BY next_attempt_at LIMIT %s",
            (naive(now), limit),
        )
        return [row["backup_id"] for row in rows]

    async def local_expiry(self, created_before: datetime, limit: int) -> list[str]:
        """Completed backups made before ``created_before``, copied off-site, whose local copy has not
        been removed (or was fetched back from the store since)."""
        rows = await db.fetch_all(
            self._conn,
            "SELECT b.id FROM backups b JOIN offsite_copies o ON o.backup_id = b.id"
            " WHERE b.status = 'completed' AND o.status = 'copied' AND o.local_removed_at IS NULL"
            " AND b.created_at < %s"
            " ORDER BY b.created_at LIMIT %s",
            (naive(created_before), limit),
        )
        return [row["id"] for row in rows]
