"""The schedule and settings documents: the shipped defaults validate, mistakes are refused clearly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from backup_common.adapters.mysql.documents import DEFAULT_FILES, default_document
from backup_common.domain.documents import (
    DOCUMENTS,
    RetentionPolicy,
    ScheduleDocument,
    SettingsDocument,
    missing_sections,
)
from backup_common.domain.events import BackupType
from backup_common.paths import CONFIG_DIR


def schedule(*entries: dict[str, Any], timezone: str = "UTC") -> dict[str, Any]:
    return {"timezone": timezone, "schedules": list(entries)}


def entry(name: str = "nightly", cron: str = "0 2 * * *", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "full", "cron": cron, **extra}


def refusal(model: type[ScheduleDocument | SettingsDocument], document: dict[str, Any]) -> str:
    """The error text a client would be shown for `document`."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(document)
    return str(caught.value)


def test_the_default_schedule_validates() -> None:
    document = default_document("schedule")

    assert isinstance(document, ScheduleDocument)
    assert document.timezone == "UTC"
    assert [item.name for item in document.schedules] == ["daily", "daily-database", "weekly-full", "monthly-archive"]
    assert {item.name: item.type for item in document.schedules} == {
        "daily": BackupType.INCREMENTAL,
        "daily-database": BackupType.DATABASE,
        "weekly-full": BackupType.FULL,
        "monthly-archive": BackupType.FULL,
    }
    assert [item.name for item in document.schedules if item.archive] == ["monthly-archive"]
    assert all(item.enabled for item in document.schedules)


def test_the_default_settings_validate() -> None:
    document = default_document("settings")

    assert isinstance(document, SettingsDocument)
    assert document.retention == RetentionPolicy(keep_last=3, keep_daily=7, keep_weekly=4, keep_monthly=12)
    assert document.encryption.enabled
    assert document.compression.level == 3
    assert document.verification.restore_drill_cron == "0 4 * * 6"
    assert "**/*.tmp" in document.exclude


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_every_shipped_document_is_valid_json_of_its_model(name: str) -> None:
    model, file_name = DOCUMENTS[name], DEFAULT_FILES[name]
    raw = json.loads((CONFIG_DIR / file_name).read_text())

    assert model.model_validate(raw) == default_document(name)


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_every_shipped_document_survives_a_round_trip_through_json(name: str) -> None:
    document = default_document(name)

    assert type(document).model_validate_json(document.model_dump_json()) == document


def test_the_settings_models_own_defaults_are_the_shipped_ones_except_the_exclude_list() -> None:
    shipped = default_document("settings")

    assert SettingsDocument().model_dump(exclude={"exclude"}) == shipped.model_dump(exclude={"exclude"})


def test_default_document_reads_from_the_given_directory(tmp_path: Path) -> None:
    (tmp_path / "backup-schedule.json").write_text(json.dumps(schedule(entry("only"))))

    document = default_document("schedule", tmp_path)

    assert isinstance(document, ScheduleDocument)
    assert [item.name for item in document.schedules] == ["only"]


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("61 * * * *", "Bad minute"),
        ("0 25 * * *", "Bad hour"),
        ("0 0 32 * *", "Bad day-of-month"),
        ("0 0 30 2 *", "Bad day-of-month"),
        ("0 0 * 13 *", "Bad month"),
        ("0 0 * * 8", "Bad day-of-week"),
        ("*/0 * * * *", "Bad minute"),
        ("every day", "five fields"),
        ("* * * *", "five fields"),
        ("0 2 * * * *", "five fields"),
        ("@daily", "five fields"),
        ("", "five fields"),
    ],
)
def test_a_bad_cron_expression_is_refused_with_the_reason(cron: str, expected: str) -> None:
    message = refusal(ScheduleDocument, schedule(entry(cron=cron)))

    assert "schedules.0.cron" in message
    assert expected in message


@pytest.mark.parametrize("cron", ["0 2 * * *", "*/15 * * * *", "0 2 * * 1-6", "0 3 1 * *", "30 4 * * SUN", "0 0 L * *"])
def test_a_good_cron_expression_is_accepted(cron: str) -> None:
    assert ScheduleDocument.model_validate(schedule(entry(cron=cron))).schedules[0].cron == cron


@pytest.mark.parametrize("timezone", ["Mars/Olympus", "", "utc", "../../etc/passwd", "/etc/localtime", "Europe/"])
def test_an_unknown_timezone_is_refused_with_an_example_of_a_valid_one(timezone: str) -> None:
    message = refusal(ScheduleDocument, schedule(entry(), timezone=timezone))

    assert f"unknown time zone {timezone!r}" in message
    assert "Europe/Paris" in message


