"""Backups, their parts and restores: what each status means and which changes are allowed.

Every state change goes through a method here, which checks the transition and records the event
that announces it (``events``); the unit of work writes those events to the outbox in the same
transaction as the state, so the catalog and the bus never disagree.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from backup_common.domain.errors import Conflict, InvalidRequest
from backup_common.domain.events import (
    BackupCompleted,
    BackupDeleted,
    BackupFailed,
    BackupPart,
    BackupRequested,
    BackupType,
    DeleteRequested,
    Event,
    RestoreCompleted,
    RestoreFailed,
    RestorePartCompleted,
    RestorePartFailed,
    RestoreRequested,
)
from backup_common.domain.offsite import OffsiteCopy
from backup_common.domain.verification import Verification, VerificationStatus

# How the reason of a backup a catalog rebuild could not confirm begins. Such a backup is kept for an
# operator to look at: housekeeping never erases it on its own, as it does other failed backups.
REBUILT_UNCONFIRMED = "rebuilt from storage: "
MAX_ERROR_TEXT = 4000  # the catalog's error columns are TEXT; a reason longer than this is cut
# A part keeps this many of its warnings (a tree full of sockets must not bloat every read of the
# backup); its warning_count is the true total.
MAX_PART_WARNINGS = 1000


class BackupStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    DELETING = "deleting"
    DELETED = "deleted"

    @property
    def in_progress(self) -> bool:
        return self in (BackupStatus.PENDING, BackupStatus.RUNNING)


class PartStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (PartStatus.COMPLETED, PartStatus.FAILED)


class RestoreStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (RestoreStatus.COMPLETED, RestoreStatus.FAILED)


class Trigger(StrEnum):
    """Who asked for a backup."""

    API = "api"
    SCHEDULE = "schedule"
    CLI = "cli"
    PRE_RESTORE = "pre-restore"  # the safety backup of what a restore in place replaces
    EVENT = "event"  # a command.backup.create from automation, over AMQP


BACKUP_TRANSITIONS: dict[BackupStatus, frozenset[BackupStatus]] = {
    BackupStatus.PENDING: frozenset({BackupStatus.RUNNING, BackupStatus.FAILED}),
    BackupStatus.RUNNING: frozenset({BackupStatus.COMPLETED, BackupStatus.FAILED}),
    BackupStatus.COMPLETED: frozenset({BackupStatus.DELETING}),
    BackupStatus.FAILED: frozenset({BackupStatus.DELETING}),
    BackupStatus.DELETING: frozenset({BackupStatus.DELETED}),
    BackupStatus.DELETED: frozenset(),
}


class InvalidTransition(Conflict):
    code = "invalid_transition"


def storage_path_for(backup_id: str, created_at: datetime) -> str:
    """`YYYY-MM-DD/<id>` below the storage root: where the backup's files are written."""
    return f"{created_at:%Y-%m-%d}/{backup_id}"


def _reason(text: str) -> str:
    return text[:MAX_ERROR_TEXT]


@dataclass(frozen=True)
class PartWarning:
    """A path a part left out, and why (a socket, a file that vanished or became unreadable as it was
    read): the part still completes, and says so."""

    path: str
    reason: str


@dataclass(frozen=True)
class PartResult:
    """What a worker made of a part, as the catalog records it."""

    file_name: str
    size_bytes: int
    sha256: str
    item_count: int
    progress: dict[str, Any]
    warnings: tuple[PartWarning, ...] = ()  # every one the worker found; the part keeps the first ones

    @property
    def warning_count(self) -> int:
        return len(self.warnings)


@dataclass
class Part:
    part: BackupPart
    status: PartStatus = PartStatus.PENDING
    file_name: str | None = None
    size_bytes: int = 0
    sha256: str | None = None
    item_count: int = 0
    progress: dict[str, Any] | None = None
    warnings: list[PartWarning] = field(default_factory=list)  # the first MAX_PART_WARNINGS
    warning_count: int = 0  # all of them
    error: str | None = None
    attempts: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass
class Backup:
    id: str
    type: BackupType
    status: BackupStatus
    storage_path: str
    created_at: datetime
    updated_at: datetime
    description: str = ""
    requested_by: str = ""
    trigger: Trigger = Trigger.API
    schedule: str | None = None  # the schedule entry that made it
    archive: bool = False  # kept by the monthly and yearly rules only
    parent_id: str | None = None
    size_bytes: int = 0
    error: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    erased_at: datetime | None = None  # when its files and data key were destroyed
    parts: list[Part] = field(default_factory=list)
    verification: Verification | None = None  # the latest; None when never verified
    offsite: OffsiteCopy | None = None  # None until the copier takes it up (or with no off-site store)
    events: list[Event] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def request(
        cls,
        backup_type: BackupType,
        *,
        requested_by: str,
        now: datetime,
        description: str = "",
        trigger: Trigger = Trigger.API,
        schedule: str | None = None,
        archive: bool = False,
    ) -> Backup:
        """A new pending backup with one pending part per part of its type, and its BackupRequested."""
        backup_id = str(uuid.uuid4())
        backup = cls(
            id=backup_id,
            type=backup_type,
            status=BackupStatus.PENDING,
            storage_path=storage_path_for(backup_id, now),
            created_at=now,
            updated_at=now,
            description=description,
            requested_by=requested_by,
            trigger=trigger,
            schedule=schedule,
            archive=archive,
            parts=[Part(part, updated_at=now) for part in backup_type.parts],
        )
        backup.events.append(
            BackupRequested(
                backup_id=uuid.UUID(backup_id),
                backup_type=backup_type,
                parts=backup_type.parts,
                description=description,
                requested_by=requested_by,
            )
        )
        return backup

    @property
    def parts_completed(self) -> int:
        return sum(1 for part in self.parts if part.status is PartStatus.COMPLETED)

    @property
    def warning_count(self) -> int:
        """Paths its parts left out, all of them (each part keeps only its first warnings)."""
        return sum(part.warning_count for part in self.parts)

    def part(self, name: BackupPart) -> Part:
        for part in self.parts:
            if part.part is name:
                return part
        raise LookupError(f"backup {self.id} has no {name.value} part")

    def has_part(self, name: BackupPart) -> bool:
        return any(part.part is name for part in self.parts)

    def _move(self, status: BackupStatus, now: datetime) -> None:
        if status not in BACKUP_TRANSITIONS[self.status]:
            raise InvalidTransition(f"backup {self.id} cannot go from {self.status} to {status}")
        self.status = status
        self.updated_at = now

    def start_part(self, name: BackupPart, attempt: int, now: datetime) -> None:
        """A worker claimed the part (again, after a lost worker): it runs, and so does the backup."""
        part = self.part(name)
        if part.status.finished:
            raise InvalidTransition(f"the {name.value} part of backup {self.id} is already {part.status}")
        part.status = PartStatus.RUNNING
        part.attempts = attempt
        part.error = None
        part.started_at = part.started_at or now
        part.updated_at = now
        if self.status is BackupStatus.PENDING:
            self._move(BackupStatus.RUNNING, now)
            self.started_at = self.started_at or now

    def complete_part(self, name: BackupPart, result: PartResult, now: datetime) -> bool:
        """Records the part; returns True when it was the last one and so completed the backup."""
        part = self.part(name)
        part.status = PartStatus.COMPLETED
        part.file_name = result.file_name
        part.size_bytes = result.size_bytes
        part.sha256 = result.sha256
        part.item_count = result.item_count
        part.progress = result.progress
        part.warnings = list(result.warnings[:MAX_PART_WARNINGS])
        part.warning_count = result.warning_count
        part.error = None
        part.completed_at = now
        part.updated_at = now
        if not self.status.in_progress or self.parts_completed < len(self.parts):
            return False
        self.size_bytes = sum(p.size_bytes for p in self.parts)
        self.completed_at = now
        self._move(BackupStatus.COMPLETED, now)
        self.events.append(
            BackupCompleted(backup_id=uuid.UUID(self.id), backup_type=self.type, size_bytes=self.size_bytes)
        )
        return True

    def fail_part(self, name: BackupPart, reason: str, now: datetime) -> None:
        """Marks the part failed and, with it, the backup (once), keeping the reason in both."""
        part = self.part(name)
        part.status = PartStatus.FAILED
        part.error = _reason(reason)
        part.updated_at = now
        if not self.status.in_progress:
            return
        self.error = _reason(f"{name.value} part failed: {reason}")
        self.completed_at = now
        self._move(BackupStatus.FAILED, now)
        self.events.append(BackupFailed(backup_id=uuid.UUID(self.id), backup_type=self.type, reason=self.error))

    def abandon(self, reason: str, now: datetime) -> None:
        """Fails a backup no worker took: its unfinished parts and the backup itself, with ``reason``."""
        for part in self.parts:
            if not part.status.finished:
                part.status = PartStatus.FAILED
                part.error = _reason(reason)
                part.updated_at = now
        if not self.status.in_progress:
            return
        self.error = _reason(reason)
        self.completed_at = now
        self._move(BackupStatus.FAILED, now)
        self.events.append(BackupFailed(backup_id=uuid.UUID(self.id), backup_type=self.type, reason=self.error))

    @property
    def needs_erasing(self) -> bool:
        """Being deleted, or failed and still holding whatever it wrote and its key."""
        return self.status is BackupStatus.DELETING or (self.status is BackupStatus.FAILED and self.erased_at is None)

    def erased(self, now: datetime) -> None:
        """Its files and data key are gone: a backup being deleted is now deleted (the row stays, for
        the audit trail); a failed one stays listed as failed."""
        self.erased_at = self.erased_at or now
        self.updated_at = now
        if self.status is BackupStatus.DELETING:
            self._move(BackupStatus.DELETED, now)
            self.events.append(BackupDeleted(backup_id=uuid.UUID(self.id)))
        elif self.status is not BackupStatus.FAILED:
            raise InvalidTransition(f"backup {self.id} is {self.status}; only a deleted or failed one is erased")

    def restorable_parts(self, wanted: Sequence[BackupPart] | None) -> tuple[BackupPart, ...]:
        """The parts a restore of this backup takes: ``wanted``, or all of them. Conflict when the backup
        is not completed, InvalidRequest when it lacks a part wanted."""
        if self.status is not BackupStatus.COMPLETED:
            raise Conflict(
                f"backup {self.id} is {self.status}; only a completed backup can be restored",
                code="backup_not_restorable",
            )
        available = self.type.parts
        chosen = tuple(wanted) if wanted else available
        missing = [part.value for part in chosen if part not in available]
        if missing:
            raise InvalidRequest(
                f"backup {self.id} has no {', '.join(missing)} part (it has: {', '.join(p.value for p in available)})",
                code="part_not_in_backup",
            )
        return chosen

    def request_delete(self, requested_by: str, now: datetime) -> None:
        """Marks the backup for deletion and asks for it (again, for one already being deleted)."""
        if self.status.in_progress:
            raise Conflict(
                f"backup {self.id} is {self.status}; wait until it completes or fails", code="backup_in_progress"
            )
        if self.status is BackupStatus.DELETED:
            raise Conflict(f"backup {self.id} is already deleted", code="backup_deleted")
        if self.status is not BackupStatus.DELETING:
            self._move(BackupStatus.DELETING, now)
        self.updated_at = now
        # Asked again for a backup already being deleted: deletion is idempotent, and this retries one
        # that failed half-way.
        self.events.append(DeleteRequested(backup_id=uuid.UUID(self.id), requested_by=requested_by))


