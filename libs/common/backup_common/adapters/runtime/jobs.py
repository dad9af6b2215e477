"""The life of one backup part (database or files) around the work of making it: claim, lease,
progress, completion, failure, hand-back and reaping, written against the ports only.

Every write a worker makes is fenced by its lease, so a worker whose lease was taken over cannot
mark a part done. The completion that leaves no part pending completes the backup, writing its
manifest before the unit of work that lists it as usable commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from backup_common.adapters.settings import SettingsError
from backup_common.domain.documents import SettingsDocument
from backup_common.domain.events import BackupPart, BackupRequested, parse_event
from backup_common.domain.jobs import Lease, LeaseLost, parse_part_job_key, part_job_key
from backup_common.domain.model import Backup, PartResult
from backup_common.domain.ports import BackupStorage, Ports, read_settings
from backup_common.engine.archive import ArchiveError
from backup_common.engine.crypto import KeyUnwrapError, archive_password
from backup_common.engine.storage import encryption_info

log = logging.getLogger(__name__)


class PartFailure(Exception):
    """The part cannot be made; the message is the reason recorded for the operator."""


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, PartFailure | SettingsError | KeyUnwrapError | ArchiveError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return f"storage error: {exc.strerror or exc}{where}"
    return f"{type(exc).__name__}: {exc}"


class JobMetrics:
    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.service = service
        self.jobs = Counter("backup_jobs", "Jobs finished, by outcome.", ["service", "outcome"], registry=registry)
        self.running = Gauge("backup_jobs_running", "Jobs in progress.", ["service"], registry=registry)

    def finished(self, outcome: str) -> None:
        self.jobs.labels(self.service, outcome).inc()


class PartJobs:
    """The catalog side of part jobs: each method is one unit of work."""

    def __init__(self, ports: Ports) -> None:
        self._ports = ports

    @property
    def storage(self) -> BackupStorage:
        return self._ports.storage

    async def backup(self, backup_id: str) -> Backup | None:
        async with self._ports.uow() as uow:
            return await uow.backups.get(backup_id)

    async def previous_with_files(self, backup: Backup) -> Backup | None:
        async with self._ports.uow() as uow:
            return await uow.backups.previous_with_files(backup)

    async def claim(self, event: BackupRequested, part: BackupPart) -> Lease | None:
        """Takes the part's job unless it is finished, held by a live worker, or its backup is over."""
        backup_id = str(event.backup_id)
        backup = await self.backup(backup_id)
        if backup is None or not backup.has_part(part):
            log.warning("backup %s has no %s part in the catalog; ignoring the request", backup_id, part.value)
            return None
        if not backup.status.in_progress or backup.part(part).status.finished:
            return None
        payload = json.loads(event.to_json())
        lease = await self._ports.leases.claim(part_job_key(backup_id, part), self._ports.holder, payload)
        if lease is None:
            return None
        async with self._ports.uow() as uow:
            await uow.leases.fence(lease)
            backup = await uow.backups.get(backup_id, for_update=True)
            if backup is None or not backup.status.in_progress or backup.part(part).status.finished:
                # Finished between the look above and the claim: nothing is left to do.
                await uow.leases.complete(lease)
                await uow.commit()
                return None
            backup.start_part(part, lease.attempts, self._ports.clock())
            await uow.backups.save(backup)
            await uow.commit()
        return lease

    async def progress(self, lease: Lease, backup_id: str, part: BackupPart, progress: dict[str, Any]) -> None:
        async with self._ports.uow() as uow:
            await uow.backups.record_progress(lease, backup_id, part, progress)
            await uow.commit()

    async def set_parent(self, lease: Lease, backup_id: str, parent_id: str | None) -> None:
        async with self._ports.uow() as uow:
            await uow.leases.fence(lease)
            backup = await uow.backups.get(backup_id, for_update=True)
            if backup is None:
                raise PartFailure(f"backup {backup_id} vanished from the catalog")
            backup.parent_id = parent_id
            await uow.backups.save(backup)
            await uow.commit()

    async def complete(self, lease: Lease, backup_id: str, part: BackupPart, result: PartResult) -> bool:
        """Records the part; returns True when this completion completed the whole backup."""
        async with self._ports.uow() as uow:
            await uow.leases.fence(lease)
            backup = await uow.backups.get(backup_id, for_update=True)
            if backup is None:
                raise PartFailure(f"backup {backup_id} vanished from the catalog")
            completed = backup.complete_part(part, result, self._ports.clock())
            await uow.leases.complete(lease)
            if completed:
                # Durable before the commit that lists the backup as usable.
                wrapped = await self._ports.keys.wrapped(backup_id)
                await self._ports.storage.write_manifest(backup, encryption_info(wrapped))
            await uow.backups.save(backup)
            await uow.commit()
        return completed

    async def fail(self, lease: Lease, backup_id: str, part: BackupPart, reason: str) -> None:
        async with self._ports.uow() as uow:
            await uow.leases.fence(lease)
            await uow.leases.fail(lease, reason)
            backup = await uow.backups.get(backup_id, for_update=True)
            if backup is not None:
                backup.fail_part(part, reason, self._ports.clock())
                await uow.backups.save(backup)
            await uow.commit()

    async def release(self, lease: Lease, event: BackupRequested, reason: str) -> None:
        """Gives the job back (e.g. at shutdown) and asks for it again, so another worker resumes it."""
        async with self._ports.uow() as uow:
            await uow.leases.release(lease, reason)
            await uow.outbox.add(event.model_copy(update={"event_id": uuid.uuid4()}))
            await uow.commit()

    async def reap(self, max_attempts: int) -> None:
        """Re-requests parts whose worker was lost, or fails them after too many losses."""
        async with self._ports.uow() as uow:
            result = await uow.leases.reap(max_attempts)
            for job in result.requeue:
                if job.payload is None:
                    continue
                event = parse_event(json.dumps(job.payload))
                log.warning("worker %s lost %s; requesting it again", job.holder, job.job_key)
                await uow.outbox.add(event.model_copy(update={"event_id": uuid.uuid4()}))
            for job in result.failed:
                parsed = parse_part_job_key(job.job_key)
                if parsed is None:
                    continue
                backup = await uow.backups.get(parsed[0], for_update=True)
                if backup is not None:
                    reason = f"the worker was lost {job.attempts} times; giving up"
                    backup.fail_part(parsed[1], reason, self._ports.clock())
                    await uow.backups.save(backup)
            await uow.commit()


