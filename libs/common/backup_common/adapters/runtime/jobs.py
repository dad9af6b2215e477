"""The life of one backup part (database or files) around the work of making it: claim, lease,
progress, completion, failure, hand-back and reaping, written against the ports only.

Every write a worker makes is fenced by its lease, so a worker whose lease was taken over cannot
mark a part done. The completion that leaves no part pending completes the backup, writing its
manifest before the unit of work that lists it as usable commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from backup_common.adapters.runtime.fetch import LocalCopyMissing, local_copy
from backup_common.adapters.settings import SettingsError
from backup_common.adapters.waiting import cancel_and_wait
from backup_common.domain.documents import SettingsDocument
from backup_common.domain.errors import DomainError
from backup_common.domain.events import BackupPart, BackupRequested, RestoreRequested, VerifyRequested, parse_event
from backup_common.domain.jobs import (
    MAX_JOB_ATTEMPTS,
    VERIFY_JOB_PREFIX,
    Lease,
    LeaseLost,
    parse_job_key,
    part_job_key,
)
from backup_common.domain.model import Backup, BackupStatus, PartResult, Trigger
from backup_common.domain.offsite import OffsiteCopy
from backup_common.domain.ports import BackupStorage, Heartbeat, MessageRejected, Ports, UnitOfWork, read_settings
from backup_common.domain.verification import Check, Verification
from backup_common.engine.archive import ArchiveError
from backup_common.engine.crypto import KeyUnwrapError, archive_password
from backup_common.engine.storage import encryption_info, remove_failed_part, sweep_partials

log = logging.getLogger(__name__)

Request = TypeVar("Request", BackupRequested, RestoreRequested, VerifyRequested)
PROGRESS_SECONDS = 1.0


class PartFailure(Exception):
    """The part cannot be made; the message is the reason recorded for the operator."""


class PartRetry(Exception):
    """This attempt failed for a passing reason (the source connection was lost): the job is handed
    back and requested again, as the reaper does for a lost worker, and fails with this reason once
    MAX_JOB_ATTEMPTS attempts were made."""


# Failures with a reason for the operator; anything else is also logged with its traceback.
EXPECTED_FAILURES = (PartFailure, SettingsError, OSError, ArchiveError, KeyUnwrapError, DomainError)


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, PartFailure | SettingsError | KeyUnwrapError | ArchiveError | DomainError):
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

    async def part_manifest(self, backup: Backup, part: BackupPart) -> dict[str, Any]:
        try:
            return await self._ports.storage.read_part_manifest(backup, part)
        except OSError:
            if self._ports.offsite is None:
                raise
        try:
            await local_copy(self._ports, backup, checksums=False)
        except LocalCopyMissing as exc:
            raise FileNotFoundError(errno.ENOENT, str(exc)) from exc
        return await self._ports.storage.read_part_manifest(backup, part)

    async def backup(self, backup_id: str) -> Backup | None:
        async with self._ports.uow() as uow:
            return await uow.backups.get(backup_id)

    async def previous_with_files(self, backup: Backup) -> Backup | None:
        async with self._ports.uow() as uow:
            return await uow.backups.previous_with_files(backup)

    async def claim(self, event: BackupRequested, part: BackupPart) -> Lease | None:
        """Takes the part's job unless it is finished, held by a live worker, or its backup is over.

        MessageRejected (so the request is dead-lettered) when the catalog has no such backup or part:
        the gateway records a backup before it requests it, so such a request was published by hand or
        by automation, which asks for a backup with the command.backup.create command instead.
        """
        backup_id = str(event.backup_id)
        backup = await self.backup(backup_id)
        if backup is None:
            raise MessageRejected(
                f"backup {backup_id} is not in the catalog (a BackupRequested only starts a backup the gateway"
                " recorded; to request one, publish command.backup.create)"
            )
        if not backup.has_part(part):
            raise MessageRejected(f"backup {backup_id} is a {backup.type.value} backup, which has no {part.value} part")
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
                # Parts that encrypted created the data key; read it before the MAC below creates one
                # for a backup whose archives are not encrypted.
                wrapped = await self._ports.keys.wrapped(backup_id)
                data_key = await self._ports.keys.data_key(backup_id)
                mac_key = None if wrapped is not None else await self._ports.keys.wrapped(backup_id)
                encryption = encryption_info(wrapped, mac_key=mac_key)
                await self._ports.storage.write_manifest(backup, encryption, data_key=data_key)
                if self._ports.offsite is not None:
                    # Listed as pending off-site from the moment it is usable; the copier takes it up.
                    await uow.offsite.save(OffsiteCopy(backup_id))
            await uow.backups.save(backup)
            await settle_waiting_restore(uow, backup, self._ports.clock())
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
                await settle_waiting_restore(uow, backup, self._ports.clock())
            await uow.commit()
        if backup is not None:
            # Failed for good (the commit above): no attempt will write there again.
            await discard_failed_part(self._ports.storage, backup, part)


async def discard_failed_part(storage: BackupStorage, backup: Backup, part: BackupPart) -> None:
    """Removes what the attempts at a part that failed for good left in storage (logged, never raised:
    the failure is recorded already, and the start-up sweep finds what is left)."""
    try:
        removed = await asyncio.to_thread(remove_failed_part, storage.directory(backup), part)
    except OSError as exc:
        log.warning("backup %s: could not remove what the failed %s part left: %s", backup.id, part.value, exc)
        return
    if removed:
        log.info("backup %s: removed what the failed %s part left: %s", backup.id, part.value,
                 ", ".join(path.name for path in removed))  # fmt: skip


async def sweep_leftovers(ports: Ports, root: Path) -> None:
    """At a backup worker's start: removes the temporary files (``.*.partial``) under the storage root
    that attempts killed mid-write left, in the directories of backups no live worker is making now."""
    started = time.time()  # a file newer than this may belong to an attempt claimed after the look below
    try:
        live = {parsed[1] for key in await ports.leases.held("backup:") if (parsed := parse_job_key(key))}
        removed = await asyncio.to_thread(sweep_partials, root, live.__contains__, started)
    except Exception:
        log.exception("could not sweep the temporary files left in storage")
        return
    if removed:
        log.warning("removed temporary files left by interrupted backups: %s", ", ".join(map(str, removed)))


async def settle_waiting_restore(uow: UnitOfWork, backup: Backup, now: datetime) -> None:
    """Lets the restore waiting for this safety backup go ahead, or fails it, once the backup ended."""
    if backup.trigger is not Trigger.PRE_RESTORE or backup.status not in (BackupStatus.COMPLETED, BackupStatus.FAILED):
        return
    restore = await uow.restores.waiting_on(backup.id)
    if restore is not None:
        restore.safety_backup_finished(backup, now)
        await uow.restores.save(restore)


async def _give_up_verification(uow: UnitOfWork, job_key: str, attempts: int, now: datetime) -> None:
    """A verification whose verifier was lost too often fails, and may be requested again."""
    backup_id = job_key.removeprefix(VERIFY_JOB_PREFIX)
    if await uow.backups.get(backup_id) is not None:
        verification = await uow.verifications.get(backup_id, for_update=True) or Verification(backup_id)
        verification.record([Check("verification", False, f"the verifier was lost {attempts} times; giving up")], now)
        await uow.verifications.save(verification)
    await uow.leases.reopen(job_key)


async def reap_jobs(ports: Ports, max_attempts: int) -> None:
    """Re-requests the jobs (backup or restore parts) whose worker was lost, or fails them after too
    many losses."""
    given_up: list[tuple[Backup, BackupPart]] = []
    async with ports.uow() as uow:
        result = await uow.leases.reap(max_attempts)
        for job in result.requeue:
            if job.payload is None:
                continue
            event = parse_event(json.dumps(job.payload))
            log.warning("worker %s lost %s; requesting it again", job.holder, job.job_key)
            await uow.outbox.add(event.model_copy(update={"event_id": uuid.uuid4()}))
        now = ports.clock()
        for job in result.failed:
            if job.job_key.startswith(VERIFY_JOB_PREFIX):
                await _give_up_verification(uow, job.job_key, job.attempts, now)
                continue
            parsed = parse_job_key(job.job_key)
            if parsed is None:
                continue
            kind, job_id, part = parsed
            reason = f"the worker was lost {job.attempts} times; giving up"
            if kind == "backup":
                backup = await uow.backups.get(job_id, for_update=True)
                if backup is not None:
                    backup.fail_part(part, reason, now)
                    await uow.backups.save(backup)
                    await settle_waiting_restore(uow, backup, now)
                    given_up.append((backup, part))
            else:
                restore = await uow.restores.get(job_id, for_update=True)
                if restore is not None and not restore.part(part).status.finished:
                    restore.fail_part(part, reason, now)
                    await uow.restores.save(restore)
        await uow.commit()
    for backup, part in given_up:
        await discard_failed_part(ports.storage, backup, part)


@contextlib.asynccontextmanager
async def reporting(
    send: Callable[[dict[str, Any]], Awaitable[None]], snapshot: Callable[[], dict[str, Any]]
) -> AsyncIterator[None]:
    """Sends ``snapshot()`` every PROGRESS_SECONDS while the block runs: for work done in a thread,
    which cannot await the catalog itself."""

    async def report() -> None:
        while True:
            await asyncio.sleep(PROGRESS_SECONDS)
            await send(snapshot())

    reporter = asyncio.create_task(report(), name="progress reporter")
    try:
        yield
    finally:
        await cancel_and_wait([reporter])


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
        """Another backup's part manifest, fetched back from its off-site copy when the local copy
        is gone (OSError when neither has it)."""
        return await self.jobs.part_manifest(backup, part)


# Writes the part's archive and its part manifest durably; returns what the catalog records.
Producer = Callable[[PartJob], Awaitable[PartResult]]


class JobWorker(Generic[Request]):
    """Runs leased jobs: claims on request, then works while the message is long acknowledged.

    Subclasses say how a request is claimed, worked, failed and handed back; this runs each job as a
    task kept alive by its lease's heartbeat, counts it, and turns every failure into a reason.
    """

    def __init__(self, ports: Ports, metrics: JobMetrics) -> None:
        self._ports = ports
        self._metrics = metrics
        self._running: dict[str, tuple[asyncio.Task[None], Lease, Request]] = {}

    def _describe(self, event: Request) -> str:
        raise NotImplementedError

    def _wants(self, event: Request) -> bool:
        """Whether the request is for this worker at all (a backup part asks for its own part)."""
        return True

    async def _claim(self, event: Request) -> Lease | None:
        raise NotImplementedError

    async def _work(self, event: Request, heartbeat: Heartbeat) -> None:
        """Does the job and records its completion, fenced by ``heartbeat.lease``."""
        raise NotImplementedError

    async def _fail(self, lease: Lease, event: Request, reason: str) -> None:
        raise NotImplementedError

    async def _release(self, lease: Lease, event: Request, reason: str) -> None:
        """Gives the job back (e.g. at shutdown) and asks for it again, so another worker resumes it."""
        async with self._ports.uow() as uow:
            await uow.leases.release(lease, reason)
            await uow.outbox.add(event.model_copy(update={"event_id": uuid.uuid4()}))
            await uow.commit()

    async def start(self, event: Request) -> asyncio.Task[None] | None:
        """Claims the job and starts it; returns at once with its task (the job runs on). A request
        not for this worker, or whose job is done or held by a live worker, is a no-op (None)."""
        if not self._wants(event):
            return None
        lease = await self._claim(event)
        if lease is None:
            log.info("%s: already done or in progress elsewhere", self._describe(event))
            return None
        # Claim, then acknowledge: the job outlives the message, kept alive by its lease.
        task = asyncio.create_task(self._run(lease, event), name=lease.job_key)
        self._running[lease.job_key] = (task, lease, event)
        task.add_done_callback(lambda _: self._running.pop(lease.job_key, None))
        return task

    async def wait_idle(self) -> None:
        """Returns once no job runs (for tests and orderly stops)."""
        while self._running:
            await asyncio.wait([task for task, _, _ in self._running.values()])

    async def shutdown(self) -> None:
        """Stops every running job and gives it back, so another replica resumes it."""
        for task, lease, event in list(self._running.values()):
            await cancel_and_wait([task])
            with contextlib.suppress(Exception):
                await self._release(lease, event, "the worker was stopped")

    async def _run(self, lease: Lease, event: Request) -> None:
        what = self._describe(event)
        self._metrics.running.labels(self._metrics.service).inc()
        started = time.monotonic()
        try:
            async with self._ports.leases.keep_alive(lease) as heartbeat:
                await self._work(event, heartbeat)
            self._metrics.finished("completed")
            log.info("%s completed in %.1f s", what, time.monotonic() - started)
        except LeaseLost:
            self._metrics.finished("lease_lost")
            log.warning("%s: lost the lease; another worker owns the job now", what)
        except asyncio.CancelledError:
            raise
        except PartRetry as exc:
            _raise_if_cancelling(exc)
            await self._retry(lease, event, str(exc))
        except Exception as exc:
            _raise_if_cancelling(exc)
            self._metrics.finished("failed")
            reason = failure_reason(exc)
            log.error("%s failed: %s", what, reason)
            if not isinstance(exc, EXPECTED_FAILURES):
                log.exception("unexpected failure")
            with contextlib.suppress(LeaseLost):
                await self._fail(lease, event, reason)
        finally:
            self._metrics.running.labels(self._metrics.service).dec()

    async def _retry(self, lease: Lease, event: Request, reason: str) -> None:
        """Hands the job back and asks for it again, or fails it once it had its MAX_JOB_ATTEMPTS."""
        what = self._describe(event)
        with contextlib.suppress(LeaseLost):
            if lease.attempts < MAX_JOB_ATTEMPTS:
                self._metrics.finished("retried")
                log.warning("%s: %s; requesting it again (attempt %d of %d)", what, reason, lease.attempts,
                            MAX_JOB_ATTEMPTS)  # fmt: skip
                await self._release(lease, event, reason)
                return
            self._metrics.finished("failed")
            given_up = f"{reason} (attempt {lease.attempts} of {MAX_JOB_ATTEMPTS}; giving up)"
            log.error("%s failed: %s", what, given_up)
            await self._fail(lease, event, given_up)


def _raise_if_cancelling(exc: Exception) -> None:
    if (task := asyncio.current_task()) is not None and task.cancelling():
        # Stopped, and the cancellation surfaced as another error: the job is given back, not failed.
        raise asyncio.CancelledError from exc


class PartWorker(JobWorker[BackupRequested]):
    """Makes one part (database or files) of the backups requested."""

    def __init__(self, part: BackupPart, produce: Producer, ports: Ports, metrics: JobMetrics) -> None:
        super().__init__(ports, metrics)
        self.part = part
        self._produce = produce
        self.jobs = PartJobs(ports)

    def _describe(self, event: BackupRequested) -> str:
        return f"backup {event.backup_id}: {self.part.value} part"

    def _wants(self, event: BackupRequested) -> bool:
        return self.part in event.parts

    async def _claim(self, event: BackupRequested) -> Lease | None:
        return await self.jobs.claim(event, self.part)

    async def _work(self, event: BackupRequested, heartbeat: Heartbeat) -> None:
        backup_id = str(event.backup_id)
        job = await self._prepare(backup_id, lambda: heartbeat.lease)
        result = await self._produce(job)
        heartbeat.check()
        await self.jobs.complete(heartbeat.lease, backup_id, self.part, result)

    async def _fail(self, lease: Lease, event: BackupRequested, reason: str) -> None:
        await self.jobs.fail(lease, str(event.backup_id), self.part, reason)

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
