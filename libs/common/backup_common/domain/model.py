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

from backup_common.domain.errors import Conflict
from backup_common.domain.events import (
    BackupCompleted,
    BackupFailed,
    BackupPart,
    BackupRequested,
    BackupType,
    DeleteRequested,
    Event,
    RestoreRequested,
)

MAX_ERROR_TEXT = 4000  # the catalog's error columns are TEXT; a reason longer than this is cut


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
class PartResult:
    """What a worker made of a part, as the catalog records it."""

    file_name: str
    size_bytes: int
    sha256: str
    item_count: int
    progress: dict[str, Any]


@dataclass
class Part:
    part: BackupPart
    status: PartStatus = PartStatus.PENDING
    file_name: str | None = None
    size_bytes: int = 0
    sha256: str | None = None
    item_count: int = 0
    progress: dict[str, Any] | None = None
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
    parent_id: str | None = None
    size_bytes: int = 0
    error: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    parts: list[Part] = field(default_factory=list)
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

    def restorable_parts(self, wanted: Sequence[BackupPart] | None) -> tuple[BackupPart, ...]:
        """The parts a restore of this backup takes: ``wanted``, or all of them; Conflict otherwise."""
        if self.status is not BackupStatus.COMPLETED:
            raise Conflict(
                f"backup {self.id} is {self.status}; only a completed backup can be restored",
                code="backup_not_restorable",
            )
        available = self.type.parts
        chosen = tuple(wanted) if wanted else available
        missing = [part.value for part in chosen if part not in available]
        if missing:
            raise Conflict(
                f"backup {self.id} has no {', '.join(missing)} part (it has: {', '.join(p.value for p in available)})",
                code="part_not_in_backup",
            )
        return chosen

    def request_delete(self, requested_by: str, now: datetime) -> None:
        """Marks the backup for deletion and asks for it; a backup already being deleted stays so."""
        if self.status.in_progress:
            raise Conflict(
                f"backup {self.id} is {self.status}; wait until it completes or fails", code="backup_in_progress"
            )
        if self.status is BackupStatus.DELETED:
            raise Conflict(f"backup {self.id} is already deleted", code="backup_deleted")
        if self.status is BackupStatus.DELETING:
            return
        self._move(BackupStatus.DELETING, now)
        self.events.append(DeleteRequested(backup_id=uuid.UUID(self.id), requested_by=requested_by))


@dataclass
class Restore:
    id: str
    backup_id: str
    status: RestoreStatus
    parts: tuple[BackupPart, ...]
    requested_by: str
    created_at: datetime
    updated_at: datetime
    error: str | None = None
    completed_at: datetime | None = None
    events: list[Event] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def request(
        cls, backup: Backup, parts: Sequence[BackupPart] | None, *, requested_by: str, now: datetime
    ) -> Restore:
        """A pending restore of a completed backup, and its RestoreRequested."""
        chosen = backup.restorable_parts(parts)
        restore = cls(
            id=str(uuid.uuid4()),
            backup_id=backup.id,
            status=RestoreStatus.PENDING,
            parts=chosen,
            requested_by=requested_by,
            created_at=now,
            updated_at=now,
        )
        restore.events.append(
            RestoreRequested(
                restore_id=uuid.UUID(restore.id),
                backup_id=uuid.UUID(backup.id),
                parts=chosen,
                requested_by=requested_by,
            )
        )
        return restore

    def fail(self, reason: str, now: datetime) -> bool:
        """Fails the restore with its reason; False when it had already finished."""
        if self.status.finished:
            return False
        self.status = RestoreStatus.FAILED
        self.error = _reason(reason)
        self.completed_at = now
        self.updated_at = now
        return True


@dataclass(frozen=True)
class BackupFilter:
    types: Sequence[BackupType] = ()
    statuses: Sequence[BackupStatus] = ()
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

    @property
    def total(self) -> int:
        return sum(self.by_type.values())

    @property
    def bytes_total(self) -> int:
        return sum(self.bytes_by_type.values())