async def fail_restore(ports: Ports, restore_id: str, reason: str) -> None:
    """Fails a restore with its reason (a no-op once it has finished)."""
    async with ports.uow() as uow:
        restore = await uow.restores.get(restore_id, for_update=True)
        if restore is None:
            log.warning("restore %s is not in the catalog; ignoring its request", restore_id)
            return
        if restore.fail(reason, ports.clock()):
            await uow.restores.save(restore)
            await uow.commit()
            log.warning("restore %s failed: %s", restore_id, reason)


@dataclass
class PartJob:
    """What a part's producer is given: the backup, where to write, the key, and fenced callbacks."""

    backup: Backup
    part: BackupPart
    archive: Path
    settings: SettingsDocument
    password: str | None
    encryption: dict[str, Any]
    lease: Callable[[], Lease]
    jobs: PartJobs

    async def progress(self, progress: dict[str, Any]) -> None:
        await self.jobs.progress(self.lease(), self.backup.id, self.part, progress)

    async def set_parent(self, parent_id: str | None) -> None:
        await self.jobs.set_parent(self.lease(), self.backup.id, parent_id)
        self.backup.parent_id = parent_id

    async def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Writes the part manifest beside the archive, durably."""
        await self.jobs.storage.write_part_manifest(self.backup, self.part, manifest)

    async def previous_with_files(self) -> Backup | None:
        """The backup an incremental is made on: the newest completed one with a files part."""
        return await self.jobs.previous_with_files(self.backup)

    async def part_manifest(self, backup: Backup, part: BackupPart) -> dict[str, Any]:
        """Another backup's part manifest (OSError when storage lost it)."""
        return await self.jobs.storage.read_part_manifest(backup, part)


