"""What the verification service does with each event it consumes, and on its drill schedule.

A BackupCompleted (when the settings' ``verification.after_backup`` is on) or a VerifyRequested is
claimed under the lease ``verify:<backup id>``, so that several replicas never verify one backup at
once, and verified (see checks.py); the result, and BackupVerified or BackupVerificationFailed, are
written in one unit of work. On ``verification.restore_drill_cron`` one replica (the one that
claims that firing) verifies completed backups again, those verified longest ago first, until the
round's time budget is spent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cronsim import CronSim
from prometheus_client import CollectorRegistry, Counter, Gauge

from backup_common.adapters.runtime.jobs import JobMetrics, JobWorker
from backup_common.adapters.runtime.service import Handlers
from backup_common.adapters.runtime.stored import StoredPart
from backup_common.domain.documents import RestoreLimits
from backup_common.domain.events import BackupCompleted, VerifyRequested
from backup_common.domain.jobs import Lease, verify_job_key
from backup_common.domain.model import BackupStatus
from backup_common.domain.ports import Heartbeat, MessageRejected, Ports, read_settings
from backup_common.domain.verification import Check, Verification, VerificationStatus
from backup_common.engine.database.drill import DRILL_PREFIX
from backup_verification.checks import Drill, verify_backup

log = logging.getLogger(__name__)

ROUND_PREFIX = "verify-round:"
TICK_SECONDS = 15.0  # how often each replica looks whether the drill schedule fired
ROUND_BATCH = 100  # backups looked up at a time by a scheduled round
AFTER_BACKUP = "after-backup"
SCHEDULE = "schedule"


# Loads a database part into the named scratch database and compares it with what the dump read.
DrillRunner = Callable[[StoredPart, str, RestoreLimits], Awaitable[Check]]


class VerificationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.failures = Counter(
            "backup_verification_failures",
            "Verifications that found a backup damaged or unrestorable.",
            registry=registry,
        )
        self.last_verified = Gauge(
            "backup_last_verified_timestamp_seconds", "When a backup last passed verification.", registry=registry
        )


class Verifier(JobWorker[VerifyRequested]):
    """Verifies backups, one lease per backup; at most one restore drill at a time in this process."""

    def __init__(
        self,
        ports: Ports,
        jobs: JobMetrics,
        metrics: VerificationMetrics,
        drill: DrillRunner,
        *,
        scratch_prefix: str = DRILL_PREFIX,
    ) -> None:
        super().__init__(ports, jobs)
        self._outcomes = metrics
        self._drill = drill
        self._scratch_prefix = scratch_prefix
        self._drills = asyncio.Semaphore(1)

    def _describe(self, event: VerifyRequested) -> str:
        return f"verification of backup {event.backup_id}"

    async def _claim(self, event: VerifyRequested) -> Lease | None:
        backup_id = str(event.backup_id)
        async with self._ports.uow() as uow:
            backup = await uow.backups.get(backup_id)
        if backup is None:
            # The gateway and the commands request a verification of a backup they found: one of a
            # backup the catalog never had was published by hand, and goes to the dead letters.
            raise MessageRejected(f"backup {backup_id} is not in the catalog; nothing to verify")
        if backup.status is not BackupStatus.COMPLETED:
            log.info("backup %s is not a completed backup; nothing to verify", backup_id)
            return None
        lease = await self._ports.leases.claim(
            verify_job_key(backup_id), self._ports.holder, event.model_dump(mode="json")
        )
        if lease is None:
            return None
        async with self._ports.uow() as uow:
            await uow.leases.fence(lease)
            verification = await uow.verifications.get(backup_id, for_update=True) or Verification(backup_id)
            verification.requested_at = self._ports.clock()
            await uow.verifications.save(verification)
            await uow.commit()
        return lease

    async def _work(self, event: VerifyRequested, heartbeat: Heartbeat) -> None:
        backup_id = str(event.backup_id)
        async with self._ports.uow() as uow:
            backup = await uow.backups.get(backup_id)
        if backup is None or backup.status is not BackupStatus.COMPLETED:
            await self._record(
                heartbeat.lease, backup_id, [Check("backup", False, "the backup is no longer completed")]
            )
            return
        settings = await read_settings(self._ports.uow)
        limits = settings.restore_limits
        checks = await verify_backup(self._ports, backup, limits, self._drill_one(backup_id, limits))
        heartbeat.check()
        await self._record(heartbeat.lease, backup_id, checks)

    def _drill_one(self, backup_id: str, limits: RestoreLimits) -> Drill:
        scratch = scratch_database(self._scratch_prefix, backup_id)

        async def drill(part: StoredPart) -> Check:
            async with self._drills:
                return await self._drill(part, scratch, limits)

        return drill

    async def _fail(self, lease: Lease, event: VerifyRequested, reason: str) -> None:
        await self._record(lease, str(event.backup_id), [Check("verification", False, reason)])

    async def _record(self, lease: Lease, backup_id: str, checks: list[Check]) -> None:
        async with self._ports.uow() as uow:
            await uow.leases.fence(lease)
            verification = await uow.verifications.get(backup_id, for_update=True) or Verification(backup_id)
            verification.record(checks, self._ports.clock())
            await uow.verifications.save(verification)
            await uow.leases.reopen(lease.job_key)
            await uow.commit()
        if verification.status is VerificationStatus.VERIFIED:
            self._outcomes.last_verified.set(time.time())
            log.info("backup %s verified (%d checks)", backup_id, len(checks))
        else:
            self._outcomes.failures.inc()
            log.error("backup %s failed verification: %s", backup_id, verification.error)

    async def verify(self, event: VerifyRequested) -> None:
        """Verifies the backup and returns once done (or at once when another replica has it)."""
        task = await self.start(event)
        if task is not None:
            await asyncio.wait([task])


def drill_prefix(catalog: str) -> str:
    """The start of the names of the scratch databases of the catalog ``catalog`` (its server and
    database): a server may hold the drills of several catalogs (other deployments, test runs), and
    each sweeps only its own."""
    return f"{DRILL_PREFIX}{hashlib.sha256(catalog.encode()).hexdigest()[:8]}_"


def scratch_database(prefix: str, backup_id: str) -> str:
    """The restore drill's scratch database for this backup: the same on every attempt, so a drill
    a crash interrupted is swept by the next one."""
    return prefix + backup_id.replace("-", "")[:16]


@dataclass(frozen=True)
class Dependencies:
    ports: Ports
    verifier: Verifier


async def verify_completed(event: BackupCompleted, deps: Dependencies) -> None:
    settings = await read_settings(deps.ports.uow)
    if settings.verification.after_backup:
        await deps.verifier.start(VerifyRequested(backup_id=event.backup_id, requested_by=AFTER_BACKUP))


async def verify_requested(event: VerifyRequested, deps: Dependencies) -> None:
    await deps.verifier.start(event)


HANDLERS: Handlers[Dependencies] = {
    BackupCompleted: verify_completed,
    VerifyRequested: verify_requested,
}


class DrillSchedule:
    """Runs a verification round at each firing of ``verification.restore_drill_cron`` (UTC).

    Every replica computes the firings; the one that claims a firing's lease runs its round, so a
    round runs once however many replicas there are. A firing missed while no replica ran is not
    made up: the next one starts from the backups verified longest ago anyway.
    """

    def __init__(self, ports: Ports, verifier: Verifier, *, tick_seconds: float = TICK_SECONDS) -> None:
        self._ports = ports
        self._verifier = verifier
        self._tick = tick_seconds
        self._since: datetime | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("the verification schedule failed; will try again")
            await asyncio.sleep(self._tick)

    async def tick(self) -> bool:
        """Runs the round of a firing that came due since the last tick; True when it ran one."""
        now = self._ports.clock()
        since, self._since = self._since or now, now
        cron = (await read_settings(self._ports.uow)).verification.restore_drill_cron
        if cron is None:
            return False
        due = next(CronSim(cron, since.replace(tzinfo=None)))
        if due > now.replace(tzinfo=None):
            return False
        lease = await self._ports.leases.claim(f"{ROUND_PREFIX}{due:%Y-%m-%dT%H:%M}", self._ports.holder)
        if lease is None:
            return False  # another replica runs this round
        # Kept alive while the round runs: an expired lease would let another replica run it again.
        async with self._ports.leases.keep_alive(lease) as heartbeat:
            await self.round()
        async with self._ports.uow() as uow:
            await uow.leases.complete(heartbeat.lease)
            await uow.commit()
        return True

    async def round(self) -> int:
        """Verifies completed backups, those verified longest ago first, until the budget is spent;
        returns how many it verified."""
        settings = await read_settings(self._ports.uow)
        deadline = time.monotonic() + timedelta(minutes=settings.verification.drill_budget_minutes).total_seconds()
        async with self._ports.uow() as uow:
            stalest = await uow.verifications.stalest(ROUND_BATCH)
        done = 0
        for backup_id in stalest:
            if time.monotonic() >= deadline:
                log.info("verification round: time budget spent after %d backups", done)
                break
            await self._verifier.verify(VerifyRequested(backup_id=uuid.UUID(backup_id), requested_by=SCHEDULE))
            done += 1
        return done
