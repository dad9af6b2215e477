"""What handlers depend on: the catalog (a unit of work over its repositories and outbox), job
leases, data keys, backup storage and the broker. Adapters implement these (MySQL, RabbitMQ, the
local filesystem); unit tests pass in-memory fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self
from zoneinfo import ZoneInfo

from backup_common.domain.commands import Command
from backup_common.domain.documents import Document, ScheduleDocument, SettingsDocument
from backup_common.domain.events import BackupPart, Event
from backup_common.domain.jobs import Lease, ReapResult
from backup_common.domain.model import (
    AuditEntry,
    Backup,
    BackupFilter,
    BackupStatus,
    CatalogStats,
    Idempotency,
    Restore,
    RestoreFilter,
)
from backup_common.domain.notifications import Delivery
from backup_common.domain.offsite import OffsiteCopy
from backup_common.domain.retention import Candidate, RetentionPlan, apply_policy
from backup_common.domain.schedule import Firing
from backup_common.domain.verification import Verification


class PublishError(Exception):
    """The broker did not take responsibility for a message: unreachable, too slow, or refused it."""


class EventRefused(PublishError):
    """The broker answered and refused this event (no queue is bound to its routing key, or it
    nacked it): trying again at once would fail the same way."""


class MessageRejected(Exception):
    """A handler refuses a message for good: it names what does not exist, or asks for what cannot be
    done. The consumer dead-letters it at once with this reason (worded to follow "because"), never
    retrying it; any other exception is retried."""


class DuplicateRequest(Exception):
    """Another request took this idempotency key first (its backup is the one to return)."""


class Publisher(Protocol):
    async def publish(self, event: Event) -> None:
        """Returns once the broker confirmed the event; raises PublishError otherwise."""


class ProcessedMessages(Protocol):
    """Which messages a consumer already handled, so a redelivery is skipped."""

    async def seen(self, consumer: str, message_id: str) -> bool: ...

    async def remember(self, consumer: str, message_id: str) -> None: ...


@dataclass(frozen=True)
class StoredDocument:
    """A document as the catalog keeps it: validated, with its revision."""

    name: str
    document: Document
    revision: int
    updated_by: str
    updated_at: datetime


class BackupRepository(Protocol):
    async def add(self, backup: Backup, idempotency: Idempotency | None = None) -> None:
        """Records a new backup; raises DuplicateRequest when ``idempotency``'s key is taken."""

    async def get(self, backup_id: str, *, for_update: bool = False) -> Backup | None:
        """The backup with its parts; ``for_update`` locks it until the unit of work ends."""

    async def by_idempotency_key(self, requested_by: str, key: str) -> tuple[Backup, str | None] | None:
        """The backup a client's key created, and the hash of the request that created it."""

    async def save(self, backup: Backup) -> None:
        """Writes the backup's status, its parts and its events (at commit)."""

    async def record_progress(self, lease: Lease, backup_id: str, part: BackupPart, progress: dict[str, Any]) -> None:
        """Updates a running part's progress, unless ``lease`` is no longer the part's current lease."""

    async def retention_candidates(self) -> list[Candidate]:
        """Every completed backup, as the retention policy sees it."""

    async def dependents(self, backup_id: str) -> list[str]:
        """The incrementals (pending, running or completed) whose chain goes through the backup,
        oldest first."""

    async def running_of_schedule(self, schedule: str) -> Backup | None:
        """The schedule entry's newest backup if it is still pending or running."""

    async def last_success_of_schedule(self, schedule: str) -> Backup | None:
        """The schedule entry's newest backup that completed (even if deleted since)."""

    async def idle_since(self, status: BackupStatus, before: datetime, limit: int) -> list[str]:
        """Backups in ``status`` that have not changed since ``before``, the longest idle first."""

    async def unerased_failures(self, before: datetime, limit: int) -> list[str]:
        """Failed backups, failed before ``before``, whose files and key were not erased yet (but not
        those a catalog rebuild could not confirm: see REBUILT_UNCONFIRMED)."""

    async def list(self, query: BackupFilter) -> tuple[list[Backup], int]:
        """One page, newest first, and how many backups match the filter. Their parts carry their
        warning_count but not the warnings themselves (``get`` reads those)."""

    async def stats(self) -> CatalogStats: ...

    async def previous_with_files(self, backup: Backup) -> Backup | None:
        """The newest completed backup with a completed files part created before ``backup``."""


