"""``UnitOfWork`` on one catalog transaction.

Transactions run at READ COMMITTED: the catalog's rules rest on explicit row locks (a backup row
taken FOR UPDATE, a lease fenced), and at this level a locking read takes no gap locks, so writing
one backup never waits for another's, and every read sees what was committed before it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

from asyncmy.connection import Connection

from backup_common.adapters.mysql import db
from backup_common.adapters.mysql.audit import MysqlAuditLog
from backup_common.adapters.mysql.backups import MysqlBackups
from backup_common.adapters.mysql.documents import MysqlDocuments
from backup_common.adapters.mysql.housekeeping import MysqlHousekeeping
from backup_common.adapters.mysql.leases import LeaseStore, MysqlJobLeases
from backup_common.adapters.mysql.notifications import MysqlNotifications
from backup_common.adapters.mysql.offsite import MysqlOffsiteCopies
from backup_common.adapters.mysql.outbox import add_to_outbox
from backup_common.adapters.mysql.restores import MysqlRestores
from backup_common.adapters.mysql.schedules import MysqlSchedules
from backup_common.adapters.mysql.verifications import MysqlVerifications
from backup_common.domain.events import Event
from backup_common.domain.model import Backup, Restore
from backup_common.domain.verification import Verification


class _Outbox:
    def __init__(self, conn: Connection, written: Callable[[], None]) -> None:
        self._conn = conn
        self._written = written

    async def add(self, event: Event) -> None:
        await add_to_outbox(self._conn, event)
        self._written()


class MysqlUnitOfWork:
    """``async with uow: ... await uow.commit()``; one instance per block.

    ``on_events`` is called after a commit that wrote events (the service's relay is woken by it).
    """

    backups: MysqlBackups
    restores: MysqlRestores
    verifications: MysqlVerifications
    documents: MysqlDocuments
    audit: MysqlAuditLog
    leases: MysqlJobLeases
    outbox: _Outbox
    schedules: MysqlSchedules
    housekeeping: MysqlHousekeeping
    notifications: MysqlNotifications
    offsite: MysqlOffsiteCopies

    def __init__(self, pool: db.Pool, leases: LeaseStore, on_events: Callable[[], None] = lambda: None) -> None:
        self._pool = pool
        self._lease_store = leases
        self._on_events = on_events
        self._conn: Connection | None = None
        self._stack = AsyncExitStack()
        self._seen: list[Backup | Restore | Verification] = []
        self._events_written = False

    async def __aenter__(self) -> Self:
        if self._conn is not None:
            raise RuntimeError("a unit of work is entered once")
        conn = await self._stack.enter_async_context(self._pool.acquire())
        try:
            await db.execute(conn, "SET TRANSACTION ISOLATION LEVEL READ COMMITTED")  # the next transaction only
            await conn.begin()
        except BaseException:
            await self._stack.aclose()
            raise
        self._conn = conn
        self.backups = MysqlBackups(conn, self._seen.append)
        self.restores = MysqlRestores(conn, self._seen.append)
        self.verifications = MysqlVerifications(conn, self._seen.append)
        self.documents = MysqlDocuments(conn)
        self.audit = MysqlAuditLog(conn)
        self.leases = MysqlJobLeases(self._lease_store, conn)
        self.outbox = _Outbox(conn, self._mark_events)
        self.schedules = MysqlSchedules(conn)
        self.housekeeping = MysqlHousekeeping(conn)
        self.notifications = MysqlNotifications(conn)
        self.offsite = MysqlOffsiteCopies(conn)
        return self

    def _mark_events(self) -> None:
        self._events_written = True

    async def commit(self) -> None:
        conn = self._require()
        for aggregate in self._seen:
            while aggregate.events:
                await self.outbox.add(aggregate.events.pop(0))
        self._seen.clear()
        await conn.commit()
        if self._events_written:
            self._events_written = False
            self._on_events()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        conn, self._conn = self._require(), None
        try:
            # Whatever was not committed is undone (a no-op after commit).
            await conn.rollback()
        except BaseException:
            # Interrupted mid-query (cancelled, say): the connection's state is unknown, so it is closed
            # rather than reused; the original error is the one the caller sees.
            conn.close()
            if exc is None:
                raise
        finally:
            await self._stack.aclose()

    def _require(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("the unit of work is used outside its `async with` block")
        return self._conn


def unit_of_work_factory(
    pool: db.Pool, leases: LeaseStore, on_events: Callable[[], None] = lambda: None
) -> Callable[[], MysqlUnitOfWork]:
    return lambda: MysqlUnitOfWork(pool, leases, on_events)
