"""The life of one restore part around the work of restoring it: claim, lease, progress, completion
and failure, as for a backup part (see jobs.py), written against the ports only.

The restore is completed by the completion of its last part and failed by the failure of any; a
part not started by then is never taken up. Every write is fenced by the part's lease.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from backup_common.adapters.runtime.jobs import JobMetrics, JobWorker, PartFailure
from backup_common.adapters.runtime.stored import StoredPart, StoredParts
from backup_common.domain.documents import SettingsDocument
from backup_common.domain.events import BackupPart, RestorePartProgressed, RestoreRequested
from backup_common.domain.jobs import Lease, restore_job_key
from backup_common.domain.model import Backup, BackupStatus, Restore
from backup_common.domain.ports import Heartbeat, MessageRejected, Ports, read_settings

log = logging.getLogger(__name__)


class RestoreJobs:
    """The catalog side of restore part jobs: each method is one unit of work."""

    def __init__(self, ports: Ports) -> None:
        self._ports = ports
        self.stored = StoredParts(ports)

    async def claim(self, event: RestoreRequested, part: BackupPart) -> Lease | None:
        """Takes the part's job unless the restore or the part is finished or a live worker holds it.

        MessageRejected (so the request is dead-lettered) when the catalog has no such restore or part:
        the gateway records a restore before it requests it, so such a request was published by hand.
        """
        restore_id = str(event.restore_id)
        async with self._ports.uow() as uow:
            restore = await uow.restores.get(restore_id)
        if restore is None:
            raise MessageRejected(
                f"restore {restore_id} is not in the catalog (a RestoreRequested only starts a restore the gateway"
                " recorded; to request one, POST /api/admin/backup/{id}/restore)"
            )
        if not restore.has_part(part):
            raise MessageRejected(f"restore {restore_id} has no {part.value} part")
        if restore.status.finished or restore.part(part).status.finished:
            return None
        payload = json.loads(event.to_json())
        lease = await self._ports.leases.claim(restore_job_key(restore_id, part), self._ports.holder, payload)
        if lease is None:
            return None
        async with self._ports.uow() as uow:
            await uow.leases.fence(lease)
            restore = await uow.restores.get(restore_id, for_update=True)
            if restore is None or restore.status.finished or restore.part(part).status.finished:
                await uow.leases.complete(lease)
                await uow.commit()
                return None
            restore.start_part(part, lease.attempts, self._ports.clock())
            await uow.restores.save(restore)
            await uow.commit()
        return lease

    async def progress(
        self, lease: Lease, restore: Restore, part: BackupPart, progress: dict[str, Any], *, announce: bool
    ) -> None:
        """Records the part's progress; ``announce`` also tells the bus (at a new phase, not every second)."""
        async with self._ports.uow() as uow:
            if announce:
                await uow.leases.fence(lease)
                await uow.outbox.add(
                    RestorePartProgressed(
                        restore_id=uuid.UUID(restore.id),
                        backup_id=uuid.UUID(restore.backup_id),
                        part=part,
                        phase=str(progress.get("phase", "")),
                        progress=progress,
                    )
                )
            await uow.restores.record_progress(lease, restore.id, part, progress)
            await uow.commit()

    async def complete(self, lease: Lease, restore_id: str, part: BackupPart, progress: dict[str, Any]) -> bool:
        """Records the part; returns True when this completion completed the whole restore."""
        async with self._ports.uow() as uow:
            await uow.leases.fence(lease)
            restore = await uow.restores.get(restore_id, for_update=True)
            if restore is None:
                raise PartFailure(f"restore {restore_id} vanished from the catalog")
            completed = restore.complete_part(part, progress, self._ports.clock())
            await uow.leases.complete(lease)
            await uow.restores.save(restore)
            await uow.commit()
        return completed

    async def fail(self, lease: Lease, restore_id: str, part: BackupPart, reason: str) -> None:
        async with self._ports.uow() as uow:
            await uow.leases.fence(lease)
            await uow.leases.fail(lease, reason)
            restore = await uow.restores.get(restore_id, for_update=True)
            if restore is not None:
                restore.fail_part(part, reason, self._ports.clock())
                await uow.restores.save(restore)
            await uow.commit()

    async def restore_and_backup(self, restore_id: str) -> tuple[Restore, Backup]:
        async with self._ports.uow() as uow:
            restore = await uow.restores.get(restore_id)
            if restore is None:
                raise PartFailure(f"restore {restore_id} is not in the catalog")
            backup = await uow.backups.get(restore.backup_id)
        if backup is None or backup.status is not BackupStatus.COMPLETED:
            state = "not in the catalog" if backup is None else backup.status.value
            raise PartFailure(f"backup {restore.backup_id} is {state}; only a completed backup can be restored")
        return restore, backup


@dataclass
class RestoreJob:
    """What a part's restorer is given: the restore, the backup, the settings and fenced callbacks."""

    restore: Restore
    backup: Backup
    part: BackupPart
    settings: SettingsDocument
    lease: Callable[[], Lease]
    jobs: RestoreJobs
    phase: str = ""  # the last one announced

    @property
    def staging_name(self) -> str:
        """Names the staging copies of this restore: the same on every attempt, so a retry after a
        lost worker finds and removes what the lost one left."""
        return "bk_restore_" + self.restore.id.replace("-", "")[:16]

    async def progress(self, progress: dict[str, Any]) -> None:
        phase = str(progress.get("phase", ""))
        await self.jobs.progress(self.lease(), self.restore, self.part, progress, announce=phase != self.phase)
        self.phase = phase

    async def stored_part(self) -> StoredPart:
        return await self.jobs.stored.part(self.backup, self.part)

    async def files_chain(self) -> list[StoredPart]:
        return await self.jobs.stored.files_chain(self.backup)


# Restores the part, checking everything before it touches a live target; returns its final progress.
Restorer = Callable[[RestoreJob], Awaitable[dict[str, Any]]]


class RestoreWorker(JobWorker[RestoreRequested]):
    """Restores one part (database or files) of the restores requested."""

    def __init__(self, part: BackupPart, restore: Restorer, ports: Ports, metrics: JobMetrics) -> None:
        super().__init__(ports, metrics)
        self.part = part
        self._restore = restore
        self.jobs = RestoreJobs(ports)

    def _describe(self, event: RestoreRequested) -> str:
        return f"restore {event.restore_id} of backup {event.backup_id}: {self.part.value} part"

    def _wants(self, event: RestoreRequested) -> bool:
        return self.part in event.parts

    async def _claim(self, event: RestoreRequested) -> Lease | None:
        return await self.jobs.claim(event, self.part)

    async def _work(self, event: RestoreRequested, heartbeat: Heartbeat) -> None:
        restore, backup = await self.jobs.restore_and_backup(str(event.restore_id))
        settings = await read_settings(self._ports.uow)
        job = RestoreJob(restore, backup, self.part, settings, lambda: heartbeat.lease, self.jobs)
        progress = await self._restore(job)
        heartbeat.check()
        await self.jobs.complete(heartbeat.lease, restore.id, self.part, progress)

    async def _fail(self, lease: Lease, event: RestoreRequested, reason: str) -> None:
        await self.jobs.fail(lease, str(event.restore_id), self.part, reason)
