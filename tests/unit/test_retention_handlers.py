"""The retention service's handlers, scheduler and housekeeping, run through its bootstrap with fakes
of the ports (storage is a real directory). The same behaviour against MariaDB and RabbitMQ is in
tests/integration/test_retention.py."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from backup_common.adapters.settings import Settings
from backup_common.domain.documents import ScheduleDocument, ScheduleEntry
from backup_common.domain.events import (
    BackupCompleted,
    BackupDeleted,
    BackupFailed,
    BackupPart,
    BackupType,
    BackupVerificationFailed,
    DeleteRequested,
    RestoreFailed,
)
from backup_common.domain.model import (
    REBUILT_UNCONFIRMED,
    Backup,
    BackupStatus,
    PartResult,
    Restore,
    RestoreStatus,
    Trigger,
)
from backup_common.domain.schedule import FiringOutcome
from backup_gateway import handlers as gateway
from backup_retention.bootstrap import bootstrap
from backup_retention.handlers import POLICY_LOCK, RetentionMetrics, apply_retention, erase
from backup_retention.housekeeping import Housekeeper, Windows
from backup_retention.scheduler import Scheduler
from tests.unit.fakes import FakeSystem, fake_ports

WINDOWS = Windows(pending_timeout=timedelta(hours=1), deleting_retry=timedelta(minutes=10), keep=timedelta(days=7))


@pytest.fixture
def system(tmp_path: Path) -> FakeSystem:
    return fake_ports(tmp_path / "storage")


def metrics() -> RetentionMetrics:
    return RetentionMetrics(CollectorRegistry())


async def completed(system: FakeSystem, backup_type: BackupType = BackupType.DATABASE, **extra: Any) -> Backup:
    backup = Backup.request(backup_type, requested_by="alice", now=system.clock(), **extra)
    for part in backup.parts:
        backup.start_part(part.part, 1, system.clock())
        backup.complete_part(part.part, PartResult(f"{part.part}.zip", 10, "0" * 64, 1, {}), system.clock())
    directory = system.storage.directory(backup)
    directory.mkdir(parents=True)
    (directory / "database.zip").write_bytes(b"archive")
    await system.keys.data_key(backup.id)
    async with system.ports.uow() as uow:
        await uow.backups.add(backup)
        await uow.commit()
    system.clock.advance(3600)
    return system.catalog.backups[backup.id]


async def set_policy(system: FakeSystem, **retention: int) -> None:
    document = (await gateway.read_document(system.ports, "settings")).document.model_dump(mode="json")
    document["retention"] |= {"keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0, **retention}
    await gateway.replace_document(system.ports, "settings", document, updated_by="alice")


async def set_schedule(system: FakeSystem, *entries: ScheduleEntry) -> None:
    document = ScheduleDocument(timezone="UTC", schedules=list(entries)).model_dump(mode="json")
    await gateway.replace_document(system.ports, "schedule", document, updated_by="alice")


def test_the_service_consumes_deletions_completed_and_failed_backups_and_failed_verifications(
    system: FakeSystem,
) -> None:
    service = bootstrap(Settings(), system.ports, CollectorRegistry())

    assert set(service.handlers) == {DeleteRequested, BackupCompleted, BackupFailed, BackupVerificationFailed}
    assert len(service.loops) == 4  # the schedule, housekeeping, notifications' delivery and missing backups


# --- deletion -------------------------------------------------------------------------------------


async def test_a_deletion_removes_the_directory_then_the_key_and_is_idempotent(system: FakeSystem) -> None:
    backup = await completed(system)
    await gateway.request_delete(system.ports, backup.id, requested_by="alice")

    assert await erase(system.ports, backup.id)
    assert not await erase(system.ports, backup.id)

    stored = system.catalog.backups[backup.id]
    assert (stored.status, stored.erased_at) == (BackupStatus.DELETED, system.clock())
    assert not system.storage.directory(backup).exists()
    assert backup.id not in system.keys.keys
    assert [str(event.backup_id) for event in system.catalog.events(BackupDeleted)] == [backup.id]


async def test_a_deletion_that_failed_after_the_files_is_finished_by_the_next_try(
    system: FakeSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup = await completed(system)
    await gateway.request_delete(system.ports, backup.id, requested_by="alice")

    async def gone(backup_id: str) -> bool:
        raise ConnectionResetError("the catalog went away")

    with monkeypatch.context() as patch:
        patch.setattr(system.keys, "destroy", gone)
        with pytest.raises(ConnectionResetError):
            await erase(system.ports, backup.id)
    assert not system.storage.directory(backup).exists()
    assert system.catalog.backups[backup.id].status is BackupStatus.DELETING
    assert backup.id in system.keys.keys

    assert await erase(system.ports, backup.id)
    assert system.catalog.backups[backup.id].status is BackupStatus.DELETED
    assert backup.id not in system.keys.keys


async def test_a_backup_not_being_deleted_is_left_alone(system: FakeSystem) -> None:
    backup = await completed(system)

    assert not await erase(system.ports, backup.id)
    assert system.storage.directory(backup).exists()
    assert system.catalog.backups[backup.id].status is BackupStatus.COMPLETED


# --- the policy -----------------------------------------------------------------------------------


async def test_the_policy_asks_to_delete_what_it_lets_go_but_not_a_backup_being_restored(system: FakeSystem) -> None:
    await set_policy(system, keep_last=1)
    oldest, restoring, newest = [await completed(system) for _ in range(3)]
    async with system.ports.uow() as uow:
        await uow.restores.add(Restore.request(restoring, None, requested_by="bob", now=system.clock()), ["x"])
        await uow.commit()

    requested = await apply_retention(system.ports, metrics())

    assert requested == [oldest.id]
    assert system.catalog.backups[oldest.id].status is BackupStatus.DELETING
    assert [str(event.backup_id) for event in system.catalog.events(DeleteRequested)] == [oldest.id]
    assert {system.catalog.backups[b.id].status for b in (restoring, newest)} == {BackupStatus.COMPLETED}


async def test_the_policy_never_deletes_the_base_of_an_incremental_in_progress(system: FakeSystem) -> None:
    await set_policy(system, keep_last=1)
    base = await completed(system, BackupType.FULL)
    await completed(system, BackupType.FULL)
    running = Backup.request(BackupType.INCREMENTAL, requested_by="alice", now=system.clock())
    running.parent_id = base.id
    async with system.ports.uow() as uow:
        await uow.backups.add(running)
        await uow.commit()

    assert await apply_retention(system.ports, metrics()) == []


async def test_a_replica_that_finds_the_policy_being_applied_leaves_it_to_that_one(system: FakeSystem) -> None:
    await set_policy(system, keep_last=1)
    await completed(system)
    await completed(system)

    async with system.ports.locks.hold(POLICY_LOCK) as held:
        assert held
        assert await apply_retention(system.ports, metrics()) == []
    assert len(await apply_retention(system.ports, metrics())) == 1


# --- the schedule ---------------------------------------------------------------------------------


ENTRY = ScheduleEntry(name="nightly", type=BackupType.DATABASE, cron="0 2 * * *", archive=True)


async def test_a_new_entry_fires_from_now_on_and_then_at_each_fire_time_once(system: FakeSystem) -> None:
    await set_schedule(system, ENTRY)
    first, second = (Scheduler(fake.ports, metrics(), catch_up=timedelta(hours=1)) for fake in (system, system))
    system.clock.now = system.clock.now.replace(hour=1, minute=59)

    assert await first.run_due() == []
    system.clock.advance(60)
    fired = await first.run_due() + await second.run_due()

    assert [(f.schedule, f.outcome, f.fire_at) for f in fired] == [("nightly", FiringOutcome.FIRED, system.clock())]
    backup = system.catalog.backups[fired[0].backup_id or ""]
    assert (backup.trigger, backup.schedule, backup.archive) == (Trigger.SCHEDULE, "nightly", True)
    assert backup.requested_by == "schedule:nightly"


async def test_a_firing_while_the_entrys_previous_backup_runs_is_skipped_with_a_reason(system: FakeSystem) -> None:
    await set_schedule(system, ENTRY)
    scheduler = Scheduler(system.ports, metrics(), catch_up=timedelta(hours=1))
    system.clock.now = system.clock.now.replace(hour=1, minute=59)
    await scheduler.run_due()
    system.clock.advance(60)
    (fired,) = await scheduler.run_due()
    system.clock.advance(24 * 3600)

    (skipped,) = await scheduler.run_due()

    assert skipped.outcome is FiringOutcome.SKIPPED
    assert skipped.reason == f"the previous backup of nightly, {fired.backup_id}, is still pending"
    assert len(system.catalog.backups) == 1


async def test_a_disabled_entry_keeps_its_cursor_so_enabling_it_counts_nothing_as_missed(system: FakeSystem) -> None:
    await set_schedule(system, ENTRY.model_copy(update={"enabled": False}))
    scheduler = Scheduler(system.ports, metrics(), catch_up=timedelta(hours=1))
    await scheduler.run_due()
    system.clock.advance(7 * 24 * 3600)
    assert await scheduler.run_due() == []

    await set_schedule(system, ENTRY)

    assert await scheduler.run_due() == []
    assert system.catalog.firings == {}


# --- housekeeping ---------------------------------------------------------------------------------


async def test_a_backup_no_worker_took_fails_and_so_does_the_restore_waiting_for_it(system: FakeSystem) -> None:
    backup = await completed(system)
    restore = Restore.request(backup, None, requested_by="alice", now=system.clock())
    safety = Backup.request(BackupType.DATABASE, requested_by="alice", now=system.clock(), trigger=Trigger.PRE_RESTORE)
    restore.wait_for(safety)
    async with system.ports.uow() as uow:
        await uow.backups.add(safety)
        await uow.restores.add(restore, ["database:app"])
        await uow.commit()
    system.clock.advance(2 * 3600)

    report = await Housekeeper(system.ports, metrics(), WINDOWS).round()

    assert report is not None
    assert report.abandoned_backups == [safety.id]
    assert system.catalog.backups[safety.id].status is BackupStatus.FAILED
    assert "no worker took it within 60 minutes" in (system.catalog.backups[safety.id].error or "")
    assert system.catalog.restores[restore.id].status is RestoreStatus.FAILED
    assert len(system.catalog.events(RestoreFailed)) == 1


async def test_housekeeping_retries_a_stuck_deletion_erases_old_failures_and_purges(system: FakeSystem) -> None:
    stuck = await completed(system)
    await gateway.request_delete(system.ports, stuck.id, requested_by="alice")
    failed = Backup.request(BackupType.DATABASE, requested_by="alice", now=system.clock())
    failed.fail_part(BackupPart.DATABASE, "disk full", system.clock())
    system.storage.directory(failed).mkdir(parents=True)
    # What a catalog rebuild could not confirm is left for an operator to look at.
    unconfirmed = Backup.request(BackupType.DATABASE, requested_by="alice", now=system.clock())
    unconfirmed.fail_part(BackupPart.DATABASE, "database.zip is missing", system.clock())
    unconfirmed.error = f"{REBUILT_UNCONFIRMED}database.zip is missing"
    async with system.ports.uow() as uow:
        await uow.backups.add(failed)
        await uow.backups.add(unconfirmed)
        await uow.commit()
    system.clock.advance(2 * 24 * 3600)

    report = await Housekeeper(system.ports, metrics(), WINDOWS).round()

    assert report is not None
    assert report.deletions_retried == [stuck.id]
    assert len(system.catalog.events(DeleteRequested)) == 2
    assert report.failures_erased == [failed.id]
    assert system.catalog.backups[failed.id].status is BackupStatus.FAILED
    assert not system.storage.directory(failed).exists()
    assert system.catalog.backups[unconfirmed.id].erased_at is None
    assert system.catalog.purges == [system.clock() - WINDOWS.keep]


async def test_one_housekeeping_round_at_a_time(system: FakeSystem) -> None:
    keeper = Housekeeper(system.ports, metrics(), WINDOWS)

    async with system.ports.locks.hold("housekeeping"):
        assert await keeper.round() is None
    assert await keeper.round() is not None
