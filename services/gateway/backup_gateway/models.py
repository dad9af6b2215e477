"""Request and response bodies of the API, validated at the boundary and described in OpenAPI."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from backup_common.domain.documents import ScheduleDocument
from backup_common.domain.events import BackupPart, BackupType
from backup_common.domain.model import (
    MAX_PART_WARNINGS,
    Backup,
    BackupStatus,
    CatalogStats,
    PartStatus,
    Restore,
    RestoreStatus,
)
from backup_common.domain.offsite import OffsiteCopy, OffsiteStatus
from backup_common.domain.ports import StoredDocument
from backup_common.domain.retention import RetentionPlan
from backup_common.domain.schedule import next_fire_times
from backup_common.domain.verification import Verification, VerificationStatus
from backup_gateway.handlers import DATABASE_NAME

NEXT_FIRE_TIMES = 3  # shown for each schedule entry
MAX_OFFSET = 10**9  # far beyond any catalog, and within what MariaDB takes in LIMIT ... OFFSET
MAX_PAGE = 500


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateBackupRequest(_Body):
    type: BackupType = Field(description="What to back up: full, database, files or incremental.")
    description: str = Field("", max_length=500)


class TargetIn(_Body):
    database: str | None = Field(
        None,
        description="Load into this database on the source server (created if missing) instead of in place.",
        # Checked by the handler, which names the rule; stated here so that clients see it.
        json_schema_extra={"pattern": DATABASE_NAME.pattern},
    )
    directory: str | None = Field(
        None,
        max_length=4096,
        description="Rebuild uploads/, configs/ and logs/ below this absolute path inside BACKUP_RESTORE_DIR.",
    )
    replace: StrictBool = Field(False, description="Allow a target database or directory that is not empty.")

    @model_validator(mode="after")
    def _one_target(self) -> TargetIn:
        if (self.database is None) == (self.directory is None):
            raise ValueError('give exactly one of "database" and "directory" (omit "target" to restore in place)')
        return self


class RestoreRequest(_Body):
    confirm: str = Field(max_length=64, description="The id of the backup being restored, repeated as confirmation.")
    parts: list[BackupPart] | None = Field(
        None,
        min_length=1,
        description="Parts to restore, each once; all by default.",
        json_schema_extra={"uniqueItems": True},
    )
    target: TargetIn | None = Field(None, description="Where to restore; absent: in place.")
    tables: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=10_000, description="Only these tables of the database part."
    )
    paths: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        default_factory=list,
        max_length=10_000,
        description="Only these tree-relative prefixes of the files part, such as configs or uploads/2025.",
    )
    safety_backup: StrictBool | None = Field(
        None, description="In place only (the default there): back up what will be replaced first."
    )

    @field_validator("parts")
    @classmethod
    def _parts_once_each(cls, parts: list[BackupPart] | None) -> list[BackupPart] | None:
        if parts is not None and len(set(parts)) != len(parts):
            repeated = sorted({part.value for part in parts if parts.count(part) > 1})
            raise ValueError(f"name each part once; repeated: {', '.join(repeated)}")
        return parts


class ListQuery(_Body):
    type: list[BackupType] = Field(default_factory=list, description="Comma-separated backup types.")
    status: list[BackupStatus] = Field(default_factory=list, description="Comma-separated statuses.")
    verification: list[VerificationStatus] = Field(
        default_factory=list, description="Comma-separated verification statuses (pending includes never verified)."
    )
    limit: int = Field(50, ge=1, le=MAX_PAGE)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


class PageQuery(_Body):
    limit: int = Field(50, ge=1, le=MAX_PAGE)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


class RestoreListQuery(PageQuery):
    status: list[RestoreStatus] = Field(default_factory=list, description="Comma-separated statuses.")
    backup_id: UUID | None = Field(None, description="Only the restores of this backup.")


class PartOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    part: BackupPart
    status: PartStatus
    file_name: str | None
    size_bytes: int
    sha256: str | None
    item_count: int
    progress: dict[str, Any] | None
    error: str | None
    attempts: int
    started_at: datetime | None
    completed_at: datetime | None


class Progress(BaseModel):
    parts_completed: int
    parts_total: int


class WarningOut(BaseModel):
    part: BackupPart
    path: str = Field(
        description="Tree-relative, as uploads/run/app.sock; the bytes of a name that is not UTF-8 show as \\xNN."
    )
    reason: str = Field(description='Why it was left out: "socket", "fifo", "unreadable: Permission denied", ….')


class CheckOut(BaseModel):
    name: str
    ok: bool
    detail: str
    seconds: float


class VerificationOut(BaseModel):
    status: VerificationStatus = Field(description="pending until a verification ended; then verified or failed.")
    checked_at: datetime | None = Field(None, description="When the latest verification ended.")
    error: str | None = Field(None, description="The failing checks of a failed verification, by name.")
    checks: list[CheckOut] = Field(default_factory=list)


def verification_out(verification: Verification | None) -> VerificationOut:
    if verification is None:
        return VerificationOut(status=VerificationStatus.PENDING)
    return VerificationOut(
        status=verification.status,
        checked_at=verification.checked_at,
        error=verification.error,
        checks=[CheckOut.model_validate(check.as_dict()) for check in verification.checks],
    )


class OffsiteOut(BaseModel):
    status: OffsiteStatus = Field(
        description="pending until copied; copied; failed (tried again at next_attempt_at). For a deleted backup:"
        " removed, or locked while Object Lock keeps its objects."
    )
    copied_at: datetime | None = Field(None, description="When the copy was completed.")
    error: str | None = Field(None, description="Why the last attempt failed.")
    attempts: int = Field(0, ge=0, description="Attempts made so far.")
    bytes_copied: int = Field(0, ge=0, description="Bytes sent so far (while pending), or held by the store.")
    next_attempt_at: datetime | None = Field(None, description="When a failed copy is tried again.")
    location: str | None = Field(None, description="Where the copy is: s3://bucket/prefix/YYYY-MM-DD/<id>/.")
    retain_until: datetime | None = Field(None, description="Until when Object Lock keeps the copy, when it does.")
    local_removed_at: datetime | None = Field(
        None, description="When the local copy was removed (BACKUP_LOCAL_KEEP_DAYS); reads fetch it back."
    )


def offsite_out(copy: OffsiteCopy | None) -> OffsiteOut | None:
    if copy is None:
        return None
    return OffsiteOut(
        status=copy.status,
        copied_at=copy.copied_at,
        error=copy.error,
        attempts=copy.attempts,
        bytes_copied=copy.bytes_copied,
        next_attempt_at=copy.next_attempt_at,
        location=copy.location,
        retain_until=copy.retain_until,
        local_removed_at=copy.local_removed_at,
    )


class BackupOut(BaseModel):
    id: str
    type: BackupType
    status: BackupStatus
    description: str
    requested_by: str
    trigger: str
    schedule: str | None = Field(description="The schedule entry that made it.")
    archive: bool = Field(description="Kept by the monthly and yearly retention rules only.")
    parent_id: str | None
    storage_path: str
    size_bytes: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    erased_at: datetime | None = Field(description="When its files and data key were destroyed.")
    progress: Progress
    parts: list[PartOut]
    verification: VerificationOut
    offsite: OffsiteOut | None = Field(
        description="The off-site copy; null when no object store was configured when the backup completed."
    )
    warning_count: int = Field(
        ge=0,
        description="Paths the backup left out (sockets, FIFOs, device files, files unreadable as they were read).",
    )


class BackupDetailOut(BackupOut):
    """One backup as its own page shows it: with the paths it left out, which a list leaves to warning_count."""

    warnings: list[WarningOut] = Field(
        description=f"The paths left out and why, the first {MAX_PART_WARNINGS} of each part; warning_count counts"
        " them all, and the part's files.json lists them all.",
        # The domain keeps no more; stated here so that clients see it.
        json_schema_extra={"maxItems": MAX_PART_WARNINGS * len(BackupPart)},
    )


class BackupEnvelope(BaseModel):
    backup: BackupDetailOut


class BackupPage(BaseModel):
    backups: list[BackupOut]
    total: int
    limit: int
    offset: int


class RestorePartOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    part: BackupPart
    status: PartStatus
    progress: dict[str, Any] | None = Field(
        description="Phase, and bytes with tables (database) or files (files) done of their total."
    )
    error: str | None
    attempts: int
    started_at: datetime | None
    completed_at: datetime | None


class TargetOut(BaseModel):
    kind: Literal["in_place", "database", "directory"]
    database: str | None = None
    directory: str | None = None
    replace: bool = False


class RestoreOut(BaseModel):
    id: str
    backup_id: str
    status: RestoreStatus
    parts: list[RestorePartOut]
    target: TargetOut
    tables: list[str]
    paths: list[str]
    safety_backup: bool
    safety_backup_id: str | None = Field(description="The pre-restore backup taken first; set once requested.")
    requested_by: str
    error: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime


def restore_out(restore: Restore) -> RestoreOut:
    return RestoreOut(
        id=restore.id,
        backup_id=restore.backup_id,
        status=restore.status,
        parts=[RestorePartOut.model_validate(part) for part in restore.parts],
        target=TargetOut.model_validate(restore.target.as_dict()),
        tables=list(restore.tables),
        paths=list(restore.paths),
        safety_backup=restore.safety_backup,
        safety_backup_id=restore.safety_backup_id,
        requested_by=restore.requested_by,
        error=restore.error,
        created_at=restore.created_at,
        started_at=restore.started_at,
        completed_at=restore.completed_at,
        updated_at=restore.updated_at,
    )


class RestoreEnvelope(BaseModel):
    restore: RestoreOut


class RestorePage(BaseModel):
    restores: list[RestoreOut]
    total: int
    limit: int
    offset: int


class LastSuccess(BaseModel):
    id: str
    completed_at: datetime
    size_bytes: int


class Outcomes(BaseModel):
    completed: int
    failed: int
    success_rate: float | None = Field(description="completed / (completed + failed); null with neither.")


class StorageUsage(BaseModel):
    used_bytes: int = Field(description="Bytes held by completed backups, from the catalog.")
    filesystem_total_bytes: int | None
    filesystem_free_bytes: int | None


class Stats(BaseModel):
    total: int
    by_type: dict[str, int]
    by_status: dict[str, int]
    bytes_total: int
    bytes_by_type: dict[str, int]
    last_success: dict[str, LastSuccess | None]
    last_30_days: Outcomes
    storage: StorageUsage
    verification: dict[str, int] = Field(
        description="Completed backups by their latest verification: verified, failed, never (not yet verified)."
    )


class DocumentOut(BaseModel):
    document: dict[str, Any]
    revision: int = Field(description="Send it back in If-Match to change this revision and no other.")
    updated_by: str
    updated_at: datetime
    next_fire_times: dict[str, list[datetime]] | None = Field(
        None, description="The schedule only: each enabled entry's next fire times, in UTC."
    )


class DocumentPatch(BaseModel):
    """A JSON merge patch (RFC 7396): the keys to change, nested as in the document; null resets one."""

    model_config = ConfigDict(extra="allow")


class KeptBackup(BaseModel):
    id: str
    reasons: list[str]


class DeletedBackup(BaseModel):
    id: str
    reason: str


class RetentionPreview(BaseModel):
    """What the retention policy keeps and deletes of the completed backups, were it applied now."""

    keep: list[KeptBackup]
    delete: list[DeletedBackup]


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def backup_out(backup: Backup) -> BackupOut:
    return BackupOut(
        id=backup.id,
        type=backup.type,
        status=backup.status,
        description=backup.description,
        requested_by=backup.requested_by,
        trigger=backup.trigger.value,
        schedule=backup.schedule,
        archive=backup.archive,
        parent_id=backup.parent_id,
        storage_path=backup.storage_path,
        size_bytes=backup.size_bytes,
        error=backup.error,
        created_at=backup.created_at,
        started_at=backup.started_at,
        completed_at=backup.completed_at,
        updated_at=backup.updated_at,
        erased_at=backup.erased_at,
        progress=Progress(parts_completed=backup.parts_completed, parts_total=len(backup.parts)),
        parts=[PartOut.model_validate(part) for part in backup.parts],
        verification=verification_out(backup.verification),
        offsite=offsite_out(backup.offsite),
        warning_count=backup.warning_count,
    )


def backup_detail_out(backup: Backup) -> BackupDetailOut:
    return BackupDetailOut(
        **dict(backup_out(backup)),
        warnings=[
            WarningOut(part=part.part, path=warning.path, reason=warning.reason)
            for part in backup.parts
            for warning in part.warnings
        ],
    )


def stats_out(stats: CatalogStats, usage: tuple[int, int] | None) -> Stats:
    return Stats(
        total=stats.total,
        by_type=stats.by_type,
        by_status=stats.by_status,
        bytes_total=stats.bytes_total,
        bytes_by_type=stats.bytes_by_type,
        last_success={
            name: LastSuccess(id=last.id, completed_at=last.completed_at, size_bytes=last.size_bytes) if last else None
            for name, last in stats.last_success.items()
        },
        last_30_days=Outcomes(
            completed=stats.last_30_days.completed,
            failed=stats.last_30_days.failed,
            success_rate=stats.last_30_days.success_rate,
        ),
        storage=StorageUsage(
            used_bytes=stats.bytes_total,
            filesystem_total_bytes=usage[0] if usage else None,
            filesystem_free_bytes=usage[1] if usage else None,
        ),
        verification=stats.verification,
    )


def document_out(stored: StoredDocument, now: datetime) -> DocumentOut:
    fire_times = None
    if isinstance(stored.document, ScheduleDocument):
        timezone = stored.document.timezone
        fire_times = {
            entry.name: next_fire_times(entry.cron, timezone, now, NEXT_FIRE_TIMES)
            for entry in stored.document.schedules
            if entry.enabled
        }
    return DocumentOut(
        document=stored.document.model_dump(mode="json"),
        revision=stored.revision,
        updated_by=stored.updated_by,
        updated_at=stored.updated_at,
        next_fire_times=fire_times,
    )


def retention_out(plan: RetentionPlan) -> RetentionPreview:
    return RetentionPreview(
        keep=[KeptBackup(id=backup_id, reasons=list(reasons)) for backup_id, reasons in plan.keep.items()],
        delete=[DeletedBackup(id=backup_id, reason=reason) for backup_id, reason in plan.delete.items()],
    )
