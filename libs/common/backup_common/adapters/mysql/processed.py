"""``ProcessedMessages`` on the catalog's ``processed_messages`` table."""

from __future__ import annotations

from backup_common.adapters.mysql.db import Pool, execute, fetch_one, transaction


class MysqlProcessedMessages:
    """Message ids each consumer has handled, so a redelivered message is skipped."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def seen(self, consumer: str, message_id: str) -> bool:
        # Inside a transaction so the pooled connection is committed and never keeps an old snapshot.
        async with transaction(self._pool) as conn:
            row = await fetch_one(
                conn,
                "SELECT 1 AS found FROM processed_messages WHERE consumer = %s AND message_id = %s",
                (consumer, message_id),
            )
        return row is not None

    async def remember(self, consumer: str, message_id: str) -> None:
        # IGNORE: a concurrent duplicate that got here first already recorded it, which is fine.
        async with transaction(self._pool) as conn:
            await execute(
                conn,
                "INSERT IGNORE INTO processed_messages (consumer, message_id, processed_at) VALUES (%s, %s, NOW(6))",
                (consumer, message_id),
            )
