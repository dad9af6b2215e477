"""``AuditLog`` on the catalog's append-only ``audit_log`` table (its triggers refuse UPDATE and DELETE)."""

from __future__ import annotations

import json

from asyncmy.connection import Connection

from backup_common.adapters.mysql import db
from backup_common.domain.model import AuditEntry


class MysqlAuditLog:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def add(self, entry: AuditEntry) -> None:
        await db.execute(
            self._conn,
            "INSERT INTO audit_log (occurred_at, actor, action, target, outcome, status_code,"
            " source_address, request_id, detail) VALUES (NOW(6), %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                entry.actor[:255],
                entry.action[:64],
                entry.target[:255],
                entry.outcome,
                entry.status_code,
                entry.source_address[:64],
                entry.request_id,
                json.dumps(entry.detail) if entry.detail else None,
            ),
        )
