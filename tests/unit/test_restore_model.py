"""The Restore aggregate: what a request may ask for, the safety backup it waits for, and how its
parts complete or fail it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backup_common.domain.errors import Conflict, InvalidRequest
from backup_common.domain.events import (
    BackupPart,
    BackupType,
    RestoreFailed,
    RestoreRequested,
)
from backup_common.domain.model import (
    Backup,
    BackupStatus,
    PartResult,
    PartStatus,
    Restore,
    RestoreStatus,
    RestoreTarget,
    Trigger,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)
DATABASE, FILES = BackupPart.DATABASE, BackupPart.FILES


def completed(backup_type: BackupType = BackupType.FULL) -> Backup:
    backup = Backup.request(backup_type, requested_by="alice", now=NOW)
    for part in backup_type.parts:
        backup.start_part(part, 1, NOW)
        backup.complete_part(part, PartResult("part.zip", 10, "0" * 64, 1, {}), NOW)
    backup.events.clear()
    return backup


def safety_for(restore: Restore) -> Backup:
    safety = Backup.request(restore.safety_backup_type, requested_by="bob", now=NOW, trigger=Trigger.PRE_RESTORE)
    restore.wait_for(safety)
    return safety


def test_in_place_a_restore_waits_for_its_safety_backup_before_it_is_requested() -> None:
    backup = completed()

    restore = Restore.request(backup, None, requested_by="bob", now=LATER)
    safety = safety_for(restore)

    assert (restore.status, restore.safety_backup, restore.part_names) == (
        RestoreStatus.PENDING,
        True,
        (DATABASE, FILES),
    )
    assert restore.target.in_place
    assert restore.safety_backup_type is BackupType.FULL
    assert restore.events == []
    for part in safety.type.parts:
        safety.start_part(part, 1, LATER)
        safety.complete_part(part, PartResult("p.zip", 1, "0" * 64, 1, {}), LATER)

    restore.safety_backup_finished(safety, LATER)

    [event] = restore.events
    assert isinstance(event, RestoreRequested)
    assert (str(event.restore_id), str(event.backup_id), event.parts) == (restore.id, backup.id, (DATABASE, FILES))


def test_a_failed_safety_backup_fails_the_restore_with_its_reason_and_nothing_is_requested() -> None:
    restore = Restore.request(completed(), [DATABASE], requested_by="bob", now=LATER)
    safety = safety_for(restore)
    assert safety.type is BackupType.DATABASE
    safety.start_part(DATABASE, 1, LATER)
    safety.fail_part(DATABASE, "disk full", LATER)

    restore.safety_backup_finished(safety, LATER)

    assert restore.status is RestoreStatus.FAILED
    assert restore.error is not None
    assert "disk full" in restore.error
    assert "nothing was restored" in restore.error
    assert [type(event) for event in restore.events] == [RestoreFailed]
    assert restore.part(DATABASE).status is PartStatus.FAILED


def test_another_backup_finishing_does_not_move_the_restore() -> None:
    restore = Restore.request(completed(), None, requested_by="bob", now=LATER)
    safety_for(restore)

    restore.safety_backup_finished(completed(), LATER)

    assert (restore.status, restore.events) == (RestoreStatus.PENDING, [])


def test_without_a_safety_backup_the_restore_is_requested_at_once() -> None:
    restore = Restore.request(completed(), None, requested_by="bob", now=LATER, safety_backup=False)

    assert [type(event) for event in restore.events] == [RestoreRequested]
    assert restore.safety_backup is False


@pytest.mark.parametrize(
    ("target", "parts"),
    [(RestoreTarget(database="copy"), [DATABASE]), (RestoreTarget(directory="/srv/restores/x"), [FILES])],
)
def test_a_restore_elsewhere_takes_the_part_its_target_holds_and_no_safety_backup(
    target: RestoreTarget, parts: list[BackupPart]
) -> None:
    restore = Restore.request(completed(), None, requested_by="bob", now=LATER, target=target)

    assert restore.part_names == tuple(parts)
    assert restore.safety_backup is False
    assert [type(event) for event in restore.events] == [RestoreRequested]


@pytest.mark.parametrize(
    ("parts", "target", "tables", "paths", "safety", "message"),
    [
        ([FILES], RestoreTarget(), ["orders"], [], None, "tables select from the database part"),
        ([DATABASE], RestoreTarget(), [], ["configs"], None, "paths select from the files part"),
        ([DATABASE, FILES], RestoreTarget(database="copy"), [], [], None, "takes the database part only"),
        ([DATABASE, FILES], RestoreTarget(directory="/r/x"), [], [], None, "takes the files part only"),
        ([FILES], RestoreTarget(database="copy"), [], [], None, "target database needs the database part"),
        ([DATABASE], RestoreTarget(database="copy"), [], [], True, "only before a restore in place"),
    ],
)
def test_a_request_that_cannot_be_carried_out_is_invalid(
    parts: list[BackupPart] | None,
    target: RestoreTarget,
    tables: list[str],
    paths: list[str],
    safety: bool | None,
    message: str,
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        Restore.request(
            completed(),
            parts,
            requested_by="bob",
            now=LATER,
            target=target,
            tables=tables,
            paths=paths,
            safety_backup=safety,
        )


def test_a_restore_is_refused_unless_the_backup_is_completed_and_has_the_parts() -> None:
    running = Backup.request(BackupType.FULL, requested_by="alice", now=NOW)
    with pytest.raises(Conflict) as refused:
        Restore.request(running, None, requested_by="bob", now=LATER)
    assert refused.value.code == "backup_not_restorable"

    with pytest.raises(InvalidRequest) as invalid:
        Restore.request(completed(BackupType.DATABASE), [FILES], requested_by="bob", now=LATER)
    assert invalid.value.code == "part_not_in_backup"

    deleting = completed()
    deleting.request_delete("alice", LATER)
    assert deleting.status is BackupStatus.DELETING
    with pytest.raises(Conflict, match="deleting"):
        Restore.request(deleting, None, requested_by="bob", now=LATER)


def test_the_last_part_completed_completes_the_restore_once() -> None:
    restore = Restore.request(completed(), None, requested_by="bob", now=LATER, safety_backup=False)
    restore.events.clear()
    restore.start_part(DATABASE, 1, LATER)
    restore.start_part(FILES, 1, LATER)
    assert (restore.status, restore.started_at) == (RestoreStatus.RUNNING, LATER)

    assert restore.complete_part(DATABASE, {"tables_done": 3}, LATER) is False
    assert restore.complete_part(FILES, {"files_done": 9}, LATER) is True

    assert (restore.status, restore.completed_at) == (RestoreStatus.COMPLETED, LATER)
    kinds = [type(event).__name__ for event in restore.events]
    assert kinds == ["RestorePartCompleted", "RestorePartCompleted", "RestoreCompleted"]
    assert restore.part(FILES).progress == {"files_done": 9}


def test_a_failed_part_fails_the_restore_and_the_parts_not_started_with_it() -> None:
    restore = Restore.request(completed(), None, requested_by="bob", now=LATER, safety_backup=False)
    restore.events.clear()
    restore.start_part(DATABASE, 1, LATER)

    restore.fail_part(DATABASE, "member damaged", LATER)

    assert restore.status is RestoreStatus.FAILED
    assert restore.error == "database part failed: member damaged"
    assert restore.part(FILES).status is PartStatus.FAILED
    assert [type(event).__name__ for event in restore.events] == ["RestorePartFailed", "RestoreFailed"]
    with pytest.raises(Conflict):
        restore.start_part(FILES, 1, LATER)


def test_a_failure_after_another_part_was_restored_says_so() -> None:
    restore = Restore.request(completed(), None, requested_by="bob", now=LATER, safety_backup=False)
    restore.start_part(DATABASE, 1, LATER)
    restore.start_part(FILES, 1, LATER)
    restore.complete_part(DATABASE, {}, LATER)

    restore.fail_part(FILES, "disk full", LATER)

    assert restore.error == "files part failed: disk full (the database part was restored)"


def test_a_failed_restore_keeps_its_first_reason() -> None:
    restore = Restore.request(completed(), None, requested_by="bob", now=LATER)

    assert restore.fail("first", LATER) is True
    assert restore.fail("second", LATER) is False

    assert (restore.status, restore.error) == (RestoreStatus.FAILED, "first")


def test_target_keys_name_what_each_part_writes() -> None:
    backup = completed()
    in_place = Restore.request(backup, None, requested_by="bob", now=LATER)
    elsewhere = Restore.request(backup, [DATABASE], requested_by="bob", now=LATER, target=RestoreTarget(database="c"))
    directory = Restore.request(backup, [FILES], requested_by="bob", now=LATER, target=RestoreTarget(directory="/r/d"))

    assert in_place.target_keys("app") == ("database:app", "files:in place")
    assert elsewhere.target_keys("app") == ("database:c",)
    assert directory.target_keys("app") == ("directory:/r/d",)


def test_a_target_reads_back_from_what_it_writes() -> None:
    for target in (RestoreTarget(), RestoreTarget(database="c", replace=True), RestoreTarget(directory="/r/d")):
        assert RestoreTarget.from_dict(target.as_dict()) == target
