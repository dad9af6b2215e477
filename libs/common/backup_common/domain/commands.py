"""The commands automation sends the gateway over AMQP: versioned pydantic models, one routing key each.

An event announces what happened; a command asks for something to be done, exactly as the API's
request does. Its body is the JSON of one model and names no model: the routing key it is published
with does. Its AMQP ``message_id`` (1 to 128 characters) is required and makes it idempotent: the same
id twice is one request. Unlike an event, a command is read strictly: an unknown field or an unknown
``schema_version`` refuses it (it goes to the dead-letter queue with the reason), since a request
understood in part must not be carried out in part.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints

from backup_common.domain.events import SCHEMA_VERSION, BackupType, event_schemas

# As the catalog keeps them: backups.description VARCHAR(500), requested_by VARCHAR(255).
MAX_DESCRIPTION = 500
MAX_REQUESTED_BY = 255
# processed_messages.message_id is VARCHAR(128): a longer id could never be remembered.
MAX_MESSAGE_ID = 128

RequestedBy = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_REQUESTED_BY, pattern=r"^[^\x00-\x1f\x7f]+$"),
    Field(
        description="Who or what asks (a pipeline, a job): recorded on the backup and in the audit log."
        " 1 to 255 characters, no control characters."
    ),
]


class Command(BaseModel):
    """Fields shared by every command."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    routing_key: ClassVar[str]

    schema_version: Literal[1] = Field(1, description="Bumped on incompatible changes; may be left out.")
    # The AMQP message_id it arrived with (not part of the body): set by ``parse_command``.
    _message_id: str = PrivateAttr("")

    @property
    def message_id(self) -> str:
        return self._message_id

    def with_message_id(self, message_id: str) -> Self:
        """This command as received with ``message_id`` (ValueError when empty or too long)."""
        if not 1 <= len(message_id) <= MAX_MESSAGE_ID:
            raise ValueError(f"a command's message_id must be 1 to {MAX_MESSAGE_ID} characters")
        received = self.model_copy()
        received._message_id = message_id
        return received


class CreateBackupCommand(Command):
    """Asks the gateway for a backup, as `POST /api/admin/backup/create` does; the backup's trigger is
    `event`. Publish it with routing key `command.backup.create` and a `message_id`: a message_id used
    again makes no second backup."""

    routing_key: ClassVar[str] = "command.backup.create"

    type: BackupType = Field(description="What to back up: full, database, files or incremental.")
    description: str = Field("", max_length=MAX_DESCRIPTION, description="Shown with the backup.")
    requested_by: RequestedBy


class VerifyBackupCommand(Command):
    """Asks for a completed backup to be verified again, as `POST /api/admin/backup/{id}/verify` does.
    Publish it with routing key `command.backup.verify` and a `message_id`."""

    routing_key: ClassVar[str] = "command.backup.verify"

    backup_id: UUID = Field(description="The completed backup to verify.")
    requested_by: RequestedBy


COMMAND_TYPES: tuple[type[Command], ...] = (CreateBackupCommand, VerifyBackupCommand)

AnyCommand = TypeVar("AnyCommand", bound=Command)


def parse_command(model: type[AnyCommand], body: bytes | str, message_id: str) -> AnyCommand:
    """Validates a message body as ``model``; raises pydantic.ValidationError for anything malformed,
    incomplete or unknown, ValueError for a missing or too long ``message_id``."""
    return model.model_validate_json(body).with_message_id(message_id)


def command_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of each command's body, keyed by file name, for the publishers outside this code base."""
    schemas: dict[str, dict[str, Any]] = {}
    for model in COMMAND_TYPES:
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"urn:backup-system:command:{model.__name__}:v{SCHEMA_VERSION}"
        schema["x-routing-key"] = model.routing_key
        schema["x-message-id"] = (
            f"required: the AMQP message_id property, 1 to {MAX_MESSAGE_ID} characters;"
            " the same message_id twice is one request"
        )
        schemas[f"{model.__name__}.v{SCHEMA_VERSION}.json"] = schema
    return schemas


def message_schemas() -> dict[str, dict[str, Any]]:
    """Every JSON Schema published in infra/schemas/: the events' and the commands'."""
    return {**event_schemas(), **command_schemas()}