@pytest.mark.parametrize("timezone", ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"])
def test_an_iana_timezone_is_accepted(timezone: str) -> None:
    assert ScheduleDocument.model_validate(schedule(entry(), timezone=timezone)).timezone == timezone


def test_duplicate_schedule_names_are_refused_naming_them() -> None:
    message = refusal(
        ScheduleDocument,
        schedule(entry("nightly"), entry("weekly"), entry("nightly", cron="0 3 * * *"), entry("weekly")),
    )

    assert "schedule names must be unique: nightly, weekly" in message


@pytest.mark.parametrize(
    ("document", "location"),
    [
        ({**schedule(entry()), "timezon": "UTC"}, "timezon"),
        (schedule(entry(enabeld=False)), "schedules.0.enabeld"),
        (schedule(entry(), entry("second", retention=3)), "schedules.1.retention"),
    ],
)
def test_unknown_keys_in_the_schedule_are_refused_naming_them(document: dict[str, Any], location: str) -> None:
    message = refusal(ScheduleDocument, document)

    assert location in message
    assert "Extra inputs are not permitted" in message


@pytest.mark.parametrize(
    ("document", "location"),
    [
        ({"retension": {}}, "retension"),
        ({"retention": {"keep_lst": 3}}, "retention.keep_lst"),
        ({"encryption": {"enabled": True, "algorithm": "rot13"}}, "encryption.algorithm"),
        ({"restore_limits": {"max_files": 1}}, "restore_limits.max_files"),
    ],
)
def test_unknown_keys_in_the_settings_are_refused_naming_them(document: dict[str, Any], location: str) -> None:
    message = refusal(SettingsDocument, document)

    assert location in message
    assert "Extra inputs are not permitted" in message


@pytest.mark.parametrize("field", ["keep_daily", "keep_weekly", "keep_monthly"])
def test_a_negative_retention_count_is_refused(field: str) -> None:
    message = refusal(SettingsDocument, {"retention": {field: -1}})

    assert f"retention.{field}" in message
    assert "greater than or equal to 0" in message


@pytest.mark.parametrize("keep_last", [0, -3])
def test_keep_last_must_keep_at_least_one_backup(keep_last: int) -> None:
    message = refusal(SettingsDocument, {"retention": {"keep_last": keep_last}})

    assert "retention.keep_last" in message
    assert "greater than or equal to 1" in message


def test_zero_daily_weekly_and_monthly_counts_are_allowed() -> None:
    document = SettingsDocument.model_validate({"retention": {"keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}})

    assert (document.retention.keep_daily, document.retention.keep_weekly, document.retention.keep_monthly) == (0, 0, 0)


@pytest.mark.parametrize(
    ("document", "location"),
    [
        ({"retention": {"max_age_days": 0}}, "retention.max_age_days"),
        ({"compression": {"level": -1}}, "compression.level"),
        ({"compression": {"level": 4}}, "compression.level"),
        ({"restore_limits": {"max_entries": 0}}, "restore_limits.max_entries"),
        ({"verification": {"restore_drill_cron": "99 * * * *"}}, "verification.restore_drill_cron"),
        ({"exclude": [""]}, "exclude.0"),
        ({"retention": {"keep_daily": "seven"}}, "retention.keep_daily"),
    ],
)
def test_an_out_of_range_setting_is_refused_naming_it(document: dict[str, Any], location: str) -> None:
    assert location in refusal(SettingsDocument, document)


def test_the_restore_drill_can_be_turned_off() -> None:
    document = SettingsDocument.model_validate({"verification": {"restore_drill_cron": None}})

    assert document.verification.restore_drill_cron is None


@pytest.mark.parametrize("name", ["Nightly", "-nightly", "night ly", "", "n" * 65, "nightly/1"])
def test_a_schedule_name_outside_the_allowed_pattern_is_refused(name: str) -> None:
    assert "schedules.0.name" in refusal(ScheduleDocument, schedule(entry(name=name)))


def test_an_unknown_backup_type_in_a_schedule_is_refused() -> None:
    message = refusal(ScheduleDocument, schedule({**entry(), "type": "differential"}))

    assert "schedules.0.type" in message


def test_more_than_fifty_schedules_are_refused() -> None:
    document = schedule(*(entry(f"s{index}") for index in range(51)))

    assert "schedules" in refusal(ScheduleDocument, document)


def test_a_schedule_needs_its_list_of_schedules() -> None:
    assert "schedules" in refusal(ScheduleDocument, {"timezone": "UTC"})


def test_an_empty_settings_document_takes_every_default() -> None:
    assert SettingsDocument.model_validate({}) == SettingsDocument()


@pytest.mark.parametrize(
    ("document", "location"),
    [
        ({"encryption": {"enabled": "no"}}, "encryption.enabled"),
        ({"encryption": {"enabled": 0}}, "encryption.enabled"),
        ({"database": {"keep_definers": "true"}}, "database.keep_definers"),
        ({"retention": {"keep_last": True}}, "retention.keep_last"),
        ({"retention": {"max_age_days": "30"}}, "retention.max_age_days"),
        ({"compression": {"level": "3"}}, "compression.level"),
        ({"compression": {"level": 2.0}}, "compression.level"),
        ({"verification": {"after_backup": "yes"}}, "verification.after_backup"),
        ({"restore_limits": {"max_entries": "100"}}, "restore_limits.max_entries"),
    ],
)
def test_a_loosely_typed_setting_is_refused_naming_it(document: dict[str, Any], location: str) -> None:
    assert location in refusal(SettingsDocument, document)


@pytest.mark.parametrize(("field", "value"), [("enabled", "no"), ("enabled", 1), ("archive", "false")])
def test_a_loosely_typed_schedule_flag_is_refused_naming_it(field: str, value: Any) -> None:
    assert f"schedules.0.{field}" in refusal(ScheduleDocument, schedule(entry(**{field: value})))


def test_strictly_typed_documents_still_read_their_enums_and_numbers_from_json() -> None:
    parsed = ScheduleDocument.model_validate(json.loads(json.dumps(schedule(entry(enabled=False)))))
    settings = SettingsDocument.model_validate_json('{"retention": {"keep_last": 5}, "compression": {"level": 1}}')

    assert (parsed.schedules[0].type, parsed.schedules[0].enabled) == (BackupType.FULL, False)
    assert (settings.retention.keep_last, settings.compression.level) == (5, 1)


def test_missing_sections_still_sees_into_the_strictly_typed_sections() -> None:
    body = SettingsDocument().model_dump(mode="json")
    del body["retention"]["keep_last"]
    del body["encryption"]

    assert missing_sections(SettingsDocument, body) == ["retention.keep_last", "encryption"]