class RestoreRepository(Protocol):
    async def add(self, restore: Restore, target_keys: Sequence[str]) -> None:
        """Records a new restore holding ``target_keys`` until it finishes; raises Conflict when an
        unfinished restore holds one of them."""

    async def get(self, restore_id: str, *, for_update: bool = False) -> Restore | None: ...

    async def save(self, restore: Restore) -> None:
        """Writes the restore, its parts and its events (at commit); a finished one frees its targets."""

    async def record_progress(self, lease: Lease, restore_id: str, part: BackupPart, progress: dict[str, Any]) -> None:
        """Updates a running part's progress, unless ``lease`` is no longer the part's current lease."""

    async def waiting_on(self, safety_backup_id: str) -> Restore | None:
        """The restore waiting for this safety backup, locked until the unit of work ends."""

    async def idle_pending(self, before: datetime, limit: int) -> list[str]:
        """Restores pending since before ``before`` that wait for no running safety backup."""

    async def unfinished_of(self, backup_id: str) -> list[str]:
        """The ids of the pending or running restores of a backup."""

    async def list(self, query: RestoreFilter) -> tuple[list[Restore], int]:
        """One page of restores, newest first, and how many match the filter."""


class VerificationRepository(Protocol):
    async def get(self, backup_id: str, *, for_update: bool = False) -> Verification | None:
        """The backup's latest verification; None when it was never verified."""

    async def save(self, verification: Verification) -> None:
        """Writes the verification and its events (at commit)."""

    async def stalest(self, limit: int) -> list[str]:
        """Completed backups, never verified first, then those verified longest ago."""


class DocumentRepository(Protocol):
    async def get(self, name: str, *, for_update: bool = False) -> StoredDocument:
        """The named document, seeded from its shipped default the first time it is read."""

    async def put(self, name: str, document: Document, updated_by: str) -> StoredDocument:
        """Replaces the document, bumping its revision."""


class AuditLog(Protocol):
    async def add(self, entry: AuditEntry) -> None: ...


class Outbox(Protocol):
    async def add(self, event: Event) -> None:
        """Queues an event in the unit of work; it is published only if the unit of work commits."""


class JobLeases(Protocol):
    """Lease operations that must share the transaction of the results they guard."""

    async def fence(self, lease: Lease) -> None:
        """Raises LeaseLost unless ``lease`` is still the job's current lease, and keeps it so until
        the unit of work ends."""

    async def complete(self, lease: Lease) -> None: ...

    async def fail(self, lease: Lease, reason: str) -> None: ...

    async def release(self, lease: Lease, reason: str) -> None:
        """Gives the job back so another worker may claim it at once."""

    async def reopen(self, job_key: str) -> None:
        """Ends a job that recurs (a backup's verification): claimable again, with no attempt counted.
        Fence first when ending one's own lease."""

    async def reap(self, max_attempts: int) -> ReapResult:
        """Releases expired leases claimed fewer than ``max_attempts`` times, fails the others."""


class ScheduleRepository(Protocol):
    async def cursors(self) -> dict[str, datetime]:
        """How far each entry's fire times have been looked at."""

    async def advance(self, schedule: str, checked_until: datetime, next_fire_at: datetime | None) -> None:
        """Moves the entry's cursor forward (never back: another scheduler may be ahead)."""

    async def record(self, firing: Firing, holder: str) -> bool:
        """Records what became of a fire time; False when it was recorded already, by this scheduler
        or another (the unit of work then holds nothing of this firing)."""

    async def firings(self, schedule: str | None = None, limit: int = 100) -> list[Firing]:
        """The latest recorded firings, newest first."""

    async def latest_firing(self, schedule: str, at_or_before: datetime) -> Firing | None:
        """The entry's newest recorded firing whose fire time is at or before ``at_or_before``."""

    async def report_missing(self, schedule: str, fire_at: datetime, now: datetime) -> bool:
        """Marks the firing's backup reported missing; False when it was already (by another
        replica, say), or the firing was never recorded."""


class NotificationRepository(Protocol):
    """Webhook deliveries waiting to be made, made, or given up."""

    async def add(self, delivery: Delivery) -> bool:
        """Queues the delivery in the unit of work; False when one with the same dedupe key and URL
        exists (the notification was recorded already: a redelivered event)."""

    async def due(self, now: datetime, limit: int) -> list[Delivery]:
        """Deliveries neither delivered nor given up whose next attempt is due, oldest due first,
        locked until the unit of work ends; those another unit of work holds are skipped."""

    async def delivered(self, delivery_id: str, attempts: int, now: datetime) -> None: ...

    async def retry(self, delivery_id: str, attempts: int, error: str, next_attempt_at: datetime) -> None: ...

    async def give_up(self, delivery_id: str, attempts: int, error: str, now: datetime) -> None: ...

    async def get(self, delivery_id: str) -> Delivery | None: ...

    async def pending(self) -> int:
        """How many deliveries are neither delivered nor given up."""


