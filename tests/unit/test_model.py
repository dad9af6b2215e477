"""The backup, part and restore state machine: which changes are allowed and which events they record."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backup_common.domain.errors import Conflict
from backup_common.domain.events import (
    BackupCompleted,
    BackupDeleted,
    BackupFailed,
    BackupPart,
    BackupRequested,
    BackupType,
    DeleteRequested,
)
from backup_common.domain.jobs import parse_job_key, part_job_key, restore_job_key
from backup_common.domain.model import (
    BACKUP_TRANSITIONS,
    MAX_PART_WARNINGS,
    Backup,
    BackupStatus,
    InvalidTransition,
    PartResult,
    PartStatus,
    PartWarning,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


def result(size: int = 100) -> PartResult:
    return PartResult("part.zip", size, "0" * 64, 3, {"done": True})


def running(backup_type: BackupType = BackupType.FULL) -> Backup:
    backup = Backup.request(backup_type, requested_by="alice", now=NOW)
    backup.events.clear()
    for part in backup_type.parts:
        backup.start_part(part, 1, NOW)
    return backup


def completed(backup_type: BackupType = BackupType.FULL) -> Backup:
    backup = running(backup_type)
    for part in backup_type.parts:
        backup.complete_part(part, result(), LATER)
    backup.events.clear()
    return backup


@pytest.mark.parametrize("backup_type", list(BackupType))
def test_a_requested_backup_is_pending_with_a_pending_part_per_part_of_its_type_and_asks_for_them(
    backup_type: BackupType,
) -> None:
    backup = Backup.request(backup_type, requested_by="alice", now=NOW, description="before the upgrade")

    assert backup.status is BackupStatus.PENDING
    assert [(part.part, part.status) for part in backup.parts] == [(p, PartStatus.PENDING) for p in backup_type.parts]
    assert backup.storage_path == f"2026-12-01/{backup.id}"
    [event] = backup.events
    assert isinstance(event, BackupRequested)
    assert (str(event.backup_id), event.parts, event.description) == (
        backup.id,
        backup_type.parts,
        "before the upgrade",
    )


def test_starting_a_part_runs_the_backup_and_keeps_the_first_start_time() -> None:
    backup = Backup.request(BackupType.FULL, requested_by="alice", now=NOW)

    backup.start_part(BackupPart.DATABASE, 1, NOW)
    backup.start_part(BackupPart.DATABASE, 2, LATER)

    assert backup.status is BackupStatus.RUNNING
    part = backup.part(BackupPart.DATABASE)
    assert (part.status, part.attempts, part.started_at) == (PartStatus.RUNNING, 2, NOW)
    assert backup.started_at == NOW


def test_the_backup_completes_with_its_last_part_only_and_announces_its_total_size() -> None:
    backup = running()

    assert backup.complete_part(BackupPart.DATABASE, result(100), LATER) is False
    assert (backup.status.value, backup.events) == ("running", [])
    assert backup.complete_part(BackupPart.FILES, result(250), LATER) is True

    assert backup.status is BackupStatus.COMPLETED
    assert (backup.size_bytes, backup.completed_at) == (350, LATER)
    [event] = backup.events
    assert isinstance(event, BackupCompleted)
    assert event.size_bytes == 350


def test_a_failed_part_fails_the_backup_once_with_the_reason_and_a_later_completion_does_not_revive_it() -> None:
    backup = running()

    backup.fail_part(BackupPart.DATABASE, "disk full", LATER)
    backup.fail_part(BackupPart.DATABASE, "disk full again", LATER)
    completed_now = backup.complete_part(BackupPart.FILES, result(), LATER)

    assert completed_now is False
    assert backup.status is BackupStatus.FAILED
    assert backup.error == "database part failed: disk full"
    assert backup.part(BackupPart.DATABASE).error == "disk full again"
    assert [type(event) for event in backup.events] == [BackupFailed]


def test_a_completed_part_keeps_its_first_warnings_and_counts_them_all() -> None:
    backup = running()
    warnings = tuple(PartWarning(f"uploads/run/{n}.sock", "socket") for n in range(MAX_PART_WARNINGS + 5))

    backup.complete_part(BackupPart.DATABASE, result(), LATER)
    backup.complete_part(BackupPart.FILES, PartResult("files.zip", 100, "0" * 64, 3, {}, warnings), LATER)

    files = backup.part(BackupPart.FILES)
    assert backup.status is BackupStatus.COMPLETED
    assert files.warnings == list(warnings[:MAX_PART_WARNINGS])
    assert files.warning_count == MAX_PART_WARNINGS + 5
    assert (backup.part(BackupPart.DATABASE).warnings, backup.part(BackupPart.DATABASE).warning_count) == ([], 0)
    assert backup.warning_count == MAX_PART_WARNINGS + 5


def test_a_finished_part_cannot_be_started_again() -> None:
    backup = completed(BackupType.DATABASE)

    with pytest.raises(InvalidTransition, match="already completed"):
        backup.start_part(BackupPart.DATABASE, 2, LATER)


def test_a_reason_longer_than_the_catalog_keeps_is_cut() -> None:
    backup = running(BackupType.DATABASE)

    backup.fail_part(BackupPart.DATABASE, "x" * 10_000, LATER)

    assert backup.error is not None
    assert len(backup.error) == 4000


def test_no_status_leaves_deleted_and_every_status_is_reached_from_pending() -> None:
    reached = {BackupStatus.PENDING}
    frontier = [BackupStatus.PENDING]
    while frontier:
        for following in BACKUP_TRANSITIONS[frontier.pop()]:
            if following not in reached:
                reached.add(following)
                frontier.append(following)

    assert reached == set(BackupStatus)
    assert BACKUP_TRANSITIONS[BackupStatus.DELETED] == frozenset()


def test_deleting_is_refused_while_the_backup_runs_and_asked_for_again_when_repeated() -> None:
    with pytest.raises(Conflict, match="wait until it completes or fails"):
        running().request_delete("alice", LATER)
    backup = completed()

    backup.request_delete("alice", LATER)
    backup.request_delete("housekeeping", LATER + timedelta(minutes=10))

    assert backup.status is BackupStatus.DELETING
    assert [type(event) for event in backup.events] == [DeleteRequested, DeleteRequested]
    assert backup.updated_at == LATER + timedelta(minutes=10)  # the retry delay counts from the last request


def test_erasing_finishes_a_deletion_and_leaves_a_failed_backup_listed_as_failed() -> None:
    deleting = completed()
    deleting.request_delete("alice", LATER)
    deleting.events.clear()
    failed = running()
    failed.fail_part(BackupPart.DATABASE, "disk full", LATER)

    deleting.erased(LATER)
    failed.erased(LATER)

    assert (deleting.status, deleting.erased_at, deleting.needs_erasing) == (BackupStatus.DELETED, LATER, False)
    assert [type(event) for event in deleting.events] == [BackupDeleted]
    assert (failed.status, failed.erased_at, failed.needs_erasing) == (BackupStatus.FAILED, LATER, False)
    with pytest.raises(InvalidTransition):
        completed().erased(LATER)


def test_a_backup_no_worker_took_fails_with_the_reason_in_every_part() -> None:
    backup = Backup.request(BackupType.FULL, requested_by="alice", now=NOW)

    backup.abandon("no worker took it within 60 minutes", LATER)

    assert backup.status is BackupStatus.FAILED
    assert backup.error == "no worker took it within 60 minutes"
    assert {part.status for part in backup.parts} == {PartStatus.FAILED}
    assert [type(event) for event in backup.events] == [BackupRequested, BackupFailed]


def test_a_job_key_names_its_kind_id_and_part_and_nothing_else_parses_as_one() -> None:
    assert parse_job_key(part_job_key("b1", BackupPart.FILES)) == ("backup", "b1", BackupPart.FILES)
    assert parse_job_key(restore_job_key("r1", BackupPart.DATABASE)) == ("restore", "r1", BackupPart.DATABASE)
    assert parse_job_key("verify:b1:files") is None
    assert parse_job_key("backup:b1:tapes") is None
    assert parse_job_key("backup::files") is None
