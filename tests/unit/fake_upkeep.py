"""In-memory fakes of the ports the retention service adds: schedule firings, housekeeping and locks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING

from backup_common.domain.schedule import Firing

if TYPE_CHECKING:
    from tests.unit.fakes import FakeCatalog, FakeUnitOfWork


class FakeSchedules:
    """Firings are staged like everything else: a firing another unit of work recorded first (even
    one not committed yet, as MySQL's unique key would make it wait, then collide) is refused."""

    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow
        self._catalog = uow.catalog

    async def cursors(self) -> dict[str, datetime]:
        return dict(self._catalog.cursors)

    async def advance(self, schedule: str, checked_until: datetime, next_fire_at: datetime | None) -> None:
        current = self._uow.staged_cursors.get(schedule, self._catalog.cursors.get(schedule))
        self._uow.staged_cursors[schedule] = max(current, checked_until) if current else checked_until

    async def record(self, firing: Firing, holder: str) -> bool:
        key = (firing.schedule, firing.fire_at)
        if key in self._catalog.firings or key in self._uow.staged_firings:
            return False
        self._uow.staged_firings[key] = firing
        return True

    async def firings(self, schedule: str | None = None, limit: int = 100) -> list[Firing]:
        found = [f for f in self._catalog.firings.values() if schedule is None or f.schedule == schedule]
        return sorted(found, key=lambda f: f.fire_at, reverse=True)[:limit]


class FakeHousekeeping:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self.purges: list[datetime] = uow.catalog.purges

    async def purge(self, before: datetime, batch: int) -> dict[str, int]:
        self.purges.append(before)
        return {"outbox": 0, "processed_messages": 0, "job_leases": 0}


class FakeLocks:
    """Named locks shared by every fake process of one catalog."""

    def __init__(self, catalog: FakeCatalog) -> None:
        self._held = catalog.locks

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[bool]:
        if name in self._held:
            yield False
            return
        self._held.add(name)
        try:
            yield True
        finally:
            self._held.discard(name)