# Databases a restore never writes into: the server's own, and (by name, see RestoreTarget.check) the catalog.
SYSTEM_DATABASES = frozenset({"mysql", "sys", "information_schema", "performance_schema"})


@dataclass(frozen=True)
class RestoreTarget:
    """Where a restore writes: in place (the configured source database and trees) when neither
    ``database`` nor ``directory`` is given; ``replace`` allows a non-empty other target."""

    database: str | None = None
    directory: str | None = None
    replace: bool = False

    @property
    def in_place(self) -> bool:
        return self.database is None and self.directory is None

    def as_dict(self) -> dict[str, Any]:
        if self.in_place:
            return {"kind": "in_place"}
        if self.database is not None:
            return {"kind": "database", "database": self.database, "replace": self.replace}
        return {"kind": "directory", "directory": self.directory, "replace": self.replace}

    @classmethod
    def from_dict(cls, value: dict[str, Any] | None) -> RestoreTarget:
        if not value or value.get("kind") == "in_place":
            return cls()
        return cls(value.get("database"), value.get("directory"), bool(value.get("replace", False)))


@dataclass
class RestorePart:
    part: BackupPart
    status: PartStatus = PartStatus.PENDING
    progress: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass
class Restore:
    """One restore of a backup: its parts, where they go, and what it waits for.

    An in-place restore with a safety backup first waits for that backup (``safety_backup_id``): its
    RestoreRequested goes out only when the safety backup completed, and the restore fails untouched
    when it failed. A restore whose part failed is failed at once; a part still running finishes.
    """

    id: str
    backup_id: str
    status: RestoreStatus
    parts: list[RestorePart]
    requested_by: str
    created_at: datetime
    updated_at: datetime
    target: RestoreTarget = RestoreTarget()
    tables: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    safety_backup: bool = False
    safety_backup_id: str | None = None
    error: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    events: list[Event] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def request(
        cls,
        backup: Backup,
        parts: Sequence[BackupPart] | None,
        *,
        requested_by: str,
        now: datetime,
        target: RestoreTarget | None = None,
        tables: Sequence[str] = (),
        paths: Sequence[str] = (),
        safety_backup: bool | None = None,
    ) -> Restore:
        """A pending restore of a completed backup. Without a safety backup its RestoreRequested is
        recorded at once; with one, the caller requests that backup and passes it to ``wait_for``."""
        target = target or RestoreTarget()
        if parts is None and not target.in_place:
            # Another database takes the database part, another directory the files part.
            parts = (BackupPart.DATABASE,) if target.database is not None else (BackupPart.FILES,)
        chosen = backup.restorable_parts(parts)
        if tables and BackupPart.DATABASE not in chosen:
            raise InvalidRequest("tables select from the database part, which this restore does not take")
        if paths and BackupPart.FILES not in chosen:
            raise InvalidRequest("paths select from the files part, which this restore does not take")
        if target.database is not None and BackupPart.DATABASE not in chosen:
            raise InvalidRequest("a target database needs the database part")
        if target.directory is not None and BackupPart.FILES not in chosen:
            raise InvalidRequest("a target directory needs the files part")
        if target.database is not None and target.directory is None and BackupPart.FILES in chosen:
            raise InvalidRequest(
                'a restore into another database takes the database part only: add "parts": ["database"]'
            )
        if target.directory is not None and target.database is None and BackupPart.DATABASE in chosen:
            raise InvalidRequest("a restore into another directory takes the files part only")
        if safety_backup and not target.in_place:
            raise InvalidRequest("a safety backup is taken only before a restore in place")
        restore = cls(
            id=str(uuid.uuid4()),
            backup_id=backup.id,
            status=RestoreStatus.PENDING,
            parts=[RestorePart(part, updated_at=now) for part in chosen],
            requested_by=requested_by,
            created_at=now,
            updated_at=now,
            target=target,
            tables=tuple(dict.fromkeys(tables)),
            paths=tuple(dict.fromkeys(paths)),
            safety_backup=target.in_place if safety_backup is None else safety_backup,
        )
        if not restore.safety_backup:
            restore._requested()
        return restore

    @property
    def part_names(self) -> tuple[BackupPart, ...]:
        return tuple(part.part for part in self.parts)

    @property
    def safety_backup_type(self) -> BackupType:
        """A backup of exactly the parts this restore replaces."""
        names = self.part_names
        if len(names) == 2:
            return BackupType.FULL
        return BackupType.DATABASE if names[0] is BackupPart.DATABASE else BackupType.FILES

    def part(self, name: BackupPart) -> RestorePart:
        for part in self.parts:
            if part.part is name:
                return part
        raise LookupError(f"restore {self.id} has no {name.value} part")

    def has_part(self, name: BackupPart) -> bool:
        return any(part.part is name for part in self.parts)

    def target_keys(self, source_database: str) -> tuple[str, ...]:
        """What this restore writes, one key per part: two unfinished restores may not share one."""
        keys: list[str] = []
        if self.has_part(BackupPart.DATABASE):
            keys.append(f"database:{self.target.database or source_database}")
        if self.has_part(BackupPart.FILES):
            keys.append(f"directory:{self.target.directory}" if self.target.directory else "files:in place")
        return tuple(keys)

    def wait_for(self, safety: Backup) -> None:
        self.safety_backup_id = safety.id

    def safety_backup_finished(self, safety: Backup, now: datetime) -> None:
        """Goes ahead once the safety backup completed; fails, with nothing touched, when it failed."""
        if self.status.finished or safety.id != self.safety_backup_id:
            return
        if safety.status is BackupStatus.COMPLETED:
            self._requested()
            self.updated_at = now
        elif safety.status is BackupStatus.FAILED:
            self.fail(f"the safety backup {safety.id} failed, so nothing was restored: {safety.error}", now)

    def _requested(self) -> None:
        self.events.append(
            RestoreRequested(
                restore_id=uuid.UUID(self.id),
                backup_id=uuid.UUID(self.backup_id),
                parts=self.part_names,
                requested_by=self.requested_by,
            )
        )

    def start_part(self, name: BackupPart, attempt: int, now: datetime) -> None:
        part = self.part(name)
        if part.status.finished or self.status.finished:
            raise InvalidTransition(f"the {name.value} part of restore {self.id} is already {part.status}")
        part.status = PartStatus.RUNNING
        part.attempts = attempt
        part.error = None
        part.started_at = part.started_at or now
        part.updated_at = now
        if self.status is RestoreStatus.PENDING:
            self.status = RestoreStatus.RUNNING
            self.started_at = self.started_at or now
        self.updated_at = now

    def complete_part(self, name: BackupPart, progress: dict[str, Any], now: datetime) -> bool:
        """Records the part; returns True when it was the last one and so completed the restore."""
        part = self.part(name)
        part.status = PartStatus.COMPLETED
        part.progress = progress
        part.error = None
        part.completed_at = now
        part.updated_at = now
        self.updated_at = now
        self.events.append(
            RestorePartCompleted(restore_id=uuid.UUID(self.id), backup_id=uuid.UUID(self.backup_id), part=name)
        )
        if self.status.finished or any(p.status is not PartStatus.COMPLETED for p in self.parts):
            return False
        self.status = RestoreStatus.COMPLETED
        self.completed_at = now
        self.events.append(
            RestoreCompleted(restore_id=uuid.UUID(self.id), backup_id=uuid.UUID(self.backup_id), parts=self.part_names)
        )
        return True

    def fail_part(self, name: BackupPart, reason: str, now: datetime) -> None:
        """Marks the part failed and, with it, the restore (once), keeping the reason in both."""
        part = self.part(name)
        part.status = PartStatus.FAILED
        part.error = _reason(reason)
        part.completed_at = now
        part.updated_at = now
        self.events.append(
            RestorePartFailed(
                restore_id=uuid.UUID(self.id), backup_id=uuid.UUID(self.backup_id), part=name, reason=part.error
            )
        )
        done = [p.part.value for p in self.parts if p.status is PartStatus.COMPLETED]
        also = f" (the {', '.join(done)} part was restored)" if done else ""
        self.fail(f"{name.value} part failed: {reason}{also}", now)

    def fail(self, reason: str, now: datetime) -> bool:
        """Fails the restore with its reason; False when it had already finished. Parts not started
        are failed with it, so no worker takes them up later."""
        if self.status.finished:
            return False
        self.status = RestoreStatus.FAILED
        self.error = _reason(reason)
        self.completed_at = now
        self.updated_at = now
        for part in self.parts:
            if part.status is PartStatus.PENDING:
                part.status = PartStatus.FAILED
                part.error = "not started: the restore failed"
                part.updated_at = now
        self.events.append(
            RestoreFailed(restore_id=uuid.UUID(self.id), backup_id=uuid.UUID(self.backup_id), reason=self.error)
        )
        return True


