"""In-memory fakes of the ports (``domain.ports``), for running handlers through their bootstrap
without MySQL or RabbitMQ.

The fake unit of work keeps the catalog's transactional promises that the handlers rely on: reads are
copies, nothing is visible to others before ``commit``, and ``commit`` moves the events recorded by
every saved aggregate to the outbox together with the state.
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from backup_common.adapters.mysql.documents import default_document
from backup_common.domain.documents import Document
from backup_common.domain.events import BackupPart, BackupType, Event
from backup_common.domain.jobs import Lease, LeaseLost, ReapedJob, ReapResult
from backup_common.domain.model import (
    REBUILT_UNCONFIRMED,
    AuditEntry,
    Backup,
    BackupFilter,
    BackupStatus,
    CatalogStats,
    Idempotency,
    LastSuccess,
    Outcomes,
    PartStatus,
    Restore,
    RestoreFilter,
    RestoreStatus,
    target_busy,
)
from backup_common.domain.notifications import Delivery
from backup_common.domain.offsite import OffsiteCopy, OffsiteStatus
from backup_common.domain.ports import (
    DuplicateRequest,
    OffsiteError,
    OffsiteLocked,
    OffsiteObject,
    OffsiteStore,
    Ports,
    StoredDocument,
    UploadProgress,
    WrappedKey,
)
from backup_common.domain.retention import Candidate
from backup_common.domain.schedule import Firing
from backup_common.domain.verification import Verification, VerificationStatus
from backup_common.engine.crypto import MasterKey, new_data_key
from backup_common.engine.storage import MANIFEST, LocalStorage
from tests.unit.fake_upkeep import FakeHousekeeping, FakeLocks, FakeNotifications, FakeSchedules

LEASE_SECONDS = 60.0


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class StoredLease:
    holder: str | None = None
    version: int = 0
    state: str = "released"
    attempts: int = 0
    payload: dict[str, Any] | None = None
    expires_at: datetime | None = None
    last_error: str | None = None


@dataclass
class FakeCatalog:
    """What the catalog holds once committed."""

    clock: FakeClock
    backups: dict[str, Backup] = field(default_factory=dict)
    idempotency: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    restores: dict[str, Restore] = field(default_factory=dict)
    documents: dict[str, StoredDocument] = field(default_factory=dict)
    audit: list[AuditEntry] = field(default_factory=list)
    outbox: list[Event] = field(default_factory=list)
    leases: dict[str, StoredLease] = field(default_factory=dict)
    restore_targets: dict[str, str] = field(default_factory=dict)  # target key -> unfinished restore
    verifications: dict[str, Verification] = field(default_factory=dict)
    firings: dict[tuple[str, datetime], Firing] = field(default_factory=dict)
    cursors: dict[str, datetime] = field(default_factory=dict)
    locks: set[str] = field(default_factory=set)
    purges: list[datetime] = field(default_factory=list)
    deliveries: dict[str, Delivery] = field(default_factory=dict)
    offsite: dict[str, OffsiteCopy] = field(default_factory=dict)
    claimed: set[str] = field(default_factory=set)  # deliveries an open unit of work holds
    commits: int = 0

    def events(self, kind: type[Event]) -> list[Any]:
        return [event for event in self.outbox if isinstance(event, kind)]


def _fresh(aggregate: Any) -> Any:
    """A copy as a read gives it: the stored state, with no events pending."""
    copied = copy.deepcopy(aggregate)
    copied.events = []
    return copied


class _Backups:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow
        self._catalog = uow.catalog

    async def add(self, backup: Backup, idempotency: Idempotency | None = None) -> None:
        if idempotency is not None:
            key = (backup.requested_by, idempotency.key)
            if key in self._catalog.idempotency or key in self._uow.staged_idempotency:
                raise DuplicateRequest(idempotency.key)
            self._uow.staged_idempotency[key] = (backup.id, idempotency.request_hash)
        self._uow.stage(backup)

    async def get(self, backup_id: str, *, for_update: bool = False) -> Backup | None:
        staged = self._uow.staged.get(backup_id)
        if isinstance(staged, Backup):
            return staged
        found = self._catalog.backups.get(backup_id)
        return self._with_verification(_fresh(found)) if found else None

    def _with_verification(self, backup: Backup) -> Backup:
        verification = self._catalog.verifications.get(backup.id)
        backup.verification = _fresh(verification) if verification else None
        return backup

    async def by_idempotency_key(self, requested_by: str, key: str) -> tuple[Backup, str | None] | None:
        found = self._catalog.idempotency.get((requested_by, key))
        if found is None:
            return None
        backup = await self.get(found[0])
        assert backup is not None
        return backup, found[1]

    async def save(self, backup: Backup) -> None:
        self._uow.stage(backup)

    async def record_progress(self, lease: Lease, backup_id: str, part: BackupPart, progress: dict[str, Any]) -> None:
        stored = self._catalog.leases.get(lease.job_key)
        if stored is None or (stored.holder, stored.version, stored.state) != (lease.holder, lease.version, "held"):
            return
        self._uow.staged_progress.append(("backup", backup_id, part, progress))

    async def retention_candidates(self) -> list[Candidate]:
        return [
            Candidate(b.id, b.type, b.created_at, b.parent_id, b.archive)
            for b in self._catalog.backups.values()
            if b.status is BackupStatus.COMPLETED
        ]

    async def dependents(self, backup_id: str) -> list[str]:
        live = [b for b in self._catalog.backups.values() if b.status.in_progress or b.status is BackupStatus.COMPLETED]
        chain, found = {backup_id}, True
        while found:
            found = False
            for backup in live:
                if backup.parent_id in chain and backup.id not in chain:
                    chain.add(backup.id)
                    found = True
        return [b.id for b in sorted(live, key=lambda b: (b.created_at, b.id)) if b.id in chain - {backup_id}]

    async def running_of_schedule(self, schedule: str) -> Backup | None:
        running = [b for b in self._catalog.backups.values() if b.schedule == schedule and b.status.in_progress]
        newest = max(running, key=lambda b: b.created_at, default=None)
        return _fresh(newest) if newest else None

    async def last_success_of_schedule(self, schedule: str) -> Backup | None:
        made = [
            b
            for b in self._catalog.backups.values()
            if b.schedule == schedule and b.completed_at is not None and b.error is None
            and b.status in (BackupStatus.COMPLETED, BackupStatus.DELETING, BackupStatus.DELETED)
        ]  # fmt: skip
        newest = max(made, key=lambda b: b.created_at, default=None)
        return _fresh(newest) if newest else None

    async def idle_since(self, status: BackupStatus, before: datetime, limit: int) -> list[str]:
        idle = [b for b in self._catalog.backups.values() if b.status is status and b.updated_at < before]
        return [b.id for b in sorted(idle, key=lambda b: b.updated_at)][:limit]

    async def unerased_failures(self, before: datetime, limit: int) -> list[str]:
        backups = self._catalog.backups.values()
        failed = [
            b
            for b in backups
            if b.status is BackupStatus.FAILED
            and not b.erased_at
            and b.updated_at < before
            and not (b.error or "").startswith(REBUILT_UNCONFIRMED)
        ]
        return [b.id for b in failed][:limit]

    async def list(self, query: BackupFilter) -> tuple[list[Backup], int]:
        matching = [
            backup
            for backup in self._catalog.backups.values()
            if (not query.types or backup.type in query.types)
            and (not query.statuses or backup.status in query.statuses)
            and (not query.verification or self._verification_status(backup.id) in query.verification)
        ]
        matching.sort(key=lambda backup: (backup.created_at, backup.id), reverse=True)
        page = matching[query.offset : query.offset + query.limit]
        return [self._with_verification(_fresh(backup)) for backup in page], len(matching)

    def _verification_status(self, backup_id: str) -> VerificationStatus:
        found = self._catalog.verifications.get(backup_id)
        return found.status if found else VerificationStatus.PENDING

    async def stats(self) -> CatalogStats:
        backups = list(self._catalog.backups.values())
        by_status: dict[str, int] = {}
        for backup in backups:
            by_status[backup.status.value] = by_status.get(backup.status.value, 0) + 1
        last: dict[str, LastSuccess | None] = {t.value: None for t in BackupType}
        for backup in sorted(backups, key=lambda b: b.completed_at or b.created_at):
            if backup.status is BackupStatus.COMPLETED and backup.completed_at:
                last[backup.type.value] = LastSuccess(backup.id, backup.completed_at, backup.size_bytes)
        return CatalogStats(
            by_type={t.value: sum(1 for b in backups if b.type is t) for t in BackupType},
            by_status=by_status,
            bytes_by_type={
                t.value: sum(b.size_bytes for b in backups if b.type is t and b.status is BackupStatus.COMPLETED)
                for t in BackupType
            },
            last_success=last,
            last_30_days=Outcomes(
                sum(1 for b in backups if b.status is BackupStatus.COMPLETED),
                sum(1 for b in backups if b.status is BackupStatus.FAILED),
            ),
            verification={
                state: sum(
                    1
                    for b in backups
                    if b.status is BackupStatus.COMPLETED
                    and self._verification_status(b.id).value.replace("pending", "never") == state
                )
                for state in ("verified", "failed", "never")
            },
        )

    async def previous_with_files(self, backup: Backup) -> Backup | None:
        candidates = [
            other
            for other in self._catalog.backups.values()
            if other.status is BackupStatus.COMPLETED
            and other.created_at < backup.created_at
            and other.has_part(BackupPart.FILES)
            and other.part(BackupPart.FILES).status is PartStatus.COMPLETED
        ]
        newest = max(candidates, key=lambda other: (other.created_at, other.id), default=None)
        return _fresh(newest) if newest else None


class _Restores:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    async def add(self, restore: Restore, target_keys: Sequence[str]) -> None:
        held = {**self._uow.catalog.restore_targets, **self._uow.staged_targets}
        for key in target_keys:
            if key in held:
                raise target_busy(key, held[key])
        self._uow.staged_targets.update(dict.fromkeys(target_keys, restore.id))
        self._uow.stage(restore)

    async def get(self, restore_id: str, *, for_update: bool = False) -> Restore | None:
        found = self._uow.catalog.restores.get(restore_id)
        return _fresh(found) if found else None

    async def save(self, restore: Restore) -> None:
        self._uow.stage(restore)

    async def record_progress(self, lease: Lease, restore_id: str, part: BackupPart, progress: dict[str, Any]) -> None:
        stored = self._uow.catalog.leases.get(lease.job_key)
        if stored is not None and stored.holder == lease.holder and stored.version == lease.version:
            self._uow.staged_progress.append(("restore", restore_id, part, progress))

    async def waiting_on(self, safety_backup_id: str) -> Restore | None:
        for restore in self._uow.catalog.restores.values():
            if restore.safety_backup_id == safety_backup_id:
                waiting: Restore = _fresh(restore)
                return waiting
        return None

    async def idle_pending(self, before: datetime, limit: int) -> list[str]:
        backups = self._uow.catalog.backups

        def waiting(restore: Restore) -> bool:
            safety = backups.get(restore.safety_backup_id or "")
            return safety is not None and safety.status.in_progress

        restores = self._uow.catalog.restores.values()
        idle = [r for r in restores if r.status is RestoreStatus.PENDING and r.updated_at < before and not waiting(r)]
        return [r.id for r in idle][:limit]

    async def unfinished_of(self, backup_id: str) -> list[str]:
        restores = self._uow.catalog.restores.values()
        return [r.id for r in restores if r.backup_id == backup_id and not r.status.finished]

    async def list(self, query: RestoreFilter) -> tuple[list[Restore], int]:
        matching = [
            restore
            for restore in self._uow.catalog.restores.values()
            if (not query.statuses or restore.status in query.statuses)
            and (query.backup_id is None or restore.backup_id == query.backup_id)
        ]
        matching.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        page = matching[query.offset : query.offset + query.limit]
        return [_fresh(restore) for restore in page], len(matching)


class _Verifications:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    async def get(self, backup_id: str, *, for_update: bool = False) -> Verification | None:
        found = self._uow.catalog.verifications.get(backup_id)
        return _fresh(found) if found else None

    async def save(self, verification: Verification) -> None:
        self._uow.staged_verifications[verification.backup_id] = verification

    async def stalest(self, limit: int) -> list[str]:
        catalog = self._uow.catalog
        completed = [b for b in catalog.backups.values() if b.status is BackupStatus.COMPLETED]

        def age(backup: Backup) -> tuple[bool, datetime, datetime]:
            found = catalog.verifications.get(backup.id)
            checked = found.checked_at if found else None
            return checked is not None, checked or backup.created_at, backup.created_at

        return [backup.id for backup in sorted(completed, key=age)[:limit]]


class _OffsiteCopies:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    async def get(self, backup_id: str, *, for_update: bool = False) -> OffsiteCopy | None:
        found = self._uow.catalog.offsite.get(backup_id)
        return copy.deepcopy(found) if found else None

    async def save(self, offsite: OffsiteCopy) -> None:
        self._uow.staged_offsite[offsite.backup_id] = copy.deepcopy(offsite)

    def _completed(self) -> list[Backup]:
        backups = self._uow.catalog.backups.values()
        return sorted((b for b in backups if b.status is BackupStatus.COMPLETED), key=lambda b: (b.created_at, b.id))

    async def due(self, now: datetime, limit: int) -> list[str]:
        copies = self._uow.catalog.offsite

        def is_due(found: OffsiteCopy | None) -> bool:
            if found is None or found.status is OffsiteStatus.PENDING:
                return True
            return (
                found.status is OffsiteStatus.FAILED
                and found.next_attempt_at is not None
                and found.next_attempt_at <= now
            )

        return [b.id for b in self._completed() if is_due(copies.get(b.id))][:limit]

    async def locked_due(self, now: datetime, limit: int) -> list[str]:
        found = [
            c
            for c in self._uow.catalog.offsite.values()
            if c.status is OffsiteStatus.LOCKED and c.next_attempt_at is not None and c.next_attempt_at <= now
        ]
        return [c.backup_id for c in sorted(found, key=lambda c: c.next_attempt_at or now)][:limit]

    async def local_expiry(self, created_before: datetime, limit: int) -> list[str]:
        copies = self._uow.catalog.offsite
        return [
            b.id
            for b in self._completed()
            if b.created_at < created_before
            and (found := copies.get(b.id)) is not None
            and found.status is OffsiteStatus.COPIED
            and found.local_removed_at is None
        ][:limit]


class _Documents:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    async def get(self, name: str, *, for_update: bool = False) -> StoredDocument:
        stored = self._uow.staged_documents.get(name) or self._uow.catalog.documents.get(name)
        if stored is None:
            stored = StoredDocument(name, default_document(name), 1, "defaults", self._uow.catalog.clock())
            self._uow.staged_documents[name] = stored
        return stored

    async def put(self, name: str, document: Document, updated_by: str) -> StoredDocument:
        previous = await self.get(name)
        stored = StoredDocument(name, document, previous.revision + 1, updated_by, self._uow.catalog.clock())
        self._uow.staged_documents[name] = stored
        return stored


class _Audit:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    async def add(self, entry: AuditEntry) -> None:
        self._uow.staged_audit.append(entry)


class _Outbox:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    async def add(self, event: Event) -> None:
        self._uow.staged_events.append(event)


class _JobLeases:
    def __init__(self, uow: FakeUnitOfWork) -> None:
        self._uow = uow

    def _current(self, job_key: str) -> StoredLease:
        staged = self._uow.staged_leases.get(job_key)
        if staged is not None:
            return staged
        stored = self._uow.catalog.leases.get(job_key)
        if stored is None:
            raise LeaseLost(job_key, "the lease row is gone")
        self._uow.staged_leases[job_key] = replace(stored)
        return self._uow.staged_leases[job_key]

    async def fence(self, lease: Lease) -> None:
        current = self._current(lease.job_key)
        if (current.holder, current.version) != (lease.holder, lease.version):
            raise LeaseLost(lease.job_key, f"taken over by {current.holder} (version {current.version})")
        if current.state != "held":
            raise LeaseLost(lease.job_key, f"it is {current.state}")

    async def _finish(self, lease: Lease, state: str, reason: str | None) -> None:
        await self.fence(lease)
        current = self._current(lease.job_key)
        current.state, current.last_error, current.expires_at = state, reason, None

    async def complete(self, lease: Lease) -> None:
        await self._finish(lease, "done", None)

    async def fail(self, lease: Lease, reason: str) -> None:
        await self._finish(lease, "failed", reason)

    async def reopen(self, job_key: str) -> None:
        stored = self._current(job_key)
        self._uow.staged_leases[job_key] = replace(
            stored, holder=None, state="released", attempts=0, expires_at=None, last_error=None
        )

    async def release(self, lease: Lease, reason: str) -> None:
        await self._finish(lease, "released", reason)

    async def reap(self, max_attempts: int) -> ReapResult:
        result = ReapResult()
        now = self._uow.catalog.clock()
        for job_key, stored in self._uow.catalog.leases.items():
            if stored.state != "held" or stored.expires_at is None or stored.expires_at > now:
                continue
            current = self._current(job_key)
            job = ReapedJob(job_key, current.holder, current.version, current.attempts, current.payload)
            if current.attempts < max_attempts:
                current.state = "released"
                result.requeue.append(job)
            else:
                current.state = "failed"
                result.failed.append(job)
            current.expires_at = None
        return result


class FakeUnitOfWork:
    """One transaction of the fake catalog: ``staged_*`` is what ``commit`` makes visible."""

    def __init__(self, catalog: FakeCatalog) -> None:
        self.catalog = catalog
        self.staged: dict[str, Backup | Restore] = {}
        self.staged_idempotency: dict[tuple[str, str], tuple[str, str]] = {}
        self.staged_documents: dict[str, StoredDocument] = {}
        self.staged_audit: list[AuditEntry] = []
        self.staged_events: list[Event] = []
        self.staged_leases: dict[str, StoredLease] = {}
        self.staged_progress: list[tuple[str, str, BackupPart, dict[str, Any]]] = []  # kind, id, part, progress
        self.staged_targets: dict[str, str] = {}
        self.staged_verifications: dict[str, Verification] = {}
        self.staged_firings: dict[tuple[str, datetime], Firing] = {}
        self.staged_cursors: dict[str, datetime] = {}
        self.staged_reports: dict[tuple[str, datetime], datetime] = {}
        self.staged_deliveries: dict[str, Delivery] = {}
        self.staged_offsite: dict[str, OffsiteCopy] = {}
        self.claimed: set[str] = set()
        self.backups = _Backups(self)
        self.restores = _Restores(self)
        self.verifications = _Verifications(self)
        self.documents = _Documents(self)
        self.audit = _Audit(self)
        self.outbox = _Outbox(self)
        self.leases = _JobLeases(self)
        self.schedules = FakeSchedules(self)
        self.housekeeping = FakeHousekeeping(self)
        self.notifications = FakeNotifications(self)
        self.offsite = _OffsiteCopies(self)

    def stage(self, aggregate: Backup | Restore) -> None:
        self.staged[aggregate.id] = aggregate

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.staged.clear()
        self.staged_firings.clear()
        self.staged_reports.clear()
        self.staged_deliveries.clear()
        self.staged_offsite.clear()
        self.catalog.claimed -= self.claimed
        self.claimed.clear()

    async def commit(self) -> None:
        catalog = self.catalog
        for aggregate in self.staged.values():
            self.staged_events.extend(aggregate.events)
            aggregate.events.clear()
            if isinstance(aggregate, Backup):
                catalog.backups[aggregate.id] = _fresh(aggregate)
            else:
                catalog.restores[aggregate.id] = _fresh(aggregate)
        for verification in self.staged_verifications.values():
            self.staged_events.extend(verification.events)
            verification.events.clear()
            catalog.verifications[verification.backup_id] = _fresh(verification)
        catalog.offsite.update(self.staged_offsite)
        catalog.restore_targets.update(self.staged_targets)
        for key, restore_id in list(catalog.restore_targets.items()):
            if catalog.restores[restore_id].status.finished:
                del catalog.restore_targets[key]
        for kind, job_id, part, progress in self.staged_progress:
            found: Backup | Restore | None = (catalog.backups if kind == "backup" else catalog.restores).get(job_id)
            if found is not None:
                found.part(part).progress = progress
        catalog.idempotency.update(self.staged_idempotency)
        catalog.documents.update(self.staged_documents)
        catalog.audit.extend(self.staged_audit)
        catalog.outbox.extend(self.staged_events)
        catalog.leases.update(self.staged_leases)
        catalog.firings.update(self.staged_firings)
        catalog.cursors.update(self.staged_cursors)
        for firing_key, reported_at in self.staged_reports.items():
            catalog.firings[firing_key] = replace(catalog.firings[firing_key], missing_reported_at=reported_at)
        catalog.deliveries.update(self.staged_deliveries)
        catalog.commits += 1
        self.staged.clear()
        self.staged_events, self.staged_audit, self.staged_progress = [], [], []
        self.staged_idempotency, self.staged_documents, self.staged_leases = {}, {}, {}
        self.staged_targets, self.staged_verifications = {}, {}
        self.staged_firings, self.staged_cursors = {}, {}
        self.staged_reports, self.staged_deliveries = {}, {}


class FakeHeartbeat:
    """Never extends the lease by itself; reports it lost when the catalog says another holds it."""

    def __init__(self, catalog: FakeCatalog, lease: Lease) -> None:
        self._catalog = catalog
        self._lease = lease

    @property
    def lease(self) -> Lease:
        return self._lease

    @property
    def lost(self) -> bool:
        stored = self._catalog.leases.get(self._lease.job_key)
        return stored is None or (stored.holder, stored.version, stored.state) != (
            self._lease.holder,
            self._lease.version,
            "held",
        )

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(self._lease.job_key, "taken over")


class FakeLeases:
    def __init__(self, catalog: FakeCatalog) -> None:
        self._catalog = catalog

    async def claim(self, job_key: str, holder: str, payload: dict[str, Any] | None = None) -> Lease | None:
        stored = self._catalog.leases.setdefault(job_key, StoredLease())
        now = self._catalog.clock()
        expired = stored.state == "held" and stored.expires_at is not None and stored.expires_at <= now
        if stored.state != "released" and not expired:
            return None
        stored.holder, stored.state = holder, "held"
        stored.version += 1
        stored.attempts += 1
        stored.payload = payload if payload is not None else stored.payload
        stored.expires_at = now + timedelta(seconds=LEASE_SECONDS)
        return Lease(job_key, holder, stored.version, stored.expires_at, stored.attempts)

    async def held(self, prefix: str) -> list[str]:
        now = self._catalog.clock()
        return [
            key
            for key, stored in self._catalog.leases.items()
            if key.startswith(prefix) and stored.state == "held" and stored.expires_at and stored.expires_at > now
        ]

    @asynccontextmanager
    async def keep_alive(self, lease: Lease) -> AsyncIterator[FakeHeartbeat]:
        yield FakeHeartbeat(self._catalog, lease)


class FakeKeyStore:
    def __init__(self, master: MasterKey | None = None) -> None:
        self.master = master or MasterKey(secrets.token_bytes(32))
        self.keys: dict[str, bytes] = {}

    async def data_key(self, backup_id: str) -> bytes:
        return self.keys.setdefault(backup_id, new_data_key())

    async def existing_key(self, backup_id: str) -> bytes | None:
        return self.keys.get(backup_id)

    async def wrapped(self, backup_id: str) -> WrappedKey | None:
        key = self.keys.get(backup_id)
        return WrappedKey(self.master.key_id, self.master.wrap(key, backup_id)) if key else None

    async def destroy(self, backup_id: str) -> bool:
        return self.keys.pop(backup_id, None) is not None


@dataclass
class FakeSystem:
    """The ports of one service process, all in memory but storage (a real directory)."""

    catalog: FakeCatalog
    keys: FakeKeyStore
    storage: LocalStorage
    clock: FakeClock
    ports: Ports


def fake_ports(storage: Path, holder: str = "test-worker", offsite: OffsiteStore | None = None) -> FakeSystem:
    clock = FakeClock()
    catalog = FakeCatalog(clock)
    keys = FakeKeyStore()
    local = LocalStorage(storage)
    ports = Ports(
        uow=lambda: FakeUnitOfWork(catalog),
        leases=FakeLeases(catalog),
        keys=keys,
        storage=local,
        locks=FakeLocks(catalog),
        clock=clock,
        holder=holder,
        offsite=offsite,
    )
    return FakeSystem(catalog, keys, local, clock, ports)


class FakeOffsiteStore:
    """``OffsiteStore`` in memory: objects by key, and what was written in which order. ``down``
    makes every call fail as an unreachable store does; ``lock_until`` refuses removals as Object
    Lock does."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.written: list[str] = []
        self.tombstones: set[str] = set()
        self.down: str | None = None
        self.lock_until: datetime | None = None
        self.lock_on = False

    def _check(self) -> None:
        if self.down is not None:
            raise OffsiteError(self.down)

    def location(self, storage_path: str) -> str:
        return f"s3://fake/{storage_path}/"

    async def upload(
        self,
        storage_path: str,
        directory: Path,
        names: Sequence[str],
        *,
        retain_until: datetime | None = None,
        progress: UploadProgress | None = None,
        expected: Mapping[str, str] | None = None,
    ) -> list[OffsiteObject]:
        self._check()
        for name, digest in (expected or {}).items():
            if hashlib.sha256((directory / name).read_bytes()).hexdigest() != digest:
                raise OffsiteError(f"{directory / name} has another SHA-256 than the {digest} recorded")
        sent = 0
        for name in sorted(names, key=lambda name: name == MANIFEST):
            data = (directory / name).read_bytes()
            key = f"{storage_path}/{name}"
            if self.objects.get(key) != data:
                self.objects[key] = data
                self.written.append(key)
                sent += len(data)
                if progress is not None:
                    await progress(sent)
        return list((await self.listing(storage_path)).values())

    async def listing(self, storage_path: str) -> dict[str, OffsiteObject]:
        self._check()
        prefix = f"{storage_path}/"
        return {
            key.removeprefix(prefix): OffsiteObject(
                key.removeprefix(prefix), len(data), hashlib.sha256(data).hexdigest()
            )
            for key, data in self.objects.items()
            if key.startswith(prefix)
        }

    async def download(self, storage_path: str, names: Sequence[str], directory: Path) -> None:
        self._check()
        directory.mkdir(parents=True, exist_ok=True)
        for name in names:
            data = self.objects.get(f"{storage_path}/{name}")
            if data is None:
                raise OffsiteError(f"{self.location(storage_path)}{name} does not exist")
            (directory / name).write_bytes(data)

    async def stream(self, storage_path: str, name: str) -> AsyncIterator[bytes]:
        self._check()
        yield self.objects[f"{storage_path}/{name}"]

    async def read_json(self, storage_path: str, name: str) -> dict[str, Any]:
        self._check()
        document: dict[str, Any] = json.loads(self.objects[f"{storage_path}/{name}"])
        return document

    async def remove(self, storage_path: str) -> int:
        self._check()
        keys = [key for key in self.objects if key.startswith(f"{storage_path}/")]
        if keys and self.lock_until is not None:
            raise OffsiteLocked("Object Lock keeps them", self.lock_until)
        for key in sorted(keys, key=lambda key: not key.endswith(MANIFEST)):
            del self.objects[key]
        return len(keys)

    async def mark_deleted(self, backup_id: str) -> None:
        self._check()
        self.tombstones.add(backup_id)

    async def deleted(self) -> set[str]:
        self._check()
        return set(self.tombstones)

    async def backups(self) -> list[str]:
        self._check()
        return sorted(key.rsplit("/", 1)[0] for key in self.objects if key.endswith(f"/{MANIFEST}"))

    async def lock_enabled(self) -> bool:
        self._check()
        return self.lock_on

    async def close(self) -> None:
        pass
