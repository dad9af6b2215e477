"""The events the services exchange: versioned pydantic models, one routing key each.

Every message body is the JSON of one model; ``type`` names the model. Readers ignore fields they do
not know (a newer producer may add some) but refuse a ``schema_version`` they do not understand.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, computed_field

SCHEMA_VERSION = 1


class BackupType(StrEnum):
    FULL = "full"
    DATABASE = "database"
    FILES = "files"
    INCREMENTAL = "incremental"

    @property
    def parts(self) -> tuple[BackupPart, ...]:
        """The parts a backup of this type is made of, each produced by its own service."""
        if self is BackupType.FULL:
            return (BackupPart.DATABASE, BackupPart.FILES)
        if self is BackupType.DATABASE:
            return (BackupPart.DATABASE,)
        return (BackupPart.FILES,)


class BackupPart(StrEnum):
    DATABASE = "database"
    FILES = "files"


def _now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Envelope fields shared by every event."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    routing_key: ClassVar[str]
    # A request asks a service to act, so it must reach a queue: published as mandatory, an unroutable
    # one is a configuration error. An announcement of what happened may have no listener at all.
    requires_consumer: ClassVar[bool] = False

    event_id: UUID = Field(default_factory=uuid4, description="Unique per event; the AMQP message_id.")
    occurred_at: AwareDatetime = Field(default_factory=_now)
    schema_version: Literal[1] = Field(1, description="Bumped on incompatible changes.")
    backup_id: UUID = Field(description="The backup this event concerns.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def correlation_id(self) -> UUID:
        """Ties together every event of one backup's life (also the AMQP correlation_id)."""
        return self.backup_id

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


class BackupRequested(Event):
    routing_key: ClassVar[str] = "backup.requested"
    requires_consumer: ClassVar[bool] = True
    type: Literal["BackupRequested"] = "BackupRequested"
    backup_type: BackupType
    parts: tuple[BackupPart, ...]
    description: str = ""
    requested_by: str


class BackupPartCompleted(Event):
    routing_key: ClassVar[str] = "backup.part.completed"
    type: Literal["BackupPartCompleted"] = "BackupPartCompleted"
    part: BackupPart
    size_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    file_name: str
    item_count: int = Field(0, ge=0)


class BackupPartFailed(Event):
    routing_key: ClassVar[str] = "backup.part.failed"
    type: Literal["BackupPartFailed"] = "BackupPartFailed"
    part: BackupPart
    reason: str


class BackupCompleted(Event):
    routing_key: ClassVar[str] = "backup.completed"
    type: Literal["BackupCompleted"] = "BackupCompleted"
    backup_type: BackupType
    size_bytes: int = Field(ge=0)


class BackupFailed(Event):
    routing_key: ClassVar[str] = "backup.failed"
    type: Literal["BackupFailed"] = "BackupFailed"
    backup_type: BackupType
    reason: str


class DeleteRequested(Event):
    routing_key: ClassVar[str] = "backup.delete.requested"
    requires_consumer: ClassVar[bool] = True
    type: Literal["DeleteRequested"] = "DeleteRequested"
    requested_by: str


class BackupDeleted(Event):
    routing_key: ClassVar[str] = "backup.deleted"
    type: Literal["BackupDeleted"] = "BackupDeleted"


class RestoreRequested(Event):
    routing_key: ClassVar[str] = "restore.requested"
    requires_consumer: ClassVar[bool] = True
    type: Literal["RestoreRequested"] = "RestoreRequested"
    restore_id: UUID
    parts: tuple[BackupPart, ...]
    requested_by: str


class RestorePartProgressed(Event):
    """A restore part entered a new phase (checking, loading or writing, swapping, done)."""

    routing_key: ClassVar[str] = "restore.part.progressed"
    type: Literal["RestorePartProgressed"] = "RestorePartProgressed"
    restore_id: UUID
    part: BackupPart
    phase: str
    progress: dict[str, Any] = Field(default_factory=dict)


class RestorePartCompleted(Event):
    routing_key: ClassVar[str] = "restore.part.completed"
    type: Literal["RestorePartCompleted"] = "RestorePartCompleted"
    restore_id: UUID
    part: BackupPart


class RestorePartFailed(Event):
    routing_key: ClassVar[str] = "restore.part.failed"
    type: Literal["RestorePartFailed"] = "RestorePartFailed"
    restore_id: UUID
    part: BackupPart
    reason: str


class RestoreCompleted(Event):
    routing_key: ClassVar[str] = "restore.completed"
    type: Literal["RestoreCompleted"] = "RestoreCompleted"
    restore_id: UUID
    parts: tuple[BackupPart, ...]


class RestoreFailed(Event):
    routing_key: ClassVar[str] = "restore.failed"
    type: Literal["RestoreFailed"] = "RestoreFailed"
    restore_id: UUID
    reason: str


class VerifyRequested(Event):
    routing_key: ClassVar[str] = "verify.requested"
    requires_consumer: ClassVar[bool] = True
    type: Literal["VerifyRequested"] = "VerifyRequested"
    requested_by: str


class BackupVerified(Event):
    routing_key: ClassVar[str] = "backup.verified"
    type: Literal["BackupVerified"] = "BackupVerified"


class BackupVerificationFailed(Event):
    routing_key: ClassVar[str] = "backup.verification.failed"
    type: Literal["BackupVerificationFailed"] = "BackupVerificationFailed"
    reason: str


EVENT_TYPES: tuple[type[Event], ...] = (
    BackupRequested,
    BackupPartCompleted,
    BackupPartFailed,
    BackupCompleted,
    BackupFailed,
    DeleteRequested,
    BackupDeleted,
    RestoreRequested,
    RestorePartProgressed,
    RestorePartCompleted,
    RestorePartFailed,
    RestoreCompleted,
    RestoreFailed,
    VerifyRequested,
    BackupVerified,
    BackupVerificationFailed,
)

AnyEvent = Annotated[
    BackupRequested
    | BackupPartCompleted
    | BackupPartFailed
    | BackupCompleted
    | BackupFailed
    | DeleteRequested
    | BackupDeleted
    | RestoreRequested
    | RestorePartProgressed
    | RestorePartCompleted
    | RestorePartFailed
    | RestoreCompleted
    | RestoreFailed
    | VerifyRequested
    | BackupVerified
    | BackupVerificationFailed,
    Field(discriminator="type"),
]

_any_event: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


def parse_event(body: bytes | str) -> Event:
    """Validates a message body; raises pydantic.ValidationError for anything malformed or unknown."""
    return _any_event.validate_json(body)


def event_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of each event, keyed by file name, for consumers outside this code base."""
    schemas: dict[str, dict[str, Any]] = {}
    for model in EVENT_TYPES:
        schema = model.model_json_schema(mode="serialization")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"urn:backup-system:event:{model.__name__}:v{SCHEMA_VERSION}"
        schema["x-routing-key"] = model.routing_key
        schemas[f"{model.__name__}.v{SCHEMA_VERSION}.json"] = schema
    return schemas
