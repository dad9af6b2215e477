"""``RestoreRepository`` on the catalog's ``restores`` table."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from asyncmy.connection import Connection

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.backups import naive, utc
from backup_common.domain.events import BackupPart
from backup_common.domain.model import Restore, RestoreStatus

_COLUMNS = "id, backup_id, status, parts, requested_by, error, created_at, completed_at, updated_at"


def _restore(row: dict[str, Any]) -> Restore:
    return Restore(
        id=row["id"],
        backup_id=row["backup_id"],
        status=RestoreStatus(row["status"]),
        parts=tuple(BackupPart(part) for part in json.loads(row["parts"])),
        requested_by=row["requested_by"],
        created_at=utc(row["created_at"]),
        updated_at=utc(row["updated_at"]),
        error=row["error"],
        completed_at=utc(row["completed_at"]),
    )


class MysqlRestores:
    def __init__(self, conn: Connection, seen: Callable[[Restore], None]) -> None:
        self._conn = conn
        self._seen = seen

    async def add(self, restore: Restore) -> None:
        await db.execute(
            self._conn,
            f"INSERT INTO restores ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                restore.id,
                restore.backup_id,
                restore.status.value,
                json.dumps([part.value for part in restore.parts]),
                restore.requested_by,
                restore.error,
                naive(restore.created_at),
                naive(restore.completed_at),
                naive(restore.updated_at),
            ),
        )
        self._seen(restore)

    async def get(self, restore_id: str, *, for_update: bool = False) -> Restore | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await db.fetch_one(self._conn, f"SELECT {_COLUMNS} FROM restores WHERE id = %s{lock}", (restore_id,))
        return _restore(row) if row else None

    async def save(self, restore: Restore) -> None:
        await db.execute(
            self._conn,
            "UPDATE restores SET status = %s, error = %s, completed_at = %s, updated_at = %s WHERE id = %s",
            (
                restore.status.value,
                restore.error,
                naive(restore.completed_at),
                naive(restore.updated_at),
                restore.id,
            ),
        )
        self._seen(restore)

    async def list(self, limit: int, offset: int) -> tuple[list[Restore], int]:
        total = await db.fetch_one(self._conn, "SELECT COUNT(*) AS n FROM restores")
        rows = await db.fetch_all(
            self._conn,
            f"SELECT {_COLUMNS} FROM restores ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s",
            (limit, offset),
        )
        return [_restore(row) for row in rows], int(total["n"]) if total else 0
