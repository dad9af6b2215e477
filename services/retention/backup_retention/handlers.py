"""What the retention service does with the events it consumes.

DeleteRequested is carried out: the backup's directory is removed, then its off-site copy, then its
wrapped data key is destroyed, then the backup is marked `deleted` (with BackupDeleted). Each step is
idempotent and the order makes a half-done deletion safe: a crash after the files leaves the backup
`deleting` with its key, and the retry (redelivery, or housekeeping) finishes it. BackupCompleted
applies the retention policy, one replica at a time, and wakes the off-site copier (offsite.py).
BackupFailed and BackupVerificationFailed are told to the webhooks that want them (notifications.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from prometheus_client import CollectorRegistry, Counter

from backup_common.adapters.runtime.service import Handlers
from backup_common.domain.events import BackupCompleted, BackupFailed, BackupVerificationFailed, DeleteRequested
from backup_common.domain.model import Backup, BackupStatus
from backup_common.domain.ports import OffsiteError, OffsiteStore, Ports, retention_plan
from backup_retention.notifications import Notifier
from backup_retention.offsite import Copier, copy_lock, remove_offsite

log = logging.getLogger(__name__)

POLICY_LOCK = "retention-policy"
# When Object Lock refused a removal and the store did not say until when: looked at again after this.
OFFSITE_RETRY = timedelta(hours=1)
RETENTION = "retention"  # who asks for the deletions the policy decides


class RetentionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deleted = Counter(
            "backup_deleted", "Backups deleted: files removed, data key destroyed.", registry=registry
        )
        self.expired = Counter(
            "backup_retention_expired", "Backups the retention policy asked to delete.", registry=registry
        )
        self.firings = Counter(
            "backup_schedule_firings", "Schedule fire times, by what became of them.", ["outcome"], registry=registry
        )
        self.abandoned = Counter(
            "backup_abandoned_jobs", "Backups and restores failed because no worker took them.", registry=registry
        )


@dataclass
class Dependencies:
    ports: Ports
    metrics: RetentionMetrics
    notifier: Notifier
    copier: Copier | None = None  # when BACKUP_OFFSITE_URL is set


async def erase(ports: Ports, backup_id: str) -> bool:
    """Removes the files, then the key, of a backup being deleted (or failed); True when this call
    finished a deletion. Safe to repeat at any point."""
    async with ports.uow() as uow:
        backup = await uow.backups.get(backup_id)
    if backup is None or not backup.needs_erasing:
        if backup is not None and backup.status is not BackupStatus.DELETED:
            log.warning("backup %s is %s, not being deleted; leaving it alone", backup_id, backup.status)
        return False
    # Files before the key: with the key gone first, a crash would leave files nothing could read and
    # nothing would clean up; the other way round, the retry finds the key and finishes.
    removed = await ports.storage.remove(backup)
    if ports.offsite is not None and not await _erase_offsite(ports, ports.offsite, backup):
        return False
    destroyed = await ports.keys.destroy(backup_id)
    async with ports.uow() as uow:
        backup = await uow.backups.get(backup_id, for_update=True)
        if backup is None or not backup.needs_erasing:
            return False
        backup.erased(ports.clock())
        await uow.backups.save(backup)
        await uow.commit()
    log.info(
        "backup %s erased (%s, %s)",
        backup_id,
        "directory removed" if removed else "no directory left",
        "data key destroyed" if destroyed else "no data key left",
    )
    return True


async def _erase_offsite(ports: Ports, store: OffsiteStore, backup: Backup) -> bool:
    """Removes the backup's off-site copy (or records that Object Lock keeps it); False leaves the
    deletion to be asked again: a copy of it is being written, or the store failed."""
    async with ports.locks.hold(copy_lock(backup.id)) as held:
        if not held:
            log.info("backup %s: its off-site copy is being written; deleting it later", backup.id)
            return False
        async with ports.uow() as uow:
            copy = await uow.offsite.get(backup.id)
        try:
            await remove_offsite(ports, store, backup, copy, OFFSITE_RETRY)
        except OffsiteError as exc:
            log.warning("backup %s: off-site copy not removed (%s); deleting it later", backup.id, exc)
            return False
    return True


async def apply_retention(ports: Ports, metrics: RetentionMetrics) -> list[str]:
    """Asks for the deletion of every backup the policy lets go; the ids asked for. A replica that
    finds another applying the policy leaves it to that one."""
    async with ports.locks.hold(POLICY_LOCK) as held:
        if not held:
            return []
        now = ports.clock()
        plan = await retention_plan(ports.uow, now)
        requested: list[str] = []
        for backup_id, reason in plan.delete.items():
            async with ports.uow() as uow:
                backup = await uow.backups.get(backup_id, for_update=True)
                if backup is None or backup.status is not BackupStatus.COMPLETED:
                    continue
                # Looked at again under the lock: a restore or an incremental may have started on it since.
                if await uow.restores.unfinished_of(backup_id) or await uow.backups.dependents(backup_id):
                    continue
                backup.request_delete(RETENTION, now)
                await uow.backups.save(backup)
                await uow.commit()
            log.info("retention: deleting backup %s: %s", backup_id, reason)
            metrics.expired.inc()
            requested.append(backup_id)
        return requested


async def delete_requested(event: DeleteRequested, deps: Dependencies) -> None:
    if await erase(deps.ports, str(event.backup_id)):
        deps.metrics.deleted.inc()


async def backup_completed(event: BackupCompleted, deps: Dependencies) -> None:
    if deps.copier is not None:
        deps.copier.wake()
    await apply_retention(deps.ports, deps.metrics)


async def backup_failed(event: BackupFailed, deps: Dependencies) -> None:
    await deps.notifier.backup_failed(event)


async def verification_failed(event: BackupVerificationFailed, deps: Dependencies) -> None:
    await deps.notifier.verification_failed(event)


HANDLERS: Handlers[Dependencies] = {
    DeleteRequested: delete_requested,
    BackupCompleted: backup_completed,
    BackupFailed: backup_failed,
    BackupVerificationFailed: verification_failed,
}
