"""``VerificationRepository`` on the catalog's ``backup_verifications`` table."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from asyncmy.connection import Connection

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.db import naive, placeholders, utc
from backup_common.domain.verification import Check, Verification, VerificationStatus

_COLUMNS = "backup_id, status, checks, error, requested_at, checked_at"


def verification_of(row: dict[str, Any]) -> Verification:
    checks = json.loads(row["checks"]) if row["checks"] else []
    return Verification(
        backup_id=row["backup_id"],
        status=VerificationStatus(row["status"]),
        checks=[Check.from_dict(check) for check in checks],
        error=row["error"],
        requested_at=utc(row["requested_at"]),
        checked_at=utc(row["checked_at"]),
    )


async def verifications_of(conn: Connection, backup_ids: Sequence[str]) -> dict[str, Verification]:
    """The latest verification of each of these backups that has one."""
    if not backup_ids:
        return {}
    rows = await db.fetch_all(
        conn,
        f"SELECT {_COLUMNS} FROM backup_verifications WHERE backup_id IN ({placeholders(backup_ids)})",
        list(backup_ids),
    )
    return {row["backup_id"]: verification_of(row) for row in rows}


class MysqlVerifications:
    def __init__(self, conn: Connection, seen: Callable[[Verification], None]) -> None:
        self._conn = conn
        self._seen = seen

    async def get(self, backup_id: str, *, for_update: bool = False) -> Verification | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await db.fetch_one(
            self._conn, f"SELECT {_COLUMNS} FROM backup_verifications WHERE backup_id = %s{lock}", (backup_id,)
        )
        return verification_of(row) if row else None

    async def save(self, verification: Verification) -> None:
        await db.execute(
            self._conn,
            f"INSERT INTO backup_verifications ({_COLUMNS}, updated_at) VALUES (%s, %s, %s, %s, %s, %s, NOW(6))"
            " ON DUPLICATE KEY UPDATE status = VALUES(status), checks = VALUES(checks), error = VALUES(error),"
            " requested_at = VALUES(requested_at), checked_at = VALUES(checked_at), updated_at = NOW(6)",
            (
                verification.backup_id,
                verification.status.value,
                json.dumps([check.as_dict() for check in verification.checks]),
                verification.error,
                naive(verification.requested_at),
                naive(verification.checked_at),
            ),
        )
        self._seen(verification)

    async def stalest(self, limit: int) -> list[str]:
        """Completed backups, never verified first, then those verified longest ago."""
        rows = await db.fetch_all(
            self._conn,
            "SELECT b.id FROM backups b LEFT JOIN backup_verifications v ON v.backup_id = b.id"
            " WHERE b.status = 'completed'"
            " ORDER BY v.checked_at IS NOT NULL, v.checked_at, b.created_at LIMIT %s",
            (limit,),
        )
        return [row["id"] for row in rows]
