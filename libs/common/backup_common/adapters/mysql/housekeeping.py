"""``Housekeeping`` on the catalog: what the services no longer need, deleted in small batches so
that no purge holds many row locks or fills the binary log with one huge transaction."""

from __future__ import annotations

from datetime import datetime

from asyncmy.connection import Connection

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.db import naive

# What each purge deletes: rows the services are done with, older than the window.
_PURGES = {
    "outbox": "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < %s LIMIT %s",
    "processed_messages": "DELETE FROM processed_messages WHERE processed_at < %s LIMIT %s",
    "job_leases": "DELETE FROM job_leases WHERE state IN ('done', 'failed', 'released') AND updated_at < %s LIMIT %s",
    "notification_deliveries": "DELETE FROM notification_deliveries WHERE created_at < %s"
    " AND (delivered_at IS NOT NULL OR given_up_at IS NOT NULL) LIMIT %s",
}


class MysqlHousekeeping:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def purge(self, before: datetime, batch: int) -> dict[str, int]:
        purged: dict[str, int] = {}
        for name, statement in _PURGES.items():
            purged[name] = await db.execute(self._conn, statement, (naive(before), batch))
        return purged