# Writes the part's archive and its part manifest durably; returns what the catalog records.
Producer = Callable[[PartJob], Awaitable[PartResult]]


class PartWorker:
    """Runs the jobs of one part: claims on request, then works while the message is long acknowledged."""

    def __init__(self, part: BackupPart, produce: Producer, ports: Ports, metrics: JobMetrics) -> None:
        self.part = part
        self._produce = produce
        self._ports = ports
        self._metrics = metrics
        self.jobs = PartJobs(ports)
        self._running: dict[str, tuple[asyncio.Task[None], Lease, BackupRequested]] = {}

    async def start(self, event: BackupRequested) -> None:
        """Claims the part and starts its job; returns at once (the job runs on). A request for a
        backup without this part, or whose part is done or held by a live worker, is a no-op."""
        if self.part not in event.parts:
            return
        lease = await self.jobs.claim(event, self.part)
        if lease is None:
            log.info("backup %s: %s part already done or in progress elsewhere", event.backup_id, self.part.value)
            return
        # Claim, then acknowledge: the job outlives the message, kept alive by its lease.
        task = asyncio.create_task(self._run(lease, event), name=f"{self.part.value}-{event.backup_id}")
        self._running[lease.job_key] = (task, lease, event)
        task.add_done_callback(lambda _: self._running.pop(lease.job_key, None))

    async def wait_idle(self) -> None:
        """Returns once no job runs (for tests and orderly stops)."""
        while self._running:
            await asyncio.wait([task for task, _, _ in self._running.values()])

    async def shutdown(self) -> None:
        """Stops every running job and gives it back, so another replica resumes it."""
        for task, lease, event in list(self._running.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            with contextlib.suppress(Exception):
                await self.jobs.release(lease, event, "the worker was stopped")

    async def _run(self, lease: Lease, event: BackupRequested) -> None:
        backup_id = str(event.backup_id)
        part = self.part.value
        self._metrics.running.labels(self._metrics.service).inc()
        started = time.monotonic()
        try:
            async with self._ports.leases.keep_alive(lease) as keeper:
                job = await self._prepare(backup_id, lambda: keeper.lease)
                result = await self._produce(job)
                keeper.check()
                await self.jobs.complete(keeper.lease, backup_id, self.part, result)
            self._metrics.finished("completed")
            log.info("backup %s: %s part completed in %.1f s", backup_id, part, time.monotonic() - started)
        except LeaseLost:
            self._metrics.finished("lease_lost")
            log.warning("backup %s: lost the lease; another worker owns the %s part now", backup_id, part)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._metrics.finished("failed")
            reason = failure_reason(exc)
            log.error("backup %s: %s part failed: %s", backup_id, part, reason)
            if not isinstance(exc, PartFailure | SettingsError | OSError | ArchiveError | KeyUnwrapError):
                log.exception("unexpected failure")
            with contextlib.suppress(LeaseLost):
                await self.jobs.fail(lease, backup_id, self.part, reason)
        finally:
            self._metrics.running.labels(self._metrics.service).dec()

    async def _prepare(self, backup_id: str, lease: Callable[[], Lease]) -> PartJob:
        backup = await self.jobs.backup(backup_id)
        if backup is None:
            raise PartFailure(f"backup {backup_id} is not in the catalog")
        settings = await read_settings(self._ports.uow)
        password: str | None = None
        encryption = encryption_info(None)
        if settings.encryption.enabled:
            password = archive_password(await self._ports.keys.data_key(backup_id))
            encryption = encryption_info(await self._ports.keys.wrapped(backup_id))
        archive = await self._ports.storage.prepare_part(backup, self.part)
        return PartJob(backup, self.part, archive, settings, password, encryption, lease, self.jobs)
