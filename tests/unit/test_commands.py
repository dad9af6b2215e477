"""Command models: what automation may send over AMQP, what it may not, and the published JSON Schemas."""

from __future__ import annotations

import json
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from pydantic import ValidationError

from backup_common.domain.commands import (
    COMMAND_TYPES,
    MAX_MESSAGE_ID,
    Command,
    CreateBackupCommand,
    VerifyBackupCommand,
    command_schemas,
    message_schemas,
    parse_command,
)
from backup_common.domain.events import EVENT_TYPES, BackupType, event_schemas
from backup_common.paths import SCHEMAS_DIR

REGENERATE = "the command models and infra/schemas/ differ: run `make schemas` and commit the result"
BACKUP_ID = "6f1c0d7e-3b52-4c8e-9a51-2f0d5c3e8b11"
VALID: dict[type[Command], dict[str, Any]] = {
    CreateBackupCommand: {"type": "full", "description": "before the upgrade", "requested_by": "ci-pipeline"},
    VerifyBackupCommand: {"backup_id": BACKUP_ID, "requested_by": "nightly-check"},
}
ids = [model.__name__ for model in COMMAND_TYPES]


def body(model: type[Command], **changes: Any) -> bytes:
    fields = {**VALID[model], **changes}
    return json.dumps({name: value for name, value in fields.items() if value is not ...}).encode()


def test_a_create_command_is_read_from_its_body_with_the_message_id_it_came_with() -> None:
    command = parse_command(CreateBackupCommand, body(CreateBackupCommand), "deploy-2026-03-01")

    assert (command.type, command.description, command.requested_by) == (
        BackupType.FULL,
        "before the upgrade",
        "ci-pipeline",
    )
    assert (command.message_id, command.schema_version) == ("deploy-2026-03-01", 1)


def test_a_create_command_needs_only_a_type_and_who_asks() -> None:
    command = parse_command(CreateBackupCommand, b'{"type": "database", "requested_by": "cron"}', "m-1")

    assert (command.type, command.description) == (BackupType.DATABASE, "")


def test_a_verify_command_names_the_backup() -> None:
    command = parse_command(VerifyBackupCommand, body(VerifyBackupCommand), "m-1")

    assert (str(command.backup_id), command.requested_by, command.message_id) == (BACKUP_ID, "nightly-check", "m-1")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"type": ...}, "type"),
        ({"type": "weekly"}, "type"),
        ({"type": 1}, "type"),
        ({"requested_by": ...}, "requested_by"),
        ({"requested_by": ""}, "requested_by"),
        ({"requested_by": "   "}, "requested_by"),
        ({"requested_by": "x" * 256}, "requested_by"),
        ({"requested_by": "ci\nFAKE LOG LINE"}, "requested_by"),
        ({"description": "x" * 501}, "description"),
        ({"description": 5}, "description"),
        ({"schema_version": 2}, "schema_version"),
        ({"parts": ["database"]}, "parts"),
    ],
    ids=lambda value: str(value).replace("Ellipsis", "left out")[:40] if isinstance(value, dict) else str(value),
)
def test_an_invalid_create_command_is_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        parse_command(CreateBackupCommand, body(CreateBackupCommand, **changes), "m-1")


@pytest.mark.parametrize("changes", [{"backup_id": ...}, {"backup_id": "not-a-uuid"}, {"requested_by": ...}])
def test_an_invalid_verify_command_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parse_command(VerifyBackupCommand, body(VerifyBackupCommand, **changes), "m-1")


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"[]", b"null", b'"full"', b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_refused(raw: bytes) -> None:
    with pytest.raises(ValidationError):
        parse_command(CreateBackupCommand, raw, "m-1")


def test_an_event_body_is_not_a_command() -> None:
    event = {"type": "BackupRequested", "backup_id": BACKUP_ID, "backup_type": "full", "requested_by": "x"}

    with pytest.raises(ValidationError):
        parse_command(CreateBackupCommand, json.dumps(event), "m-1")


@pytest.mark.parametrize("message_id", ["", "x" * (MAX_MESSAGE_ID + 1)])
def test_a_command_without_a_usable_message_id_is_refused(message_id: str) -> None:
    with pytest.raises(ValueError, match="message_id"):
        parse_command(CreateBackupCommand, body(CreateBackupCommand), message_id)


def test_who_asks_is_kept_without_surrounding_blanks() -> None:
    command = parse_command(CreateBackupCommand, body(CreateBackupCommand, requested_by="  ci  "), "m-1")

    assert command.requested_by == "ci"


def test_commands_are_immutable() -> None:
    command = parse_command(CreateBackupCommand, body(CreateBackupCommand), "m-1")

    with pytest.raises(ValidationError, match="frozen"):
        command.type = BackupType.FILES  # type: ignore[misc]


def test_commands_and_events_have_routing_keys_of_their_own() -> None:
    keys = [model.routing_key for model in EVENT_TYPES] + [model.routing_key for model in COMMAND_TYPES]

    assert len(set(keys)) == len(keys), keys
    assert [model.routing_key for model in COMMAND_TYPES] == ["command.backup.create", "command.backup.verify"]


def test_the_commands_schemas_are_published_beside_the_events() -> None:
    assert set(message_schemas()) == set(event_schemas()) | set(command_schemas())
    for name, schema in command_schemas().items():
        published = SCHEMAS_DIR / name
        assert published.is_file(), f"{published} is missing; {REGENERATE}"
        assert json.loads(published.read_text()) == schema, f"{published} is stale; {REGENERATE}"


def test_every_command_schema_names_its_routing_key_version_and_dialect() -> None:
    schemas = command_schemas()

    for model in COMMAND_TYPES:
        schema = schemas[f"{model.__name__}.v1.json"]
        assert schema["x-routing-key"] == model.routing_key
        assert "message_id" in schema["x-message-id"]
        assert schema["$id"] == f"urn:backup-system:command:{model.__name__}:v1"
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("model", COMMAND_TYPES, ids=ids)
def test_a_valid_command_is_valid_against_its_published_schema(model: type[Command]) -> None:
    schema = command_schemas()[f"{model.__name__}.v1.json"]

    jsonschema.Draft202012Validator(schema).validate(json.loads(body(model)))


@pytest.mark.parametrize(
    "changes",
    [{"type": "weekly"}, {"requested_by": ...}, {"requested_by": "a\tb"}, {"description": "x" * 501}, {"extra": 1}],
    ids=["bad type", "no requested_by", "control character", "long description", "unknown field"],
)
def test_the_published_schema_refuses_what_the_gateway_refuses(changes: dict[str, Any]) -> None:
    schema = command_schemas()["CreateBackupCommand.v1.json"]
    raw = body(CreateBackupCommand, **changes)

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(json.loads(raw))
    with pytest.raises(ValidationError):
        parse_command(CreateBackupCommand, raw, "m-1")


def test_the_verify_schema_asks_for_a_uuid() -> None:
    schema = command_schemas()["VerifyBackupCommand.v1.json"]

    assert schema["properties"]["backup_id"]["format"] == "uuid"
    assert set(schema["required"]) == {"backup_id", "requested_by"}