class OffsiteRepository(Protocol):
    async def get(self, backup_id: str, *, for_update: bool = False) -> OffsiteCopy | None: ...

    async def save(self, copy: OffsiteCopy) -> None: ...

    async def due(self, now: datetime, limit: int) -> list[str]:
        """Completed backups to copy now, oldest first: never taken up, or failed and due again."""

    async def locked_due(self, now: datetime, limit: int) -> list[str]:
        """Deleted backups whose off-site objects Object Lock kept, now due to be removed again."""

    async def local_expiry(self, created_before: datetime, limit: int) -> list[str]:
        """Completed backups made before ``created_before``, copied off-site, whose local copy has
        not been removed."""


class Housekeeping(Protocol):
    async def purge(self, before: datetime, batch: int) -> dict[str, int]:
        """Deletes, ``batch`` rows at a time, sent outbox rows, processed message ids, finished
        leases and finished webhook deliveries older than ``before``; returns how many of each."""


class UnitOfWork(Protocol):
    """One catalog transaction. ``commit`` writes the events recorded by every backup, restore and
    verification added or saved in it to the outbox, then commits; leaving the block without it
    rolls back."""

    @property
    def backups(self) -> BackupRepository: ...

    @property
    def restores(self) -> RestoreRepository: ...

    @property
    def verifications(self) -> VerificationRepository: ...

    @property
    def documents(self) -> DocumentRepository: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def leases(self) -> JobLeases: ...

    @property
    def outbox(self) -> Outbox: ...

    @property
    def schedules(self) -> ScheduleRepository: ...

    @property
    def housekeeping(self) -> Housekeeping: ...

    @property
    def notifications(self) -> NotificationRepository: ...

    @property
    def offsite(self) -> OffsiteRepository: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None: ...

    async def commit(self) -> None: ...


UnitOfWorkFactory = Callable[[], UnitOfWork]
Clock = Callable[[], datetime]


async def read_document(uow: UnitOfWorkFactory, name: str) -> StoredDocument:
    """The named document, read in a unit of work that commits: a default the read seeded stays."""
    async with uow() as work:
        stored = await work.documents.get(name)
        await work.commit()
    return stored


async def read_settings(uow: UnitOfWorkFactory) -> SettingsDocument:
    document = (await read_document(uow, "settings")).document
    assert isinstance(document, SettingsDocument)
    return document


async def read_schedule(uow: UnitOfWorkFactory) -> ScheduleDocument:
    document = (await read_document(uow, "schedule")).document
    assert isinstance(document, ScheduleDocument)
    return document


async def retention_plan(uow: UnitOfWorkFactory, now: datetime) -> RetentionPlan:
    """What the settings' retention policy keeps and deletes of the completed backups at ``now``, with
    days, weeks, months and years counted in the schedule's time zone."""
    policy = (await read_settings(uow)).retention
    timezone = (await read_schedule(uow)).timezone
    async with uow() as work:
        candidates = await work.backups.retention_candidates()
    return apply_policy(candidates, policy, now, ZoneInfo(timezone))


class Heartbeat(Protocol):
    """Keeps a lease alive while a job runs; records, without raising, that it was lost."""

    @property
    def lease(self) -> Lease:
        """The lease as last extended: the one to fence writes with."""

    @property
    def lost(self) -> bool: ...

    def check(self) -> None:
        """Raises LeaseLost if the lease was found lost."""


class Leases(Protocol):
    """Lease operations that run in transactions of their own."""

    async def claim(self, job_key: str, holder: str, payload: dict[str, Any] | None = None) -> Lease | None:
        """Takes the job's lease; None while another holder's lease is live or the job is finished."""

    def keep_alive(self, lease: Lease) -> AbstractAsyncContextManager[Heartbeat]: ...

    async def held(self, prefix: str) -> list[str]:
        """The keys starting with ``prefix`` of jobs a live holder has now."""


@dataclass(frozen=True)
class WrappedKey:
    """A backup's data key as stored: wrapped by the master key named ``key_id``."""

    key_id: str
    wrapped: bytes


class KeyStore(Protocol):
    async def data_key(self, backup_id: str) -> bytes:
        """The backup's data key, created on first use (the same for every part of one backup)."""

    async def existing_key(self, backup_id: str) -> bytes | None:
        """The backup's data key; None when it has none (never created, or destroyed)."""

    async def wrapped(self, backup_id: str) -> WrappedKey | None: ...

    async def destroy(self, backup_id: str) -> bool:
        """Crypto-erases the backup; False when it had no key left."""


class WebhookError(Exception):
    """A webhook gave no HTTP answer (unreachable, too slow, TLS refused); the message never holds
    the URL's credentials or query."""


