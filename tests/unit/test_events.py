"""Event models: JSON round trips, refusals, routing keys, and the published JSON Schemas."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from pydantic import ValidationError

from backup_common.cli import main as backupctl
from backup_common.domain.commands import message_schemas
from backup_common.domain.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    BackupPart,
    BackupPartCompleted,
    BackupRequested,
    BackupType,
    Event,
    event_schemas,
    parse_event,
)
from backup_common.paths import SCHEMAS_DIR

REGENERATE = "the event models and infra/schemas/ differ: run `make schemas` and commit the result"

BACKUP_ID = uuid.UUID("6f1c0d7e-3b52-4c8e-9a51-2f0d5c3e8b11")
RESTORE_ID = uuid.UUID("0b6c2a64-1d7f-4e3b-8c25-9f8e7d6c5b4a")

# A valid value for every event-specific field any model declares.
SAMPLE_VALUES: dict[str, Any] = {
    "backup_type": "full",
    "parts": ["database", "files"],
    "description": "before the upgrade",
    "requested_by": "alice",
    "part": "files",
    "size_bytes": 123_456,
    "sha256": "0123456789abcdef" * 4,
    "file_name": "files.zip",
    "item_count": 42,
    "reason": "disk full",
    "restore_id": str(RESTORE_ID),
    "phase": "loading",
    "progress": {"phase": "loading", "bytes_done": 10, "bytes_total": 20},
}
ENVELOPE_FIELDS = {"event_id", "occurred_at", "schema_version", "backup_id", "type"}


def sample(model: type[Event], **overrides: Any) -> Event:
    """An instance of `model` with every one of its fields set to a non-default value."""
    fields = {name: SAMPLE_VALUES[name] for name in model.model_fields if name not in ENVELOPE_FIELDS}
    return model.model_validate(
        {
            "backup_id": str(BACKUP_ID),
            "event_id": str(uuid.uuid4()),
            "occurred_at": "2026-03-01T02:00:00.123456+00:00",
            **fields,
            **overrides,
        }
    )


def sample_body(model: type[Event], **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(sample(model).to_json())
    body.update(changes)
    return body


ids = [model.__name__ for model in EVENT_TYPES]


@pytest.mark.parametrize("model", EVENT_TYPES, ids=ids)
def test_every_event_round_trips_through_its_json(model: type[Event]) -> None:
    event = sample(model)

    parsed = parse_event(event.to_json())

    assert type(parsed) is model
    assert parsed == event
    assert parsed.to_json() == event.to_json()


@pytest.mark.parametrize("model", EVENT_TYPES, ids=ids)
def test_every_event_is_parsed_from_text_as_well_as_bytes(model: type[Event]) -> None:
    event = sample(model)

    assert parse_event(event.to_json().decode()) == event


@pytest.mark.parametrize("model", EVENT_TYPES, ids=ids)
def test_the_type_field_names_the_model(model: type[Event]) -> None:
    body = json.loads(sample(model).to_json())

    assert body["type"] == model.__name__
    assert body["schema_version"] == SCHEMA_VERSION == 1


@pytest.mark.parametrize("model", EVENT_TYPES, ids=ids)
def test_the_correlation_id_equals_the_backup_id_and_is_in_the_json(model: type[Event]) -> None:
    event = sample(model)

    body = json.loads(event.to_json())

    assert event.correlation_id == BACKUP_ID
    assert body["correlation_id"] == body["backup_id"] == str(BACKUP_ID)


def test_a_correlation_id_in_the_json_cannot_detach_an_event_from_its_backup() -> None:
    body = sample_body(BackupRequested, correlation_id=str(uuid.uuid4()))

    assert parse_event(json.dumps(body)).correlation_id == BACKUP_ID


def test_new_events_get_a_fresh_id_and_an_aware_timestamp() -> None:
    first = BackupRequested(backup_id=BACKUP_ID, backup_type=BackupType.FULL, parts=(), requested_by="a")
    second = BackupRequested(backup_id=BACKUP_ID, backup_type=BackupType.FULL, parts=(), requested_by="a")

    assert first.event_id != second.event_id
    assert first.occurred_at.tzinfo is not None
    assert abs((datetime.now(UTC) - first.occurred_at).total_seconds()) < 60


def test_an_unknown_event_type_is_refused() -> None:
    body = sample_body(BackupRequested, type="BackupExploded")

    with pytest.raises(ValidationError):
        parse_event(json.dumps(body))


def test_a_body_without_a_type_is_refused() -> None:
    body = sample_body(BackupRequested)
    del body["type"]

    with pytest.raises(ValidationError):
        parse_event(json.dumps(body))


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"[]", b"null", b'"BackupRequested"', b"\xff\xfe"])
def test_malformed_json_is_refused(body: bytes) -> None:
    with pytest.raises(ValidationError):
        parse_event(body)


@pytest.mark.parametrize("model", EVENT_TYPES, ids=ids)
def test_a_missing_backup_id_is_refused(model: type[Event]) -> None:
    body = sample_body(model)
    del body["backup_id"]

    with pytest.raises(ValidationError, match="backup_id"):
        parse_event(json.dumps(body))


@pytest.mark.parametrize(
    ("model", "field"),
    [
        (model, name)
        for model in EVENT_TYPES
        for name, info in model.model_fields.items()
        if info.is_required() and name not in ENVELOPE_FIELDS
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else str(value),
)
def test_a_missing_event_specific_required_field_is_refused(model: type[Event], field: str) -> None:
    body = sample_body(model)
    del body[field]

    with pytest.raises(ValidationError, match=field):
        parse_event(json.dumps(body))


@pytest.mark.parametrize("model", EVENT_TYPES, ids=ids)
def test_schema_version_2_is_refused(model: type[Event]) -> None:
    body = sample_body(model, schema_version=2)

    with pytest.raises(ValidationError, match="schema_version"):
        parse_event(json.dumps(body))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("backup_id", "not-a-uuid"),
        ("occurred_at", "2026-03-01T02:00:00"),
        ("backup_type", "partial"),
        ("parts", ["database", "mail"]),
    ],
)
def test_an_invalid_field_value_is_refused(field: str, value: Any) -> None:
    body = sample_body(BackupRequested, **{field: value})

    with pytest.raises(ValidationError, match=field):
        parse_event(json.dumps(body))


@pytest.mark.parametrize(("field", "value"), [("size_bytes", -1), ("sha256", "ABC"), ("item_count", -5)])
def test_an_invalid_part_completion_is_refused(field: str, value: Any) -> None:
    body = sample_body(BackupPartCompleted, **{field: value})

    with pytest.raises(ValidationError, match=field):
        parse_event(json.dumps(body))


@pytest.mark.parametrize("model", EVENT_TYPES, ids=ids)
def test_unknown_extra_fields_are_ignored(model: type[Event]) -> None:
    event = sample(model)
    body = sample_body(model, added_by_a_newer_producer={"nested": [1, 2]}, priority=5)
    body["event_id"] = str(event.event_id)

    parsed = parse_event(json.dumps(body))

    assert parsed == event
    assert "added_by_a_newer_producer" not in parsed.to_json().decode()


def test_events_are_immutable() -> None:
    event = sample(BackupRequested)

    with pytest.raises(ValidationError, match="frozen"):
        event.backup_id = uuid.uuid4()  # type: ignore[misc]


def test_every_event_has_its_own_routing_key() -> None:
    keys = [model.routing_key for model in EVENT_TYPES]

    assert len(set(keys)) == len(keys), keys
    assert all(key and key == key.lower() and " " not in key for key in keys)


def test_every_event_type_is_listed_once() -> None:
    names = [model.__name__ for model in EVENT_TYPES]

    assert len(set(names)) == len(names) == 16


@pytest.mark.parametrize(
    ("backup_type", "parts"),
    [
        (BackupType.FULL, (BackupPart.DATABASE, BackupPart.FILES)),
        (BackupType.DATABASE, (BackupPart.DATABASE,)),
        (BackupType.FILES, (BackupPart.FILES,)),
        (BackupType.INCREMENTAL, (BackupPart.FILES,)),
    ],
)
def test_each_backup_type_is_made_of_its_parts(backup_type: BackupType, parts: tuple[BackupPart, ...]) -> None:
    assert backup_type.parts == parts


def test_every_backup_type_has_its_parts_listed() -> None:
    assert {backup_type: len(backup_type.parts) for backup_type in BackupType} == {
        BackupType.FULL: 2,
        BackupType.DATABASE: 1,
        BackupType.FILES: 1,
        BackupType.INCREMENTAL: 1,
    }


def test_the_published_schemas_equal_the_event_models_byte_for_byte(tmp_path: Path) -> None:
    assert backupctl(["export-schemas", str(tmp_path / "schemas")]) == 0
    fresh = {path.name: path.read_text() for path in (tmp_path / "schemas").iterdir()}

    for name, text in fresh.items():
        published = SCHEMAS_DIR / name
        assert published.is_file(), f"{published} is missing; {REGENERATE}"
        assert published.read_text() == text, f"{published} is stale; {REGENERATE}"


def test_the_published_schemas_parse_to_exactly_event_schemas() -> None:
    for name, schema in event_schemas().items():
        published = SCHEMAS_DIR / name
        assert published.is_file(), f"{published} is missing; {REGENERATE}"
        assert json.loads(published.read_text()) == schema, f"{published} is stale; {REGENERATE}"


def test_no_stale_file_is_left_in_the_schemas_directory() -> None:
    present = sorted(path.name for path in SCHEMAS_DIR.iterdir())
    expected = sorted(message_schemas())

    stale = sorted(set(present) - set(expected))
    assert not stale, (
        f"{SCHEMAS_DIR} holds files no event or command model produces: {stale}; remove them ({REGENERATE})"
    )
    assert present == expected, REGENERATE


def test_every_schema_names_its_routing_key_version_and_dialect() -> None:
    schemas = event_schemas()

    for model in EVENT_TYPES:
        schema = schemas[f"{model.__name__}.v{SCHEMA_VERSION}.json"]
        assert schema["x-routing-key"] == model.routing_key
        assert schema["$id"] == f"urn:backup-system:event:{model.__name__}:v1"
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("model", EVENT_TYPES, ids=ids)
def test_every_event_json_is_valid_against_its_published_schema(model: type[Event]) -> None:
    schema = event_schemas()[f"{model.__name__}.v{SCHEMA_VERSION}.json"]
    body = json.loads(sample(model).to_json())

    jsonschema.Draft202012Validator(schema).validate(body)


@pytest.mark.parametrize("model", EVENT_TYPES, ids=ids)
def test_the_published_schema_refuses_another_events_type(model: type[Event]) -> None:
    schema = event_schemas()[f"{model.__name__}.v{SCHEMA_VERSION}.json"]
    body = json.loads(sample(model).to_json())
    body["type"] = "SomethingElse"

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(body)