def target_busy(target_key: str, other_restore_id: str) -> Conflict:
    """The refusal of a restore into a target an unfinished restore writes to."""
    what = target_key.replace(":", " ", 1)
    return Conflict(
        f"restore {other_restore_id} into {what} has not finished; wait for it or restore elsewhere",
        code="restore_in_progress",
    )


@dataclass(frozen=True)
class RestoreFilter:
    statuses: Sequence[RestoreStatus] = ()
    backup_id: str | None = None
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class BackupFilter:
    types: Sequence[BackupType] = ()
    statuses: Sequence[BackupStatus] = ()
    verification: Sequence[VerificationStatus] = ()  # pending includes never verified
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class Idempotency:
    """A client's Idempotency-Key and the hash of the request it was first used with."""

    key: str
    request_hash: str


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    action: str
    outcome: str
    target: str = ""
    status_code: int | None = None
    source_address: str = ""
    request_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LastSuccess:
    id: str
    completed_at: datetime
    size_bytes: int


@dataclass(frozen=True)
class Outcomes:
    completed: int
    failed: int

    @property
    def success_rate(self) -> float | None:
        total = self.completed + self.failed
        return round(self.completed / total, 4) if total else None


@dataclass(frozen=True)
class CatalogStats:
    """Counts by type and status, bytes held, the last success of each type, the last 30 days' outcomes."""

    by_type: dict[str, int]
    by_status: dict[str, int]
    bytes_by_type: dict[str, int]
    last_success: dict[str, LastSuccess | None]
    last_30_days: Outcomes
    verification: dict[str, int] = field(default_factory=dict)  # completed backups: verified, failed, never

    @property
    def total(self) -> int:
        return sum(self.by_type.values())

    @property
    def bytes_total(self) -> int:
        return sum(self.bytes_by_type.values())
