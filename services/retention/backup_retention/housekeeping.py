"""The retention service's rounds: the retention policy every hour, and every minute (one replica
at a time) what keeps the catalog honest and small:

- a backup or restore still `pending` after the pending timeout failed: no worker took it, and the
  reason says so rather than leaving it pending forever;
- a backup `deleting` for longer than the retry delay is asked to be deleted again;
- a failed backup older than a day has its files and key erased (it stays listed as failed);
- sent outbox rows, processed message ids and finished leases older than the keep window are
  deleted, a batch at a time.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from backup_common.adapters.runtime.jobs import settle_waiting_restore
from backup_common.domain.model import BackupStatus
from backup_common.domain.ports import Ports
from backup_retention.handlers import RetentionMetrics, apply_retention, erase

log = logging.getLogger(__name__)

HOUSEKEEPING_LOCK = "housekeeping"
ROUND_SECONDS = 60.0
POLICY_EVERY = timedelta(hours=1)
FAILED_KEPT = timedelta(days=1)  # a failed backup's files stay this long, for a look at what went wrong
BATCH = 500
HOUSEKEEPER = "housekeeping"


@dataclass(frozen=True)
class Windows:
    pending_timeout: timedelta
    deleting_retry: timedelta
    keep: timedelta


@dataclass
class RoundReport:
    abandoned_backups: list[str] = field(default_factory=list)
    abandoned_restores: list[str] = field(default_factory=list)
    deletions_retried: list[str] = field(default_factory=list)
    failures_erased: list[str] = field(default_factory=list)
    purged: dict[str, int] = field(default_factory=dict)


class Housekeeper:
    def __init__(
        self, ports: Ports, metrics: RetentionMetrics, windows: Windows, *, round_seconds: float = ROUND_SECONDS
    ) -> None:
        self._ports = ports
        self._metrics = metrics
        self._windows = windows
        self._round_seconds = round_seconds
        self._policy_applied: datetime | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.hourly_policy()
                await self.round()
            except Exception:
                log.exception("housekeeping round failed; trying again")
            await asyncio.sleep(self._round_seconds)

    async def hourly_policy(self) -> None:
        now = self._ports.clock()
        if self._policy_applied is None or now - self._policy_applied >= POLICY_EVERY:
            await apply_retention(self._ports, self._metrics)
            self._policy_applied = now

    async def round(self) -> RoundReport | None:
        """One round, unless another replica is doing one (None)."""
        async with self._ports.locks.hold(HOUSEKEEPING_LOCK) as held:
            if not held:
                return None
            now = self._ports.clock()
            report = RoundReport()
            report.abandoned_backups = await self._abandon_backups(now)
            report.abandoned_restores = await self._abandon_restores(now)
            report.deletions_retried = await self._retry_deletions(now)
            report.failures_erased = await self._erase_failures(now)
            report.purged = await self._purge(now)
            return report

    def _unclaimed(self) -> str:
        minutes = round(self._windows.pending_timeout.total_seconds() / 60)
        return f"no worker took it within {minutes} minutes: are the backup services running and connected?"

    async def _abandon_backups(self, now: datetime) -> list[str]:
        async with self._ports.uow() as uow:
            ids = await uow.backups.idle_since(BackupStatus.PENDING, now - self._windows.pending_timeout, BATCH)
        abandoned = []
        for backup_id in ids:
            async with self._ports.uow() as uow:
                backup = await uow.backups.get(backup_id, for_update=True)
                if backup is None or backup.status is not BackupStatus.PENDING:
                    continue  # a worker took it meanwhile
                backup.abandon(self._unclaimed(), now)
                await uow.backups.save(backup)
                await settle_waiting_restore(uow, backup, now)
                await uow.commit()
            log.error("backup %s failed: %s", backup_id, self._unclaimed())
            self._metrics.abandoned.inc()
            abandoned.append(backup_id)
        return abandoned

    async def _abandon_restores(self, now: datetime) -> list[str]:
        async with self._ports.uow() as uow:
            ids = await uow.restores.idle_pending(now - self._windows.pending_timeout, BATCH)
        abandoned = []
        for restore_id in ids:
            async with self._ports.uow() as uow:
                restore = await uow.restores.get(restore_id, for_update=True)
                if restore is None or not restore.fail(self._unclaimed(), now):
                    continue
                await uow.restores.save(restore)
                await uow.commit()
            log.error("restore %s failed: %s", restore_id, self._unclaimed())
            self._metrics.abandoned.inc()
            abandoned.append(restore_id)
        return abandoned

    async def _retry_deletions(self, now: datetime) -> list[str]:
        async with self._ports.uow() as uow:
            ids = await uow.backups.idle_since(BackupStatus.DELETING, now - self._windows.deleting_retry, BATCH)
        for backup_id in ids:
            async with self._ports.uow() as uow:
                backup = await uow.backups.get(backup_id, for_update=True)
                if backup is None or backup.status is not BackupStatus.DELETING:
                    continue
                backup.request_delete(HOUSEKEEPER, now)
                await uow.backups.save(backup)
                await uow.commit()
            log.warning("backup %s is still being deleted; asking again", backup_id)
        return ids

    async def _erase_failures(self, now: datetime) -> list[str]:
        async with self._ports.uow() as uow:
            ids = await uow.backups.unerased_failures(now - FAILED_KEPT, BATCH)
        return [backup_id for backup_id in ids if await erase(self._ports, backup_id)]

    async def _purge(self, now: datetime) -> dict[str, int]:
        total: dict[str, int] = {}
        while True:
            async with self._ports.uow() as uow:
                purged = await uow.housekeeping.purge(now - self._windows.keep, BATCH)
                await uow.commit()
            for name, count in purged.items():
                total[name] = total.get(name, 0) + count
            if all(count < BATCH for count in purged.values()):
                break
        if any(total.values()):
            log.info("housekeeping purged %s", ", ".join(f"{count} {name}" for name, count in total.items()))
        return total
