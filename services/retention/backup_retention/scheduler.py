"""Runs the schedule document: each enabled entry's backups at its fire times, exactly once.

Every replica looks every TICK_SECONDS, re-reading the document (so a change made through the API
takes effect at the next minute, without a restart). For each entry it finds the fire times since
the entry's cursor (domain/schedule.py) and, in one unit of work, records each of them in
``schedule_firings`` (whose primary key is entry and fire time: of any number of replicas, one
inserts the row, the others collide and back off), requests the backup the way the API does, and
moves the cursor. A replica that dies half-way has committed nothing of that pass.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from backup_common.domain.documents import ScheduleEntry
from backup_common.domain.model import Backup, Trigger
from backup_common.domain.ports import Ports, UnitOfWork, read_schedule
from backup_common.domain.schedule import Firing, FiringOutcome, due_firings, next_fire_times
from backup_retention.handlers import RetentionMetrics

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0


class Scheduler:
    def __init__(
        self, ports: Ports, metrics: RetentionMetrics, *, catch_up: timedelta, tick_seconds: float = TICK_SECONDS
    ) -> None:
        self._ports = ports
        self._metrics = metrics
        self._catch_up = catch_up
        self._tick_seconds = tick_seconds

    async def run(self) -> None:
        while True:
            try:
                await self.run_due()
            except Exception:
                log.exception("schedule pass failed; trying again")
            await asyncio.sleep(self._tick_seconds)

    async def run_due(self, now: datetime | None = None) -> list[Firing]:
        """One pass over the schedule at ``now`` (the clock's by default); the firings this replica
        recorded."""
        now = now or self._ports.clock()
        document = await read_schedule(self._ports.uow)
        async with self._ports.uow() as uow:
            cursors = await uow.schedules.cursors()
        recorded: list[Firing] = []
        for entry in document.schedules:
            recorded += await self._pass(entry, document.timezone, cursors.get(entry.name), now)
        for firing in recorded:
            self._metrics.firings.labels(firing.outcome.value).inc()
        return recorded

    async def _pass(self, entry: ScheduleEntry, timezone: str, cursor: datetime | None, now: datetime) -> list[Firing]:
        due = due_firings(entry.cron, timezone, cursor, now, self._catch_up) if cursor is not None else None
        if due is not None and due.run is None and not due.missed:
            return []  # no fire time since the last look: nothing to write
        next_fire_at = next_fire_times(entry.cron, timezone, now, 1)[0] if entry.enabled else None
        recorded: list[Firing] = []
        async with self._ports.uow() as uow:
            # A new entry fires from now on; a disabled one keeps its cursor current, so enabling it
            # again does not count the time it was off as missed.
            if due is not None and entry.enabled:
                if due.more_missed:
                    log.warning(
                        "schedule %s: %d more fire times missed before %s", entry.name, due.more_missed, due.missed[0]
                    )
                for fire_at in due.missed:
                    minutes = int(self._catch_up.total_seconds() // 60)
                    late = f"no scheduler ran within {minutes} minutes of {fire_at:%Y-%m-%d %H:%M} UTC"
                    firing = Firing(entry.name, fire_at, FiringOutcome.MISSED, reason=late)
                    if await uow.schedules.record(firing, self._ports.holder):
                        log.warning("schedule %s: the firing of %s was missed: %s", entry.name, fire_at, late)
                        recorded.append(firing)
                if due.run is not None and (fired := await self._fire(uow, entry, due.run, now)) is not None:
                    recorded.append(fired)
            await uow.schedules.advance(entry.name, now, next_fire_at)
            await uow.commit()
        return recorded

    async def _fire(self, uow: UnitOfWork, entry: ScheduleEntry, fire_at: datetime, now: datetime) -> Firing | None:
        """Requests the entry's backup for ``fire_at``, or skips it while the previous one runs; None
        when another replica recorded this firing first."""
        running = await uow.backups.running_of_schedule(entry.name)
        if running is not None:
            reason = f"the previous backup of {entry.name}, {running.id}, is still {running.status}"
            skipped = Firing(entry.name, fire_at, FiringOutcome.SKIPPED, reason=reason)
            if not await uow.schedules.record(skipped, self._ports.holder):
                return None
            log.warning("schedule %s: skipped the firing of %s: %s", entry.name, fire_at, reason)
            return skipped
        backup = Backup.request(
            entry.type,
            requested_by=f"schedule:{entry.name}",
            now=now,
            description=entry.description or f"scheduled by {entry.name}",
            trigger=Trigger.SCHEDULE,
            schedule=entry.name,
            archive=entry.archive,
        )
        fired = Firing(entry.name, fire_at, FiringOutcome.FIRED, backup_id=backup.id)
        if not await uow.schedules.record(fired, self._ports.holder):
            return None
        await uow.backups.add(backup)
        log.info("schedule %s: requested %s backup %s for %s", entry.name, entry.type.value, backup.id, fire_at)
        return fired
