"""``Locks`` on MySQL's named locks: held by one session, released when it ends, so a process that
dies never leaves a lock behind. Names are scoped to the catalog database (locks are server-wide)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from backup_common.adapters.mysql import db


class MysqlLocks:
    def __init__(self, pool: db.Pool) -> None:
        self._pool = pool

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[bool]:
        # A session of its own for as long as the lock is held: the pool must not hand it out meanwhile.
        async with self._pool.acquire() as conn:
            row = await db.fetch_one(conn, "SELECT GET_LOCK(CONCAT(DATABASE(), '.', %s), 0) AS held", (name,))
            held = row is not None and row["held"] == 1
            try:
                yield held
            finally:
                if held:
                    await db.fetch_one(conn, "SELECT RELEASE_LOCK(CONCAT(DATABASE(), '.', %s)) AS released", (name,))