class WebhookSender(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
        """POSTs ``body``; the answer's status and the start of its text. Raises WebhookError when
        there was no answer."""


class Locks(Protocol):
    def hold(self, name: str) -> AbstractAsyncContextManager[bool]:
        """Holds the named lock for the block when no other process holds it (True), else yields
        False at once. A process that dies releases what it held."""


class BackupStorage(Protocol):
    """Where each backup's archives and manifests are kept."""

    def directory(self, backup: Backup) -> Path: ...

    async def prepare_part(self, backup: Backup, part: BackupPart) -> Path:
        """Creates the backup's directory and clears a stale archive of the part; returns its path."""

    async def write_part_manifest(self, backup: Backup, part: BackupPart, manifest: dict[str, Any]) -> None: ...

    async def read_part_manifest(self, backup: Backup, part: BackupPart) -> dict[str, Any]: ...

    async def write_manifest(self, backup: Backup, encryption: dict[str, Any], *, data_key: bytes) -> None:
        """Writes ``manifest.json`` from the part manifests, signed with a MAC keyed from the backup's
        data key, durably: after it, the backup is self-describing."""

    async def read_manifest(self, backup: Backup) -> dict[str, Any]:
        """``manifest.json`` as stored (OSError when it is missing, ValueError when it does not parse)."""

    async def usage(self) -> tuple[int, int] | None:
        """Total and free bytes of the filesystem the storage is on."""

    async def remove(self, backup: Backup) -> bool:
        """Removes the backup's directory and everything in it; False when it was gone already."""


class OffsiteError(Exception):
    """The object store failed, refused or could not be reached; the message says why."""


class OffsiteLocked(OffsiteError):
    """Object Lock keeps objects the store was asked to remove until ``until`` (None: unknown)."""

    def __init__(self, message: str, until: datetime | None) -> None:
        super().__init__(message)
        self.until = until


@dataclass(frozen=True)
class OffsiteObject:
    """One file of a backup's directory as the object store holds it."""

    name: str
    size: int
    # Hex SHA-256 of the whole file as the store checked it on upload; None when the store does not
    # say (an object written by another tool).
    sha256: str | None


# Called with the bytes sent so far in one copy.
UploadProgress = Callable[[int], Awaitable[None]]


class OffsiteStore(Protocol):
    """An S3-compatible object store holding a copy of each backup's directory under
    ``<prefix>/<storage path>/``: the same names as local storage (``YYYY-MM-DD/<id>/``)."""

    def location(self, storage_path: str) -> str:
        """The backup's place in the store as a user names it (``s3://bucket/prefix/…/``)."""

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
        """Copies the named files of ``directory``, ``manifest.json`` last (a copy without it is
        unfinished), each with a SHA-256 the store checks; a file the store already holds with the
        same size and checksum is not sent again (a resumed copy). ``retain_until`` is the Object
        Lock retention date when the bucket has Object Lock. ``expected`` gives the hex SHA-256 some
        files must have (as the catalog recorded them): one that differs is not copied (OffsiteError),
        and a large one is read once only. Returns what the store holds."""

    async def listing(self, storage_path: str) -> dict[str, OffsiteObject]:
        """The backup's objects by file name; empty when the store holds none."""

    async def download(self, storage_path: str, names: Sequence[str], directory: Path) -> None:
        """Writes the named objects into ``directory`` (created when missing), each under a
        temporary name, fsynced and renamed, checked against the store's checksum."""

    def stream(self, storage_path: str, name: str) -> AsyncIterator[bytes]:
        """The object's bytes, in chunks."""

    async def read_json(self, storage_path: str, name: str) -> dict[str, Any]:
        """A small JSON object (a manifest); OffsiteError when missing or unreadable."""

    async def remove(self, storage_path: str) -> int:
        """Removes the backup's objects, ``manifest.json`` first (what is left is recognisably no
        backup); returns how many it removed. OffsiteLocked when Object Lock keeps some."""

    async def mark_deleted(self, backup_id: str) -> None:
        """Leaves a tombstone saying the backup was deleted, for objects Object Lock keeps: a
        catalog rebuilt from the store does not bring it back."""

    async def deleted(self) -> set[str]:
        """The ids of backups with a tombstone."""

    async def backups(self) -> list[str]:
        """The storage paths (``YYYY-MM-DD/<id>``) of every backup with a ``manifest.json``."""

    async def lock_enabled(self) -> bool:
        """Whether the bucket has Object Lock on (objects then carry a retention date)."""

    async def close(self) -> None:
        """Closes the store's connections."""


# What a consumer hands a handler: an event, or a command (which carries its message_id).
Message = Event | Command
# Takes the message of the type it is registered for in a handler table.
MessageHandler = Callable[[Any], Awaitable[None]]


@dataclass(frozen=True)
class Ports:
    """Everything a service's handlers are given: built from settings by the runtime, or from fakes."""

    uow: UnitOfWorkFactory
    leases: Leases
    keys: KeyStore
    storage: BackupStorage
    locks: Locks
    clock: Clock
    holder: str  # this process, as named in the leases it holds
    # The off-site copy's object store; None when BACKUP_OFFSITE_URL is unset.
    offsite: OffsiteStore | None = None
